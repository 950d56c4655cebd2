"""Simulated grasp trials: throughput and calibration, measured side by side in one run.

    python benchmarks/sim_trials.py [--scenes 10] [--workers 2]

Prints trials per second for labelling (``ggopt data sim``'s work, 1 and N workers) and the
success rates of antipodal candidates and of random grasps on the same scenes, each with
its 95 % Wilson interval and count; writes records/sim_trials.json. Run it on an idle
machine: the throughput is a timing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from grasp.sim.candidates import antipodal_candidates, random_candidates
from grasp.sim.evaluate import wilson_interval
from grasp.sim.generate import generate_dataset
from grasp.sim.gripper import execute_grasp, pose_from_grasp
from grasp.sim.scene import connect, generate_scene, load_scene, render
from search.stats import rate

sys.path.insert(0, str(Path(__file__).resolve().parent))  # records.py beside this script

from records import current_commit, write_record


def calibration(scenes: int, per_object: int = 4, random_per_scene: int = 8) -> dict:
    client = connect()
    results = {"antipodal": [], "random": []}
    for seed in range(scenes):
        scene = generate_scene(client, 90_000 + seed, "train")
        load_scene(client, scene)
        depth, mask = render(client)
        rng = np.random.default_rng(seed)
        for body in range(1, len(scene.objects) + 1):
            for g in antipodal_candidates(mask, body, rng, per_object):
                results["antipodal"].append(execute_grasp(client, scene, pose_from_grasp(g, depth)))
        for g in random_candidates(mask, rng, random_per_scene):
            results["random"].append(execute_grasp(client, scene, pose_from_grasp(g, depth)))
    return results


def throughput(scenes: int, workers: int) -> tuple[float, float]:
    """Trials a second and seconds a labelled scene, labelling ``scenes`` scenes of every
    split with the default candidates, as the overnight recipe does."""
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        summary = generate_dataset(out, scenes, workers=workers, seed=5, progress=False,
                                   console=Console(quiet=True))
        elapsed = time.perf_counter() - started
        return summary["trials"] / elapsed, elapsed / max(summary["scenes"], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    commit = current_commit()
    console = Console()
    table = Table(title="labelling throughput (scene generation + render + trials)")
    table.add_column("workers")
    table.add_column("trials/s", justify="right")
    measured = {w: throughput(args.scenes, w) for w in sorted({1, args.workers})}
    rates = {w: per_second for w, (per_second, _) in measured.items()}
    for w, per_second in rates.items():
        table.add_row(str(w), f"{per_second:.1f}")
    per_scene = measured[args.workers][1]
    console.print(f"{per_scene:.2f} s a scene with {args.workers} workers")
    console.print(table)
    results = calibration(args.scenes)
    table = Table(title="grasp success on the same scenes")
    for col in ("grasps", "n", "success", "95% interval"):
        table.add_column(col)
    for name, outcomes in results.items():
        low, high = wilson_interval(sum(outcomes), len(outcomes))
        table.add_row(name, str(len(outcomes)), f"{np.mean(outcomes):.0%}",
                      f"[{low:.0%}, {high:.0%}]")
    console.print(table)
    figures = {"scenes": args.scenes, "workers": args.workers,
               "trials_per_s": {str(w): r for w, r in rates.items()},
               "seconds_per_scene": per_scene,
               "success": {name: rate(np.asarray(outcomes, bool)).to_dict()
                           for name, outcomes in results.items()}}
    console.print(write_record("sim_trials", "Simulated grasp trials: labelling throughput "
                               "and grasp success", figures, commit=commit))


if __name__ == "__main__":
    main()
