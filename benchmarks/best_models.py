"""The study's best models against the strongest baseline and single-technique baselines,
all measured side by side in one run.

    python benchmarks/best_models.py studies/ggcnn_overnight_torch_cpu.toml [--rounds 5]
        [--steps N] [--storage URL] [--data DIR]

Reference points, each built as an artifact on the study's runtime:

- plain eager fp32 (torch), a naive ONNX export, and the **strongest baseline**: the
  uncompressed model with every exact rewrite (heads fused, sub-pixel decoders,
  channels_last, on torch with or without the heads as ``TapSumHeads``, which ONNX exports
  always use) on whichever runtime and form runs it fastest here (all are built and timed);
- the uncompressed model fine-tuned with the study's recovery budget: with a distillation
  weight below 1, recovery trains on the ground truth too, which can lift an under-trained
  baseline or pull a converged one away; this row shows how much of a trial's score is that
  training rather than the compression;
- single techniques, with the study's recovery budget and no gate: int8 only (on the
  exact sub-pixel form, calibrated like the study), uniform 50 % L1 magnitude pruning with
  fine-tuning, depthwise-separable everywhere with fine-tuning, and the last decoder at low
  resolution (``lowres``, the heads there too) with fine-tuning;
- the study's feasible Pareto front, read from its storage (artifacts as the study built
  them);
- ``--exported DIR ...``: trials exported with ``ggopt export`` (e.g. finished with
  ``--finish STEPS``), timed and scored beside the rest. Give the single techniques the same
  budget with ``--steps STEPS``: beyond the study's steps they train, as a finishing run
  does, on the larger pool.

Accuracy is GG-CNN's IoU grasp match of the grasp each file returns (as the study scores
it), on the study's validation images, which the study selected its front on, and again on
the test images, which nothing here has seen: the honest number. Each comes with its 95 %
Wilson interval and its paired difference to the strongest baseline on the same images
(Tango's score interval, better/worse image counts).
``--data`` scores both on another copy of the dataset, such as one whose held-out sets were
grown with ``ggopt data sim --splits val,test`` after the study ran (same training scenes).
Latency is timed exactly as the study times a trial beside its baseline
(objectives.latency.measure_as_study: its threads, warm-up, runs, min_seconds and blocks,
both scopes of both files in every round; depth in -> grasp out, or the network alone, as
the study scores it), round-robin over every artifact for
``--rounds`` rounds: first the exact uncompressed forms, each in the same timing rounds as
the torch sub-pixel one, to find the strongest baseline (the smallest median per-round
ratio); then every artifact in the same rounds as the strongest baseline, so each
speed-up is paired, with its 95 % interval over all its blocks, widened by the drift
between timings that the study's controls measured (search.drift), as its review does. Then the
fastest and the smallest model whose paired validation interval rules
out a loss of more than 1 pp, and of more than 3 pp, against the strongest baseline.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
from pathlib import Path

from optuna.trial import TrialState
from rich.console import Console
from rich.table import Table

from grasp.artifact import Artifact, fuse_heads
from grasp.evaluation import score_grasps
from objectives import count_macs, device_fingerprint
from objectives.latency import LatencyResult, measure_as_study
from search.config import load_study_config
from search.drift import study_drift
from search.front import feasible_front
from search.recovery import recover
from search.stats import paired_difference, rate
from search.study import load_study, prepare
from search.study.continuation import finishing_pool
from spaces import get_knob
from spaces.depthwise import DepthwiseConfig
from spaces.precision import PrecisionConfig, build_artifact
from spaces.prune import PruneConfig
from spaces.upsample import rewrite_all
from timing.protocol import joined, machine_line, scope_of

sys.path.insert(0, str(Path(__file__).resolve().parent))  # records.py beside this script

from records import current_commit, write_record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="study file (TOML)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None,
                        help="recovery steps for the single techniques (default: the study's)")
    parser.add_argument("--storage", default=None)
    parser.add_argument("--exported", nargs="*", default=[], metavar="DIR",
                        help="folders written by `ggopt export` to compare too")
    parser.add_argument("--data", default=None,
                        help="dataset folder to score val and test accuracy on (default: the "
                             "study's)")
    args = parser.parse_args()
    commit = current_commit()  # the code this run began on
    console = Console(width=150)
    config = load_study_config(args.study, {"storage": args.storage, "data_root": args.data})
    exported = dict(_exported(Path(folder), config) for folder in args.exported)
    if len(exported) < len(args.exported):
        raise SystemExit("--exported: the same folder is named twice.")
    setup = prepare(config, Console(stderr=True, quiet=True))
    steps = config.recovery_steps if args.steps is None else args.steps
    test_data = setup.test_data
    base = setup.base

    if steps > config.recovery_steps:  # as `ggopt export --finish` trains
        setup.pool = finishing_pool(setup, steps)

    def tuned(model):
        model = copy.deepcopy(model)
        recover(model, setup.recovery_pool(), steps, setup.recipe())
        return model.eval()

    prune = get_knob("prune")
    pruned = prune.apply(base, PruneConfig(tuple((layer, 0.5) for layer in prune.layers(base)),
                                           criterion="l1"))
    depthwise = get_knob("depthwise")
    separable = depthwise.apply(base, DepthwiseConfig(tuple(depthwise.layers(base))))
    low = rewrite_all(base, "lowres")  # sub-pixel decoders, the last at low resolution
    rt = config.runtime
    exact = {runtime: f"sub-pixel (all exact rewrites), fp32, {runtime}"
             for runtime in ("torch", "onnxruntime")}
    # ONNX exports always compute the heads as TapSumHeads; torch keeps the plain conv,
    # which was faster for most models there, so the other torch form is a candidate too.
    exact["torch, tap-sum heads"] = "sub-pixel + tap-sum heads, fp32, torch"
    fine_tuned = f"uncompressed + fine-tune (sub-pixel), fp32, {rt}"
    # The baseline's own forms: the summary below looks past them, at compressed models.
    uncompressed = {"plain, fp32, torch eager", "naive export, fp32, onnxruntime",
                    *exact.values(), fine_tuned}
    # label -> (model, precision, runtime)
    references = {
        "plain, fp32, torch eager": (base, "fp32", "torch"),
        "naive export, fp32, onnxruntime": (base, "fp32", "onnxruntime"),
        exact["torch"]: (rewrite_all(base), "fp32", "torch"),
        exact["onnxruntime"]: (rewrite_all(base), "fp32", "onnxruntime"),
        exact["torch, tap-sum heads"]: (fuse_heads(rewrite_all(base), taps=True), "fp32",
                                        "torch"),
        fine_tuned: (rewrite_all(tuned(base)), "fp32", rt),
        f"int8 only (sub-pixel), {rt}": (rewrite_all(base), "int8", rt),
        f"prune 50 % L1 + fine-tune (sub-pixel), fp32, {rt}": (rewrite_all(tuned(pruned)), "fp32",
                                                               rt),
        f"depthwise everywhere + fine-tune, fp32, {rt}": (tuned(separable), "fp32", rt),
        f"last decoder at low resolution + fine-tune, fp32, {rt}": (tuned(low), "fp32", rt),
    }
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, (model, precision, runtime)) in enumerate(references.items()):
            artifact = build_artifact(model, PrecisionConfig(precision), Path(tmp) / f"{i}",
                                      setup.calibration, config.output_size, config.device,
                                      runtime=runtime)
            rows[label] = {"artifact": artifact, "macs": count_macs(model, config.output_size)}
        study = load_study(config)
        for t in feasible_front(study, config.objectives):
            path = Path(t.user_attrs.get("artifact", ""))
            if path.is_file():
                rows[f"study trial {t.number}"] = {
                    "artifact": Artifact(path, rt, t.user_attrs["precision"],
                                         config.output_size, config.device),
                    "macs": t.user_attrs.get("extra", {}).get("macs", float("nan"))}
        rows.update(exported)
        for row in rows.values():
            grasps = row["artifact"].grasp_predictor(config.threads)
            row["val"] = score_grasps(grasps, setup.eval_data, batch_size=8).standard
            row["test"] = (score_grasps(grasps, test_data, batch_size=8).standard
                           if len(test_data) else None)
            row["size"] = row["artifact"].size_bytes

        def timed(labels: list[str], reference: Artifact) -> dict[str, LatencyResult]:
            """``labels``' artifacts each beside ``reference`` as the study times a trial
            beside its baseline, round-robin over the labels, all rounds pooled."""
            scope = scope_of(config.end_to_end)
            out: dict[str, list[LatencyResult]] = {label: [] for label in labels}
            for _ in range(args.rounds):
                for label in labels:
                    out[label].append(measure_as_study(
                        rows[label]["artifact"], reference, config.end_to_end,
                        config.threads, config.warmup, config.runs,
                        config.min_seconds, config.blocks)[scope])
            return {label: joined(results) for label, results in out.items()}

        forms = timed(list(exact.values()), rows[exact["torch"]]["artifact"])
        best_label = min(forms, key=lambda label: forms[label].ratio)
        for label, result in timed(list(rows), rows[best_label]["artifact"]).items():
            rows[label]["latency"] = result
    best = rows[best_label]
    rows = {(f"strongest baseline: {k}" if k == best_label else k): v for k, v in rows.items()}
    best_label = f"strongest baseline: {best_label}"
    scope = "depth in -> grasp out" if config.end_to_end else "network alone"
    table = Table(title=f"{config.name}: {len(rows)} artifacts, each timed in the same rounds "
                        f"as the strongest baseline ({args.rounds} x {config.runs} rounds), "
                        f"{config.threads} thread(s), {scope}; speed-up: median of per-round "
                        f"ratios, 95 % interval; "
                        f"accuracy on {len(setup.eval_data)} val and {len(test_data)} test "
                        f"images, 95 % intervals, Δ paired with the strongest baseline")
    for column in ("model", "precision", "val accuracy", "Δ val", "test accuracy", "Δ test",
                   "median ms", "speed-up vs strongest", "size kB", "size ÷", "MMACs"):
        table.add_column(column, justify="left" if column == "model" else "right")
    summary = []
    drift = study_drift(study.get_trials(deepcopy=False))
    figures: dict = {"drift_sd": drift[0], "drift_pairs": drift[1],
                     "study": config.name, "scope": scope, "threads": config.threads,
                     "rounds": args.rounds, "steps": steps,
                     "val_images": len(setup.eval_data), "test_images": len(test_data),
                     "rows": []}
    for label, row in rows.items():
        val = paired_difference(row["val"], best["val"])
        test = (paired_difference(row["test"], best["test"]) if row["test"] is not None
                else None)
        speedup, shrink = row["latency"].speedup().with_drift(*drift), best["size"] / row["size"]
        speed = speedup.value
        table.add_row(label, row["artifact"].precision, str(rate(row["val"])), str(val),
                      str(rate(row["test"])) if test else "-", str(test) if test else "-",
                      f"{row['latency'].median_ms:.2f}", speedup.text(),
                      f"{row['size'] / 1e3:.1f}", f"{shrink:.2f}x", f"{row['macs'] / 1e6:.0f}")
        summary.append((label, val, speed, shrink, test))
        figures["rows"].append({
            "model": label, "precision": row["artifact"].precision,
            "uncompressed": label.removeprefix("strongest baseline: ") in uncompressed,
            "val": rate(row["val"]).to_dict(), "val_diff": val.to_dict(),
            "test": rate(row["test"]).to_dict() if test else None,
            "test_diff": test.to_dict() if test else None,
            "latency_ms": row["latency"].median_ms, "speedup": speedup.to_dict(),
            "size_bytes": row["size"], "size_reduction": shrink,
            "macs": None if math.isnan(row["macs"]) else row["macs"]})
    console.print(table)
    compressed = [s for s in summary
                  if s[0].removeprefix("strongest baseline: ") not in uncompressed]
    for limit in (1.0, 3.0):  # the paired interval's lower bound: a loss it rules out
        within = [s for s in compressed if 100 * s[1].low >= -limit]
        if not within:
            console.print(f"no compressed model's paired val interval rules out a loss over "
                          f"{limit:.0f} pp "
                          f"(at {len(setup.eval_data)} images)")
            continue
        fastest = max(within, key=lambda s: s[2])
        smallest = max(within, key=lambda s: s[3])
        console.print(f"loss over {limit:.0f} pp ruled out on val: fastest {fastest[0]} "
                      f"{fastest[2]:.2f}x (val {fastest[1]}; test {fastest[4]}); smallest "
                      f"{smallest[0]} {smallest[3]:.2f}x smaller (val {smallest[1]}; test "
                      f"{smallest[4]})")
    done = len(load_study(config).get_trials(states=(TrialState.COMPLETE,)))
    fp = device_fingerprint(None, config.threads, rt, config.device)
    console.print(f"study: {done} complete trials; recovery for single techniques: {steps} "
                  f"steps; machine: {machine_line(fp)}, {rt} "
                  f"{fp['runtime_version']}")
    figures |= {"complete_trials": done, "runtime": f"{rt} {fp['runtime_version']}"}
    console.print(write_record("best_models", "The front against the strongest baseline and "
                               "single techniques", figures, commit=commit))


def _exported(folder: Path, config) -> tuple[str, dict]:
    """``(label, row)`` for a folder written by ``ggopt export``; checked before any work."""
    import json

    saved = folder / "config.json"
    if not saved.is_file():
        raise SystemExit(f"--exported {folder}: no config.json (not a `ggopt export` folder).")
    info = json.loads(saved.read_text())
    files = [p for p in folder.glob("model.*") if p.suffix in (".onnx", ".pt2")]
    if info.get("study") != config.name or len(files) != 1:
        raise SystemExit(f"--exported {folder}: must hold one model.onnx or model.pt2 exported "
                         f"from study {config.name!r}, found study {info.get('study')!r} and "
                         f"{[p.name for p in files]}.")
    steps = info.get("finish_steps", 0)
    how = (f", finished ({steps} steps{', continued' if info.get('finish_continued') else ''})"
           if steps else ", exported")
    # The folder's name too: two exports of one trial (other steps, another ggopt) are two rows.
    label = f"trial {info['trial']}{how}: {folder.name}"
    return label, {"artifact": Artifact(files[0], config.runtime,
                                        info["params"].get("precision", "fp32"),
                                        config.output_size, config.device),
                   "macs": info.get("macs") or float("nan")}


if __name__ == "__main__":
    main()
