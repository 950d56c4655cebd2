"""How recovery computes: fp32, the channels-last layout, and bfloat16 autocast, side by side
in one run: seconds a step, and each recovered model's accuracy paired with fp32's.

    python benchmarks/recovery_compute.py STUDY [--steps 240] [--variants LABEL ...]

Each variant (knobs.py's, by default the function-changing fp32 ones a study draws most:
pruning, depthwise, low rank, dilation) starts from the study's trained model and is
recovered once per compute (search.recovery.COMPUTES) with the study's recipe, seed and
pool, ``--steps`` steps, the computes' order rotated from variant to variant so that the
machine's drift spreads over them. Each recovered model is exported (fp32 ONNX) and its own
grasp scored on the study's validation images, paired with the fp32-recovered model of the
same variant (Tango's interval, McNemar's p); the pooled row pairs every (variant, image).
Time: seconds a step of each recovery; the speed-up over fp32 per variant, and their
geometric mean with the t interval over variants (scipy). bf16 needs a CPU with bfloat16
instructions (AVX-512 BF16 or AMX) to pay; the record names the CPU's flags.
Writes ``records/recovery_compute.json``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from scipy import stats

from search.config import load_study_config
from search.recovery import COMPUTES, recover
from search.stats import paired_difference, rate
from search.study import measure_artifact, prepare
from spaces import get_knob
from spaces.precision import PrecisionConfig

sys.path.insert(0, str(Path(__file__).parent))
from knobs import variants
from records import current_commit, write_record
from render import recovery_compute_text

DEFAULT_VARIANTS = ("subpixel + prune 25%", "subpixel + prune 50%", "depthwise all",
                    "lowrank all 50%", "dilate conv1 d4, conv2 d2, convt3 d4")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="study file (TOML)")
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    args = parser.parse_args()
    commit = current_commit()
    torch.set_num_threads(1)
    console = Console(width=150)
    setup = prepare(load_study_config(args.study), console)
    built = variants(setup.base)
    unknown = [v for v in args.variants if v not in built]
    if unknown:
        raise SystemExit(f"--variants: {unknown} are not knobs.py variants of "
                         f"{setup.config.model}; choose from {sorted(built)}")
    recipe = dataclasses.replace(setup.recipe(), seed=setup.config.seed)
    pool = setup.recovery_pool()
    precision = get_knob("precision")
    for compute in COMPUTES:  # warm-up: the first steps of each compute pay one-off costs
        recover(copy.deepcopy(built[args.variants[0]][0]), pool, 3,
                dataclasses.replace(recipe, compute=compute))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, label in enumerate(args.variants):
            order = COMPUTES[i % len(COMPUTES):] + COMPUTES[:i % len(COMPUTES)]
            found = {}
            for compute in order:
                model = copy.deepcopy(built[label][0])
                start = time.perf_counter()
                recover(model, pool, args.steps, dataclasses.replace(recipe, compute=compute))
                seconds = time.perf_counter() - start
                artifact = precision.build(model, PrecisionConfig("fp32"),
                                           Path(tmp) / f"{i}-{compute}", setup.calibration)
                _, details = measure_artifact(setup, artifact, names=("accuracy",))
                found[compute] = {"step_s": seconds / args.steps,
                                  "hits": details["hits"].standard}
                console.print(f"{label}, {compute}: {seconds / args.steps * 1e3:.0f} ms a "
                              f"step, accuracy {rate(found[compute]['hits'])}", style="dim")
            rows.append((label, found))
    figures = _figures(args, setup, rows)
    console.print(recovery_compute_text(figures))
    console.print(write_record("recovery_compute", "Recovery in fp32, channels-last and bf16",
                               figures, commit=commit))


def _figures(args, setup, rows: list[tuple[str, dict]]) -> dict:
    """Per variant and compute: seconds a step, speed-up and accuracy paired with fp32;
    pooled over the variants."""
    figures: dict = {"study": args.study, "model": setup.config.model, "steps": args.steps,
                     "batch_size": setup.config.recovery_batch_size,
                     "crop": setup.config.recovery_crop, "val_images": len(setup.eval_data),
                     "rows": [], "pooled": {}}
    for label, found in rows:
        base = found["fp32"]
        figures["rows"].append({"variant": label, **{compute: {
            "step_ms": found[compute]["step_s"] * 1e3,
            "speedup": base["step_s"] / found[compute]["step_s"],
            "val": rate(found[compute]["hits"]).to_dict(),
            "val_diff": paired_difference(found[compute]["hits"], base["hits"]).to_dict()}
            for compute in COMPUTES}})
    for compute in COMPUTES[1:]:
        logs = np.log([found["fp32"]["step_s"] / found[compute]["step_s"]
                       for _, found in rows])
        interval = (stats.ttest_1samp(logs, 0.0).confidence_interval(0.95)
                    if len(logs) > 1 else None)
        pooled = paired_difference(np.concatenate([f[compute]["hits"] for _, f in rows]),
                                   np.concatenate([f["fp32"]["hits"] for _, f in rows]))
        figures["pooled"][compute] = {
            "speedup": float(np.exp(logs.mean())),
            "speedup_ci": ([float(np.exp(interval.low)), float(np.exp(interval.high))]
                           if interval is not None else None),
            "val_diff": pooled.to_dict()}
    return figures


if __name__ == "__main__":
    main()
