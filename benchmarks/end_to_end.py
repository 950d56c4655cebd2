"""Depth in, grasp out: network, post-processing and end-to-end latency, side by side in
one run, and how closely the in-graph grasp synthesis reproduces GG-CNN's post-processing.

    python benchmarks/end_to_end.py [--data data/sim] [--images 300] [--study STUDY.toml]

Rows (ONNX Runtime, batch 1, 1 thread, the study protocol's timing: warm-up, then at least
100 runs and 1 s):

- the uncompressed GG-CNN (its fastest exact form) with today's numpy post-processing
  (``grasp.rectangles.post_process`` + ``best_grasp``: three float64 Gaussians over the
  full maps, arctan2 over the whole map, skimage's peak_local_max);
- the same network with ``scored_grasps`` (numpy: only the quality map blurred in full);
- the **strongest baseline**: the same network with its grasp synthesis in the file
  (grasp.synthesis), the runtime doing the whole job;
- int8 only (the same network quantized, grasp synthesis in the file);
- with ``--study``: that study's recommended model, the knee of its feasible front (its
  own artifact).

Every file row is timed exactly as a study times a trial beside its baseline
(objectives.latency.measure_as_study): each round times, once each and in a rotating
order, the file's network alone (the file without its grasp synthesis) and its depth in ->
grasp out, and the strongest baseline's two; so its speed-up measures what the study's
does. Its post-processing alone (the synthesis graph the file carries, run by ONNX Runtime
on the maps of a real validation image) is timed in rounds of its own. A numpy row's
rounds hold its network, its numpy code alone, the two one after the other, and the
strongest baseline's network and end to end. End to end minus network is the median of
the per-round differences (what the robot pays for the post-processing), and the speed-up
the ratio strongest baseline / row end to end, each with its 95 % interval. A file row is
timed in the study's blocks (fresh sessions each); ``--rounds`` repeats this round-robin
over the rows, every figure pools all of a row's rounds, and a speed-up's interval is over
all its blocks (a numpy row's block: one repetition), widened with ``--study`` by the drift
between timings that the study's controls measured (search.drift), as its review does.

Agreement: on ``--images`` validation images, the grasp each file returns against the
float64 numpy reference on the same file's maps: identical peak pixel and peak flag, and
the IoU grasp-match accuracy both ways, paired.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from grasp.artifact import GRASP_OUTPUT, INPUT_NAME, OUTPUT_NAME, Artifact
from grasp.checkpoints import load_checkpoint
from grasp.data import load_dataset, split
from grasp.evaluation import HeldOut, score_grasps, score_images
from grasp.rectangles import best_grasp, post_process, scored_grasps
from grasp.synthesis import synthesis_for
from objectives.latency import device_fingerprint, measure_as_study
from search.stats import paired_difference, rate
from spaces.precision import PrecisionConfig, build_artifact
from spaces.upsample import rewrite_all
from timing.protocol import machine_line, onnx_session, summarise, time_rounds

sys.path.insert(0, str(Path(__file__).resolve().parent))  # records.py beside this script

from records import current_commit, write_record

TIMING = {"warmup": 20, "runs": 100, "min_seconds": 1.0}
BLOCKS = 6  # a study's timing blocks ([runtime] blocks' default)


def _synthesis_alone(artifact: Artifact, image: torch.Tensor) -> Callable[[], None]:
    """The grasp synthesis the file carries, alone (the same graph, built at the file's size
    and opset), on the maps the file computes for ``image``."""
    import onnx

    session = onnx_session(synthesis_for(onnx.load(str(artifact.path)), artifact.input_size))
    feed = {"s.maps": artifact.predictor(1)(image[None]).numpy(), "s.depth": image.numpy()[None]}

    def run() -> None:
        session.run([GRASP_OUTPUT], feed)

    return run


def _numpy_alone(artifact: Artifact, image: torch.Tensor,
                 post: Callable[[np.ndarray], object]) -> Callable[[], None]:
    maps = artifact.predictor(1)(image[None]).numpy()[0]
    return lambda: post(maps)


def _with_numpy(artifact: Artifact, post: Callable[[np.ndarray], object]) -> Callable[[], None]:
    """The network (without its grasp synthesis) followed by numpy post-processing."""
    session = artifact.session(1, network_only=True)
    image = np.random.default_rng(0).standard_normal(
        (1, 1, artifact.input_size, artifact.input_size)).astype(np.float32) * 0.01

    def run() -> None:
        post(session.run([OUTPUT_NAME], {INPUT_NAME: image})[0][0])

    return run


def _reference(maps: np.ndarray) -> object:
    quality, angle, opening = post_process(maps[0], maps[1], maps[2], maps[3])
    return best_grasp(quality, angle, opening)


def cpu_line() -> str:
    return machine_line(device_fingerprint(None, 1))


def agreement(artifact: Artifact, held: HeldOut) -> dict[str, object]:
    """The file's own grasps against the float64 reference on its maps, image by image."""
    maps = artifact.predictor(1)
    grasps = artifact.grasp_predictor(1)
    same = 0
    for start in range(0, len(held), 8):
        x = held.inputs[start:start + 8]
        for m, g in zip(maps(x).numpy(), grasps(x), strict=True):
            top, executed = scored_grasps(m)
            chosen = top or executed
            same += ((int(g[0]), int(g[1]), bool(g[5]))
                     == (int(chosen.center[0]), int(chosen.center[1]), top is not None))
    in_graph = score_grasps(grasps, held).standard
    reference = score_images(maps, held).standard
    return {"same": same, "graph": rate(in_graph), "reference": rate(reference),
            "paired": paired_difference(in_graph, reference)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/sim")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--calibration", default="data/sim",
                        help="a dataset whose training images calibrate int8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--study", default=None, help="a study file: time its recommended "
                                                      "model (the knee of its front) too")
    args = parser.parse_args()
    commit = current_commit()  # the code this run began on
    console = Console(width=130)
    dataset = load_dataset("jacquard", args.data, output_size=300)
    parts = split(dataset, "preset", 0.1, 0.1, 0)
    held = HeldOut.load(dataset.subset(parts["val"][:args.images]))
    train = load_dataset("jacquard", args.calibration, output_size=300)
    calibration = [train.item(i)[0] for i in split(train, "preset", 0.1, 0.1, 0)["train"][:32]]
    model = load_checkpoint("grasp/checkpoints/ggcnn.pt", "ggcnn").model.eval()
    rows: list[tuple[str, Callable[[], None], Callable[[], None], Callable[[], None]]] = []
    image = held.inputs[0]
    with tempfile.TemporaryDirectory() as tmp:
        variants = {name: build_artifact(m, PrecisionConfig("fp32"), Path(tmp) / name)
                    for name, m in (("plain", model), ("subpixel", rewrite_all(model)))}
        network = {name: summarise(time_rounds([a.timed_call(1)], **TIMING)[0], 1).median_ms
                   for name, a in variants.items()}
        best = min(network, key=network.get)
        fp32 = variants[best]
        int8 = build_artifact(rewrite_all(model), PrecisionConfig("int8"), Path(tmp) / "int8",
                              calibration)
        artifacts = {"strongest baseline (fp32, synthesis in the file)": fp32,
                     "int8 only (synthesis in the file)": int8}
        drift = (0.0, 0)  # without a study, one run's own intervals
        if args.study:
            number, knee, drift = _knee_artifact(args.study)
            artifacts[f"the study's recommended model (trial {number}, the knee)"] = knee
        for name, post in (("uncompressed fp32 + today's numpy post-processing", _reference),
                           ("uncompressed fp32 + scored_grasps (numpy, quality map only)",
                            scored_grasps)):
            rows.append((name, fp32.timed_call(1), _numpy_alone(fp32, image, post),
                         _with_numpy(fp32, post)))
        synthesis = {name: _synthesis_alone(a, image) for name, a in artifacts.items()}
        baseline_calls = (fp32.timed_call(1), fp32.timed_call(1, end_to_end=True))
        names = [r[0] for r in rows] + list(artifacts)
        timed: dict[str, list[list[float]]] = {name: [[] for _ in range(5)] for name in names}
        blocks: dict[str, list[int]] = {name: [] for name in names}  # each e2e round's block
        for repetition in range(args.rounds):
            for name, *calls in rows:
                for pooled, times in zip(timed[name], time_rounds([*calls, *baseline_calls],
                                                                  **TIMING), strict=True):
                    pooled += times
                blocks[name] += [repetition] * (len(timed[name][2]) - len(blocks[name]))
            for name, a in artifacts.items():  # as the study times a trial beside its baseline
                both = measure_as_study(a, fp32, True, 1, **TIMING, blocks=BLOCKS)
                net, e2e = both["network"], both["end_to_end"]
                post = time_rounds([synthesis[name]], **TIMING)[0]
                for pooled, times in zip(timed[name], (net.times, post, e2e.times,
                                                       net.reference_times,
                                                       e2e.reference_times), strict=True):
                    pooled += times
                blocks[name] += [repetition * BLOCKS + b
                                 for b in e2e.blocks or (0,) * len(e2e.times)]
        table = Table(title=f"Depth in -> grasp out, GG-CNN 300 px, ONNX Runtime, 1 thread "
                            f"[{cpu_line()}]")
        for column in ("row", "network ms", "post-processing ms", "end-to-end ms",
                       "end to end minus network, paired [95 % CI]",
                       "speed-up over the strongest baseline, e2e [95 % CI]"):
            table.add_column(column, justify="left" if column == "row" else "right")
        figures: dict = {"drift_sd": drift[0], "drift_pairs": drift[1],
                         "rounds": args.rounds, "runs": TIMING["runs"], "fastest_form": best,
                         "images": len(held), "rows": []}
        for name, (net, post, e2e, _, base_e2e) in timed.items():
            extra = summarise(e2e, 1).extra_over(summarise(net, 1))
            speedup = summarise(e2e, 1, base_e2e, blocks[name]).speedup().with_drift(*drift)
            table.add_row(name, f"{np.median(net):.2f}", f"{np.median(post):.2f}",
                          f"{np.median(e2e):.2f}", extra.text(), speedup.text())
            figures["rows"].append({"row": name, "network_ms": float(np.median(net)),
                                    "post_ms": float(np.median(post)),
                                    "e2e_ms": float(np.median(e2e)), "extra": extra.to_dict(),
                                    "speedup": speedup.to_dict()})
        console.print(table)
        console.print(f"(the uncompressed network's fastest exact form here: {best}; every "
                      f"column of a row timed in the same rounds as the strongest baseline; "
                      f"{args.rounds} x at least {TIMING['runs']} rounds per row)")
        agree = Table(title=f"In-graph grasp against the float64 numpy reference on the same "
                            f"maps, {len(held)} validation images")
        for column in ("file", "same peak pixel and flag", "accuracy, in the file",
                       "accuracy, numpy reference", "paired difference"):
            agree.add_column(column, justify="left" if column == "file" else "right")
        for name, artifact in artifacts.items():
            a = agreement(artifact, held)
            agree.add_row(name, f"{a['same']}/{len(held)} ({a['same'] / len(held):.1%})",
                          str(a["graph"]), str(a["reference"]), str(a["paired"]))
            figures.setdefault("agreement", []).append(
                {"file": name, "same": a["same"], "graph": a["graph"].to_dict(),
                 "reference": a["reference"].to_dict(), "paired": a["paired"].to_dict()})
        console.print(agree)
    console.print(write_record("end_to_end", "End to end: network, grasp synthesis, depth in "
                               "-> grasp out", figures, commit=commit))


def _knee_artifact(study_file: str) -> tuple[int, Artifact, tuple[float, int]]:
    """The study's recommended model (the knee of its feasible front), its artifact and the
    drift between timings the study's controls measured (search.drift)."""
    from search.config import load_study_config
    from search.drift import study_drift
    from search.front import study_picks
    from search.study import load_study

    config = load_study_config(study_file)
    study = load_study(config)
    picks = study_picks(study, config.objectives, 1)
    if not picks:
        raise SystemExit(f"{study_file}: the study has no feasible front yet.")
    trial = picks[0]
    return (trial.number, Artifact(Path(trial.user_attrs["artifact"]), config.runtime,
                                   trial.user_attrs["precision"], config.output_size),
            study_drift(study.get_trials(deepcopy=False)))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
