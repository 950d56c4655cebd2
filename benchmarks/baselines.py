"""The shipped baselines against each other and against trivial ones, on held-out objects.

    python benchmarks/baselines.py --data data/sim [--sim-scenes 100] [--data-label TEXT]

For each shipped checkpoint (or ``--checkpoints``): IoU grasp-match accuracy on the
dataset's test split (objects never trained on) and simulated grasp success on held-out
scenes, one executed grasp per scene; beside a model that always predicts the image centre
(rectangle metric) and random grasps on objects (simulation). Every model is scored on the
same test images and the same scenes, so each row's difference to the first checkpoint is
paired, with its interval. Both numbers matter: the rectangle metric alone can be fooled.
Writes records/baselines.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from grasp.checkpoints import SHIPPED, load_checkpoint
from grasp.data import load_dataset, split
from grasp.evaluation import HeldOut, score_images
from grasp.sim.evaluate import evaluate_policies_in_sim, model_policy, random_policy
from grasp.train import predict_maps
from search.stats import paired_difference, rate

sys.path.insert(0, str(Path(__file__).resolve().parent))  # records.py beside this script

from records import current_commit, write_record

TRIVIAL = "image centre (images) / random grasp on an object (scenes)"


def centre_predictor(size: int):
    """Quality peaked at the image centre, angle 0, width 60 px: a trivial guess."""
    rows = torch.arange(size, dtype=torch.float32)[:, None] - size / 2
    cols = torch.arange(size, dtype=torch.float32)[None, :] - size / 2
    pos = torch.exp(-(rows**2 + cols**2) / (2 * 10.0**2))
    maps = torch.stack([pos, torch.ones_like(pos), torch.zeros_like(pos),
                        torch.full_like(pos, 60 / 150)])

    def predict(x: torch.Tensor) -> torch.Tensor:
        return maps.expand(len(x), -1, -1, -1)

    return predict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a dataset with a test split")
    parser.add_argument("--data-label", default=None, help="how the record names the data")
    parser.add_argument("--sim-scenes", type=int, default=100)
    parser.add_argument("--checkpoints", nargs="+", default=None,
                        help="checkpoints to score, the first the reference (default: the "
                             "shipped ones, GG-CNN first)")
    args = parser.parse_args()
    commit = current_commit()
    console = Console(width=160)
    dataset = load_dataset("jacquard", args.data, output_size=300)
    test = HeldOut.load(dataset.subset(split(dataset, "preset", 0.1, 0.1, 0)["test"]))
    if not len(test):
        raise SystemExit(f"{args.data}: no test images (ggopt data sim --splits test)")
    paths = [Path(p) for p in args.checkpoints or sorted(
        SHIPPED.glob("*.pt"), key=lambda p: (p.stem != "ggcnn", p.stem))]
    models = {}
    for path in paths:
        checkpoint = load_checkpoint(path)
        models[f"{checkpoint.model_name} ({path.name})"] = (
            checkpoint.model.eval(), sum(p.numel() for p in checkpoint.model.parameters()))
    hits = {name: score_images(predict_maps(model), test).standard
            for name, (model, _) in models.items()}
    hits[TRIVIAL] = score_images(centre_predictor(dataset.output_size), test).standard
    policies = {name: model_policy(predict_maps(model)) for name, (model, _) in models.items()}
    policies[TRIVIAL] = random_policy(0)
    scenes = evaluate_policies_in_sim(policies, args.sim_scenes, progress=True)
    reference = next(iter(models))
    rows = []
    for name in hits:
        rows.append({
            "model": name, "params": models[name][1] if name in models else 0,
            "test": rate(hits[name]).to_dict(), "sim": rate(scenes[name]).to_dict(),
            "test_diff": (None if name == reference else
                          paired_difference(hits[name], hits[reference]).to_dict()),
            "sim_diff": (None if name == reference else
                         paired_difference(scenes[name], scenes[reference]).to_dict())})
    table = Table(title=f"held-out objects: {len(test)} test images, {args.sim_scenes} "
                        f"simulated scenes; differences paired with {reference}")
    for column in ("model", "params", "IoU-match accuracy", "Δ paired", "simulated success",
                   "Δ paired"):
        table.add_column(column)
    for name in hits:
        test_diff = "" if name == reference else str(paired_difference(hits[name],
                                                                       hits[reference]))
        sim_diff = "" if name == reference else str(paired_difference(scenes[name],
                                                                      scenes[reference]))
        table.add_row(name, f"{models[name][1]:,}" if name in models else "0",
                      str(rate(hits[name])), test_diff, str(rate(scenes[name])), sim_diff)
    console.print(table)
    figures = {"data": args.data_label or args.data, "test_images": len(test),
               "sim_scenes": args.sim_scenes, "reference": reference, "rows": rows}
    console.print(write_record("baselines", "The shipped baselines on held-out objects",
                               figures, commit=commit))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
