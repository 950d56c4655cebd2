"""Benchmark records: each benchmark run writes its figures, with the command, commit, date
and machine that produced them, to ``benchmarks/records/<name>.json``; ``render.py`` turns
the records into the text of RESULTS.md, so that a figure is written down once, where it
was measured, and every copy of it is rendered from there."""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from timing.protocol import host_fingerprint

RECORDS = Path(__file__).resolve().parent / "records"


class Machine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cpu: str  # the model name, which for a VM's CPU often omits the generation...
    family_model: str  # ...which /proc/cpuinfo's family and model numbers give
    flags: str
    cores: int

    def line(self) -> str:
        return (f"{self.cpu} (family {self.family_model.replace('/', ', model ')}), "
                f"{self.flags}, {self.cores} cores")


def _family_model() -> str:
    """``26/2``: the CPU's family and model numbers (Zen 5 here), or ``unknown``."""
    found = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("cpu family", "model") and key.strip() not in found:
                    found[key.strip()] = value.strip()
                if len(found) == 2:
                    break
    except OSError:
        pass
    return f"{found['cpu family']}/{found['model']}" if len(found) == 2 else "unknown"


class Record(BaseModel):
    """One benchmark run's figures and where they come from."""

    model_config = ConfigDict(extra="forbid")

    benchmark: str = Field(pattern=r"^[a-z0-9_]+$")  # the script, benchmarks/<benchmark>.py
    # A script that measures several things (one study's front, another's) names each
    # record; the file is records/<name>.json, else records/<benchmark>.json.
    name: str | None = Field(default=None, pattern=r"^[a-z0-9_]+$")
    title: str
    command: str
    commit: str = Field(pattern=r"^[0-9a-f]{7,40}(\+dirty)?$")
    date: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")
    machine: Machine
    figures: dict[str, Any]

    @property
    def stem(self) -> str:
        return self.name or self.benchmark


def current_commit(root: Path = RECORDS.parent.parent) -> str:
    """HEAD's short hash in ``root`` (this checkout), ``+dirty`` when tracked files differ
    from it."""
    head = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=root, check=True,
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", ".", ":!benchmarks/records",
                            ":!benchmarks/RESULTS.md"], cwd=root).returncode != 0
    return head + ("+dirty" if dirty else "")


def json_safe(value: Any) -> Any:
    """``value`` with every NaN (a figure that does not exist, such as an interval too few
    runs admit) as None, so that a record is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_record(benchmark: str, title: str, figures: dict[str, Any],
                 command: str | None = None, commit: str | None = None,
                 name: str | None = None) -> Path:
    """Writes ``records/<name or benchmark>.json`` (replacing the run it supersedes: git
    keeps the old one) and returns its path; ``commit``: the code the run began on
    (default: now)."""
    fp = host_fingerprint()
    record = Record(
        benchmark=benchmark, name=name, title=title,
        command=command or "python " + shlex.join([f"benchmarks/{Path(sys.argv[0]).name}",
                                                   *sys.argv[1:]]),
        commit=commit or current_commit(), date=date.today().isoformat(),
        machine=Machine(cpu=str(fp.get("cpu")), family_model=_family_model(),
                        flags=str(fp.get("flags")),
                        cores=int(fp.get("cores") or 0)),
        figures=json_safe(figures))
    RECORDS.mkdir(exist_ok=True)
    path = RECORDS / f"{record.stem}.json"
    path.write_text(json.dumps(record.model_dump(), indent=2) + "\n")
    return path


def table_figures(tables: list[Any], notes: list[str] = ()) -> dict[str, Any]:
    """The figures of a benchmark whose result is the tables it printed (rich Tables): each
    table's title, column headers and cells as printed, markup stripped, and the lines
    printed beside them; render.py writes them as Markdown tables."""
    from rich.text import Text

    def plain(value: Any) -> str:
        return Text.from_markup(str(value or "")).plain

    return {"tables": [{"title": plain(t.title), "columns": [plain(c.header) for c in t.columns],
                        "rows": [list(row) for row in zip(*([plain(x) for x in c.cells]
                                                             for c in t.columns), strict=True)]}
                       for t in tables],
            "notes": [plain(n) for n in notes]}


def overlaps(a: dict[str, Any], b: dict[str, Any]) -> bool | None:
    """Whether two recorded speed-up intervals share a point; None where either has no
    interval."""
    ends = (a.get("low"), a.get("high"), b.get("low"), b.get("high"))
    if any(e is None or e != e for e in ends):  # None or NaN
        return None
    return a["low"] <= b["high"] and b["low"] <= a["high"]


def read_records() -> list[Record]:
    """Every record, checked against the schema (a record that breaks it names its file)."""
    records = []
    for path in sorted(RECORDS.glob("*.json")):
        try:
            records.append(Record.model_validate_json(path.read_text()))
        except ValueError as error:
            raise SystemExit(f"{path}: not a benchmark record: {error}") from None
        if records[-1].stem != path.stem:
            raise SystemExit(f"{path}: its name (or benchmark) {records[-1].stem!r} must "
                             f"match the file name")
    return records
