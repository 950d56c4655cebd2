"""`ggopt sensitivity`: one knob setting on one layer at a time, paired with the baseline,
resumable, tracked, drawn; on the trained fixture so that a layer's loss can show."""

import json

import mlflow
import pytest
import torch
from test_search import write_study

from grasp.evaluation import score_images
from grasp.train import predict_maps
from search.cli import main
from search.config import load_study_config
from search.sensitivity import probes, read_records, records_path
from search.stats import unpack_hits
from search.study import prepare

KNOBS = '["dilate", "group", "depthwise", "prune", "precision"]'


@pytest.fixture
def study_file(tmp_path, trained):
    checkpoint, data = trained
    return write_study(tmp_path, checkpoint, data, split="preset", knobs=KNOBS, steps=2)


def test_every_probe_is_measured_paired_logged_and_drawn(study_file):
    args = ["sensitivity", str(study_file), "--steps", "1", "--knobs", "dilate"]
    assert main(args) == 0
    config = load_study_config(study_file)
    records = read_records(records_path(config))
    base, measured = records[0], records[1:]
    setup = prepare(config)
    expected = [p.key for p in probes(setup, ("dilate",))]
    assert [r["key"] for r in measured] == expected  # every probe, once
    assert {"dilate.conv1.2", "dilate.convt3.4", "dilate.conv2.2"} <= set(expected)
    # One probe again by hand: the layer changed alone, scored on the same images, paired.
    probe = next(p for p in probes(setup, ("dilate",)) if p.key == "dilate.conv1.4")
    model = setup.knobs["dilate"].apply(setup.base, probe.config)
    hits = score_images(predict_maps(model.eval()), setup.eval_data).standard
    record = next(r for r in measured if r["key"] == probe.key)
    expected_diff = hits.mean() - unpack_hits(base["hits"]).mean()
    assert record["before"]["paired"]["difference"] == pytest.approx(expected_diff)
    assert record["before"]["paired"]["n"] == len(setup.eval_data) == base["images"]
    assert "after" in record and record["macs"] < base["macs"]
    # A layer that loses: dilating the first layer 9x9 -> 3x3 costs the trained model.
    assert min(r["before"]["paired"]["difference"] for r in measured) < 0
    plot = records_path(config).parent / "sensitivity.png"
    assert plot.stat().st_size > 10_000
    client = mlflow.tracking.MlflowClient(config.tracking_uri)
    run = client.get_run(base["mlflow_run_id"])
    assert run.data.tags["ggopt.kind"] == "sensitivity" and run.info.status == "FINISHED"
    assert f"{probe.key}.before_pp" in run.data.metrics
    assert {"sensitivity.json", "sensitivity.png"} <= {a.path for a in
                                                       client.list_artifacts(run.info.run_id)}
    # The report shows the heat map.
    assert main(["search", str(study_file), "--n-trials", "1"]) == 0
    assert main(["report", str(study_file), "--out", str(study_file.parent / "r")]) == 0
    page = (study_file.parent / "r" / "index.html").read_text()
    assert "Per-layer sensitivity</h2>" in page
    assert (study_file.parent / "r" / "sensitivity.png").is_file()


def test_a_rerun_measures_only_what_is_missing(study_file, monkeypatch):
    args = ["sensitivity", str(study_file), "--steps", "0", "--knobs", "group", "--images", "8"]
    assert main(args) == 0
    path = records_path(load_study_config(study_file))
    lines = path.read_text().splitlines()
    kept = lines[:-3]
    path.write_text("\n".join(kept) + "\n" + lines[-3][:20])  # cut off mid-write
    applied = []
    from spaces.group import GroupKnob

    original = GroupKnob.apply
    monkeypatch.setattr(GroupKnob, "apply",
                        lambda self, m, c: applied.append(c) or original(self, m, c))
    assert main(args) == 0
    assert len(applied) == 3  # the two lost and the one cut off, nothing else
    again = read_records(path)
    assert [json.dumps(r) for r in again[:len(kept)]] == kept
    assert len(again) == len(lines)
    assert all("after" not in r for r in again[1:])  # --steps 0: no recovery
    # Other steps are another scan: nothing of this one is reused.
    applied.clear()
    assert main(["sensitivity", str(study_file), "--steps", "1", "--knobs", "group",
                 "--images", "8"]) == 0
    assert len(applied) == len(lines) - 1


@pytest.mark.parametrize(("extra", "message"), [
    (["--steps", "-1"], "--steps: must be >= 0"),
    (["--knobs", "lowrank"], "'lowrank' is not a structural knob .* enables: prune, dilate"),
], ids=["steps", "knob"])
def test_bad_arguments_are_refused_before_any_probe(study_file, capsys, extra, message):
    import re

    torch.manual_seed(0)
    assert main(["sensitivity", str(study_file), *extra]) == 2
    shown = capsys.readouterr().err
    assert re.search(message, shown)
    assert "held-out images" not in shown  # refused before reading any
    assert not records_path(load_study_config(study_file)).exists()
