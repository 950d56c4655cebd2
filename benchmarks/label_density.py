"""Does sparse labelling change what a study concludes? The baseline and a study's front,
scored on the same held-out scenes labelled sparsely and fully.

    python benchmarks/label_density.py STUDY --full DIR [--split val] [--limit N] [--all-trials]

The quick start (and docs/datasets.md's large validation set) labels held-out scenes with
3 antipodal candidates per object instead of 8, 2-3x cheaper per scene. A scene is the same
either way (its objects and poses come from its index and seed; only the candidates
differ), so ``ggopt data sim --scenes N --splits val --out DIR`` with the default 8
candidates relabels the study's scenes fully. This scores each model's own grasp (its
artifact, GG-CNN's metric) on the images both folders hold, under both labellings:

- accuracy with its 95 % Wilson interval under each;
- the paired difference to the baseline under each (Tango's score interval, better/worse);
- how that difference moves between labellings: per image (model - baseline) sparse minus
  (model - baseline) full, its mean with a bootstrap interval. Near 0: the sparse labels
  resolve the same comparison; negative for a model worse than its baseline: sparse labels
  shrink the loss, and a constraint margin on them is looser than on full labels.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np
from optuna.trial import TrialState
from rich.console import Console
from rich.table import Table
from scipy import stats as scipy_stats

from grasp.artifact import Artifact
from grasp.checkpoints import load_checkpoint
from grasp.data.base import split
from grasp.evaluation import HeldOut, score_grasps
from search.config import load_study_config
from search.front import feasible_front
from search.stats import paired_difference, rate
from search.study import load_study
from spaces.precision import PrecisionConfig, build_artifact
from spaces.upsample import rewrite_all

sys.path.insert(0, str(Path(__file__).parent))
from records import current_commit, table_figures, write_record


def held_out(root: str, config, part: str, console: Console) -> HeldOut:
    dataset = dataclasses.replace(config, data_root=str(root)).dataset()
    indices = split(dataset, "preset")[part]
    if not indices:
        raise SystemExit(f"{root}: no {part}/ images.")
    return HeldOut.load(dataset.subset(indices), f"reading {root}/{part}", console)


def common(sparse: HeldOut, full: HeldOut, limit: int | None) -> tuple[HeldOut, HeldOut]:
    """The images both hold, in one order (the same depth images, two sets of labels)."""
    where = {name: i for i, name in enumerate(full.names)}
    pairs = [(i, where[name]) for i, name in enumerate(sparse.names) if name in where]
    if not pairs:
        raise SystemExit("--full: no image of the study's split is in that folder (made with "
                         "another --seed, or another split?).")
    pairs = pairs[:limit] if limit else pairs
    s, f = (np.array(x) for x in zip(*pairs, strict=True))
    a = HeldOut(sparse.inputs[s], [sparse.truths[i] for i in s], [sparse.names[i] for i in s])
    b = HeldOut(full.inputs[f], [full.truths[i] for i in f], [full.names[i] for i in f])
    if not np.array_equal(a.inputs.numpy(), b.inputs.numpy()):
        raise SystemExit("--full: same image names but different depth images: not the "
                         "same scenes.")
    return a, b


def shift(model_s, base_s, model_f, base_f) -> tuple[float, float, float]:
    """Mean over images of (model - baseline) sparse minus (model - baseline) full, with
    its 95 % bootstrap interval."""
    per_image = ((model_s.astype(float) - base_s) - (model_f.astype(float) - base_f))
    if not per_image.any():
        return 0.0, 0.0, 0.0
    result = scipy_stats.bootstrap((per_image,), np.mean, n_resamples=4000, method="BCa",
                                   random_state=np.random.default_rng(0))
    low, high = result.confidence_interval
    return float(per_image.mean()), float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="study file (TOML); its data folder is the sparse one")
    parser.add_argument("--full", required=True, help="the same scenes, labelled fully")
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--limit", type=int, default=None, help="at most this many images")
    parser.add_argument("--storage", default=None)
    parser.add_argument("--all-trials", action="store_true",
                        help="every complete trial with its file, not the front alone: "
                             "models that lost accuracy show how the labels move a loss")
    args = parser.parse_args()
    commit = current_commit()
    console = Console(width=160)
    config = load_study_config(args.study, {"storage": args.storage})
    if not Path(args.full).is_dir():
        raise SystemExit(f"--full {args.full}: folder not found.")
    sparse, full = common(held_out(config.data_root, config, args.split, console),
                          held_out(args.full, config, args.split, console), args.limit)
    base = load_checkpoint(config.checkpoint_path(), config.model).model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        # The baseline: every exact rewrite gives the same grasps; the sub-pixel fp32 file.
        models = {"baseline (sub-pixel, fp32)": build_artifact(
            rewrite_all(base), PrecisionConfig("fp32"), Path(tmp) / "base", (),
            config.output_size, config.device, runtime=config.runtime)}
        study = load_study(config)
        chosen = (study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if args.all_trials else feasible_front(study, config.objectives))
        for t in chosen:
            path = Path(t.user_attrs.get("artifact", ""))
            if path.is_file():
                models[f"trial {t.number} ({t.user_attrs['precision']})"] = Artifact(
                    path, config.runtime, t.user_attrs["precision"], config.output_size,
                    config.device)
        hits = {}
        for label, artifact in models.items():
            grasps = artifact.grasp_predictor(config.threads)
            hits[label] = (score_grasps(grasps, sparse).standard,
                           score_grasps(grasps, full).standard)
    base_s, base_f = hits["baseline (sub-pixel, fp32)"]
    table = Table(title=f"{config.name}: {len(sparse)} {args.split} images, labelled sparsely "
                        f"({config.data_root}) and fully ({args.full}); 95 % intervals, Δ "
                        f"paired with the baseline")
    for column in ("model", "accuracy, sparse", "accuracy, full", "Δ sparse (pp)",
                   "Δ full (pp)", "Δ sparse - Δ full (pp)"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for label, (model_s, model_f) in hits.items():
        d_s, d_f = paired_difference(model_s, base_s), paired_difference(model_f, base_f)
        mean, low, high = shift(model_s, base_s, model_f, base_f)
        table.add_row(label, str(rate(model_s)), str(rate(model_f)), str(d_s), str(d_f),
                      f"{100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]")
    console.print(table)
    both = (base_s & base_f).sum()
    note = (f"baseline: {int(base_s.sum())} sparse hits, {int(base_f.sum())} full hits, "
            f"{int(both)} both; a sparse hit is a full hit on "
            f"{both / max(int(base_s.sum()), 1):.1%} of images")
    console.print(note)
    console.print(write_record("label_density", "Sparse and full labels on the same scenes",
                               table_figures([table], [note]), commit=commit))


if __name__ == "__main__":
    main()
