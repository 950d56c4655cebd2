"""The overnight data recipe, measured: makes its splits as a user does the night before
the first study, from an empty folder, and records each split's wall time and what it made.

    python benchmarks/overnight_data.py /tmp/overnight [--workers 2] [--splits train,val,test]

Runs ``ggopt data sim --scenes N --splits S --candidates-per-object K --out OUT --workers W``
once per split, with the recipe's N and K (``ggopt data sim --recipe overnight`` makes the
same scenes), then counts the scenes and the labelled images (scenes with at least one
robust grasp) of each; writes records/overnight_data.json, or overnight_data_<splits>.json
for some of them. Run it on an idle machine: the seconds are a timing. A folder that
already holds scenes of a split to make is refused (a resumed run would time only what
was left).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # records.py beside this script

from records import current_commit, write_record


def split_counts(out: Path) -> dict[str, dict[str, int]]:
    """Scenes, labelled images and robust grasps of each split under ``out``."""
    counts = {}
    for split in ("train", "val", "test"):
        stats = [json.loads(p.read_text()) for p in sorted(out.glob(f"{split}/scene*/scene.json"))]
        counts[split] = {"scenes": len(stats),
                         "images": sum(s["good"] > 0 for s in stats),
                         "grasps": sum(s["good"] for s in stats),
                         "trials": sum(s["trials"] for s in stats)}
    return counts


def recipe_runs() -> dict[str, tuple[int, int]]:
    """Each split of the overnight recipe: (scenes to go through, candidates per object)."""
    from search.cli_prepare import RECIPES

    return {split: (scenes, per_object) for scenes, splits, per_object in RECIPES["overnight"]
            for split in splits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="a folder holding no scenes of the splits to make")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--splits", default="train,val,test",
                        help="the recipe's splits to make and time, in this order")
    parser.add_argument("--beside", default=None,
                        help="what else ran on the machine meanwhile, said in the record")
    args = parser.parse_args()
    out, runs = Path(args.out), recipe_runs()
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    if not splits or set(splits) - set(runs):
        parser.error(f"--splits {args.splits!r}: give some of {','.join(runs)}")
    made = [s for s in splits if any(out.glob(f"{s}/scene*/scene.json"))]
    if made:
        parser.error(f"{out} already holds {', '.join(made)} scenes; give a folder without "
                     f"them (a resumed run would time only what was left).")
    commit = current_commit()
    seconds = {}
    for split in splits:
        scenes, per_object = runs[split]
        started = time.perf_counter()
        subprocess.run(["ggopt", "data", "sim", "--scenes", str(scenes), "--splits", split,
                        "--candidates-per-object", str(per_object), "--out", str(out),
                        "--workers", str(args.workers)], check=True)
        seconds[split] = time.perf_counter() - started
    counts = split_counts(out)
    figures = {"workers": args.workers, "seconds": sum(seconds.values()), "beside": args.beside,
               "splits": {s: counts[s] | {"seconds": seconds[s],
                                          "per_object": runs[s][1]} for s in splits}}
    whole = splits == list(runs)
    path = write_record("overnight_data", "The overnight data recipe, timed", figures,
                        name=None if whole else "overnight_data_" + "_".join(splits),
                        commit=commit)
    print(", ".join(f"{s}: {counts[s]['images']} images in {seconds[s] / 60:.0f} min"
                    for s in splits) + f"; {path}")


if __name__ == "__main__":
    main()
