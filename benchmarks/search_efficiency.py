"""Search efficiency: hypervolume of the feasible front after K trials, per sampler and seed.

    python benchmarks/search_efficiency.py STUDY.toml [--samplers tpe gp nsga2 random]
        [--seeds 0 1 2 3 4] [--trials 100] [--steps 150] [--gate-steps 50]
        [--eval-images N] [--jobs 2] [--out DIR] [--report] [--sensitivity SCAN]
        [--objectives accuracy size]

Each sampler x seed is one study of the file (the sampler and seed replaced, no tracking)
in its own SQLite storage under ``--out`` (default
``benchmarks/out/search_efficiency/<study name>``), so the benchmark resumes where it was
stopped: run it again and each study goes on from its finished trials (Optuna fails and
retries a trial cut off mid-way). ``--report`` only reads the storages.

The recovery is the study file's recipe (learning rate, schedule, crops, distillation)
with fewer steps when ``--steps`` / ``--gate-steps`` say so: the overnight recipe's 600
steps cost about a minute a trial, and 20 studies of 100 trials would take 33 hours on two
cores. Say which steps a table was made with.

Hypervolume: the feasible front's, after 25, 50 and 100 trials, with accuracy as is and size
and latency relative to each study's baseline, against the fixed reference point
(accuracy 0, 2x size, 2x latency) (search.front.hypervolume_history). Per sampler and
budget: median and interquartile range over seeds, and a one-sided Mann-Whitney U test
(scipy) that the sampler's hypervolume is greater than random search's at the same budget;
and for the study default (TPE), the test that its 50-trial hypervolume is greater than
random's 100-trial one (p < 0.05: the default needs half the trials). Writes a plot and
``records/search_efficiency_<study>.json``.

``--sensitivity SCAN`` (a ``ggopt sensitivity`` scan's records of the study's model): each
sampler runs twice per seed, as it is and with its choices narrowed by the scan (``[search]
sensitivity``, at the file's ``sensitivity_max_loss``), and a second table tests whether the
narrowed study's hypervolume is greater (one-sided Mann-Whitney U).

``--objectives accuracy size`` computes the tables' hypervolume over those objectives only:
studies run beside different loads time latency differently, and a comparison over
accuracy and size (the bytes of the file) is one that load cannot move.

``--jobs N`` runs N studies at once, one torch thread each. Their latencies then share the
machine; a study that times latency paired with its baseline (``[runtime] paired = true``)
scores the ratio, which such sharing moves far less than the absolute time.
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import optuna
from rich.console import Console
from rich.table import Table
from scipy.stats import mannwhitneyu

from objectives import device_fingerprint
from search.config import SAMPLERS, load_study_config
from search.front import hypervolume_history
from search.study import run_study
from timing.protocol import machine_line

sys.path.insert(0, str(Path(__file__).parent))
from records import current_commit, table_figures, write_record

MARKS = (25, 50, 100)
DEFAULT = "tpe"
NARROWED = "-narrowed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="study file (TOML)")
    parser.add_argument("--samplers", nargs="+", default=["tpe", "gp", "nsga2", "random"],
                        choices=SAMPLERS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--steps", type=int, default=None,
                        help="recovery steps per trial (default: the file's)")
    parser.add_argument("--gate-steps", type=int, default=None,
                        help="steps before the gate (default: the file's)")
    parser.add_argument("--eval-images", type=int, default=None,
                        help="validation images scored (default: the file's)")
    parser.add_argument("--runs", type=int, default=None, help="latency runs (default: file)")
    parser.add_argument("--data", default=None, help="dataset folder (overrides the file)")
    parser.add_argument("--jobs", type=int, default=1, help="studies run at once")
    parser.add_argument("--out", default=None, help="folder of the studies' storages")
    parser.add_argument("--report", action="store_true", help="read the storages, run nothing")
    parser.add_argument("--plot", default="benchmarks/search_efficiency.png")
    parser.add_argument("--objectives", nargs="+", default=None,
                        choices=("accuracy", "size", "latency"),
                        help="the objectives the tables' hypervolume spans (default: each "
                             "study's own); e.g. accuracy size, which machine load cannot move")
    parser.add_argument("--sensitivity", default=None,
                        help="a sensitivity scan's records: also run each sampler narrowed")
    args = parser.parse_args()
    commit = current_commit()
    if args.trials < 1 or args.jobs < 1:
        parser.error("--trials and --jobs must be >= 1")
    check = {**_overrides(args, "check", 0, Path(".")), "name": None}  # the file's name
    base = load_study_config(args.study, check).name
    out = Path(args.out or f"benchmarks/out/search_efficiency/{base}")
    out.mkdir(parents=True, exist_ok=True)
    console = Console(width=120)
    started = time.perf_counter()
    if not args.report:
        jobs = [(args, arm, seed, out) for seed in args.seeds for arm in _arms(args)]
        with ProcessPoolExecutor(max_workers=args.jobs, initializer=_one_thread,
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_run, *job): job for job in jobs}
            for future in as_completed(futures):
                _, sampler, seed, _ = futures[future]
                history = future.result()
                console.print(f"{sampler} seed {seed}: {len(history)} trials, hypervolume "
                              + "  ".join(f"@{k} {_at(history, k):.4f}"
                                          for k in (*MARKS, len(history)) if k <= len(history))
                              + f"   [{(time.perf_counter() - started) / 60:.0f} min]")
    histories = {s: {seed: h for seed in args.seeds
                     if (h := _read(out, s, seed, args.objectives))}
                 for s in _arms(args)}
    tables = [_report(console, {s: histories[s] for s in args.samplers}, args)]
    if args.sensitivity:
        tables.append(_report_narrowing(console, histories, args))
    _plot(histories, Path(args.plot), _over(args))
    console.print(f"[{machine_line(device_fingerprint(None, 1))}; storages in {out}; "
                  f"{(time.perf_counter() - started) / 60:.0f} min]\nplot: {args.plot}")
    console.print(write_record("search_efficiency", f"Search efficiency: study `{base}`",
                               table_figures(tables), commit=commit,
                               name="search_efficiency_" + re.sub(r"\W", "_", base.lower())))


def _arms(args: argparse.Namespace) -> list[str]:
    """Each sampler, and with ``--sensitivity`` each sampler narrowed by the scan too."""
    narrowed = [f"{s}{NARROWED}" for s in args.samplers] if args.sensitivity else []
    return [*args.samplers, *narrowed]


def _overrides(args: argparse.Namespace, arm: str, seed: int, out: Path) -> dict:
    name = f"efficiency-{arm}-{seed}"
    sampler = arm.removesuffix(NARROWED)
    # A plain arm clears a scan the file may name ("" is no scan); a narrowed one sets it.
    scan = (args.sensitivity if arm.endswith(NARROWED) else "") if args.sensitivity else None
    return {"name": name, "sampler": sampler if sampler in SAMPLERS else None, "seed": seed,
            "sensitivity": scan,
            "n_trials": args.trials, "recovery_steps": args.steps,
            "gate_steps": args.gate_steps, "eval_images": args.eval_images, "runs": args.runs,
            "data_root": args.data, "timeout": None,
            "storage": f"sqlite:///{out.resolve()}/{name}.db",
            "artifacts_dir": str(out.resolve() / "artifacts")}


def _one_thread() -> None:
    """Studies that run side by side must not fight over the cores for recovery."""
    import torch

    torch.set_num_threads(1)


def _run(args: argparse.Namespace, sampler: str, seed: int, out: Path) -> list[float]:
    """One study, resumed from its storage if it has one, without tracking: its
    hypervolume after each trial."""
    config = load_study_config(args.study, _overrides(args, sampler, seed, out))
    study = run_study(config, Console(stderr=True, quiet=True), track=False)
    return hypervolume_history(study, config.objectives)


def _read(out: Path, sampler: str, seed: int, objectives: list[str] | None = None
          ) -> list[float]:
    """The hypervolume history of one stored study (empty when it was never run), over
    ``objectives`` (default: the study's own)."""
    path = out / f"efficiency-{sampler}-{seed}.db"
    if not path.is_file():
        return []
    study = optuna.load_study(study_name=f"efficiency-{sampler}-{seed}",
                              storage=f"sqlite:///{path}")
    stored = study.user_attrs.get("config", {}).get("study.objectives", "accuracy,size,latency")
    return hypervolume_history(study, tuple(objectives or stored.split(",")))


def _at(history: list[float], k: int) -> float:
    return history[min(k, len(history)) - 1] if history else 0.0


def _reached(runs: dict[int, list[float]], k: int) -> list[float]:
    """The hypervolumes after ``k`` trials of the studies that have run that far."""
    return [h[k - 1] for h in runs.values() if len(h) >= k]


def _report(console: Console, histories: dict[str, dict[int, list[float]]],
            args: argparse.Namespace) -> Table:
    steps = "the file's recovery" if args.steps is None else f"{args.steps} recovery steps"
    marks = _marks(args)
    table = Table(title=f"hypervolume of the feasible front{_over(args)}: median "
                        f"\\[interquartile range] (studies); one-sided Mann-Whitney U p against "
                        f"random; {steps}")
    table.add_column("sampler")
    for k in marks:
        table.add_column(f"after {k}", justify="right")
        table.add_column("p > random", justify="right")
    random = histories.get("random", {})
    for sampler, runs in histories.items():
        cells = []
        for k in marks:
            values = _reached(runs, k)
            cells.append(_summary(values))
            cells.append(_p(values, _reached(random, k))
                         if values and sampler != "random" else "")
        table.add_row(sampler, *cells)
    console.print(table)
    if DEFAULT in histories and random:
        ours, theirs = _reached(histories[DEFAULT], 50), _reached(random, 100)
        if ours and theirs:
            console.print(f"{DEFAULT} after 50 trials ({statistics.median(ours):.4f}, "
                          f"{len(ours)} studies) against random after 100 "
                          f"({statistics.median(theirs):.4f}, {len(theirs)}): one-sided "
                          f"Mann-Whitney U p = {_p(ours, theirs)} (target: p < 0.05)")
    return table


def _report_narrowing(console: Console, histories: dict[str, dict[int, list[float]]],
                      args: argparse.Namespace) -> Table:
    """Narrowed against plain, sampler by sampler: is the narrowed hypervolume greater?"""
    marks = _marks(args)
    table = Table(title=f"narrowed by {args.sensitivity} against plain: "
                        f"hypervolume{_over(args)} median \\[interquartile range] (studies); "
                        f"one-sided Mann-Whitney U p")
    table.add_column("sampler")
    for k in marks:
        table.add_column(f"plain, after {k}", justify="right")
        table.add_column(f"narrowed, after {k}", justify="right")
        table.add_column("p narrowed > plain", justify="right")
    for sampler in args.samplers:
        cells = []
        for k in marks:
            plain = _reached(histories[sampler], k)
            narrowed = _reached(histories[f"{sampler}{NARROWED}"], k)
            cells += [_summary(plain), _summary(narrowed), _p(narrowed, plain)]
        table.add_row(sampler, *cells)
    console.print(table)
    return table


def _over(args: argparse.Namespace) -> str:
    return f" over {', '.join(args.objectives)}" if args.objectives else ""


def _marks(args: argparse.Namespace) -> list[int]:
    """The budgets a table reports: the MARKS the studies reach, else their last trial."""
    return [k for k in MARKS if k <= args.trials] or [args.trials]


def _summary(values: list[float]) -> str:
    if not values:
        return "-"
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return f"{median:.4f} \\[{q1:.4f}, {q3:.4f}] ({len(values)})"


def _p(values: list[float], random: list[float]) -> str:
    if len(values) < 2 or len(random) < 2:
        return "n/a"
    return f"{mannwhitneyu(values, random, alternative='greater').pvalue:.3f}"


def _plot(histories: dict[str, dict[int, list[float]]], path: Path, over: str = "") -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for sampler, runs in histories.items():
        if not runs:
            continue
        n = min(len(h) for h in runs.values())
        median = [statistics.median(h[i] for h in runs.values()) for i in range(n)]
        ax.plot(range(1, n + 1), median, label=f"{sampler} (median of {len(runs)})")
        for h in runs.values():
            ax.plot(range(1, len(h) + 1), h, alpha=0.2, color=ax.lines[-1].get_color())
    ax.set_xlabel("trials")
    ax.set_ylabel(f"hypervolume (feasible front){over}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
