"""Does int8 need quantization-aware training? Post-training int8 against QAT on the torch
runtime, for the uncompressed model and a 50 %-pruned, recovered one, in one run.

    python benchmarks/qat.py studies/ggcnn_overnight_torch_cpu.toml [--data DIR]
        [--steps 200] [--lrs 1e-4 5e-4 2e-3]

Every row is an artifact scored on the study's validation images (``--data`` for another
copy of the dataset, e.g. one whose held-out sets were grown with ``--splits val,test``).
QAT trains ``--steps`` steps of the study's distillation through fake-quantize nodes, so
compare it also with the fp32 row of the same model: part of any gain is those extra steps.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from grasp.train import evaluate
from search.config import load_study_config
from search.recovery import recover, recover_graph
from search.study import prepare
from spaces import get_knob
from spaces.precision import PrecisionConfig, build_artifact
from spaces.prune import PruneConfig
from spaces.upsample import rewrite_all


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="study file (TOML)")
    parser.add_argument("--data", default=None, help="dataset folder (default: the study's)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 5e-4, 2e-3])
    args = parser.parse_args()
    config = load_study_config(args.study, {"data_root": args.data})
    setup = prepare(config, Console(stderr=True, quiet=True))
    c = config

    def train(lr):
        return lambda graph: recover_graph(graph, setup.recovery_pool(), args.steps,
                                           setup.recipe(lr))

    prune = get_knob("prune")
    pruned = prune.apply(setup.base, PruneConfig(tuple((layer, 0.5) for layer in
                                                       prune.layers(setup.base)),
                                                criterion="l1"))
    recover(pruned, setup.recovery_pool(), c.recovery_steps, setup.recipe())
    table = Table(title=f"{c.name}: int8 after training vs quantization-aware, torch runtime; "
                        f"accuracy on {len(setup.eval_data)} val images")
    for column in ("model", "artifact", "val acc", "build s"):
        table.add_column(column, justify="left" if column in ("model", "artifact") else "right")
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in (("uncompressed", rewrite_all(setup.base)),
                            (f"prune 50 % + {c.recovery_steps} steps", rewrite_all(pruned.eval()))):
            builds = [("fp32", "fp32", None), ("int8, post-training", "int8", None)]
            builds += [(f"int8, QAT {args.steps} steps at lr {lr:g}", "int8", train(lr))
                       for lr in args.lrs]
            for i, (label, precision, finetune) in enumerate(builds):
                start = time.perf_counter()
                artifact = build_artifact(copy.deepcopy(model), PrecisionConfig(precision),
                                          Path(tmp) / f"{name[:5]}{i}", setup.calibration,
                                          c.output_size, runtime="torch", finetune=finetune)
                seconds = time.perf_counter() - start
                accuracy = evaluate(artifact.predictor(c.threads), setup.eval_data, batch_size=8)
                table.add_row(name, label, f"{accuracy:.3f}", f"{seconds:.0f}")
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
