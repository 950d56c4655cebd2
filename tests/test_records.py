"""Benchmark records and RESULTS.md: the committed text says what the records say, and the
renderer notices when it does not."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from records import Record, read_records  # noqa: E402
from render import BEGIN, END, readme_table, rendered  # noqa: E402

EXAMPLE = {
    "benchmark": "init_forecast", "title": "`ggopt init`: predicted and measured",
    "command": "python benchmarks/init_forecast.py --data data/sim --hours 1",
    "commit": "0123456789", "date": "2026-12-07",
    "machine": {"cpu": "AMD EPYC", "family_model": "26/2", "flags": "avx2", "cores": 2},
    "figures": {"hours": 1.0, "steps": 1000, "gate_steps": 330, "n_trials": 86,
                "predicted_trial_s": 41, "predicted_trials_per_hour": 87.0, "probe_s": 93.0,
                "finished": 80, "complete": 70, "gate_stopped": 10, "failed": 0,
                "optimising_hours": 1.0, "measured_trials_per_hour": 80.0,
                "quarter_trial_s": [50.0, 45.0, 44.0, 41.0],
                "data": "the quick start's data"},
}


def test_committed_results_are_rendered_from_the_committed_records():
    done = subprocess.run([sys.executable, str(BENCHMARKS / "render.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_record_names_its_command_commit_date_and_machine():
    for record in read_records():
        assert record.command.startswith(("python benchmarks/", "ggopt ", "bash "))
        assert record.machine.cores >= 1 and record.machine.cpu


def test_a_figure_edited_by_hand_is_rendered_back_and_a_new_record_appended():
    record = Record.model_validate(EXAMPLE)
    text = rendered("# Benchmark results\n\nhand-written text\n", [record])
    assert text.startswith("# Benchmark results\n\nhand-written text\n\n")
    assert BEGIN.format(name="init_forecast") in text and END.format(name="init_forecast") in text
    row = "| 1 | 1000 (330) | 80 of 86 | 10 | 87.0 | 80.0 | 0.92 |"
    assert row in text
    assert rendered(text, [record]) == text  # rendering again changes nothing
    edited = text.replace("| 80.0 | 0.92 |", "| 95.0 | 1.09 |")
    assert rendered(edited, [record]) == text  # the record wins over the text
    assert "hand-written text" in rendered(edited, [record])


def test_a_section_whose_record_is_gone_is_refused():
    record = Record.model_validate(EXAMPLE)
    text = rendered("# Results\n", [record])
    with pytest.raises(SystemExit, match=r"init_forecast.json, which is gone"):
        rendered(text, [])


@pytest.mark.parametrize("change, field", [
    ({"commit": "HEAD"}, "commit"), ({"date": "7 Dec"}, "date"),
    ({"machine": {"cpu": "x", "flags": "", "cores": 2}}, "family_model"),
    ({"speedup": 7.0}, "speedup"),
])
def test_a_record_without_its_provenance_is_refused(change, field):
    with pytest.raises(ValueError, match=field):
        Record.model_validate_json(json.dumps(EXAMPLE | change))


def test_the_quick_start_record_takes_its_times_from_the_readme_runner(tmp_path):
    from quickstart import _stages

    log = tmp_path / "qs.log"
    lines = ["STAGE rc=0 130s: bash -c pip install -q torch==2.13.0 && pip install -q -e .",
             "noise", "STAGE rc=0 301s: ggopt data sim --recipe quickstart --out data/sim",
             "STAGE rc=0 240s: ggopt search studies/quickstart.toml",
             "STAGE rc=0 66s: ggopt export studies/quickstart.toml --trial knee --out best/",
             "STAGE rc=0 20s: ggopt pareto studies/quickstart.toml"]
    log.write_text("\n".join(lines))
    assert _stages(log) == {"install": 130, "data": 301, "search": 240, "export": 66}
    log.write_text("\n".join(lines).replace("rc=0 240s", "rc=1 240s"))
    with pytest.raises(SystemExit, match="failed"):
        _stages(log)
    log.write_text("\n".join(lines[:2]))
    with pytest.raises(SystemExit, match="no STAGE line for data, export, search"):
        _stages(log)


def test_timed_benchmarks_render_each_speedup_with_its_interval():
    """end_to_end and best_models records: each speed-up is printed with its interval, an
    interval the record does not have (too few rounds) is left out, not invented."""
    speedup = {"value": 5.4213, "low": 5.3111, "high": 5.5522, "p_value": 1e-9, "rounds": 100,
               "confidence": 0.95}
    rate = {"value": 0.4, "successes": 2, "n": 5, "low": 0.12, "high": 0.77, "confidence": 0.95}
    paired = {"difference": 0.0, "low": -0.2, "high": 0.2, "better": 1, "worse": 1,
              "p_value": 1.0, "n": 5, "confidence": 0.95}
    machine = EXAMPLE["machine"]
    e2e = Record(benchmark="end_to_end", title="End to end", command="python benchmarks/x.py",
                 commit="0123456789", date="2026-12-07", machine=machine, figures={
                     "rounds": 1, "runs": 100, "fastest_form": "subpixel", "images": 5,
                     "rows": [{"row": "knee", "network_ms": 1.0, "post_ms": 0.4, "e2e_ms": 1.5,
                               "extra": {"value": 0.5, "low": 0.41, "high": 0.6},
                               "speedup": speedup}],
                     "agreement": [{"file": "knee", "same": 5, "graph": rate,
                                    "reference": rate, "paired": paired}]})
    few = {**speedup, "low": None, "high": None, "rounds": 5}
    best = Record(benchmark="best_models", title="Best", command="python benchmarks/x.py",
                  commit="0123456789", date="2026-12-07", machine=machine, figures={
                      "study": "qs", "scope": "network alone", "threads": 1, "rounds": 1,
                      "steps": 60, "val_images": 5, "test_images": 0, "complete_trials": 3,
                      "runtime": "onnxruntime 1.2",
                      "rows": [{"model": "knee", "precision": "int8", "uncompressed": False,
                                "val": rate, "val_diff": paired, "test": None,
                                "test_diff": None, "latency_ms": 1.5, "speedup": few,
                                "size_bytes": 5e4, "size_reduction": 5.0, "macs": None}]})
    text = rendered("# Results\n", [e2e, best])
    assert "| knee | 1.00 | 0.40 | 1.50 | +0.50 ms [+0.41, +0.60] | 5.42x [5.31, 5.55] |" in text
    assert "| 1.50 | 5.42x | 50.0 | 5.00x | - |" in text


def test_a_named_record_owns_its_own_section_and_file(tmp_path, monkeypatch):
    """One script, several records (one study's front, another's): each under its name."""
    import records

    monkeypatch.setattr(records, "RECORDS", tmp_path)
    first = records.write_record("init_forecast", "First", EXAMPLE["figures"],
                                 command="python benchmarks/x.py", commit="0123456789",
                                 name="forecast_a")
    records.write_record("init_forecast", "Second", EXAMPLE["figures"],
                         command="python benchmarks/x.py", commit="0123456789",
                         name="forecast_b")
    assert first == tmp_path / "forecast_a.json"
    both = records.read_records()
    text = rendered("# Results\n", both)
    assert BEGIN.format(name="forecast_a") in text and "## Second" in text
    first.rename(tmp_path / "forecast_c.json")
    with pytest.raises(SystemExit, match="'forecast_a' must match the file name"):
        records.read_records()


def test_the_readme_table_has_a_row_per_record_linked_to_its_section():
    """One short row per record that has a README cell, linking the section RESULTS gives
    that record (GitHub's anchor of its title); a record without a cell adds no row."""
    forecast = Record(**EXAMPLE)
    other = Record(**{**EXAMPLE, "benchmark": "knobs", "title": "Knobs"})
    table = readme_table([forecast, other]).splitlines()
    assert table[1:3] == ["| what | result | measured |", "|---|---|---|"]
    assert table[3] == ("| `ggopt init`'s forecast of trials per hour | 87 predicted, 80 "
                        "measured | [2026-12-07](benchmarks/RESULTS.md#ggopt-init-predicted-"
                        "and-measured) |")
    assert len(table) == 5  # the markers, the header, one row



def test_a_printed_table_is_recorded_and_rendered_cell_for_cell():
    """records.table_figures keeps what the console showed (markup stripped, a pipe in a
    cell escaped), and a record of tables renders without a renderer of its own."""
    from records import table_figures
    from rich.table import Table

    table = Table(title="[bold]hypervolume[/] after 25 trials")
    for column in ("sampler", "median [IQR]"):
        table.add_column(column)
    table.add_row("tpe", "0.84 [0.83, 0.85]")
    table.add_row("[dim]random[/]", "a|b")
    figures = table_figures([table], ["[red]3 seeds[/] each"])
    assert figures == {"tables": [{"title": "hypervolume after 25 trials",
                                   "columns": ["sampler", "median [IQR]"],
                                   "rows": [["tpe", "0.84 [0.83, 0.85]"], ["random", "a|b"]]}],
                       "notes": ["3 seeds each"]}
    record = Record(benchmark="search_efficiency", title="Samplers",
                    command="python benchmarks/search_efficiency.py s.toml",
                    commit="0123456789", date="2026-12-07", machine=EXAMPLE["machine"],
                    figures=figures)
    text = rendered("# Results\n", [record])
    assert ("hypervolume after 25 trials:\n\n| sampler | median [IQR] |\n|---|---|\n"
            "| tpe | 0.84 [0.83, 0.85] |\n| random | a\\|b |\n\n- 3 seeds each\n") in text


def test_every_link_into_the_results_names_a_section_there():
    """A section removed with its record leaves no dangling link in the README or docs."""
    import re

    from render import _anchor

    root = BENCHMARKS.parent
    results = (BENCHMARKS / "RESULTS.md").read_text()
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.*)$", results, re.MULTILINE)}
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for anchor in re.findall(r"RESULTS\.md#([\w-]+)\)", page.read_text()):
            assert anchor in anchors, f"{page.name}: RESULTS.md#{anchor} is not a section"


def test_a_trial_cost_record_renders_each_stage_and_the_rate():
    stage = {"median_s": 1.5, "mean_s": 2.0, "max_s": 4.0, "share": 0.25}
    record = Record(benchmark="trial_cost", name="trial_cost_qs", title="What a trial costs",
                    command="python benchmarks/trial_cost.py studies/quickstart.toml",
                    commit="0123456789", date="2026-12-07", machine=EXAMPLE["machine"],
                    figures={"study": "qs", "trials": 12, "complete": 10, "gate_stopped": 2,
                             "screened_out": 0, "stages": {"recovery": stage},
                             "trial_s": {**stage, "share": 1.0}, "optimising_s": 240.0,
                             "trials_per_hour": 180.0, "trials_per_hour_with_setup": 150.0,
                             "setup_s": 48.0, "images": 207, "threads": 1,
                             "existing": False})
    text = rendered("# Results\n", [record])
    assert "| recovery | 1.50 | 2.00 | 4.00 | 25% |" in text
    assert "| **trial** | 1.50 | 2.00 | 4.00 | 100% |" in text
    assert "**180 trials an hour** while optimising, 150 with the study's setup" in text


def test_a_front_verified_without_test_images_says_so_instead_of_failing():
    """A study whose data has too few test images is verified by simulated grasps alone:
    its record renders dashes for the test figures and the reason, not a KeyError."""
    committed = Record.model_validate_json((BENCHMARKS / "records" /
                                            "grconvnet_study.json").read_text())
    figures = json.loads(json.dumps(committed.figures))
    number, first = next(iter(figures["verified"].items()))
    for key in ("test_accuracy", "test_accuracy_ci", "test_images", "baseline_test_accuracy",
                "test_accuracy_diff"):
        first.pop(key)
    first["test_note"] = "no test images in data/sim"
    text = rendered("# Results\n", [committed.model_copy(update={"figures": figures})])
    assert f"| {number} | - | - | - | " in text
    assert f"Trial {number}: no test images in data/sim" in text
