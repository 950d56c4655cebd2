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
        f"file it wrote. The prediction is the probe's (the study's start-up, run "
        f"short{probe}); the measurement is the study's finished trials over the wall time "
        f"from its first trial's start to its last one's end.",
        "",
        "| hours | recovery steps (gate after) | trials | stopped at the gate | predicted "
        "trials / h | measured trials / h | measured ÷ predicted |",
        "|---|---|---|---|---|---|---|",
        f"| {f['hours']:g} | {f['steps']} ({f['gate_steps']}) | {f['finished']} of "
        f"{f['n_trials']} | {f['gate_stopped']} | {f['predicted_trials_per_hour']:.1f} | "
        f"{f['measured_trials_per_hour']:.1f} | {ratio:.2f} |",
        "",
        f"A trial cost {', '.join(f'{x:.1f}' for x in f['quarter_trial_s'])} s on average "
        f"over the study's four quarters (in order): the sampler's guided trials got cheaper "
        f"as it settled on small models, which the prediction (the warm-start points' cost) "
        f"does not foresee; a longer study may beat it by more (not measured).",
    ])


def _ci(pair: list[float] | None, form: str = "{:.3f}") -> str:
    return f" [{form.format(pair[0])}, {form.format(pair[1])}]" if pair else ""


def _percent(pair: list[float]) -> str:
    return _ci([100 * x for x in pair], "{:.1f}")


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _paired(diff: dict) -> str:
    """A paired difference (fractions) in pp, with its interval, counts and McNemar's p."""
    return (f"{diff['difference'] * 100:+.1f} pp [{diff['low'] * 100:+.1f}, "
            f"{diff['high'] * 100:+.1f}] (+{diff['better']}/-{diff['worse']}, McNemar p = "
            f"{diff['p_value']:.2g})")


def _quickstart(record: Record) -> str:
    f = record.figures
    base, knee, v = f["baseline"], f["knee"], f["knee"]["verified"]
    stages = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in f["stages_s"].items())
    stages = f" ({stages})" if stages else ""
    rows = [
        "| trial | precision | val accuracy [95 % CI] | Δ pp vs baseline [95 % CI] | "
        "+better/-worse | p | kB | size ÷ | ms, depth -> grasp | speed-up | network ms | "
        "MMACs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| baseline | fp32 {base['variant']} | {base['accuracy']:.3f}"
        f"{_ci(base['accuracy_ci'])} | | | | {base['size'] / 1e3:.1f} | 1.0 | "
        f"{base['latency']:.2f} | 1.00 | {_ms(base['latency_network_ms'])} | "
        f"{base['macs'] / 1e6:.0f} |"]
    for r in f["front"]:
        better, worse = r["discordant"]
        rows.append(
            f"| {r['trial']} | {r['precision']} | {r['accuracy']:.3f}{_ci(r['accuracy_ci'])} | "
            f"{r['accuracy_change_pp']:+.1f}{_ci(r['accuracy_change_ci_pp'], '{:+.1f}')} | "
            f"+{better}/-{worse} | {r['accuracy_change_p']:.2g} | "
            f"{r['size_bytes'] / 1e3:.1f} | {r['size_reduction']:.1f} | "
            f"{r['latency_ms']:.2f} | {r['speedup']:.2f} | {_ms(r['latency_network_ms'])} | "
            f"{(r['macs'] or 0) / 1e6:.0f} |")
    n = v["test_images"]
    return "\n".join([
        f"The README's first command on a fresh clone and venv, nothing else running: "
        f"**{f['total_s']:.0f} s ({f['total_s'] / 60:.1f} min)** from the clone to the "
        f"exported, verified knee, the install included{stages}. The study: "
        f"{f['trials']} trials ({f['complete']} complete, {f['gate_stopped']} stopped at "
        f"the gate) in {f['optimising_s'] / 60:.1f} min. Its front as `ggopt search` "
        f"printed it (validation, {base['accuracy_images']} images; Δ paired with the "
        f"baseline on the same images, McNemar's p beside it; latencies are the study's "
        f"single timings):",
        "", *rows, "",
        f"The export's check of the knee (trial {knee['trial']}, artifact format "
        f"{knee['artifact_format']}) on data no study saw: test images "
        f"{round(v['test_accuracy'] * n)} of {n} against the baseline's "
        f"{round(v['baseline_test_accuracy'] * n)} of {n}, {_paired(v['test_accuracy_diff'])}; "
        f"simulated grasp success on {v['sim_scenes']} held-out scenes "
        f"{v['sim_success'] * 100:.1f} %{_percent(v['sim_success_ci'])} against "
        f"{v['baseline_sim_success'] * 100:.1f} %{_percent(v['baseline_sim_success_ci'])}, "
        f"{_paired(v['sim_success_diff'])}.",
    ])


#: How each benchmark's figures read, by benchmark name.
RENDERERS: dict[str, Callable[[Record], str]] = {"init_forecast": _init_forecast,
                                                  "quickstart": _quickstart}


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
