"""Does int8 need quantization-aware training? Post-training int8 against QAT on the torch
runtime, for the uncompressed model and a 50 %-pruned, recovered one, in one run.

    python benchmarks/qat.py studies/ggcnn_overnight_torch_cpu.toml [--data DIR]
        [--steps 200] [--lrs 1e-4 5e-4 2e-3]

Every row is an artifact whose own grasp is scored on the study's validation images, with its
95 % interval and paired with the same model's fp32 file (``--data`` for another
copy of the dataset, e.g. one whose held-out sets were grown with ``--splits val,test``).
QAT trains ``--steps`` steps of the study's distillation through fake-quantize nodes, so
compare it also with the fp32 row of the same model: part of any gain is those extra steps.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from grasp.evaluation import score_grasps
from search.config import load_study_config
from search.recovery import recover, recover_graph
from search.stats import paired_difference, rate
from search.study import prepare
from spaces import get_knob
from spaces.precision import PrecisionConfig, build_artifact
from spaces.prune import PruneConfig
from spaces.upsample import rewrite_all

sys.path.insert(0, str(Path(__file__).parent))
from records import current_commit, table_figures, write_record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="study file (TOML)")
    parser.add_argument("--data", default=None, help="dataset folder (default: the study's)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 5e-4, 2e-3])
    args = parser.parse_args()
    commit = current_commit()
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
    for column in ("model", "artifact", "val accuracy (95 % CI)", "Δ vs its fp32 (paired)",
                   "build s"):
        table.add_column(column, justify="left" if column in ("model", "artifact") else "right")
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in (("uncompressed", rewrite_all(setup.base)),
                            (f"prune 50 % + {c.recovery_steps} steps", rewrite_all(pruned.eval()))):
            builds = [("fp32", "fp32", None), ("int8, post-training", "int8", None)]
            builds += [(f"int8, QAT {args.steps} steps at lr {lr:g}", "int8", train(lr))
                       for lr in args.lrs]
            reference = None  # the fp32 file, built first: what int8 is paired with
            for i, (label, precision, finetune) in enumerate(builds):
                start = time.perf_counter()
                artifact = build_artifact(copy.deepcopy(model), PrecisionConfig(precision),
                                          Path(tmp) / f"{name[:5]}{i}", setup.calibration,
                                          c.output_size, runtime="torch", finetune=finetune)
                seconds = time.perf_counter() - start
                hits = score_grasps(artifact.grasp_predictor(c.threads), setup.eval_data).standard
                reference = hits if reference is None else reference
                table.add_row(name, label, str(rate(hits)),
                              str(paired_difference(hits, reference)),
                              f"{seconds:.0f}")
    console = Console(width=150)
    console.print(table)
    console.print(write_record("qat", "int8 after training against quantization-aware training",
                               table_figures([table]), commit=commit))


if __name__ == "__main__":
    main()
