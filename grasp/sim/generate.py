"""``ggopt data sim``: a grasp dataset labelled by simulated grasp trials, in Jacquard format.

Scene ``i`` goes to split ``train`` / ``val`` / ``test`` by ``i % 10`` (0–7 / 8 / 9) and only
holds objects of that split. Each scene is written to a temporary folder and renamed when
complete, so an interrupted run resumes where it stopped and never leaves half a scene.
``splits`` keeps only some splits' scenes: growing the held-out sets (``("val", "test")``)
then costs a fifth of the scenes, and the training scenes stay as they were.
A candidate counts as a good grasp only if it and its small perturbations (±2 px, ±5°)
all succeed; failed candidates are kept too, in ``*_grasps_failed.txt``.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from grasp.data.jacquard import COLOUR_SUFFIX, DEPTH_SUFFIX, GRASPS_SUFFIX
from grasp.rectangles import Grasp
from grasp.sim.candidates import antipodal_candidates
from grasp.sim.gripper import execute_grasp, pose_from_grasp
from grasp.sim.scene import connect, generate_scene, load_scene, render_view

__all__ = ["SPLITS", "SceneLabels", "generate_dataset", "label_scene", "scene_split", "summarise"]

PERTURBATIONS = ((2.0, math.radians(5)), (-2.0, -math.radians(5)))


SPLITS = ("train", "val", "test")


def scene_split(index: int) -> str:
    rest = index % 10
    return "train" if rest < 8 else "val" if rest == 8 else "test"


#: Scenes of one dataset seed are ``seed * SEED_STRIDE + index``: seeds never share a scene
#: while a dataset holds fewer scenes than this.
SEED_STRIDE = 1_000_003
#: The seed of the held-out scenes that verification grasps in (grasp.sim.evaluate): no
#: dataset may be generated from it, or a model could be trained on the scenes that report.
EVAL_SEED = 7_000


def scene_seed(seed: int, index: int) -> int:
    return seed * SEED_STRIDE + index


@dataclass
class SceneLabels:
    """One labelled scene and what it cost."""

    index: int
    depth: np.ndarray
    mask: np.ndarray
    colour: np.ndarray
    good: list[Grasp]
    failed: list[Grasp]
    candidates: int
    successes: int
    trials: int
    scene: dict


def _perturbed(g: Grasp, shift: float, turn: float) -> Grasp:
    """Shifts along the closing axis and turns: the errors a real robot makes."""
    dr, dc = -math.sin(g.angle) * shift, math.cos(g.angle) * shift
    return Grasp((g.center[0] + dr, g.center[1] + dc), g.angle + turn, g.length, g.width)


def label_scene(client: int, seed: int, index: int, per_object: int = 8) -> SceneLabels:
    """Builds scene ``index``, renders it and labels antipodal candidates by trials."""
    split = scene_split(index)
    scene = generate_scene(client, scene_seed(seed, index), split)
    load_scene(client, scene)
    depth, mask, colour = render_view(client)
    rng = np.random.default_rng(scene_seed(seed, index) + 1)
    good, failed = [], []
    trials = successes = 0
    for body in range(1, len(scene.objects) + 1):
        for grasp in antipodal_candidates(mask, body, rng, per_object):
            trials += 1
            ok = execute_grasp(client, scene, pose_from_grasp(grasp, depth))
            successes += ok
            for shift, turn in PERTURBATIONS if ok else ():
                trials += 1
                if not execute_grasp(client, scene,
                                     pose_from_grasp(_perturbed(grasp, shift, turn), depth)):
                    ok = False
                    break
            (good if ok else failed).append(grasp)
    return SceneLabels(index, depth, mask, colour, good, failed, len(good) + len(failed),
                       successes, trials, scene.to_dict())


def _jacquard_lines(grasps: list[Grasp]) -> str:
    return "".join(f"{g.center[1]:.2f};{g.center[0]:.2f};{-math.degrees(g.angle):.2f};"
                   f"{g.length:.2f};{g.width:.2f}\n" for g in grasps)


def check_writable(out: Path) -> None:
    """Makes ``out`` and writes a probe file there, so that a read-only, non-folder or full
    destination is named before any scene is simulated."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-check-") as probe:
            probe.write(b"\0" * 65536)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:
        raise ValueError(f"--out {out}: cannot write there ({error.strerror or error}).") from None


def scene_dir(out: Path, index: int) -> Path:
    return out / scene_split(index) / f"scene{index:06d}"


def write_scene(out: Path, labels: SceneLabels) -> Path:
    """Writes a scene atomically: a temporary folder renamed once every file is there; a
    write that fails (a full disk) names the scene's folder and leaves no part of it."""
    final = scene_dir(out, labels.index)
    try:
        return _write_scene(final, labels)
    except OSError as error:
        shutil.rmtree(final.with_name(final.name + ".tmp"), ignore_errors=True)
        raise OSError(error.errno, error.strerror or str(error), str(final)) from None


def _write_scene(final: Path, labels: SceneLabels) -> Path:
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    stem = tmp / f"0_{final.name}"
    tifffile.imwrite(f"{stem}{DEPTH_SUFFIX}", labels.depth)
    tifffile.imwrite(f"{stem}_mask.tiff", labels.mask.astype(np.int16))
    Image.fromarray(labels.colour).save(f"{stem}{COLOUR_SUFFIX}")
    if labels.good:  # Jacquard files always hold at least one grasp
        Path(f"{stem}{GRASPS_SUFFIX}").write_text(_jacquard_lines(labels.good))
    Path(f"{stem}_grasps_failed.txt").write_text(_jacquard_lines(labels.failed))
    stats = {"index": labels.index, "candidates": labels.candidates,
             "successes": labels.successes, "good": len(labels.good), "trials": labels.trials,
             "scene": labels.scene}
    (tmp / "scene.json").write_text(json.dumps(stats))
    tmp.rename(final)
    return final


_client: int | None = None


def _worker(job: tuple[int, int, int, str]) -> dict:
    global _client
    seed, index, per_object, out = job
    if _client is None:
        _client = connect()
    labels = label_scene(_client, seed, index, per_object)
    write_scene(Path(out), labels)
    return {"index": index, "trials": labels.trials, "good": len(labels.good)}


def summarise(out: Path) -> dict[str, float]:
    """Totals over every finished scene under ``out``."""
    stats = [json.loads(p.read_text()) for p in sorted(out.glob("*/scene*/scene.json"))]
    candidates = sum(s["candidates"] for s in stats)
    return {
        "scenes": len(stats),
        "grasps": sum(s["good"] for s in stats),
        "candidates": candidates,
        "trials": sum(s["trials"] for s in stats),
        "candidate_success_rate": sum(s["successes"] for s in stats) / max(candidates, 1),
        "good_rate": sum(s["good"] for s in stats) / max(candidates, 1),
    }


def _pending(out: Path, indices: list[int]) -> list[int]:
    return [i for i in indices if not (scene_dir(out, i) / "scene.json").is_file()]


def _results(jobs: list[tuple[int, int, int, str]], workers: int) -> Iterator[dict]:
    if workers <= 1:
        yield from map(_worker, jobs)
        return
    with mp.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap_unordered(_worker, jobs)


def generate_dataset(out: str | Path, scenes: int, workers: int = 1, seed: int = 0,
                     per_object: int = 8, console: Console | None = None,
                     progress: bool = True,
                     splits: tuple[str, ...] = SPLITS) -> dict[str, float]:
    """Generates (or resumes) scenes ``0 .. scenes - 1`` under ``out``, those of ``splits``
    only; returns the summary of every scene there."""
    if scenes < 1:
        raise ValueError(f"`scenes >= 1` must hold, but got {scenes}.")
    if workers < 1:
        raise ValueError(f"`workers >= 1` must hold, but got {workers}.")
    if per_object < 1:
        raise ValueError(f"`per_object >= 1` must hold, but got {per_object}.")
    if seed == EVAL_SEED:
        raise ValueError(f"--seed {seed}: that seed makes the held-out scenes `ggopt verify` "
                         f"grasps in; a dataset from it would train on what reports. Use "
                         f"another seed.")
    if scenes >= SEED_STRIDE:
        raise ValueError(f"`scenes < {SEED_STRIDE}` must hold (scenes of the next seed would "
                         f"repeat), but got {scenes}.")
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown or not splits:
        raise ValueError(f"splits must be a non-empty subset of {SPLITS}, but got "
                         f"{tuple(splits)}.")
    console = console or Console(stderr=True)
    out = Path(out)
    check_writable(out)
    wanted = [i for i in range(scenes) if scene_split(i) in splits]
    pending = _pending(out, wanted)
    if len(pending) < len(wanted):
        console.print(f"resuming: {len(wanted) - len(pending)} of {len(wanted)} scenes "
                      f"already in {out}")
    jobs = [(seed, i, per_object, str(out)) for i in pending]
    started, trials = time.perf_counter(), 0
    columns = (TextColumn("[bold]scenes"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]:.1f} trials/s"), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not progress) as bar:
        task = bar.add_task("sim", total=len(jobs), rate=0.0)
        for result in _results(jobs, workers):
            trials += result["trials"]
            bar.update(task, advance=1, rate=trials / (time.perf_counter() - started))
    summary = summarise(out)
    console.print(
        f"{summary['scenes']} scenes, {summary['grasps']} good grasps from "
        f"{summary['candidates']} candidates ({summary['candidate_success_rate']:.0%} of "
        f"candidates succeeded, {summary['good_rate']:.0%} robust), {summary['trials']} trials"
    )
    return summary
