"""Search efficiency: hypervolume of the feasible front after K trials, per sampler and seed.

    python benchmarks/search_efficiency.py studies/quickstart.toml \\
        [--samplers tpe random nsga2] [--seeds 0 1 2] [--trials 100] [--steps 0] [--jobs 2]

Each sampler x seed runs the study (a scratch storage, no tracking) with a cheap recovery
(``--steps``, default 0), and the hypervolume of its feasible front (accuracy as is, size
and latency relative to the study's baseline, reference point (0, 2x, 2x)) is read after
25, 50 and 100 trials. Prints mean and spread per sampler, the ratio of the default sampler
(TPE) to random search, and writes a plot. Target (issue 7): TPE >= 1.2x random at 50.

``--jobs N`` runs N studies at once, one torch thread each. Their latencies then share the
machine; a study that times latency paired with its baseline (``[runtime] paired``, the
default) scores the ratio, which such sharing moves far less than the absolute time.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from rich.console import Console
from rich.table import Table

from grasp.timing import machine_line
from objectives import device_fingerprint
from search.config import load_study_config
from search.pareto import hypervolume_history
from search.study import run_study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="study file (TOML)")
    parser.add_argument("--samplers", nargs="+", default=["tpe", "random", "nsga2"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--steps", type=int, default=0, help="recovery steps per trial")
    parser.add_argument("--runs", type=int, default=None, help="latency runs (default: file)")
    parser.add_argument("--data", default=None, help="dataset folder (overrides the file)")
    parser.add_argument("--jobs", type=int, default=1, help="studies run at once")
    parser.add_argument("--plot", default="benchmarks/search_efficiency.png")
    args = parser.parse_args()
    marks = [k for k in (25, 50, 100) if k <= args.trials] or [args.trials]
    console = Console(width=120)
    histories: dict[str, list[list[float]]] = {s: [] for s in args.samplers}
    started = time.perf_counter()
    jobs = [(args, sampler, seed) for seed in args.seeds for sampler in args.samplers]
    with ProcessPoolExecutor(max_workers=args.jobs, initializer=_one_thread,
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_history, *job): job for job in jobs}
        for future in as_completed(futures):
            _, sampler, seed = futures[future]
            history = future.result()
            histories[sampler].append(history)
            console.print(f"{sampler} seed {seed}: hypervolume "
                          + "  ".join(f"@{k} {_at(history, k):.4f}" for k in marks)
                          + f"   [{(time.perf_counter() - started) / 60:.0f} min]")

    table = Table(title=f"hypervolume of the feasible front (mean ± sd over seeds "
                        f"{args.seeds}; recovery {args.steps} steps)")
    table.add_column("sampler")
    for k in marks:
        table.add_column(f"after {k}", justify="right")
    means: dict[str, dict[int, float]] = {}
    for sampler, runs in histories.items():
        means[sampler] = {k: statistics.fmean(_at(h, k) for h in runs) for k in marks}
        cells = []
        for k in marks:
            values = [_at(h, k) for h in runs]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{means[sampler][k]:.4f} ± {sd:.4f}")
        table.add_row(sampler, *cells)
    console.print(table)
    if "tpe" in means and "random" in means:
        console.print("TPE / random: " + "  ".join(
            f"@{k} {means['tpe'][k] / means['random'][k]:.2f}x" if means["random"][k] else
            f"@{k} n/a" for k in marks) + "   (target >= 1.2x at 50)")
    fp = device_fingerprint(None, 1)
    console.print(f"[{machine_line(fp)}; {len(args.seeds) * len(args.samplers)} "
                  f"studies of {args.trials} trials in "
                  f"{(time.perf_counter() - started) / 60:.0f} min]")
    _plot(histories, Path(args.plot))
    console.print(f"plot: {args.plot}")


def _one_thread() -> None:
    """Studies that run side by side must not fight over the cores for recovery."""
    import torch

    torch.set_num_threads(1)


def _history(args: argparse.Namespace, sampler: str, seed: int) -> list[float]:
    """One study in a scratch storage, without tracking: its hypervolume after each trial."""
    with tempfile.TemporaryDirectory() as tmp:
        config = load_study_config(args.study, {
            "name": f"efficiency-{sampler}-{seed}", "sampler": sampler, "seed": seed,
            "n_trials": args.trials, "recovery_steps": args.steps, "gate_steps": 0,
            "runs": args.runs, "data_root": args.data, "timeout": None,
            "storage": f"sqlite:///{tmp}/optuna.db", "artifacts_dir": f"{tmp}/art"})
        study = run_study(config, Console(stderr=True, quiet=True), track=False)
        return hypervolume_history(study, config.objectives)


def _at(history: list[float], k: int) -> float:
    return history[min(k, len(history)) - 1] if history else 0.0


def _plot(histories: dict[str, list[list[float]]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for sampler, runs in histories.items():
        n = min(len(h) for h in runs)
        mean = [statistics.fmean(h[i] for h in runs) for i in range(n)]
        ax.plot(range(1, n + 1), mean, label=f"{sampler} (mean of {len(runs)})")
        for h in runs:
            ax.plot(range(1, len(h) + 1), h, alpha=0.2, color=ax.lines[-1].get_color())
    ax.set_xlabel("trials")
    ax.set_ylabel("hypervolume (feasible front)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
