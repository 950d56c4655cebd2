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
from search.narrowing import read_records
from search.sensitivity import probes, records_path
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


def test_int8_is_probed_one_layer_at_a_time_on_the_shipped_file(study_file):
    assert main(["sensitivity", str(study_file), "--knobs", "precision", "--images", "8"]) == 0
    records = read_records(records_path(load_study_config(study_file)))
    probed = [r for r in records if r["knob"] == "precision"]
    assert [r["layer"] for r in probed] == ["conv1", "conv2", "conv3", "convt1", "convt2",
                                            "convt3"]
    reference = next(r for r in records if r["knob"] == "reference")
    for r in probed:  # paired with the fp32 file of the same model on the same 8 images
        assert r["before"]["paired"]["n"] == reference["images"] == 8
        assert r["before"]["accuracy"] == pytest.approx(
            reference["accuracy"] + r["before"]["paired"]["difference"])
        assert "after" not in r  # int8 is not recovered


@pytest.mark.parametrize(("extra", "message"), [
    (["--steps", "-1"], "--steps: must be >= 0"),
    (["--knobs", "lowrank"], "'lowrank' is not a knob .* enables: prune, dilate"),
], ids=["steps", "knob"])
def test_bad_arguments_are_refused_before_any_probe(study_file, capsys, extra, message):
    import re

    torch.manual_seed(0)
    assert main(["sensitivity", str(study_file), *extra]) == 2
    shown = capsys.readouterr().err
    assert re.search(message, shown)
    assert "held-out images" not in shown  # refused before reading any
    assert not records_path(load_study_config(study_file)).exists()


def _record(knob, layer, value, change):
    return {"knob": knob, "layer": layer, "value": value, "steps": 5, "lr": 1e-3,
            "eval_set": "mine", "before": {"paired": {"difference": -0.5}},
            "after": {"paired": {"difference": change}}}


def _scan(checkpoint_sha):
    return [{"knob": "baseline", "layer": "", "value": None, "steps": 5, "lr": 1e-3,
             "eval_set": "mine", "model": "ggcnn", "checkpoint_sha256": checkpoint_sha},
            _record("prune", "conv1", 0.25, -0.01), _record("prune", "conv1", 0.5, -0.08),
            _record("prune", "conv1", 0.75, -0.02),  # a lucky draw past the first failure
            _record("prune", "conv2", 0.25, -0.2), _record("prune", "conv2", 0.5, -0.3),
            _record("prune", "conv3", 0.25, 0.0), _record("prune", "conv3", 0.5, 0.0),
            _record("dilate", "conv1", 2, -0.02), _record("dilate", "conv1", 4, -0.09),
            _record("dilate", "convt3", 2, -0.01), _record("dilate", "convt3", 4, 0.01),
            _record("depthwise", "conv2", True, -0.12), _record("depthwise", "conv3", True, 0.0),
            _record("upsample", "convt3", "lowres", -0.2),
            _record("upsample", "convt3", "nearest", -0.01),
            _record("upsample", "convt2", "bilinear", -0.2),
            _record("lowrank", "conv1", 0.25, -0.01),  # lucky: below the first failure
            _record("lowrank", "conv1", 0.5, -0.06), _record("lowrank", "conv1", 0.75, -0.02),
            _record("lowrank", "conv2", 0.75, -0.1), _record("lowrank", "conv3", 0.25, 0.0),
            # another scan's steps in the same file: ignored
            {**_record("dilate", "convt3", 4, -0.5), "steps": 50},
            # a scan on other images, same steps and rate: ignored too
            {**_record("dilate", "conv2", 2, -0.5), "eval_set": "other"}]


def test_narrowing_keeps_each_layers_settings_within_the_loss():
    from search.narrowing import narrowing

    out = narrowing(_scan("x")[:-2], max_loss=0.03)
    assert out["prune"] == {"allowed": {"conv1": (0.25,)}, "exclude": ("conv2",)}
    assert out["dilate"] == {"allowed": {"conv1": (2,)}, "exclude": ()}
    assert out["depthwise"] == {"allowed": {}, "exclude": ("conv2",)}
    assert out["lowrank"] == {"allowed": {"conv1": (0.75,)}, "exclude": ("conv2",)}
    # A decoder keeps its exact forms whatever the scan says.
    assert out["upsample"] == {"allowed": {"convt3": ("nearest",), "convt2": ()},
                               "exclude": ()}


def test_a_study_narrowed_by_a_scan_never_draws_what_the_scan_ruled_out(tmp_path, trained):
    import hashlib

    import optuna

    from search.study.setup import make_knobs
    from spaces import ORDER

    checkpoint, data = trained
    scan = tmp_path / "scan.jsonl"
    sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    scan.write_text("".join(json.dumps(r) + "\n" for r in _scan(sha)))
    knobs = '["upsample", "dilate", "depthwise", "lowrank", "prune", "precision"]'
    plain = load_study_config(write_study(tmp_path, checkpoint, data, split="preset",
                                          knobs=knobs))
    path = write_study(tmp_path, checkpoint, data, split="preset", knobs=knobs)
    path.write_text(path.read_text().replace(
        "[search]\n", f'[search]\nsensitivity = "{scan}"\nsensitivity_max_loss = 0.03\n'))
    narrowed = load_study_config(path)
    model = prepare(narrowed).base

    def draws(config):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        knobs = make_knobs(config)
        params = []
        for _ in range(40):
            trial = study.ask()
            current = model
            for name in ORDER:
                knob = knobs.get(name)
                if knob is not None and name != "precision":
                    current = knob.apply(current, knob.suggest(trial, current))
            params.append(trial.params)
            study.tell(trial, 0.0)
        return params

    def seen(params, key):
        return {p[key] for p in params if key in p}

    before, after = draws(plain), draws(narrowed)
    assert 4 in seen(before, "dilate.conv1") and 4 not in seen(after, "dilate.conv1")
    assert max(seen(before, "prune.conv1.ratio")) > 0.25 >= max(seen(after, "prune.conv1.ratio"))
    assert seen(before, "prune.conv2.ratio") and not seen(after, "prune.conv2.ratio")
    assert seen(before, "depthwise.conv2") and not seen(after, "depthwise.conv2")
    # Low rank keeps every fraction from the smallest that passed up, none on conv2.
    assert min(seen(before, "lowrank.conv1.rank_out")) < 0.75
    assert seen(after, "lowrank.conv1.rank_out") <= {0.75, 0.875, 1.0}
    assert seen(after, "lowrank.conv1.rank_out")
    assert True in seen(before, "lowrank.conv2") and not seen(after, "lowrank.conv2")
    assert "lowres" in seen(before, "upsample.convt3")
    assert seen(after, "upsample.convt3") == {"keep", "subpixel", "nearest"}
    assert seen(after, "dilate.convt3") == {1, 2, 4}  # the other scans' losses are not read
    assert seen(after, "dilate.conv2") == {1, 2}
    # A scan of another checkpoint is refused when the study file is read.
    scan.write_text("".join(json.dumps(r) + "\n" for r in _scan("0" * 64)))
    from search.config import StudyConfigError

    with pytest.raises(StudyConfigError, match=r"sensitivity = .*scan.jsonl.*checkpoint sha256 "
                                               r"000000000000"):
        load_study_config(path)


def test_low_rank_is_probed_on_a_coarse_grid_of_the_fractions_a_study_offers():
    from grasp.models import get_model
    from spaces.lowrank import LowRankKnob

    model = get_model("ggcnn")
    probed = {layer: [] for layer in LowRankKnob().layers(model)}
    for layer, fraction, _ in LowRankKnob().probes(model):
        probed[layer].append(fraction)
    assert set(map(tuple, probed.values())) == {(0.25, 0.5, 0.75)}
    # A study offering none of the grid's fractions is probed at its own.
    assert {f for _, f, _ in LowRankKnob(fractions=(0.3, 0.6)).probes(model)} == {0.3, 0.6}
