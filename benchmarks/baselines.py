"""The shipped baselines against trivial ones, on held-out objects.

    python benchmarks/baselines.py --dataset data/sim [--sim-scenes 100]

For each shipped checkpoint: IoU grasp-match accuracy on the dataset's held-out test split
(objects never trained on) and simulated grasp success on held-out scenes, beside a model
that always predicts the image centre (rectangle metric) and random grasps on objects
(simulation). Both numbers matter: the rectangle metric alone can be fooled.
"""

from __future__ import annotations

import argparse

import torch
from rich.console import Console
from rich.table import Table

from grasp.checkpoints import SHIPPED, load_checkpoint
from grasp.data import JacquardDataset, split
from grasp.evaluation import score_images
from grasp.sim.evaluate import evaluate_in_sim, model_policy, random_policy
from grasp.train import predict_maps
from search.stats import rate


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
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--sim-scenes", type=int, default=100)
    parser.add_argument("--checkpoints", nargs="+", default=None,
                        help="checkpoints to score (default: the shipped ones)")
    args = parser.parse_args()
    console = Console()
    dataset = JacquardDataset(args.dataset)
    test = dataset.subset(split(dataset, "preset")["test"])
    table = Table(title=f"held-out objects: {len(test)} test images, "
                        f"{args.sim_scenes} simulated scenes")
    for col in ("model", "params", "IoU-match accuracy (95% CI)",
                "simulated grasp success (95% CI)"):
        table.add_column(col)
    for path in args.checkpoints or sorted(SHIPPED.glob("*.pt")):
        ckpt = load_checkpoint(path)
        params = sum(p.numel() for p in ckpt.model.parameters())
        accuracy = rate(score_images(predict_maps(ckpt.model), test).standard)
        success = evaluate_in_sim(model_policy(predict_maps(ckpt.model)), args.sim_scenes,
                                  progress=True)
        table.add_row(f"{ckpt.model_name} ({path})", f"{params:,}", str(accuracy),
                      str(success))
    table.add_row("image centre / random grasp", "0",
                  str(rate(score_images(centre_predictor(dataset.output_size), test).standard)),
                  str(evaluate_in_sim(random_policy(0), args.sim_scenes)))
    console.print(table)


if __name__ == "__main__":
    main()
