"""The overnight data recipe, measured: runs the command a user runs the night before the
first study, from an empty folder, and records its wall time and what it made.

    python benchmarks/overnight_data.py /tmp/overnight [--workers 2]

Runs ``ggopt data sim --recipe overnight --out OUT --workers N``, then counts the scenes
and the labelled images (scenes with at least one robust grasp) of each split; writes
records/overnight_data.json. Run it on an idle machine: the seconds are a timing. A folder
that already holds scenes is refused (a resumed run would time only its remainder).
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="an empty or new folder for the dataset")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    out = Path(args.out)
    if any(out.glob("*/scene*/scene.json")):
        parser.error(f"{out} already holds scenes; give an empty or new folder (a resumed "
                     f"run would time only what was left).")
    commit = current_commit()
    command = ["ggopt", "data", "sim", "--recipe", "overnight", "--out", str(out),
               "--workers", str(args.workers)]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    counts = split_counts(out)
    scenes = sum(c["scenes"] for c in counts.values())
    figures = {"workers": args.workers, "seconds": seconds, "hours": seconds / 3600,
               "seconds_per_scene": seconds / max(scenes, 1), "splits": counts}
    path = write_record("overnight_data", "The overnight data recipe, timed", figures,
                        command=f"python benchmarks/overnight_data.py OUT --workers "
                                f"{args.workers}", commit=commit)
    print(f"{seconds / 3600:.2f} h for {scenes} scenes; "
          + ", ".join(f"{split} {c['images']} images" for split, c in counts.items())
          + f"; {path}")


if __name__ == "__main__":
    main()
