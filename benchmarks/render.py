"""Renders the benchmark records (``benchmarks/records/*.json``) into RESULTS.md.

    python benchmarks/render.py            # rewrite the rendered sections of RESULTS.md
    python benchmarks/render.py --check    # exit 1, with a diff, where the file differs

Each record owns one section of RESULTS.md, between the markers this script writes; a
record without a section yet gets one at the end. The text between the markers is this
script's: edit the record (re-run its benchmark) or the renderer below, never the text.
The tests run ``--check``, so a committed RESULTS.md always says what its records say.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # records.py beside this script

from records import Record, read_records

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
BEGIN = "<!-- rendered from benchmarks/records/{name}.json by benchmarks/render.py -->"
END = "<!-- end of benchmarks/records/{name}.json -->"


def _provenance(record: Record) -> str:
    return (f"{record.machine.line()}; `{record.command}`; commit {record.commit[:10]}, "
            f"{record.date}.")


def _init_forecast(record: Record) -> str:
    f = record.figures
    ratio = f["measured_trials_per_hour"] / f["predicted_trials_per_hour"]
    probe = f" in {f['probe_s'] / 60:.1f} min" if f.get("probe_s") else ""
    return "\n".join([
        f"`ggopt init --hours {f['hours']:g}` on {f['data']}, then `ggopt search` on the "
        f"file it wrote. The prediction is the probe's (10 short trials of the study "
        f"itself{probe}); the measurement is the study's finished trials over the wall time "
        f"from its first trial's start to its last one's end.",
        "",
        "| hours | recovery steps (gate after) | trials | stopped at the gate | predicted "
        "trials / h | measured trials / h | measured ÷ predicted |",
        "|---|---|---|---|---|---|---|",
        f"| {f['hours']:g} | {f['steps']} ({f['gate_steps']}) | {f['finished']} of "
        f"{f['n_trials']} | {f['gate_stopped']} | {f['predicted_trials_per_hour']:.1f} | "
        f"{f['measured_trials_per_hour']:.1f} | {ratio:.2f} |",
    ])


#: How each benchmark's figures read, by benchmark name.
RENDERERS: dict[str, Callable[[Record], str]] = {"init_forecast": _init_forecast}


def section(record: Record) -> str:
    if record.benchmark not in RENDERERS:
        raise SystemExit(f"benchmarks/records/{record.benchmark}.json: render.py has no "
                         f"renderer for it (add one to RENDERERS)")
    return "\n".join([BEGIN.format(name=record.benchmark), f"## {record.title}", "",
                      _provenance(record), "", RENDERERS[record.benchmark](record),
                      END.format(name=record.benchmark)])


def rendered(text: str, records: list[Record]) -> str:
    """``text`` with every record's section rendered in place (or appended)."""
    for record in records:
        begin, end = (re.escape(m.format(name=record.benchmark)) for m in (BEGIN, END))
        block = re.compile(f"{begin}.*?{end}", re.DOTALL)
        new = section(record)
        found = block.search(text)
        if found:
            text = text[:found.start()] + new + text[found.end():]
        else:
            text = text.rstrip("\n") + "\n\n" + new + "\n"
    known = {r.benchmark for r in records}
    for name in re.findall(r"<!-- rendered from benchmarks/records/(\w+)\.json", text):
        if name not in known:
            raise SystemExit(f"{RESULTS}: a section is rendered from records/{name}.json, "
                             f"which is gone: delete the section with its record")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 where RESULTS.md differs from its records")
    args = parser.parse_args()
    text = RESULTS.read_text()
    new = rendered(text, read_records())
    if args.check:
        if new != text:
            sys.stdout.writelines(difflib.unified_diff(
                text.splitlines(keepends=True), new.splitlines(keepends=True),
                "RESULTS.md (committed)", "RESULTS.md (rendered from the records)"))
            print("\nRESULTS.md differs from its records: run python benchmarks/render.py",
                  file=sys.stderr)
            raise SystemExit(1)
        return
    RESULTS.write_text(new)


if __name__ == "__main__":
    main()
