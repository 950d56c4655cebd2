"""The ``ggopt`` command line. Bad input ends in one clear paragraph, never a traceback."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape

from search.cli_prepare import add_data, add_init, add_train

__all__ = ["main"]

console = Console(stderr=True)


#: The front table's full width: a narrower terminal wraps its lines rather than cutting
#: the intervals short.
TABLE_WIDTH = 170


def _study_args(p: argparse.ArgumentParser, tracking: bool = True) -> None:
    p.add_argument("study", help="study file (TOML), e.g. studies/quickstart.toml")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL, overriding the study file's")
    if tracking:
        p.add_argument("--tracking-uri", default=None,
                       help="MLflow tracking URI, overriding the study file's")


def _config(args: argparse.Namespace, **more):
    from search.config import load_study_config

    overrides = {"storage": args.storage,
                 "tracking_uri": getattr(args, "tracking_uri", None), **more}
    return load_study_config(args.study, overrides)


def _add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search", help="run (or resume) a compression study",
        description="Run the study in a study file: each trial compresses the base model, "
                    "recovers accuracy by distillation, builds the deployable artifact and "
                    "measures its accuracy, size and latency. Running it again resumes it.")
    _study_args(p)
    p.add_argument("--n-trials", type=int, default=None,
                   help="total number of finished trials to reach (overrides the file)")
    p.add_argument("--timeout", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--target", default=None, metavar="URL",
                   help="time latency on the robot's computer, through the timing agent at "
                        "URL (overrides [runtime] target; token from $GGOPT_AGENT_TOKEN)")
    p.set_defaults(run=_run_search)


def _run_search(args: argparse.Namespace) -> None:
    from grasp.urls import redact_url
    from search.review.table import front_table
    from search.study.run import run_study

    if args.n_trials is not None and args.n_trials < 1:
        raise ValueError(f"--n-trials: must be >= 1, got {args.n_trials}.")
    config = _config(args, n_trials=args.n_trials, timeout=args.timeout, target=args.target)
    study = run_study(config, console)
    Console(stderr=True, width=max(console.width, TABLE_WIDTH)).print(
        front_table(study, config.objectives))
    console.print(f"next: ggopt pareto {config.path} · ggopt export {config.path} --trial N "
                  f"--out DIR · mlflow ui --backend-store-uri {redact_url(config.tracking_uri)}")
    parent = study.user_attrs.get("mlflow_parent_run_id")
    if parent:
        from mlflow.tracking import MlflowClient

        experiment = MlflowClient(config.tracking_uri).get_run(parent).info.experiment_id
        # The link on a line of its own, never wrapped: a terminal copies a wrapped link
        # as two broken halves.
        console.print("the study's MLflow run (with mlflow ui on its default port):")
        console.print(f"http://127.0.0.1:5000/#/experiments/{experiment}/runs/{parent}"
                      f"?workflowType=machine_learning", soft_wrap=True, markup=False,
                      highlight=False)


def _add_pareto(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pareto", help="show a study's feasible Pareto front",
                       description="The feasible Pareto front of a study as a table, with "
                                   "the uncompressed baseline and ratios against it.")
    _study_args(p, tracking=False)
    p.add_argument("--json", action="store_true", help="print the front as JSON on stdout")
    p.add_argument("--verify", type=int, default=0, metavar="K",
                   help="verify the K front trials a user is most likely to pick (the knee, "
                        "the fastest, the most accurate, then the nearest to the ideal "
                        "point) on the test images and in simulation, paired with the "
                        "baseline")
    _verify_args(p)
    p.set_defaults(run=_run_pareto)


def _verify_args(p: argparse.ArgumentParser) -> None:
    from search.verify import SIM_SCENES

    p.add_argument("--scenes", type=int, default=SIM_SCENES,
                   help=f"held-out simulated scenes to grasp (default {SIM_SCENES}; about "
                        "0.1 s per scene plus 0.17 s per scene and model)")
    p.add_argument("--no-sim", action="store_true",
                   help="skip the simulated grasps (test images only)")


def _run_pareto(args: argparse.Namespace) -> None:
    import json

    from search.front import front_rows
    from search.review.table import front_table, recipes_table
    from search.study.setup import load_study

    config = _config(args)
    study = load_study(config)
    if args.verify < 0:
        raise ValueError(f"--verify: the number of front trials must be >= 0, got {args.verify}.")
    rows = front_rows(study, config.objectives)
    if not args.json:
        wide = Console(width=max(Console().width, TABLE_WIDTH))
        wide.print(front_table(study, config.objectives))
        recipes = recipes_table(study, config.objectives)
        if recipes is not None:
            wide.print(recipes)
    if args.verify:
        from search.front import study_picks
        from search.verify import verify_trials

        picks = [t.number for t in study_picks(study, config.objectives, args.verify)]
        if not picks:
            raise ValueError(f"--verify: study {config.name!r} has no feasible front yet.")
        console.print(f"verifying trials {', '.join(map(str, picks))} against the baseline")
        results = verify_trials(study, config, picks, args.scenes, not args.no_sim, console)
        for row in rows:
            if row["trial"] in results:
                row["verified"] = results[row["trial"]].card()
        if not args.json:
            _print_verified(results)
    if args.json:
        print(json.dumps(rows, indent=2))


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export one trial's artifact with its model card",
                       description="Write a trial's deployable artifact, its knob config and a "
                                   "model card to DIR, and register it in MLflow's registry.")
    _study_args(p)
    p.add_argument("--trial", type=_trial_choice, required=True, metavar="N|knee",
                   help="trial number (see ggopt pareto), or `knee`: the front's knee, the "
                        "trial nearest the ideal point, which pareto --verify checks first")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-register", action="store_true", help="skip the MLflow model registry")
    p.add_argument("--finish", type=int, default=0, metavar="STEPS",
                   help="continue the trial's recovery from the weights the study kept, "
                        "STEPS more steps (the study's recipe; e.g. 4x its [recovery] steps), "
                        "before building the artifact, then measure all three objectives on "
                        "it again")
    p.add_argument("--finish-lr", type=float, default=None, metavar="LR",
                   help="peak learning rate of the finishing run (default: 0.3x the "
                        "study's when it continues the trial's kept weights)")
    p.add_argument("--rebuild", action="store_true",
                   help="build the artifact anew from the weights the study kept, with no "
                        "training, then measure all three objectives on it again (ships an "
                        "older study's trial in this ggopt's artifact format)")
    _verify_args(p)
    p.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> None:
    from pathlib import Path

    from search.export import export_trial
    from search.study.setup import load_study

    config = _config(args)
    study = load_study(config)
    if args.trial == "knee":
        from search.front import study_picks

        picks = study_picks(study, config.objectives, 1)
        if not picks:
            raise ValueError(f"--trial knee: study {config.name!r} has no feasible front yet.")
        args.trial = picks[0].number
        console.print(f"the front's knee is trial {args.trial}")
    out = export_trial(study, config, args.trial, Path(args.out),
                       register=not args.no_register, finish_steps=args.finish, console=console,
                       finish_lr=args.finish_lr, rebuild=args.rebuild, sim=not args.no_sim,
                       scenes=args.scenes)
    console.print(f"exported trial {args.trial} to {out}")


def _trial_choice(text: str) -> int | str:
    if text == "knee":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a trial number or `knee`, got {text!r}"
                                         ) from None


def _add_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify", help="verify trials on the test images and in simulation",
        description="Score trials' artifacts on the test images the study never read, and "
                    "execute their grasps in pybullet on held-out scenes no dataset used; "
                    "each beside the uncompressed baseline on the same images and scenes, "
                    "with 95 % intervals and paired differences. Logged to each trial's "
                    "MLflow run.")
    _study_args(p)
    p.add_argument("--trial", type=int, nargs="+", required=True,
                   help="trial numbers (see ggopt pareto)")
    _verify_args(p)
    p.set_defaults(run=_run_verify)


def _run_verify(args: argparse.Namespace) -> None:
    from search.study.setup import load_study
    from search.verify import verify_trials

    config = _config(args)
    results = verify_trials(load_study(config), config, args.trial, args.scenes,
                            not args.no_sim, console)
    _print_verified(results)


def _print_verified(results: dict) -> None:
    """Each verified trial's held-out table, on stdout like the front it goes with."""
    for number, result in results.items():
        Console(width=max(Console().width, TABLE_WIDTH)).print(
            f"\n[bold]trial {number}[/]\n" + escape("\n".join(result.lines())),
            highlight=False)


def _add_sensitivity(sub: argparse._SubParsersAction) -> None:
    from search.sensitivity import DEFAULT_STEPS

    p = sub.add_parser(
        "sensitivity", help="measure how much each layer loses under each knob setting",
        description="For every layer and every setting the study's knobs offer, one layer at "
                    "a time: the accuracy change against the uncompressed model on the "
                    "validation images, paired, before and after a short recovery. "
                    "Resumable (rerun to continue), logged to MLflow as its own run, drawn as "
                    "a heat map that `ggopt report` shows.")
    _study_args(p)
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help=f"recovery steps per probe, the study's recipe (default "
                        f"{DEFAULT_STEPS}; 0: no recovery)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate of the short recovery (default: the study's)")
    p.add_argument("--images", type=int, default=0,
                   help="score on the first N validation images (default: all)")
    p.add_argument("--knobs", nargs="+", default=(), metavar="KNOB",
                   help="only these knobs (default: every knob the study enables; precision: "
                        "int8 on one layer at a time)")
    p.set_defaults(run=_run_sensitivity)


def _run_sensitivity(args: argparse.Namespace) -> None:
    from search.narrowing import NOT_PROBES
    from search.sensitivity import records_path, run_sensitivity

    config = _config(args)
    records = run_sensitivity(config, args.steps, args.images, tuple(args.knobs), console,
                              lr=args.lr)
    measured = [r for r in records if r["knob"] not in NOT_PROBES]
    worst = sorted(measured, key=lambda r: (r.get("after") or r["before"])["paired"][
        "difference"])[:5]
    for r in worst:
        stage = r.get("after") or r["before"]
        p = stage["paired"]
        console.print(f"  {r['key']:28s} {100 * p['difference']:+6.1f} pp "
                      f"[{100 * p['low']:+.1f}, {100 * p['high']:+.1f}]")
    folder = records_path(config).parent
    console.print(f"{len(measured)} probes; the most sensitive above. Heat map: "
                  f"{folder / 'sensitivity.png'}, records: {records_path(config)}")


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write a study's plots and HTML report",
                       description="PNG plots and an HTML page: the Pareto front, the "
                                   "hypervolume over trials, and per layer what each front "
                                   "model changed.")
    _study_args(p)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(run=_run_report)


def _run_report(args: argparse.Namespace) -> None:
    from pathlib import Path

    from search.review.report import write_report
    from search.study.setup import load_study
    from search.tracking import PARENT_KEY

    config = _config(args)
    study = load_study(config)
    page = write_report(study, config, Path(args.out))
    console.print(f"report written to {page}")
    parent = study.user_attrs.get(PARENT_KEY)
    if parent:  # the morning review: the report beside the front on the study's parent run
        from mlflow.tracking import MlflowClient

        MlflowClient(config.tracking_uri).log_artifacts(parent, str(page.parent), "report")
        console.print(f"and attached to the study's MLflow run {parent} (report/index.html)")


def _add_agent(sub: argparse._SubParsersAction) -> None:
    from timing.agent import build_parser as agent_parser

    p = sub.add_parser(
        "agent", help="time artifacts on this computer for studies run elsewhere",
        description="The timing agent: run it on the robot's computer and point a study at it "
                    "([runtime] target or --target). On the robot itself, `ggopt-agent` does "
                    "the same without torch (docs/agent.md).")
    agent_parser(p)
    p.set_defaults(run=_agent)


def _agent(args: argparse.Namespace) -> None:
    """The agent, with torch ``.pt2`` packages timed by the study's own harness when
    ``--allow-torch`` asks for them."""
    from timing.agent import run_agent

    if args.allow_torch:
        from objectives.latency import time_package

        run_agent(args, time_package)
    else:
        run_agent(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ggopt",
        description="Find the best compressed GG-CNN grasp detectors for a robot computer.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_data(sub)
    add_train(sub)
    add_init(sub)
    _add_search(sub)
    _add_pareto(sub)
    _add_export(sub)
    _add_verify(sub)
    _add_sensitivity(sub)
    _add_report(sub)
    _add_agent(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from search.storage import StorageUnavailable
    from timing.client import AgentError

    args = build_parser().parse_args(argv)
    # MLflow's database migrations log at INFO on first use; they are not the user's business.
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, AgentError, StorageUnavailable) as exc:
        # escape: messages name TOML tables such as [data], which rich would take as markup
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    except OSError as exc:  # a full disk, a read-only or vanished folder: name the path
        where, why = exc.filename or "(no path given)", exc.strerror or str(exc)
        console.print(f"[bold red]error:[/] {escape(str(where))}: {escape(why)}",
                      highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
