"""The pictures a person looks at in the morning: the front, the hypervolume over trials,
and what each front model changed per layer."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from search.front import SCOPE_NAMES, feasible_front, latency_scope
from search.record import is_feasible, values_of


def plot_front(study: optuna.Study, objectives: tuple[str, ...], path: Path) -> Path:
    """Accuracy vs latency of every complete trial, size as colour, the front joined."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if "values" in t.user_attrs]
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=110)
    if done:
        lat = [values_of(t)["latency"] for t in done]
        acc = [values_of(t)["accuracy"] for t in done]
        size = [values_of(t)["size"] / 1e3 for t in done]
        marks = ["o" if is_feasible(t) else "x" for t in done]
        for m in ("o", "x"):
            idx = [i for i, k in enumerate(marks) if k == m]
            if idx:
                sc = ax.scatter([lat[i] for i in idx], [acc[i] for i in idx],
                                c=[size[i] for i in idx], cmap="viridis", marker=m,
                                vmin=min(size), vmax=max(size),
                                label="feasible" if m == "o" else "infeasible")
        fig.colorbar(sc, ax=ax, label="artifact size (kB)")
        front = feasible_front(study, objectives)
        if front:
            ax.plot([values_of(t)["latency"] for t in front],
                    [values_of(t)["accuracy"] for t in front],
                    "-", color="crimson", lw=1, label="feasible front")
            shown = [t for t in front if "accuracy_stats" in t.user_attrs]
            if shown:  # the front's 95 % intervals: what the accuracy axis can resolve
                acc = np.array([values_of(t)["accuracy"] for t in shown])
                ci = np.array([t.user_attrs["accuracy_stats"]["accuracy_ci"] for t in shown])
                ax.errorbar([values_of(t)["latency"] for t in shown], acc,
                            yerr=[acc - ci[:, 0], ci[:, 1] - acc], fmt="none",
                            ecolor="crimson", elinewidth=0.8, capsize=2, alpha=0.7)
    base = study.user_attrs.get("baseline")
    if base:
        ax.scatter([base["latency"]], [base["accuracy"]], marker="*", s=160, color="black",
                   label="uncompressed baseline")
    ax.set_xlabel(f"latency, {SCOPE_NAMES[latency_scope(study)]} (ms, median, measured)")
    images = (base or {}).get("accuracy_images")
    ax.set_ylabel("IoU grasp-match accuracy (validation"
                  + (f", {images} images, 95 % CI)" if images else ")"))
    ax.set_title(f"{study.study_name}: {len(done)} complete trials", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=4, fontsize=8,
              frameon=False)  # below the axes: never over a point
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path



#: The knobs that work layer by layer, and the suffixes their parameter names end with.
LAYER_KNOBS = ("prune", "lowrank", "depthwise", "upsample", "dilate", "group")
_SUFFIXES = (".ratio", ".rank_in", ".rank_out")


def _layer_of(key: str) -> str | None:
    """The layer a trial parameter sets (``prune.res1.conv1.ratio`` -> ``res1.conv1``); None
    for a parameter of the whole model (``prune.criterion``, ``precision``)."""
    knob, _, rest = key.partition(".")
    if knob not in LAYER_KNOBS or not rest or rest in ("criterion", "round_to"):
        return None
    return next((rest.removesuffix(s) for s in _SUFFIXES if rest.endswith(s)), rest)


def plot_layers(front: list[FrozenTrial], path: Path) -> None:
    """A grid: front models × layers, showing the kept fraction of each layer's channels
    (prune), and marking factorised (L), depthwise (D), dilated (d2: dilation 2), grouped
    (g4: 4 groups) and rewritten decoder (S/N/B/R) layers."""
    layers: list[str] = []
    for t in front:
        for key in t.params:
            layer = _layer_of(key)
            if layer is not None and layer not in layers:
                layers.append(layer)
    fig, ax = plt.subplots(figsize=(max(6.5, len(layers) * 0.9 + 3),
                                    max(2.5, len(front) * 0.32 + 1.6)), dpi=110)
    grid = np.ones((max(len(front), 1), max(len(layers), 1)))
    for i, t in enumerate(front):
        for j, layer in enumerate(layers):
            grid[i, j] = 1.0 - float(t.params.get(f"prune.{layer}.ratio", 0.0))
            marks = ""
            if t.params.get(f"lowrank.{layer}"):
                marks += "L"
            if t.params.get(f"depthwise.{layer}"):
                marks += "D"
            mode = t.params.get(f"upsample.{layer}", "keep")
            marks += {"subpixel": "S", "nearest": "N", "bilinear": "B", "lowres": "R"}.get(mode, "")
            for knob, letter in (("dilate", "d"), ("group", "g")):
                if int(t.params.get(f"{knob}.{layer}", 1)) > 1:
                    marks += f" {letter}{t.params[f'{knob}.{layer}']}"
            ax.text(j, i, marks, ha="center", va="center", fontsize=8,
                    color="white" if grid[i, j] < 0.6 else "black")
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="magma", aspect="auto")
    ax.set_xticks(range(len(layers)), layers, rotation=45)
    ax.set_yticks(range(len(front)), [f"trial {t.number} ({t.user_attrs.get('precision')})"
                                      for t in front])
    fig.colorbar(im, ax=ax, label="channels kept", fraction=0.04)
    ax.set_title("What each front model changed, per layer", fontsize=10)
    fig.text(0.01, 0.01, "L low-rank · D depthwise · dN dilation N · gN N groups · decoder "
             "S sub-pixel, N nearest, B bilinear, R low-res", fontsize=8, color="dimgray")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path)
    plt.close(fig)
