"""Renders the benchmark records (``benchmarks/records/*.json``) into RESULTS.md and the
README's results table.

    python benchmarks/render.py            # rewrite the rendered parts of both
    python benchmarks/render.py --check    # exit 1, with a diff, where a file differs

Each record owns one section of RESULTS.md, between the markers this script writes; a
record without a section yet gets one at the end. Records with a README cell
(``README_CELLS``) each give one row of the README's table, linked to their section. The
text between the markers is this script's: edit the record (re-run its benchmark) or the
renderer below, never the text. The tests run ``--check``, so the committed pages always
say what their records say.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # records.py beside this script

from records import Record, overlaps, read_records

from timing.protocol import extra_text, ratio_text

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


def _ci(pair: list[float | None] | None, form: str = "{:.3f}") -> str:
    """`` [low, high]``, or nothing where the record has no interval."""
    if not pair or None in pair:
        return ""
    return f" [{form.format(pair[0])}, {form.format(pair[1])}]"


def _percent(pair: list[float]) -> str:
    return _ci([100 * x for x in pair], "{:.1f}")


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _paired(diff: dict) -> str:
    """A paired difference (fractions) in pp, with its interval, counts and McNemar's p."""
    return (f"{diff['difference'] * 100:+.1f} pp [{diff['low'] * 100:+.1f}, "
            f"{diff['high'] * 100:+.1f}] (+{diff['better']}/-{diff['worse']}, McNemar p = "
            f"{diff['p_value']:.2g})")


def _synthesis(row: dict) -> str:
    """What the grasp synthesis adds, paired over the timing rounds, with its interval."""
    return extra_text(row["synthesis_ms"], *row.get("synthesis_ci", [None, None]))


def _front_table(base: dict, front: list[dict]) -> list[str]:
    """A study's front beside its baseline, as `ggopt pareto` prints it (end to end); the
    synthesis' paired cost where the study recorded it, else the network's median."""
    paired = base.get("synthesis_ms") is not None
    other = "synthesis, paired" if paired else "network ms"
    cell = _synthesis if paired else lambda r: _ms(r["latency_network_ms"])
    base = {**base, "synthesis_ci": [base.get("synthesis_low_ms"), base.get("synthesis_high_ms")]}
    rows = [
        "| trial | precision | val accuracy [95 % CI] | Δ pp vs baseline [95 % CI] | "
        f"+better/-worse | p | kB | size ÷ | ms, depth -> grasp | speed-up | {other} | "
        "MMACs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| baseline | fp32 {base['variant']} | {base['accuracy']:.3f}"
        f"{_ci(base['accuracy_ci'])} | | | | {base['size'] / 1e3:.1f} | 1.0 | "
        f"{base['latency']:.2f} | 1.00 | {cell(base)} | "
        f"{base['macs'] / 1e6:.0f} |"]
    for r in front:
        better, worse = r["discordant"]
        rows.append(
            f"| {r['trial']} | {r['precision']} | {r['accuracy']:.3f}{_ci(r['accuracy_ci'])} | "
            f"{r['accuracy_change_pp']:+.1f}{_ci(r['accuracy_change_ci_pp'], '{:+.1f}')} | "
            f"+{better}/-{worse} | {r['accuracy_change_p']:.2g} | "
            f"{r['size_bytes'] / 1e3:.1f} | {r['size_reduction']:.1f} | "
            f"{r['latency_ms']:.2f} | {r['speedup']:.2f}{_ci(r.get('speedup_ci'), '{:.2f}')} | "
            f"{cell(r)} | {(r['macs'] or 0) / 1e6:.0f} |")
    return rows


def _speedup_protocol(front: list[dict]) -> str:
    """How a front's speed-ups were timed, as its rows say."""
    drift = max((r.get("speedup_drift") or 0.0 for r in front), default=0.0)
    if drift > 0:
        return ("speed-up: baseline / trial, both timed in every round, in blocks of fresh "
                "sessions; 95 % interval over the blocks, widened by the drift between "
                f"timings the study measured (±{100 * drift:.1f} %)")
    if any((r.get("speedup_blocks") or 1) > 1 for r in front):
        return ("speed-up: baseline / trial, both timed in every round, in blocks of fresh "
                "sessions; 95 % interval over the blocks")
    if any(_ci(r.get("speedup_ci")) for r in front):
        return ("speed-up: the median over the timing rounds each trial shared with the "
                "baseline's file, 95 % interval")
    return "speed-up: the baseline's median over the trial's, timed apart"


def _test_images(v: dict) -> str:
    """A verification's test-image figures, or why there are none."""
    if "test_accuracy" not in v:
        return f"no test-image figures ({v.get('test_note', 'no test images')})"
    n = v["test_images"]
    return (f"test images {round(v['test_accuracy'] * n)} of {n} against the baseline's "
            f"{round(v['baseline_test_accuracy'] * n)} of {n}, "
            f"{_paired(v['test_accuracy_diff'])}")


def _quickstart(record: Record) -> str:
    f = record.figures
    base, knee, v = f["baseline"], f["knee"], f["knee"]["verified"]
    stages = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in f["stages_s"].items())
    stages = f" ({stages})" if stages else ""
    rows = _front_table(base, f["front"])
    speedups = _speedup_protocol(f["front"])
    return "\n".join([
        f"The README's first command on a fresh clone and venv, nothing else running: "
        f"**{f['total_s']:.0f} s ({f['total_s'] / 60:.1f} min)** from the clone to the "
        f"exported, verified knee, the install included{stages}. The study: "
        f"{f['trials']} trials ({f['complete']} complete, {f['gate_stopped']} stopped at "
        f"the gate) in {f['optimising_s'] / 60:.1f} min. Its front as `ggopt search` "
        f"printed it (validation, {base['accuracy_images']} images; Δ paired with the "
        f"baseline on the same images, McNemar's p beside it; latencies are the study's "
        f"timings; {speedups}):",
        "", *rows, "",
        f"The export's check of the knee (trial {knee['trial']}, artifact format "
        f"{knee['artifact_format']}) on data no study saw: {_test_images(v)}; "
        f"simulated grasp success on {v['sim_scenes']} held-out scenes "
        f"{v['sim_success'] * 100:.1f} %{_percent(v['sim_success_ci'])} against "
        f"{v['baseline_sim_success'] * 100:.1f} %{_percent(v['baseline_sim_success_ci'])}, "
        f"{_paired(v['sim_success_diff'])}.",
    ])


def _speedup_method(f: dict) -> str:
    """How a benchmark record's speed-ups and their intervals were computed."""
    if f.get("drift_sd"):
        return (f"over blocks of fresh sessions, its 95 % interval widened by the drift "
                f"between timings the study measured (±{100 * f['drift_sd']:.1f} %, from "
                f"{f['drift_pairs']} re-timings)")
    if any((r["speedup"].get("blocks") or 1) > 1 for r in f["rows"]):
        return "over blocks of fresh sessions, with its 95 % interval over the blocks"
    return "the median of per-round ratios with its 95 % interval"


def _speedup(speedup: dict) -> str:
    """``5.42x [5.31, 5.55]``: a paired speed-up, with its interval over timing blocks."""
    return ratio_text(speedup["value"], speedup["low"], speedup["high"])


def _rate(rate: dict) -> str:
    return (f"{rate['value'] * 100:.1f} %{_percent([rate['low'], rate['high']])} "
            f"({rate['successes']} of {rate['n']})")


def _end_to_end(record: Record) -> str:
    f = record.figures
    rows = ["| row | network ms | post-processing ms | end-to-end ms | end to end minus "
            "network, paired [95 % CI] | speed-up over the strongest baseline, end to end "
            "[95 % CI] |", "|---|---|---|---|---|---|"]
    rows += [f"| {r['row']} | {r['network_ms']:.2f} | {r['post_ms']:.2f} | {r['e2e_ms']:.2f} | "
             f"{extra_text(r['extra']['value'], r['extra']['low'], r['extra']['high'])} | "
             f"{_speedup(r['speedup'])} |" for r in f["rows"]]
    agree = ["| file | same peak pixel and flag | accuracy, in the file | accuracy, numpy "
             "reference | paired difference |", "|---|---|---|---|---|"]
    agree += [f"| {a['file']} | {a['same']} of {f['images']} | {_rate(a['graph'])} | "
              f"{_rate(a['reference'])} | {_paired(a['paired'])} |" for a in f["agreement"]]
    rounds = f["rows"][0]["speedup"]["rounds"]
    return "\n".join([
        f"GG-CNN at 300 px on ONNX Runtime, batch 1, 1 thread; the uncompressed network's "
        f"fastest exact form here: {f['fastest_form']}. A file row is timed as a study times "
        f"a trial beside its baseline (its network and end to end, the strongest baseline's "
        f"two, in every round), its synthesis alone in rounds of its own; a numpy row's "
        f"rounds hold its network, its numpy code, the two together and the strongest "
        f"baseline's two calls. {rounds} rounds a row ({f['rounds']} passes round-robin over "
        f"the rows): medians over rounds; end to end minus network is the median of the "
        f"per-round differences, with its 95 % interval over this run's rounds; the "
        f"speed-up {_speedup_method(f)} (the strongest baseline against a second session of "
        f"itself shows what a run's own setting adds).", "", *rows, "",
        f"The grasp each file computes against the float64 numpy reference on the same maps, "
        f"{f['images']} validation images:", "", *agree])


def _baselines(record: Record) -> str:
    f = record.figures
    rows = ["| model | parameters | IoU-match accuracy, test [95 % CI] | Δ paired | "
            "simulated grasp success [95 % CI] | Δ paired |", "|---|---:|---|---|---|---|"]
    for r in f["rows"]:
        test_diff, sim_diff = (("", "") if r["test_diff"] is None else
                               (_paired(r["test_diff"]), _paired(r["sim_diff"])))
        rows.append(f"| {r['model']} | {r['params']:,} | {_rate(r['test'])} | {test_diff} | "
                    f"{_rate(r['sim'])} | {sim_diff} |")
    return "\n".join([
        f"On {f['data']}: {f['test_images']} test images of objects never trained on, and "
        f"{f['sim_scenes']} simulated held-out scenes with one executed grasp each. Every "
        f"model on the same images and scenes; Δ is paired with {f['reference']} (Tango's "
        f"interval, McNemar's p).", "", *rows])


def _sim_trials(record: Record) -> str:
    f = record.figures
    speed = ", ".join(f"{rate:.1f} trials/s with {workers} worker{'s' * (workers != '1')}"
                      for workers, rate in f["trials_per_s"].items())
    overnight = (f" {f['seconds_per_scene']:.2f} s a scene with {f['workers']} workers on "
                 f"these scenes; the overnight recipe is timed in "
                 f"[its own section](#the-overnight-data-recipe-timed).")
    return (f"Labelling {f['scenes']} scenes (scene generation, rendering and the grasp "
            f"trials, as `ggopt data sim` does): {speed}.{overnight} On the same scenes, "
            f"antipodal candidates succeed {_rate(f['success']['antipodal'])} and random "
            f"grasps on objects {_rate(f['success']['random'])}.")


def _overnight_data(record: Record) -> str:
    """The recipe split by split, each split from the newest run that made it as the recipe
    now labels it (runs on other days add up: :func:`joined_runs`)."""
    from search.cli_prepare import RECIPES

    labelling = {split: k for _, splits, k in RECIPES["overnight"] for split in splits}
    runs = [*record.figures.get("earlier", []), {**record.figures, "commit": record.commit,
                                                  "date": record.date}]
    made = {}
    for run in runs:  # oldest first: a newer run of a split replaces an older one
        made.update({split: (c, run) for split, c in run["splits"].items()
                     if c["per_object"] == labelling.get(split)})
    rows = ["| split | candidates per object | scenes | labelled images | robust grasps | "
            "grasp trials | wall time | run |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for split in [s for s in ("train", "val", "test") if s in made]:
        c, run = made[split]
        rows.append(f"| {split} | {c['per_object']} | {c['scenes']:,} | {c['images']:,} | "
                    f"{c['grasps']:,} | {c['trials']:,} | {c['seconds'] / 60:.0f} min | "
                    f"{run['commit'][:7]}, {run['date']}, {run['workers']} workers |")
    missing = [s for s in labelling if s not in made]
    left = f" Not yet timed: {' or '.join(missing)}." if missing else ""
    beside = [f"{run['commit'][:7]}: {run['beside']}" for run in runs if run.get("beside")
              and any(r is run for _, r in made.values())]
    if beside:
        left += f" Beside the runs: {'; '.join(beside)}."
    total = sum(c["seconds"] for c, _ in made.values())
    older = "; ".join(f"{run['command']} (commit {run['commit'][:7]}, {run['machine']})"
                      for run in runs[:-1] if any(r is run for _, r in made.values()))
    return "\n".join([
        f"`ggopt data sim` with the overnight recipe's scenes and labelling, split by split "
        f"into an empty folder: **{total / 3600:.2f} h** for {', '.join(made)}, each split "
        f"from the newest run that made it as the recipe labels it now"
        + (f" (earlier runs: {older})" if older else "") + f".{left} A labelled image is a "
        f"scene with at least one robust grasp.", "", *rows])


def joined_runs(records: list[Record]) -> list[Record]:
    """Records whose runs add up to one measurement (``overnight_data``: splits timed on
    different days) as one: the newest, holding the older ones' figures as ``earlier``."""
    parts = sorted((r for r in records if r.benchmark == "overnight_data"),
                   key=lambda r: (r.date, r.stem))
    if len(parts) < 2:
        return records
    earlier = [{**r.figures, "commit": r.commit, "date": r.date, "command": r.command,
                "machine": r.machine.line()} for r in parts[:-1]]
    newest = parts[-1].model_copy(update={"figures": {**parts[-1].figures,
                                                      "earlier": earlier}})
    return [newest if r is parts[-1] else r for r in records if r not in parts[:-1]]


def _racing_replay(record: Record) -> str:
    f = record.figures
    rows = ["| study | complete trials | validation images | looks after | images a trial, "
            "racing | fewer images | trials stopped | its front | front trials racing stops |",
            "|---|---:|---:|---|---:|---:|---:|---|---|"]
    for s in f["studies"]:
        lost = "; ".join(f"{n}: {why}" for n, why in s["front_lost"].items()) or "none"
        rows.append(f"| `{s['study']}` | {s['trials']} | {s['images']} | "
                    f"{', '.join(map(str, s['looks']))} | {s['mean_images']:.1f} | "
                    f"{s['saving']:.2f}x | {s['stopped']} | {len(s['front'])} trials | "
                    f"{lost} |")
    return "\n".join([
        f"Each study's complete trials, in the order they finished, raced as a study would "
        f"race them (first block {f['first_pass']} images, doubling; error rate "
        f"{(1 - f['confidence']) * 100:.0f} % spent over the looks) against the trials the "
        f"replay kept and the baseline, on their stored per-image hits. Front: the study's "
        f"own feasible front; a front trial racing stops is a trial the rule would have "
        f"lost.", "", *rows])


def _mmacs(macs: float | None) -> str:
    return "-" if macs is None else f"{macs / 1e6:.0f}"


def _best_models(record: Record) -> str:
    f = record.figures
    rows = ["| model | precision | val accuracy [95 % CI] | Δ val, paired | test accuracy | "
            f"Δ test, paired | ms, {f['scope']} | speed-up [95 % CI] | kB | size ÷ | MMACs |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in f["rows"]:
        test = (f"{_rate(r['test'])} | {_paired(r['test_diff'])}" if r["test"] else "- | -")
        rows.append(f"| {r['model']} | {r['precision']} | {_rate(r['val'])} | "
                    f"{_paired(r['val_diff'])} | {test} | {r['latency_ms']:.2f} | "
                    f"{_speedup(r['speedup'])} | {r['size_bytes'] / 1e3:.1f} | "
                    f"{r['size_reduction']:.2f}x | {_mmacs(r['macs'])} |")
    rounds = f["rows"][0]["speedup"]["rounds"]
    return "\n".join([
        f"Study `{f['study']}` ({f['complete_trials']} complete trials), {f['runtime']}, "
        f"{f['threads']} thread(s). Every reference is built as an artifact; each file's own "
        f"grasp is scored (GG-CNN's metric) on {f['val_images']} validation and "
        f"{f['test_images']} test images, differences paired with the strongest baseline on "
        f"the same images; single techniques recover {f['steps']} steps. Latency "
        f"{f['scope']}: every file timed in the same {rounds} rounds as the strongest "
        f"baseline ({f['rounds']} passes round-robin over the files); the speed-up "
        f"{_speedup_method(f)}.", "", *rows])


def _predicted(f: dict) -> str:
    predicted = f.get("predicted_trials_per_hour")
    return (f" (`ggopt init`, which wrote the study file, predicted {predicted:.0f})"
            if predicted else "")


def _study_front(record: Record) -> str:
    f = record.figures
    t, base = f["baseline_training"], f["baseline"]
    training = (f"The baseline, `{t['checkpoint']}`, was trained by `ggopt train` on "
                f"{t['train_images']} images (its last run: {t['epochs']} epochs of batch "
                f"{t['batch_size']}, lr {t['lr']:g} {t['lr_schedule']}, {t['crop']}-px crops, "
                f"pos-weight {t['pos_weight']:g}, {t['train_seconds'] / 60:.0f} min) and chosen "
                f"at validation accuracy {t['best_val_accuracy']:.3f}. "
                if t.get("train_seconds") else "")
    verified = ["| trial | test accuracy | baseline | paired difference | simulated grasp "
                "success | baseline | paired difference |", "|---|---|---|---|---|---|---|"]
    notes = []
    for number, v in f["verified"].items():
        n, scenes = v.get("test_images"), v.get("sim_scenes")
        sim = (f"{v['sim_success'] * 100:.1f} %{_percent(v['sim_success_ci'])} of {scenes} | "
               f"{v['baseline_sim_success'] * 100:.1f} %"
               f"{_percent(v['baseline_sim_success_ci'])} | {_paired(v['sim_success_diff'])}"
               if scenes else "- | - | -")
        test = (f"{v['test_accuracy'] * 100:.1f} %{_percent(v['test_accuracy_ci'])} of {n} | "
                f"{v['baseline_test_accuracy'] * 100:.1f} % | "
                f"{_paired(v['test_accuracy_diff'])}" if n else "- | - | -")
        verified.append(f"| {number} | {test} | {sim} |")
        if not n and v.get("test_note"):
            notes.append(f"Trial {number}: {v['test_note']}")
    note = f"{f['note']} " if f.get("note") else ""
    return "\n".join([
        f"{training}{note}The study (`{f['model']}`, objectives {', '.join(f['objectives'])}; "
        f"constraints {', '.join(f['constraints']) or 'none'}; {f['recovery_steps']} "
        f"recovery steps at a peak rate of {f['recovery_lr']:g}): {f['trials']} trials "
        f"({f['complete']} complete, "
        f"{f['gate_stopped']} stopped at the gate) in {f['optimising_hours']:.2f} h, "
        f"{f['trials_per_hour']:.1f} trials an hour{_predicted(f)}. Its feasible front "
        f"(validation, "
        f"{base['accuracy_images']} images; Δ paired with the baseline on the same images; "
        f"{_speedup_protocol(f['front'])}):", "", *_front_table(base, f["front"]), "",
        "The front trials a user would most likely pick, on data the study never saw "
        "(test images; simulated grasps on held-out scenes), each paired with the baseline "
        "on the same images and scenes:", "", *verified, *(["", *notes] if notes else [])])


def _pp(diff: dict) -> str:
    """``-3.9 pp [-10.4, +2.6]``: a paired difference in short."""
    return (f"{diff['difference'] * 100:+.1f} pp [{diff['low'] * 100:+.1f}, "
            f"{diff['high'] * 100:+.1f}]")


def _front_cell(row: dict, images: int) -> str:
    speedup = ratio_text(row["speedup"], *(row.get("speedup_ci") or [None, None]))
    return (f"{row['size_reduction']:.1f}x smaller, {speedup} faster end to end, "
            f"{row['accuracy_change_pp']:+.1f} pp{_ci(row['accuracy_change_ci_pp'], '{:+.1f}')}"
            f" on {images} validation images")


def _quickstart_cell(record: Record) -> tuple[str, str]:
    f = record.figures
    knee = next(r for r in f["front"] if r["trial"] == f["knee"]["trial"])
    return (f"The quick start's knee, {f['total_s'] / 60:.1f} min from a fresh clone",
            "against GG-CNN: " + _front_cell(knee, f["baseline"]["accuracy_images"]))


def _study_front_cell(record: Record) -> tuple[str, str]:
    f = record.figures
    number, v = next(iter(f["verified"].items()))
    row = next(r for r in f["front"] if str(r["trial"]) == number)
    name = {"ggcnn": "GG-CNN", "ggcnn2": "GG-CNN2", "grconvnet": "GR-ConvNet"}
    return (f"A {name.get(f['model'], f['model'])} study, {f['optimising_hours']:.1f} h",
            f"{row['precision']}: {_front_cell(row, f['baseline']['accuracy_images'])}; "
            f"{_pp(v['test_accuracy_diff'])} on {v['test_images']} test images")


def _end_to_end_cell(record: Record) -> tuple[str, str]:
    f = record.figures
    numpy_row, file_row = f["rows"][0], next(r for r in f["rows"] if "strongest" in r["row"])
    same = min(a["same"] for a in f["agreement"])
    return ("Grasp synthesis inside the file",
            f"{extra_text(*(file_row['extra'][k] for k in ('value', 'low', 'high')))} "
            f"end to end against {numpy_row['post_ms']:.2f} ms for numpy post-processing; the "
            f"same grasp on {same} of {f['images']} images")


def _best_models_cell(record: Record) -> tuple[str, str]:
    f = record.figures
    single = [r for r in f["rows"] if "fine-tune" in r["model"] or r["model"].startswith("int8")]
    study = [r for r in f["rows"] if r["model"].startswith("study trial")]
    best_single = max(single, key=lambda r: r["speedup"]["value"])
    fastest = max(study, key=lambda r: r["speedup"]["value"])
    return ("The study's fastest model against single techniques, timed side by side",
            f"{fastest['model']}: {_speedup(fastest['speedup'])} the strongest baseline; the "
            f"best single technique ({best_single['model'].split(',')[0]}): "
            f"{_speedup(best_single['speedup'])}")


def _init_forecast_cell(record: Record) -> tuple[str, str]:
    f = record.figures
    return ("`ggopt init`'s forecast of trials per hour",
            f"{f['predicted_trials_per_hour']:.0f} predicted, "
            f"{f['measured_trials_per_hour']:.0f} measured")


def _short_rate(rate: dict) -> str:
    """``68 % [58, 76]``."""
    return (f"{rate['value'] * 100:.0f} % [{rate['low'] * 100:.0f}, "
            f"{rate['high'] * 100:.0f}]")


def _baselines_cell(record: Record) -> tuple[str, str]:
    f = record.figures
    names = {"ggcnn": "GG-CNN", "ggcnn2": "GG-CNN2", "grconvnet": "GR-ConvNet"}
    sims = ", ".join(f"{names.get(r['model'].split(' ')[0], 'random grasps')} "
                     f"{_short_rate(r['sim'])}" for r in f["rows"])
    return ("The shipped baselines in simulation",
            f"grasp success on {f['sim_scenes']} held-out scenes: {sims}")


def _span(values: list[float]) -> str:
    """``1.01-1.24``, or one value where they are all alike."""
    low, high = f"{min(values):.2f}", f"{max(values):.2f}"
    return low if low == high else f"{low}-{high}"


def _racing_cell(record: Record) -> tuple[str, str]:
    f = record.figures
    savings = [s["saving"] for s in f["studies"]]
    lost = sum(len(s["front_lost"]) for s in f["studies"])
    front = sum(len(s["front"]) for s in f["studies"])
    return ("Racing, replayed on completed studies",
            f"{_span(savings)}x fewer images scored; {lost} of {front} "
            f"front trials lost")


def _timing_drift(record: Record) -> str:
    f = record.figures
    timings = f["timings"]
    values = [t["speedup"]["value"] for t in timings]
    pairs = [(a["speedup"], b["speedup"]) for i, a in enumerate(timings)
             for b in timings[i + 1:]]
    apart = sum(1 for a, b in pairs if overlaps(a, b) is False)
    rows = ["| timing | at s | file ms | reference ms | speed-up [95 % CI] |",
            "|---:|---:|---:|---:|---|"]
    rows += [f"| {t['timing']} | {t['at_s']:.0f} | {t['file_ms']:.2f} | "
             f"{t['reference_ms']:.2f} | {_speedup(t['speedup'])} |" for t in timings]
    p = f["protocol"]
    return "\n".join([
        f"`{f['file']}` against `{f['reference']}`, each timing as a study times a trial "
        f"beside its baseline ({p['runs']} rounds and {p['min_seconds']:g} s at least, in "
        f"{p.get('blocks', 1)} blocks of fresh sessions, 1 thread), {f['train_s']:g} s of "
        f"GG-CNN training between timings. The speed-up moved {min(values):.2f}-"
        f"{max(values):.2f}x between timings; **{len(pairs) - apart} of {len(pairs)}** "
        f"pairs of timings have overlapping 95 % intervals.", "", *rows])


def _fidelity_cell(record: Record) -> tuple[str, str]:
    f = record.figures
    return ("A study's speed-ups, timed again",
            f"{f['overlapping']} of {f['judged']} re-timed intervals overlap the study's "
            f"(with its measured drift, ±{100 * f['drift_sd']:.1f} %); rank correlation "
            f"{f['spearman']:.2f}")


def _latency_fidelity(record: Record) -> str:
    f, p = record.figures, record.figures["protocol"]
    passes = range(f["passes"])
    rows = ["| trial | precision | the study's speed-up [95 % CI] | "
            + " | ".join(f"pass {k + 1} [95 % CI]" for k in passes) + " |",
            "|---|---|---|" + "---|" * f["passes"]]
    for r in f["rows"]:
        cells = [_speedup(again) + (" apart" if o is False else "")
                 for again, o in zip(r["passes"], r["overlaps"], strict=True)]
        rows.append(f"| {r['trial']} | {r['precision']} | {_speedup(r['study'])} | "
                    + " | ".join(cells) + " |")
    scope = "depth in -> grasp out" if f["scope"] == "end_to_end" else "the network alone"
    own = len([o for r in f["rows"] for o in r["overlaps_own"] if o is not None])
    return "\n".join([
        f"Study `{f['study']}`: every complete trial's file timed again beside the "
        f"baseline's, as the study timed it ({scope}; {p['runs']} rounds and "
        f"{p['min_seconds']:g} s at least, in {p['blocks']} blocks of fresh sessions, "
        f"{p['threads']} thread), round-robin over the files for {f['passes']} passes, "
        f"minutes after the study. The study's controls (each trial re-timed an earlier "
        f"trial's file) put the drift between timings at ±{100 * f['drift_sd']:.1f} % (SD, "
        f"from {f['drift_pairs']} re-timings); with it in every interval, as the review "
        f"shows them, **{f['overlapping']} of {f['judged']}** re-timed intervals overlap "
        f"the study's (the others are marked apart); with one timing's own intervals, "
        f"{f['overlapping_own']} of {own}. Spearman's rank correlation between the study's "
        f"speed-ups and the passes' median: {f['spearman']:.3f}.", "", *rows])


def _int8_weight_bits(record: Record) -> str:
    f = record.figures
    test = f["test_images"] > 0
    rows = ["| artifact | val accuracy [95 % CI] | Δ vs fp32, paired | "
            + ("test accuracy | Δ test | " if test else "")
            + "kB | network median ms | speed-up over fp32 [95 % CI] |",
            "|---|---|---|" + ("---|---|" if test else "") + "---:|---:|---|"]
    for r in f["rows"]:
        diff = _paired(r["val_diff"]) if r["val_diff"] else ""
        tests = (f"{_rate(r['test'])} | {_paired(r['test_diff']) if r['test_diff'] else ''} | "
                 if test else "")
        rows.append(f"| {r['artifact']} | {_rate(r['val'])} | {diff} | {tests}"
                    f"{r['size_bytes'] / 1e3:.1f} | {r['network_ms']:.2f} | "
                    f"{_speedup(r['speedup'])} |")
    model = f"the trial exported to {f['exported']}" if f["exported"] else (
        "the uncompressed sub-pixel model")
    return "\n".join([
        f"Study `{f['study']}`'s data (VNNI on this CPU: {f['vnni']}): {model}, fp32 and "
        f"int8 with 8- and 7-bit weights (ggopt's), each file's own grasp on "
        f"{f['val_images']} validation images paired with the fp32 file; each network "
        f"timed beside the fp32 file's by the study's protocol ({f['threads']} thread, "
        f"{f['blocks']} blocks). ggopt quantizes weights on 7 bits on every CPU: without "
        f"VNNI the 8th bit can saturate int8 x uint8 pairs summed into int16.", "", *rows])


def knobs_text(f: dict) -> str:
    """knobs.py's table: each variant's size, MACs and speed-up over the exact sub-pixel form,
    and its paired accuracy where the run recovered and scored the variants."""
    scored = "val_images" in f
    rows = ["| variant | runtime | precision | network ms | speed-up over sub-pixel fp32 "
            "[95 % CI] | kB | MMACs | params |"
            + (" val accuracy [95 % CI] | Δ vs uncompressed, paired |" if scored else ""),
            "|---|---|---|---:|---|---:|---:|---:|" + ("---|---|" if scored else "")]
    for r in f["rows"]:
        cells = (f" {_rate(r['val'])} | {_paired(r['val_diff'])} |" if scored else "")
        rows.append(f"| {r['variant']} | {r['runtime']} | {r['precision']} | "
                    f"{r['network_ms']:.2f} | {_speedup(r['speedup'])} | "
                    f"{r['size_bytes'] / 1e3:.1f} | {r['macs'] / 1e6:.0f} | "
                    f"{r['params']:,} |{cells}")
    where = "CPU, 1 thread" if f["device"] == "cpu" else "GPU"
    weights = (f"the trained model of study `{f['study']}`, each variant that changes the "
               f"function recovered for {f['steps']} steps of its recipe and scored (its own "
               f"grasp) on {f['val_images']} validation images, paired with the uncompressed "
               f"file on the same images" if scored else
               "untrained weights (speed and size do not depend on them)")
    return "\n".join([
        f"{f['model']}, {weights}. Each variant is built as its deployable artifact "
        f"(pruning before the sub-pixel rewrite, dilate and group after it, as in a study) "
        f"and timed beside the exact sub-pixel form of the uncompressed model, the network "
        f"alone, {where}, batch 1, 300x300, by the study's protocol ({f['blocks']} blocks "
        f"of fresh sessions, at least {f['runs']} rounds each, {f['rounds']} pass(es) "
        f"round-robin over the files); {f['runtime_versions']}."
        + (f" {f['note']}" if f.get("note") else ""), "", *rows])


def agent_text(f: dict) -> str:
    """agent.py's tables: one speed-up timed here and through the agent, and what the agent
    adds to a trial."""
    protocol = f["protocol"]
    rows = ["| scope | int8 / fp32 ms here | there | speed-up here [95 % CI] | there | "
            "agent ÷ here [95 % CI] | control: here again ÷ here |",
            "|---|---|---|---|---|---|---|"]
    for r in f["rows"]:
        ratios = [_speedup(x) for x in (r["agent_over_local"], r["control"])]
        rows.append(f"| {r['scope'].replace('_', ' ')} | {r['local_ms']['int8']:.2f} / "
                    f"{r['local_ms']['fp32']:.2f} | {r['agent_ms']['int8']:.2f} / "
                    f"{r['agent_ms']['fp32']:.2f} | {_speedup(r['local_speedup'])} | "
                    f"{_speedup(r['agent_speedup'])} | {ratios[0]} | {ratios[1]} |")
    cost = ["| workers on the agent | trial timed here, s | through the agent | added | "
            "upload | waiting for the other worker | timing on the agent |",
            "|---|---|---|---|---|---|---|"]
    for c in f["cost"]:
        cost.append(f"| {c['workers']} | {c['here_s']:.2f} | {c['agent_s']:.2f} | "
                    f"{c['agent_s'] - c['here_s']:+.2f} | {c['upload_s']:.3f} | "
                    f"{c['wait_s']:.2f} | {c['timing_s']:.2f} |")
    sizes = ", ".join(f"{p} {b / 1e3:.0f} kB" for p, b in f["sizes_bytes"].items())
    return "\n".join([
        f"The agent ran on the same machine in a subprocess on loopback (`python -m "
        f"timing.agent`). GG-CNN's int8 file was timed beside its fp32 file (exact "
        f"sub-pixel form, grasp synthesis inside; {sizes}) by the study's protocol "
        f"({protocol['threads']} thread, {protocol['warmup']} warm-up runs, at least "
        f"{protocol['runs']} runs and {protocol['min_seconds']:g} s, {protocol['blocks']} "
        f"blocks of fresh sessions), here and through the agent in alternation over "
        f"{f['rounds']} rounds, then here again as a control. Speed-ups join their rounds' "
        f"blocks; a ratio of two speed-ups has Welch's interval on the blocks' logs.", "",
        *rows, "",
        f"What the agent adds to a trial (its file, new to the agent, timed beside the "
        f"baseline at both scopes; mean of {f['cost'][0]['trials']} trials per worker and row, "
        f"seconds; with two workers one of each pair waits for the other's timing, as it "
        f"must: the agent never times two files at once):", "", *cost])


def _trial_cost(record: Record) -> str:
    f = record.figures
    rows = ["| stage | median s | mean s | max s | share of trial time |",
            "|---|---:|---:|---:|---:|"]
    for stage, v in [*f["stages"].items(), ("**trial**", f["trial_s"])]:
        rows.append(f"| {stage} | {v['median_s']:.2f} | {v['mean_s']:.2f} | "
                    f"{v['max_s']:.2f} | {v['share']:.0%} |")
    setup = ("" if f["trials_per_hour_with_setup"] is None else
             f", {f['trials_per_hour_with_setup']:.0f} with the study's setup included "
             f"({f['setup_s']:.0f} s: data check, baseline)")
    source = ("the study's own trials, read from its storage" if f["existing"] else
              "a fresh run of the study file into scratch storage")
    text = "\n".join([
        f"Study `{f['study']}`, {source}: {f['trials']} trials ({f['complete']} complete, "
        f"{f['gate_stopped']} stopped at the gate, {f['screened_out']} after the first "
        f"scoring pass); **{f['trials_per_hour']:.0f} trials an hour** while optimising"
        f"{setup}. Stages as each trial records them (control: the re-timing of an earlier "
        f"trial that measures the drift between timings; other: sampling, tracking, "
        f"storage).", "", *rows])
    return text if "before" not in f else text + "\n\n" + _trial_cost_before(f)


def _trial_cost_before(f: dict) -> str:
    """The same study run first with some settings changed, in the same run: both runs'
    mean stage seconds and trials an hour, and the trials sampled alike, paired."""
    b = f["before"]
    changed = ", ".join(f"`{k} = {json.dumps(v)}`" for k, v in f["before_changes"].items())
    rows = ["| stage | mean s before | mean s after |", "|---|---:|---:|"]
    pairs = [(stage, b["stages"][stage], v) for stage, v in f["stages"].items()]
    for stage, was, now in [*pairs, ("**trial**", b["trial_s"], f["trial_s"])]:
        rows.append(f"| {stage} | {was['mean_s']:.2f} | {now['mean_s']:.2f} |")
    p = f["paired"]
    paired = ("" if p["ratio"] is None else
              f" The {p['trials']} trials both runs sampled alike took "
              f"{ratio_text(p['ratio'], p['low'], p['high'])} as long before as after "
              f"(geometric mean, t interval over those trials).")
    return "\n".join([
        f"Before, in the same run on the same machine: the same study with {changed}: "
        f"{b['trials']} trials ({b['complete']} complete, {b['gate_stopped']} stopped at "
        f"the gate, {b['screened_out']} after the first scoring pass), "
        f"**{b['trials_per_hour']:.0f} trials an hour** while optimising.{paired}", "",
        *rows])


def recovery_compute_text(f: dict) -> str:
    """recovery_compute.py's table: each compute's seconds a step and accuracy, paired with
    the fp32 recovery of the same variant."""
    computes = [c for c in f["rows"][0] if c != "variant"]
    rows = ["| variant | " + " | ".join(f"{c}: ms a step (speed-up) | {c}: val accuracy, "
                                        f"Δ vs fp32" for c in computes) + " |",
            "|---|" + "---|---|" * len(computes)]
    for r in f["rows"]:
        cells = []
        for c in computes:
            x = r[c]
            diff = "" if c == "fp32" else f", {_paired(x['val_diff'])}"
            cells.append(f"{x['step_ms']:.0f} ({x['speedup']:.2f}x) | {_rate(x['val'])}{diff}")
        rows.append(f"| {r['variant']} | " + " | ".join(cells) + " |")
    pooled = [f"{c}: {ratio_text(v['speedup'], *(v['speedup_ci'] or [None, None]))} the "
              f"speed of fp32 (geometric mean over variants, t interval), accuracy "
              f"{_paired(v['val_diff'])} over every (variant, image) pair"
              for c, v in f["pooled"].items()]
    return "\n".join([
        f"Study `{f['study']}` ({f['model']}): each variant recovered {f['steps']} steps from "
        f"the same start, pool, recipe and seed once per compute (batch {f['batch_size']}, "
        f"{f['crop'] or 'whole'}-px crops, 1 thread), the computes' order rotated between "
        f"variants; each recovered model exported (fp32 ONNX) and its own grasp scored on "
        f"{f['val_images']} validation images, paired with the fp32 recovery of the same "
        f"variant.", "", *rows, "", *[f"- {line}" for line in pooled]])


def _tables(record: Record) -> str:
    """A record of the tables a benchmark printed (records.table_figures), as Markdown."""
    out = []
    for table in record.figures["tables"]:
        if table["title"]:
            out += [f"{table['title']}:", ""]
        out += ["| " + " | ".join(table["columns"]) + " |",
                "|" + "---|" * len(table["columns"])]
        out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
                for row in table["rows"]]
        out.append("")
    out += [f"- {note}" for note in record.figures["notes"]]
    return "\n".join(out).rstrip("\n")


def _sim_trials_cell(record: Record) -> tuple[str, str]:
    s = record.figures["success"]
    return ("Simulated grasp labels",
            f"antipodal candidates succeed {_short_rate(s['antipodal'])} of "
            f"{s['antipodal']['n']}, random grasps on objects {_short_rate(s['random'])} of "
            f"{s['random']['n']}")


#: The README's results table: one short cell per record, in this order.
README_CELLS: dict[str, Callable[[Record], tuple[str, str]]] = {
    "quickstart": _quickstart_cell, "study_front": _study_front_cell,
    "end_to_end": _end_to_end_cell, "best_models": _best_models_cell,
    "latency_fidelity": _fidelity_cell, "racing_replay": _racing_cell,
    "init_forecast": _init_forecast_cell, "baselines": _baselines_cell,
    "sim_trials": _sim_trials_cell}
README = RESULTS.parent.parent / "README.md"
README_BEGIN = "<!-- results rendered from benchmarks/records by benchmarks/render.py -->"
README_END = "<!-- end of results -->"


def _anchor(title: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def readme_table(records: list[Record]) -> str:
    """The README's results table, a row per record that has a cell, linked to its section."""
    order = list(README_CELLS)
    rows = ["| what | result | measured |", "|---|---|---|"]
    shown = set()  # a row per benchmark: its first record; the rest are in RESULTS.md
    for record in sorted((r for r in records if r.benchmark in README_CELLS),
                         key=lambda r: (order.index(r.benchmark), r.stem)):
        if record.benchmark in shown:
            continue
        shown.add(record.benchmark)
        what, result = README_CELLS[record.benchmark](record)
        rows.append(f"| {what} | {result} | [{record.date}]"
                    f"(benchmarks/RESULTS.md#{_anchor(record.title)}) |")
    return "\n".join([README_BEGIN, *rows, README_END])


def rendered_readme(text: str, records: list[Record]) -> str:
    begin, end = re.escape(README_BEGIN), re.escape(README_END)
    block = re.compile(f"{begin}.*?{end}", re.DOTALL)
    if not block.search(text):
        raise SystemExit(f"{README}: no results table markers ({README_BEGIN})")
    return block.sub(lambda _: readme_table(records), text)


def _of_figures(text: Callable[[dict], str]) -> Callable[[Record], str]:
    """A renderer from a text function of the figures alone (which its benchmark also
    prints to the console)."""
    return lambda record: text(record.figures)


#: How each benchmark's figures read, by benchmark name.
RENDERERS: dict[str, Callable[[Record], str]] = {"agent": _of_figures(agent_text),
                                                  "baselines": _baselines,
                                                  "best_models": _best_models,
                                                  "end_to_end": _end_to_end,
                                                  "init_forecast": _init_forecast,
                                                  "int8_weight_bits": _int8_weight_bits,
                                                  "knobs": _of_figures(knobs_text),
                                                  "latency_fidelity": _latency_fidelity,
                                                  "overnight_data": _overnight_data,
                                                  "quickstart": _quickstart,
                                                  "racing_replay": _racing_replay,
                                                  "recovery_compute": _of_figures(
                                                      recovery_compute_text),
                                                  "sim_trials": _sim_trials,
                                                  "study_front": _study_front,
                                                  "timing_drift": _timing_drift,
                                                  "trial_cost": _trial_cost}


def section(record: Record) -> str:
    renderer = RENDERERS.get(record.benchmark,
                             _tables if "tables" in record.figures else None)
    if renderer is None:
        raise SystemExit(f"benchmarks/records/{record.stem}.json: render.py has no "
                         f"renderer for it (add one to RENDERERS)")
    return "\n".join([BEGIN.format(name=record.stem), f"## {record.title}", "",
                      _provenance(record), "", renderer(record),
                      END.format(name=record.stem)])


def rendered(text: str, records: list[Record]) -> str:
    """``text`` with every record's section rendered in place (or appended)."""
    for record in records:
        begin, end = (re.escape(m.format(name=record.stem)) for m in (BEGIN, END))
        block = re.compile(f"{begin}.*?{end}", re.DOTALL)
        new = section(record)
        found = block.search(text)
        if found:
            text = text[:found.start()] + new + text[found.end():]
        else:
            text = text.rstrip("\n") + "\n\n" + new + "\n"
    known = {r.stem for r in records}
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
    records = joined_runs(read_records())
    pages = {RESULTS: rendered(RESULTS.read_text(), records),
             README: rendered_readme(README.read_text(), records)}
    if args.check:
        stale = [page for page, new in pages.items() if new != page.read_text()]
        for page in stale:
            sys.stdout.writelines(difflib.unified_diff(
                page.read_text().splitlines(keepends=True),
                pages[page].splitlines(keepends=True), f"{page.name} (committed)",
                f"{page.name} (rendered from the records)"))
        if stale:
            print(f"\n{', '.join(p.name for p in stale)} differ from the records: run python "
                  f"benchmarks/render.py", file=sys.stderr)
            raise SystemExit(1)
        return
    for page, new in pages.items():
        page.write_text(new)


if __name__ == "__main__":
    main()
