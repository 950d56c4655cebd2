"""The ``ggopt`` commands that come before a study: make data (``data sim``), train a
baseline (``train``), write a study file sized to the user's hours (``init``)."""

from __future__ import annotations

import argparse
import tomllib

from rich.console import Console

__all__ = ["add_data", "add_init", "add_train"]

console = Console(stderr=True)


def dataset_args(p: argparse.ArgumentParser) -> None:
    """How a dataset folder is read and split: the same options for ``train`` and ``init``."""
    p.add_argument("--format", dest="dataset_format", default="jacquard",
                   choices=["jacquard", "cornell"], help="dataset layout (default: jacquard)")
    p.add_argument("--split", dest="split_by", default="auto",
                   choices=["auto", "object", "image", "preset"],
                   help="the dataset's own train/ val/ test/ folders where it has them "
                        "(simulated data), else object-wise (held-out objects): as a study "
                        "splits it (default auto); or object, image, preset")
    p.add_argument("--objects", default=None,
                   help="Cornell's image -> object table (lines `<image> <object id>`), for "
                        "object-wise splits")
    p.add_argument("--skip-nan-rectangles", action="store_true",
                   help="Cornell: skip rectangles with NaN corners (two files of the real "
                        "dataset have them), with a warning; refused by default")
    p.add_argument("--output-size", type=int, default=300, help="input size in pixels")


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a GG-CNN on a grasp dataset (optionally distilled from a teacher)",
        description="Train a model on a Cornell or Jacquard-format dataset, report the IoU "
                    "grasp-match accuracy on the held-out split, save a checkpoint and log "
                    "the run to MLflow.")
    p.add_argument("dataset", help="dataset folder")
    dataset_args(p)
    p.add_argument("--model", default="ggcnn", help="registered model name (default: ggcnn)")
    p.add_argument("--factory", default=None, metavar="MODULE:FUNCTION",
                   help="a function that builds your own network, instead of --model (e.g. "
                        "grasp.models:GRConvNet with --option input_channels=4: GR-ConvNet "
                        "on RGB-D); its checkpoint enters a study with the same [model] "
                        "factory and options")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword argument of --factory, its value in TOML; repeat for more")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--teacher", default=None, help="checkpoint to distil from")
    p.add_argument("--init", default=None,
                   help="checkpoint to start from (continue a run, fine-tune a baseline)")
    p.add_argument("--distill-weight", type=float, default=0.5,
                   help="share of the teacher term in the loss (0..1; default 0.5)")
    p.add_argument("--input-gain", type=float, default=1.0,
                   help="optimise the first layer as if the depth input were this many times "
                        "larger (simulated depth spans only cm; e.g. 20); the model is unchanged")
    p.add_argument("--pos-weight", type=float, default=1.0,
                   help="weigh pixels inside good grasps this much more in the loss (sparse "
                        "labels: e.g. 10; default 1, GG-CNN's loss)")
    p.add_argument("--crop", type=int, default=0,
                   help="train on random windows of this many pixels (a multiple of 12, "
                        ">= 96; e.g. 144: ~6x cheaper steps); 0 = whole images (default)")
    p.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine"],
                   help="constant lr, or cosine decay to 0 over the run (default: constant)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="data-loading processes")
    p.add_argument("--out", default=None, help="checkpoint path (default: checkpoints/MODEL.pt)")
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db", help="MLflow tracking URI")
    p.add_argument("--experiment", default="ggopt-train", help="MLflow experiment name")
    p.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> None:
    from pathlib import Path

    from grasp.models import register_factory
    from grasp.train import BaselineJob, TrainConfig, train_baseline

    if args.option and not args.factory:
        raise ValueError("--option: keyword arguments are for --factory, which is not given.")
    model = args.model
    if args.factory:
        model = register_factory(args.factory, _options(args.option), Path.cwd())

    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         distill_weight=args.distill_weight, max_steps=args.max_steps,
                         seed=args.seed, workers=args.workers, input_gain=args.input_gain,
                         pos_weight=args.pos_weight, crop=args.crop,
                         lr_schedule=args.lr_schedule)
    job = BaselineJob(
        dataset=args.dataset, dataset_format=args.dataset_format, model=model,
        split_by=args.split_by, val_fraction=args.val_fraction,
        test_fraction=args.test_fraction, output_size=args.output_size, objects=args.objects,
        skip_nan_rectangles=args.skip_nan_rectangles, teacher=args.teacher,
        init=args.init,
        out=args.out or f"checkpoints/{model.rpartition(':')[2]}.pt",
        tracking_uri=args.tracking_uri,
        experiment=args.experiment)
    train_baseline(job, config, console=console)


def add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="make grasp datasets")
    data = p.add_subparsers(dest="data_command", required=True, metavar="SOURCE")
    s = data.add_parser(
        "sim", help="simulate scenes and label grasps by simulated grasp trials (pybullet)",
        description="Render tabletop scenes of pybullet's random objects and label antipodal "
                    "grasp candidates by executing them with a simulated parallel-jaw "
                    "gripper. Writes Jacquard format under OUT/{train,val,test}/ (split "
                    "object-wise); an interrupted run resumes where it stopped.")
    s.add_argument("--scenes", type=int, default=None,
                   help="number of scenes (scene i goes to train/val/test by i %% 10)")
    s.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="a documented dataset instead of --scenes/--splits (docs/datasets.md): "
                        "quickstart (~32 train, ~200 val sparsely labelled, no test; minutes), "
                        "quickstart-test (~225 test images sparsely labelled added to a "
                        "folder; ~2 minutes), overnight (1040 train, ~2,000 val and ~2,000 test "
                        "sparsely labelled; under 2 hours on 2 cores)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--candidates-per-object", type=int, default=8)
    s.add_argument("--splits", default="train,val,test",
                   help="comma-separated splits to make scenes for (default all); "
                        "'val,test' grows the held-out sets of an existing dataset")
    s.set_defaults(run=_run_data_sim)


#: The documented datasets (docs/datasets.md), as runs of (scenes, splits, candidates per
#: object): held-out scenes are labelled sparsely (3 candidates per object: the paired
#: comparisons hold, benchmarks/RESULTS.md "Sparse and full labels"); the quick start makes
#: no test images (verification is in simulation); quickstart-test adds about 225 to the
#: same folder, in about 2 minutes on 2 cores.
RECIPES = {
    "quickstart": ((40, ("train",), 8), (2300, ("val",), 3)),
    "quickstart-test": ((2300, ("test",), 3),),
    "overnight": ((1300, ("train",), 8), (22000, ("val", "test"), 3)),
}


def _run_data_sim(args: argparse.Namespace) -> None:
    from grasp.sim.generate import generate_dataset

    if args.recipe is None and args.scenes is None:
        raise ValueError("data sim: give --scenes N (with --splits), or --recipe "
                         f"{'|'.join(sorted(RECIPES))}.")
    if args.recipe is not None:
        if args.scenes is not None:
            raise ValueError(f"data sim: --recipe {args.recipe} sets the scenes; leave out "
                             f"--scenes (got {args.scenes}).")
        runs = RECIPES[args.recipe]
    else:
        splits = tuple(part.strip() for part in args.splits.split(",") if part.strip())
        runs = ((args.scenes, splits, args.candidates_per_object),)
    for scenes, splits, per_object in runs:
        console.print(f"[bold]{', '.join(splits)}[/]: scenes 0..{scenes - 1} of these splits, "
                      f"{per_object} candidates per object")
        generate_dataset(args.out, scenes, workers=args.workers, seed=args.seed,
                         per_object=per_object, console=console, splits=splits)




def add_init(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "init", help="write a study file for your model and data, sized to your hours",
        description="Measure what a trial of your model on your data costs on this machine "
                    "(a few short trials of the study itself, in a scratch folder), then "
                    "write a study file whose recovery length, gate and trial budget fit "
                    "--hours, with the trials per hour to expect and the accuracy difference "
                    "your validation images can resolve.")
    p.add_argument("out", help="the study file to write (TOML), e.g. studies/mine.toml")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--hours", type=float, required=True,
                   help="how long the study may run here (e.g. 8 for a night)")
    dataset_args(p)
    p.add_argument("--model", default="ggcnn",
                   help="built-in architecture: ggcnn, ggcnn2 or grconvnet (default: ggcnn)")
    p.add_argument("--factory", default=None, metavar="MODULE:FUNCTION",
                   help="a function that builds your own network (instead of --model; "
                        "docs/datasets.md, 'Your own network and data')")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword argument of --factory, its value in TOML (e.g. "
                        "channels=32, name=\"wide\"); repeat for more")
    p.add_argument("--checkpoint", default="baseline",
                   help="your weights: a state dict or a ggopt checkpoint (default: the "
                        "shipped baseline of --model)")
    p.add_argument("--crop", type=int, default=None,
                   help="recovery crop in pixels (default: about half the input size)")
    p.add_argument("--constraint", action="append", default=None, metavar="TEXT",
                   help="a constraint, e.g. \"accuracy >= baseline - 0.03\" (the default); "
                        "repeat for more")
    p.add_argument("--name", default=None, help="study name (default: the file's name)")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(run=_run_init)


def _options(pairs: list[str]) -> dict:
    """``--option KEY=VALUE`` pairs, each value read as TOML (one parser for the study file
    and the command line)."""
    options: dict = {}
    for pair in pairs:
        key, sep, _ = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--option: must be KEY=VALUE, got {pair!r}.")
        try:
            options.update(tomllib.loads(pair))
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"--option {pair!r}: the value must be TOML (a number, true, "
                             f"\"text\", [1, 2]): {error}.") from None
    return options


def _run_init(args: argparse.Namespace) -> None:
    from pathlib import Path

    from search.new_study import StudyRequest, describe, init_study

    if args.option and not args.factory:
        raise ValueError("--option: keyword arguments are for --factory, which is not given.")
    request = StudyRequest(
        out=Path(args.out), data_root=args.data, hours=args.hours, model=args.model,
        factory=args.factory, options=_options(args.option), checkpoint=args.checkpoint,
        data_format=args.dataset_format, split=args.split_by, objects=args.objects,
        skip_nan_rectangles=args.skip_nan_rectangles, output_size=args.output_size,
        crop=args.crop, name=args.name, force=args.force,
        **({"constraints": tuple(args.constraint)} if args.constraint else {}))
    out, probe, plan = init_study(request, console)
    console.print(f"measured on {probe.machine}:")
    for line in describe(probe, plan):
        console.print(f"  {line}", highlight=False)
    console.print(f"wrote {out}; run it with: ggopt search {out}", highlight=False)
