"""int8 calibration on fewer training images: what it saves a trial and what it costs in
accuracy, side by side in one run.

    python benchmarks/calibration_images.py STUDY [--counts 8 16 32] [--trials N ...]

ONNX Runtime's percentile calibration (spaces.precision) runs every calibration image
through the model and histograms every activation; it is a fifth of a quick-start trial.
For the uncompressed model (sub-pixel form) and each complete int8 trial of the study (its
knobs rebuilt, its kept fp32 weights loaded), an int8 file is built from the first N of
the study's calibration images for each N in ``--counts``; each file's own grasp is scored
on the study's validation images and paired with the file calibrated on the largest N
(at most the study's training images); the pooled row pairs every (model, image).
Seconds: the calibration and quantization alone, as a trial records them.
Writes ``records/calibration_images.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from optuna.trial import TrialState
from rich.console import Console
from rich.table import Table

from grasp.evaluation import score_grasps
from search.config import load_study_config
from search.record import WEIGHTS_FILE
from search.stats import paired_difference, rate
from search.study import build_trial_model, load_study, prepare
from spaces.precision import PrecisionConfig, build_artifact
from spaces.upsample import rewrite_all

sys.path.insert(0, str(Path(__file__).parent))
from records import current_commit, table_figures, write_record


def trial_models(setup, study, wanted: list[int] | None) -> dict[str, torch.nn.Module]:
    """The study's complete int8 trials whose weights are on this disk, rebuilt."""
    models = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        weights = Path(t.user_attrs.get("artifact", "")).parent / WEIGHTS_FILE
        if (t.user_attrs.get("precision") != "int8" or not weights.is_file()
                or (wanted and t.number not in wanted)):
            continue
        model, _ = build_trial_model(setup, params=t.params)
        model.load_state_dict(torch.load(weights, weights_only=True))
        models[f"trial {t.number}"] = model.eval()
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="study file (TOML)")
    parser.add_argument("--counts", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--trials", type=int, nargs="*", default=None,
                        help="these trials only (default: every complete int8 trial)")
    args = parser.parse_args()
    if min(args.counts) < 1:
        parser.error("--counts must be >= 1")
    counts = sorted(set(args.counts))
    commit = current_commit()
    torch.set_num_threads(1)
    config = load_study_config(args.study, {"calibration_images": counts[-1]})
    setup = prepare(config, Console(stderr=True, quiet=True))
    if len(setup.calibration) < counts[-1]:
        raise SystemExit(f"--counts {counts[-1]}: the training split holds only "
                         f"{len(setup.calibration)} calibration images")
    models = {"uncompressed (sub-pixel)": rewrite_all(setup.base).eval()}
    models |= trial_models(setup, load_study(config), args.trials)
    console = Console(width=150)
    found: dict[str, dict[int, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, model) in enumerate(models.items()):
            found[label] = {}
            for n in counts:
                timings: dict[str, float] = {}
                artifact = build_artifact(model, PrecisionConfig("int8"), Path(tmp) / f"{i}-{n}",
                                          setup.calibration[:n], config.output_size,
                                          timings=timings)
                hits = score_grasps(artifact.grasp_predictor(config.threads),
                                    setup.eval_data).standard
                found[label][n] = {"seconds": timings["calibration_s"], "hits": hits}
                console.print(f"{label}, {n} images: {timings['calibration_s']:.1f} s, "
                              f"{rate(hits)}", style="dim")
    most = counts[-1]
    table = Table(title=f"{config.name}: int8 calibrated on N training images; "
                        f"{len(setup.eval_data)} validation images, Δ paired with N = {most}")
    for column in ("model", "N", "calibration s", "val accuracy [95 % CI]",
                   f"Δ vs N = {most}, paired"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for label, by_n in found.items():
        for n in counts:
            diff = ("" if n == most else
                    str(paired_difference(by_n[n]["hits"], by_n[most]["hits"])))
            table.add_row(label, str(n), f"{by_n[n]['seconds']:.1f}", str(rate(by_n[n]["hits"])),
                          diff)
    pooled = Table(title=f"pooled over {len(found)} models (every model and image a pair)")
    for column in ("N", "median calibration s", "Δ vs N = " + str(most) + ", paired"):
        pooled.add_column(column, justify="right")
    for n in counts:
        seconds = statistics.median(by_n[n]["seconds"] for by_n in found.values())
        diff = ("" if n == most else str(paired_difference(
            np.concatenate([by_n[n]["hits"] for by_n in found.values()]),
            np.concatenate([by_n[most]["hits"] for by_n in found.values()]))))
        pooled.add_row(str(n), f"{seconds:.1f}", diff)
    console.print(table)
    console.print(pooled)
    console.print(write_record("calibration_images", "int8 calibration on fewer images",
                               table_figures([table, pooled]), commit=commit))


if __name__ == "__main__":
    main()
