"""ONNX Runtime int8 with 8-bit against 7-bit weights, on this CPU, side by side in one run.

    python benchmarks/int8_weight_bits.py studies/quickstart.toml [--data DIR] [--exported DIR]

x86 CPUs without VNNI (AVX2; AVX-512 before Cascade Lake / Zen 4) multiply uint8
activations by int8 weights in pairs summed into int16, which saturates when both are
large; ggopt quantizes weights on 7 bits for that reason (``spaces.precision``). Run this
on a robot's CPU to see what the 8th bit would cost or gain there: each row is the
uncompressed model with sub-pixel decoders, its own grasp scored on the study's validation
images (and its test images) with 95 % intervals and paired with the fp32 file on the same
images, and its network timed beside the fp32 file's by the study's protocol (its threads,
warm-up, runs, min_seconds and blocks: objectives.latency.measure_scopes), a speed-up with
its 95 % interval. ``--exported DIR`` takes the model from a trial exported with ``ggopt
export`` (its ``config.json`` parameters and ``weights.pt``) instead of the uncompressed
one. Writes records/int8_weight_bits.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from unittest import mock

import torch
from rich.console import Console
from rich.table import Table

import spaces.precision
from grasp.evaluation import score_grasps
from objectives.latency import measure_scopes
from search.config import load_study_config
from search.record import WEIGHTS_FILE
from search.stats import paired_difference, rate
from search.study import build_trial_model, prepare
from spaces.precision import PrecisionConfig, build_artifact
from spaces.upsample import rewrite_all

sys.path.insert(0, str(Path(__file__).resolve().parent))  # records.py beside this script

from records import current_commit, write_record


def vnni() -> str:
    """Which VNNI form this CPU has, from /proc/cpuinfo ("none" where it has neither)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown (no /proc/cpuinfo)"
    found = [f for f in ("avx512_vnni", "avx_vnni") if f in flags]
    return ", ".join(found) or "none"


def exported_params(folder: Path) -> dict:
    """An exported trial's knob parameters, checked before the dataset is loaded."""
    for name in ("config.json", WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise SystemExit(f"--exported {folder}: no {name} (write it with `ggopt export`).")
    return json.loads((folder / "config.json").read_text())["params"]


def exported(setup, folder: Path, params: dict):
    """The model of an exported trial: its knobs rebuilt, then its kept fp32 weights."""
    model, _ = build_trial_model(setup, params=params)
    model.load_state_dict(torch.load(folder / WEIGHTS_FILE, weights_only=True))
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="study file (TOML)")
    parser.add_argument("--data", default=None, help="dataset folder (default: the study's)")
    parser.add_argument("--exported", default=None, metavar="DIR",
                        help="a `ggopt export` folder: its trial's weights instead of the "
                             "uncompressed model")
    args = parser.parse_args()
    commit = current_commit()
    config = load_study_config(args.study, {"data_root": args.data})
    folder = None if args.exported is None else Path(args.exported)
    params = None if folder is None else exported_params(folder)
    setup = prepare(config, Console(stderr=True, quiet=True))
    test_data = setup.test_data
    model = rewrite_all(setup.base) if folder is None else exported(setup, folder, params)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        forms = (("fp32", "fp32", True, "fp32"), ("int8, 8-bit weights", "int8", False, "int8-8"),
                 ("int8, 7-bit weights (ggopt)", "int8", True, "int8-7"))
        for label, precision, seven, name in forms:
            with mock.patch.object(spaces.precision, "WEIGHTS_ON_7_BITS", seven):
                artifact = build_artifact(model, PrecisionConfig(precision), Path(tmp) / name,
                                          setup.calibration, config.output_size)
            grasps = artifact.grasp_predictor(config.threads)
            rows[label] = {"val": score_grasps(grasps, setup.eval_data).standard,
                           "test": (score_grasps(grasps, test_data).standard
                                    if len(test_data) else None),
                           "artifact": artifact, "size": artifact.size_bytes}
        fp32 = rows["fp32"]["artifact"]
        for row in rows.values():
            row["latency"] = measure_scopes(row["artifact"], config.threads, config.warmup,
                                            config.runs, fp32, config.min_seconds,
                                            ("network",), config.blocks)["network"]
    table = Table(title=f"{config.name}: ONNX Runtime, {config.threads} thread, VNNI: {vnni()}; "
                        f"{len(setup.eval_data)} val / {len(test_data)} test images, 95 % "
                        f"intervals, Δ paired with fp32")
    for column in ("artifact", "val accuracy", "Δ val", "test accuracy", "Δ test", "size kB",
                   "network median ms", "speed-up over fp32 [95 % CI]"):
        table.add_column(column, justify="left" if column == "artifact" else "right")
    figures: dict = {"study": config.name, "vnni": vnni(), "threads": config.threads,
                     "blocks": config.blocks, "exported": args.exported,
                     "val_images": len(setup.eval_data), "test_images": len(test_data),
                     "rows": []}
    for label, row in rows.items():
        test = row["test"] is not None
        speedup = row["latency"].speedup()
        val_diff = paired_difference(row["val"], rows["fp32"]["val"])
        test_diff = paired_difference(row["test"], rows["fp32"]["test"]) if test else None
        table.add_row(label, str(rate(row["val"])), str(val_diff),
                      str(rate(row["test"])) if test else "-", str(test_diff or "-"),
                      f"{row['size'] / 1e3:.1f}", f"{row['latency'].median_ms:.2f}",
                      speedup.text())
        figures["rows"].append({
            "artifact": label, "val": rate(row["val"]).to_dict(),
            "val_diff": None if label == "fp32" else val_diff.to_dict(),
            "test": rate(row["test"]).to_dict() if test else None,
            "test_diff": None if label == "fp32" or not test else test_diff.to_dict(),
            "size_bytes": row["size"], "network_ms": row["latency"].median_ms,
            "speedup": speedup.to_dict()})
    Console(width=170).print(table)
    Console().print(write_record("int8_weight_bits", "int8 weights on 7 and 8 bits", figures,
                                 commit=commit))


if __name__ == "__main__":
    main()
