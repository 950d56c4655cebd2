"""End to end: a study of a few tiny trials, resume, failure, the gate, pareto, export."""

import math
import re
from pathlib import Path

import mlflow
import optuna
import pytest
import torch
from optuna.trial import TrialState

from grasp.artifact import Artifact, ArtifactError
from search.cli import main
from search.config import StudyConfigError, load_study_config
from search.front import feasible_front, hypervolume_history
from search.record import ARTIFACT_FORMAT
from search.study import build_trial_model, load_study, prepare, run_study

STUDY = """
version = 1
name = "tiny"
constraints = {constraints}

[model]
name = "ggcnn"
checkpoint = "{checkpoint}"

[data]
root = "{data}"
split = "{split}"
output_size = 96
calibration_images = 2

[knobs]
enabled = {knobs}

[knobs.precision]
precisions = ["fp32", "int8"]

[recovery]
steps = {steps}
batch_size = 2
gate_steps = {gate_steps}
gate_margin = {gate_margin}

[objectives]
{objectives}

[runtime]
warmup = 1
runs = 3
min_seconds = 0.05

[search]
sampler = "{sampler}"
n_trials = {n_trials}
storage = "sqlite:///{tmp}/optuna.db"
artifacts_dir = "{tmp}/artifacts"

[tracking]
uri = "sqlite:///{tmp}/mlflow.db"
experiment = "tiny"
"""


def write_study(tmp_path: Path, checkpoint, data, **overrides) -> Path:
    fields = {"constraints": '["accuracy >= baseline - 1.0"]', "checkpoint": checkpoint,
              "data": data, "knobs": '["upsample", "prune", "precision"]', "steps": 2,
              "gate_steps": 0, "gate_margin": 0.2, "sampler": "tpe", "n_trials": 4,
              "tmp": tmp_path, "split": "image", "objectives": ""}
    fields.update(overrides)
    path = tmp_path / "study.toml"
    path.write_text(STUDY.format(**fields))
    return path


def test_study_runs_resumes_and_is_tracked(tmp_path, checkpoint, jacquard_root):
    path = write_study(tmp_path, checkpoint, jacquard_root)
    config = load_study_config(path, {"paired": True})
    study = run_study(config)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 4
    # Hand recipes first: the uncompressed fp32 model is trial 0, int8 + sub-pixel trial 1.
    assert trials[0].params["precision"] == "fp32"
    assert trials[1].params["precision"] == "int8"
    assert [t.user_attrs.get("recipe") for t in trials] == [
        "uncompressed", "int8", "50 % pruning + int8", "low-resolution last decoder + int8"]
    assert trials[1].user_attrs["values"]["size"] < 0.6 * trials[0].user_attrs["values"]["size"]
    baseline = study.user_attrs["baseline"]
    for t in trials:
        assert Path(t.user_attrs["artifact"]).stat().st_size == t.user_attrs["values"]["size"]
        # Paired timing: the baseline's latency x the ratio to its artifact.
        assert t.user_attrs["values"]["latency"] == pytest.approx(
            baseline["latency"] * t.user_attrs["extra"]["latency_ratio"])
        assert t.user_attrs["extra"]["latency_raw_ms"] > 0
    # Each recovered trial keeps its fp32 weights for `export --finish`; the uncompressed
    # trial 0 and the exact sub-pixel rewrite (trial 1) had nothing to recover.
    recovered = [t for t in trials if "recovery_s" in t.user_attrs["times"]]
    assert recovered and [t for t in trials if "weights" in t.user_attrs] == recovered
    setup = prepare(config)
    for t in recovered:
        model, _ = build_trial_model(setup, params=t.params)
        model.load_state_dict(torch.load(t.user_attrs["weights"], weights_only=True))
    # Resume: asking for 5 in all runs exactly one more trial; nothing is redone. A worker
    # without the baseline's artifact (another machine) builds it again to time against.
    # The study file leaves `paired` unset: the study goes on timing as it began, paired.
    for old in (tmp_path / "artifacts" / "tiny").glob("baseline-*.onnx"):
        old.unlink()
    study = run_study(load_study_config(path, {"n_trials": 5}))
    assert len(study.trials) == 5
    assert list((tmp_path / "artifacts" / "tiny").glob(f"baseline-{baseline['variant']}.onnx"))
    assert study.trials[4].user_attrs["extra"]["latency_ratio"] > 0
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4]
    # MLflow: one parent, one child per trial with the three metrics.
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["tiny"])
    parent = study.user_attrs["mlflow_parent_run_id"]
    children = runs[runs["tags.mlflow.parentRunId"] == parent]
    assert len(children) == 5
    assert children[["metrics.accuracy", "metrics.size_bytes", "metrics.latency_ms"]].notna(
    ).all().all()
    # A completed trial has no failure or stop reason, so it carries no such tag at all.
    for column in ("tags.ggopt.fail_reason", "tags.ggopt.stop_reason"):
        assert column not in children or children[column].isna().all()
    # The parent run is the morning review: the experiment opens on model training runs;
    # the baseline's figures, the front's size, hypervolume per finished trial and best
    # ratios as metrics; the front table as its description; front trials tagged.
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    kind = client.get_experiment_by_name("tiny").tags["mlflow.experimentKind"]
    assert kind == "custom_model_development"
    review = client.get_run(parent).data
    assert review.metrics["baseline_accuracy"] == pytest.approx(baseline["accuracy"])
    assert review.metrics["baseline_latency_ms"] == pytest.approx(baseline["latency"])
    front = feasible_front(study, config.objectives)
    assert front and review.metrics["front_size"] == len(front)
    history = client.get_metric_history(parent, "hypervolume")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5]
    assert history[-1].value == pytest.approx(hypervolume_history(study, config.objectives)[-1])
    # The speed-up is the one paired over the timing rounds each trial shared with the
    # baseline's file, not a ratio of medians timed apart.
    speedups = [t.user_attrs["extra"]["speedup"] for t in front]
    assert review.metrics["best_speedup"] == pytest.approx(max(speedups))
    note = review.tags["mlflow.note.content"]
    assert all(f"| {t.number} | {t.user_attrs['precision']} |" in note for t in front)
    # ...and each hand recipe against the front, with its verdict.
    assert "| uncompressed | 0 |" in note and "| 50 % pruning + int8 | 2 |" in note
    on_front = children[children["tags.ggopt.front"] == "true"]["tags.ggopt.trial"]
    assert sorted(int(n) for n in on_front) == sorted(t.number for t in front)
    # Resumed with other scoring settings (timing, recovery, teacher): refused before any
    # setup.
    with pytest.raises(StudyConfigError, match=r"paired_latency was True, now False"):
        run_study(load_study_config(path, {"n_trials": 6, "paired": False}))
    changed = write_study(tmp_path, checkpoint, jacquard_root, steps=3)
    with pytest.raises(StudyConfigError, match=r"recovery_steps was 2, now 3.*new `name`"):
        run_study(load_study_config(changed, {"n_trials": 6}))
    write_study(tmp_path, checkpoint, jacquard_root)
    with pytest.raises(StudyConfigError, match=r"recovery_recipe was '.*lr_schedule=constant.*', "
                                               r"now '.*lr_schedule=cosine"):
        run_study(load_study_config(path, {"n_trials": 6, "recovery_lr_schedule": "cosine"}))
    # A study whose artifacts an older ggopt wrote (before the format was stored): its sizes
    # would not compare with compact files.
    stored = load_study(config)
    attrs = stored.user_attrs["config"]
    stored.set_user_attr("config", {k: v for k, v in attrs.items()
                                    if k != "study.artifact_format"})
    with pytest.raises(StudyConfigError,
                       match=rf"artifact_format was 1, now {ARTIFACT_FORMAT}.*an older ggopt"):
        run_study(load_study_config(path, {"n_trials": 6}))
    stored.set_user_attr("config", attrs)
    write_study(tmp_path, checkpoint, jacquard_root)
    from grasp.checkpoints import save_checkpoint
    from grasp.models import get_model

    save_checkpoint(checkpoint, get_model("ggcnn"), "ggcnn")  # a retrained teacher
    with pytest.raises(StudyConfigError, match=r"checkpoint_sha256 was '[0-9a-f]{64}', now"):
        run_study(load_study_config(path, {"n_trials": 6}))
    assert len(load_study(load_study_config(path)).trials) == 5


def test_pareto_and_export_from_the_cli(tmp_path, checkpoint, jacquard_root, capsys,
                                        monkeypatch):
    # Every structural knob, and trials past the warm starts that dilate and group layers.
    path = write_study(tmp_path, checkpoint, jacquard_root, n_trials=5, knobs=(
        '["upsample", "dilate", "group", "depthwise", "lowrank", "prune", "precision"]'))
    path.write_text(path.read_text().replace("[search]\n", (
        '[search]\nrecipes = [{upsample = "keep", precision = "fp32"}, {}, {prune = 0.5}, '
        '{upsample = "lowres"}]\n')))
    monkeypatch.setenv("COLUMNS", "60")  # a narrow terminal
    assert main(["search", str(path)]) == 0
    printed = capsys.readouterr().err.splitlines()
    link = [line for line in printed if "#/experiments/" in line]
    assert len(link) == 1 and link[0].startswith("http://127.0.0.1:5000/#/experiments/")
    assert link[0].endswith("?workflowType=machine_learning")  # whole, on one line
    assert main(["pareto", str(path)]) == 0
    shown = capsys.readouterr().out
    assert "baseline" in shown and "feasible Pareto front" in shown
    assert "hand recipes against the front" in shown and "50 % pruning + int8" in shown
    assert "promotion" not in shown  # said only when the front holds one
    study = load_study(load_study_config(path))
    drawn = [t.params for t in study.trials[4:]]
    assert any(p.get(f"{knob}.{layer}", 1) > 1 for p in drawn for knob in ("dilate", "group")
               for layer in ("conv1", "conv2", "convt3"))
    best = min(study.get_trials(states=(TrialState.COMPLETE,)),
               key=lambda t: t.user_attrs["values"]["size"])
    out = tmp_path / "export"
    assert main(["export", "--no-sim", str(path),
                 "--trial", str(best.number), "--out", str(out)]) == 0
    assert (out / "model.onnx").stat().st_size == best.user_attrs["values"]["size"]
    card = (out / "MODEL_CARD.md").read_text()
    assert f"trial {best.number}" in card and "measured on this file" in card
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert client.search_registered_models()[0].name == "tiny-ggcnn"
    # The version says what it is: the card, its figures, its tensors.
    version = client.get_model_version("tiny-ggcnn", "1")
    assert version.description == card
    assert version.tags["ggopt.trial"] == str(best.number)
    assert float(version.tags["ggopt.size"]) == best.user_attrs["values"]["size"]
    signature = mlflow.models.get_model_info("models:/tiny-ggcnn/1").signature
    assert [s.name for s in signature.inputs.inputs] == ["depth"]
    assert [s.name for s in signature.outputs.inputs] == ["maps", "grasp"]
    assert signature.outputs.inputs[1].shape == (-1, 6)
    assert main(["report", str(path), "--out", str(tmp_path / "report")]) == 0
    assert {"index.html", "pareto.png", "hypervolume.png", "layers.png"} <= {
        p.name for p in (tmp_path / "report").iterdir()}
    # The page carries its figures (MLflow shows it in a sandboxed frame: relative links
    # never load there), each the PNG written beside it.
    import base64
    import re

    page = (tmp_path / "report" / "index.html").read_text()
    assert not re.search(r'src="(?!data:)', page)
    assert "Hand recipes against the front" in page and "50 % pruning + int8" in page
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert [base64.b64decode(e) for e in embedded] == [
        (tmp_path / "report" / f"{name}.png").read_bytes()
        for name in ("pareto", "hypervolume", "layers")]
    parent = study.user_attrs["mlflow_parent_run_id"]  # ... attached to the study's run
    assert "report/index.html" in {a.path for a in client.list_artifacts(parent, "report")}
    assert main(["export", "--no-sim", str(path),
                 "--trial", "99", "--out", str(out)]) == 2
    assert "no trial 99" in capsys.readouterr().err


def test_a_failing_trial_is_recorded_and_the_study_goes_on(tmp_path, checkpoint, jacquard_root,
                                                           monkeypatch):
    from spaces.prune import PruneKnob

    original = PruneKnob.apply

    def breaks_when_pruning(self, model, config):
        if any(r > 0 for _, r in config.ratios):
            raise ValueError("prune.conv2: deliberately broken for this test")
        return original(self, model, config)

    monkeypatch.setattr(PruneKnob, "apply", breaks_when_pruning)
    path = write_study(tmp_path, checkpoint, jacquard_root, n_trials=4)
    study = run_study(load_study_config(path), track=False)
    states = [t.state for t in study.trials]
    assert len(states) == 4
    assert states[:2] == [TrialState.COMPLETE, TrialState.COMPLETE]  # warm starts, no pruning
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed and all("deliberately broken" in t.user_attrs["fail_reason"] for t in failed)


def test_a_tracking_server_error_does_not_end_the_night(tmp_path, checkpoint, jacquard_root,
                                                        monkeypatch, capsys):
    from mlflow.exceptions import MlflowException

    import search.study.run

    original = search.study.run.refresh_front
    calls = []

    def flaky(study, *args):
        calls.append(len(study.trials))
        if len(calls) == 1:
            raise MlflowException("cannot reach http://ggopt:hunter2@tracking:5000/api")
        return original(study, *args)

    monkeypatch.setattr(search.study.run, "refresh_front", flaky)
    path = write_study(tmp_path, checkpoint, jacquard_root, n_trials=3,
                       knobs='["precision"]')
    study = run_study(load_study_config(path))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert len(calls) == 3  # the refresh after the failed one catches up
    out = " ".join(capsys.readouterr().err.split())  # the study's console, lines unwrapped
    assert "front view was not refreshed after trial 0" in out
    assert "hunter2" not in out and "ggopt:***@tracking" in out


def test_the_gate_prunes_hopeless_trials(tmp_path, checkpoint, jacquard_root):
    # An impossible gate (accuracy above the baseline by 0.5) prunes every recovered trial.
    path = write_study(tmp_path, checkpoint, jacquard_root, steps=3, gate_steps=1,
                       gate_margin=-0.5 + 0.5, n_trials=3,
                       knobs='["prune", "precision"]')
    config = load_study_config(path)
    study = run_study(config, track=False)
    by_number = {t.number: t for t in study.trials}
    assert by_number[0].state == TrialState.COMPLETE  # nothing to recover: no gate
    pruned = by_number[2]  # 50 % pruning, recovered
    base = study.user_attrs["baseline"]["accuracy"]
    if pruned.user_attrs["gate_accuracy"] < base:
        assert pruned.state == TrialState.PRUNED
    else:
        assert pruned.state == TrialState.COMPLETE


def test_constraints_mark_trials_infeasible(tmp_path, checkpoint, jacquard_root):
    path = write_study(tmp_path, checkpoint, jacquard_root, n_trials=2,
                       constraints='["latency <= 0.001"]')
    study = run_study(load_study_config(path), track=False)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 2 and all(t.user_attrs["constraints"][0] > 0 for t in done)
    # A new study with `paired` unset scores raw medians, timed in rounds beside the
    # baseline's file (past `runs = 3` until `min_seconds`, 0.05 s, of timing), so each
    # trial records its paired speed-up with its interval.
    for t in done:
        extra = t.user_attrs["extra"]
        assert t.user_attrs["values"]["latency"] == extra["latency_raw_ms"]
        # (min_seconds counts the baseline's calls too: going on past `runs` is tested with a
        # scripted clock in test_timing.py)
        assert extra["latency_runs"] >= 3 and extra["speedup_rounds"] == extra["latency_runs"]
        assert extra["speedup"] > 0 and 0 <= extra["speedup_p"] <= 1
        if extra["speedup_rounds"] >= 6:
            assert extra["speedup_low"] <= extra["speedup"] <= extra["speedup_high"]
        else:  # too few rounds for a 95 % interval: its ends are left empty, not invented
            assert math.isnan(extra["speedup_low"]) and math.isnan(extra["speedup_high"])
    assert study.user_attrs["config"]["study.paired_latency"] is False
    # The second trial timed the first one's file again beside the baseline's: its control,
    # both timings kept (search.drift).
    first, second = sorted(done, key=lambda t: t.number)
    assert "control" not in first.user_attrs["extra"]
    control = second.user_attrs["extra"]["control"]
    assert control["trial"] == first.number
    assert control["then"]["speedup"] == first.user_attrs["extra"]["speedup"]
    assert control["now"]["speedup"] > 0 and second.user_attrs["times"]["control_s"] > 0
    from search.front import feasible_front

    assert feasible_front(study, ("accuracy", "size", "latency")) == []


def test_a_size_constraint_stops_oversized_trials_before_recovery_or_scoring(
        tmp_path, checkpoint, jacquard_root):
    # First with room: the warm start's 50 %-pruned int8 trial recovers and is weighed twice.
    (tmp_path / "roomy").mkdir()
    (tmp_path / "tight").mkdir()
    roomy = write_study(tmp_path / "roomy", checkpoint, jacquard_root, n_trials=3,
                        knobs='["prune", "precision"]', constraints='["size <= 1e9"]')
    pruned_50 = run_study(load_study_config(roomy), track=False).trials[2]
    assert pruned_50.state == TrialState.COMPLETE
    assert "size_check_s" in pruned_50.user_attrs["times"]
    assert "oversized" not in pruned_50.user_attrs
    size = pruned_50.user_attrs["values"]["size"]
    # 100 bytes less: the same trial stops before recovery, weighed at the recovered file's
    # size (the weights' values move it by a few bytes at most), and the sampler sees it as
    # infeasible by the excess. The uncompressed trial, with nothing to recover, is weighed
    # as shipped and stops before its accuracy and latency are measured.
    budget = size - 100
    tight = write_study(tmp_path / "tight", checkpoint, jacquard_root, n_trials=3,
                        knobs='["prune", "precision"]', constraints=f'["size <= {budget:.0f}"]')
    study = run_study(load_study_config(tight))
    stopped = study.trials[2]
    assert stopped.state == TrialState.PRUNED
    assert stopped.user_attrs["oversized"]["before"] == "recovery"
    weighed = stopped.user_attrs["oversized"]["bytes"]
    assert abs(weighed - size) <= 32
    assert "recovery_s" not in stopped.user_attrs["times"]
    assert "weights" not in stopped.user_attrs
    assert stopped.system_attrs["constraints"] == [weighed - budget]
    # The file built to be weighed is gone, and no trial folder was made for it; nor is one
    # kept for the trial stopped before scoring (below).
    kept = [p.name for p in (tmp_path / "tight" / "artifacts" / "tiny").iterdir()]
    assert "trial-2" not in kept and not [n for n in kept if n.startswith("size-check")]
    assert "trial-0" not in kept
    uncompressed = study.trials[0]
    assert uncompressed.state == TrialState.PRUNED
    assert uncompressed.user_attrs["oversized"]["before"] == "scoring"
    assert "accuracy_s" not in uncompressed.user_attrs["times"]
    excess = uncompressed.user_attrs["oversized"]["bytes"] - budget
    assert excess > 0
    assert uncompressed.system_attrs["constraints"] == [excess]
    # Its MLflow run says why it stopped, instead of a bare KILLED.
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/tight/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["tiny"], filter_string="tags.ggopt.trial = '2'")
    runs = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert runs["status"].tolist() == ["KILLED"]
    assert "before recovery breaks" in runs["tags.ggopt.stop_reason"].iloc[0]
    assert runs["tags.mlflow.note.content"].iloc[0].startswith("**Stopped early**: size")


@pytest.mark.parametrize(("fragment", "replacement", "message"), [
    ('sampler = "tpe"', 'sampler = "annealing"', r"\[search\] sampler: must be one of"),
    ("steps = 2", "steps = -3", r"\[recovery\] steps: must be an integer >= 0, got -3"),
    ("steps = 2", 'steps = "many"', r"\[recovery\] steps: .*'many'"),
    ('enabled = ["upsample"', 'enabled = ["quantum", "upsample"', r"unknown knob 'quantum'"),
    ("[knobs.precision]", '[knobs.prune]\nmax_ratio = 1.5\n[knobs.precision]',
     r"\[knobs.prune\] max_ratio: must be in \(0, 1\), got 1.5"),
    ("[knobs.precision]", '[knobs.prune]\nexclude = ["conv9"]\n[knobs.precision]',
     r"unknown layer 'conv9'"),
    ("[knobs.precision]", '[knobs.lowrank]\nfractions = [0.0, 0.5]\n[knobs.precision]',
     r"\[knobs.lowrank\] fractions"),
    ("[knobs.precision]", '[knobs.upsample]\nmodes = ["lowres"]\n[knobs.precision]',
     r"\[knobs.upsample\] modes: .*a mode besides lowres .*got \['lowres'\]"),
    ('name = "ggcnn"', 'name = "resnet"', r"\[model\] name: must be one of"),
    ('name = "ggcnn"', 'name = "ggcnn2"', r"checkpoint: .*ggcnn"),
    ("output_size = 96", "output_size = 100", r"output_size: must be an integer multiple"),
    ("[objectives]", '[objectives]\nlatency = "e2e"',
     r"\[objectives\] latency: must be end_to_end .* or network"),
    ("runs = 3", "runs = 3\ncores = 4", r"\[runtime\] cores: unknown key"),
    ('storage = "sqlite', 'storage = "nonsense:/', r"storage: must be a database URL"),
    ('"accuracy >= baseline - 1.0"', '"accuracy > 0.5"', r"constraints: each must read"),
    ('name = "tiny"', 'name = "my study!"', r"name: must be a non-empty name"),
    ("version = 1", "version = 2", r"version: must be 1, got 2"),
    ("n_trials = 4", "n_trials = 0", r"\[search\] n_trials: must be an integer >= 1, got 0"),
    ("n_trials = 4", "n_trials = 4\npromote = {every = 0, top = 1, steps = 9}",
     r"\[search\] promote: must be a table \{every = N, top = K, steps = S\} .*'every': 0"),
    ("n_trials = 4", "n_trials = 4\npromote = {every = 5, steps = 9}",
     r"\[search\] promote: must be a table"),
    ('storage = "sqlite', 'heartbeat_interval = 0\nstorage = "sqlite',
     r"\[search\] heartbeat_interval: must be .* >= 1, got 0"),
    ('storage = "sqlite', 'heartbeat_interval = 10\ngrace_period = 10\nstorage = "sqlite',
     r"grace_period: must be .* > heartbeat_interval \(10\), got 10"),
    ("runs = 3", 'runs = 3\nallow_other_devices = "yes"',
     r"\[runtime\] allow_other_devices: must be true or false"),
    ("runs = 3", 'runs = 3\npaired = 1', r"\[runtime\] paired: must be true or false"),
    ("min_seconds = 0.05", "min_seconds = -1",
     r"\[runtime\] min_seconds: must be a number of seconds from 0 to 600 .*, got -1\.0"),
    ("runs = 3", "runs = 3\nthreads = 0", r"\[runtime\] threads: must be an integer >= 1, got 0"),
    ("batch_size = 2", "batch_size = 2.5", r"\[recovery\] batch_size: .*2.5"),
    ("[runtime]", "[trainer]\nlr = 1\n[runtime]", r"trainer"),
    ("gate_margin = 0.2", "gate_margin = -2", r"\[recovery\] gate_margin"),
    ("batch_size = 2", "batch_size = 2\ncrop = 100", r"\[recovery\] crop: must be 0 .* got 100"),
    ("batch_size = 2", 'batch_size = 2\nlr_schedule = "step"',
     r"\[recovery\] lr_schedule: must be one of constant, cosine, got 'step'"),
    ('precisions = ["fp32", "int8"]', 'precisions = ["fp32", "int8"]\nqat_steps = -5',
     r"\[knobs.precision\] qat_steps: must be an integer >= 0, got -5"),
    ('precisions = ["fp32", "int8"]', 'precisions = ["fp32", "int8"]\nqat_steps = 50',
     r"qat_steps: quantization-aware int8 is built on \[runtime\] name = 'torch'"),
    ('precisions = ["fp32", "int8"]', 'precisions = ["fp32"]\nqat_steps = 50',
     r"qat_steps: .*name = 'torch'"),
], ids=lambda v: None)
def test_broken_study_files_are_rejected_before_any_work(tmp_path, checkpoint, jacquard_root,
                                                         fragment, replacement, message):
    path = write_study(tmp_path, checkpoint, jacquard_root)
    text = path.read_text()
    assert fragment in text
    path.write_text(text.replace(fragment, replacement, 1))
    with pytest.raises(StudyConfigError, match=message) as error:
        load_study_config(path)
    assert str(path) in str(error.value)
    assert not (tmp_path / "optuna.db").exists()


@pytest.mark.parametrize(("runtime", "message"), [
    ("onnxruntime", r"\[runtime\] device 'cuda': onnxruntime .* not CUDAExecutionProvider; "
                    r"install onnxruntime-gpu"),
    ("torch", r"\[runtime\] device 'cuda': torch .* sees no CUDA device"),
])
def test_a_device_the_runtime_cannot_use_is_refused_before_any_work(
        tmp_path, checkpoint, jacquard_root, capsys, monkeypatch, runtime, message):
    # Without the check, onnxruntime falls back to its CPU provider and the study would
    # time the CPU under the name "cuda".
    import onnxruntime
    import torch

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = write_study(tmp_path, checkpoint, jacquard_root)
    path.write_text(path.read_text().replace("warmup = 1", f'name = "{runtime}"\n'
                                             'device = "cuda"\nwarmup = 1')
                    .replace('["fp32", "int8"]', '["fp32", "fp16"]'))
    assert main(["search", str(path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert re.search(message, err), err
    assert "Traceback" not in err and not (tmp_path / "optuna.db").exists()
    export = tmp_path / "model.onnx"
    export.write_bytes(b"x")
    with pytest.raises(ArtifactError, match="not CUDAExecutionProvider"):
        Artifact(export, device="cuda").session()


def test_missing_inputs_are_named(tmp_path, checkpoint, jacquard_root, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for data, message in ((tmp_path / "nowhere", "dataset folder not found"),
                          (empty, "dataset folder is empty")):
        path = write_study(tmp_path, checkpoint, data)
        with pytest.raises(StudyConfigError, match=message):
            load_study_config(path)
    path = write_study(tmp_path, tmp_path / "missing.pt", jacquard_root)
    assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err
    assert "[model] checkpoint: file not found" in err and "Traceback" not in err
    assert main(["pareto", str(tmp_path / "nope.toml")]) == 2


@pytest.mark.parametrize(("storage", "message"), [
    ("postgresql+psycopg2://ggopt:s3cret@127.0.0.1:1/ggopt", "cannot be opened: OperationalError"),
    ("mongodb://127.0.0.1/ggopt", "cannot be opened: NoSuchModuleError"),
    ("sqlite:////nonexistent/folder/optuna.db", "folder '/nonexistent/folder' is not found"),
], ids=["unreachable", "unknown-database", "no-folder"])
def test_unusable_storage_fails_at_once_without_leaking_secrets(tmp_path, checkpoint,
                                                                 jacquard_root, capsys, storage,
                                                                 message):
    path = write_study(tmp_path, checkpoint, jacquard_root)
    path.write_text(path.read_text().replace(f"sqlite:///{tmp_path}/optuna.db", storage))
    assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "s3cret" not in err
    assert not (tmp_path / "artifacts").exists()


def test_corrupt_checkpoint_and_dataset_files_are_named(tmp_path, checkpoint, jacquard_root,
                                                        capsys):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"\x00 not a checkpoint")
    assert main(["search", str(write_study(tmp_path, broken, jacquard_root))]) == 2
    err = capsys.readouterr().err
    assert str(broken) in err and "not a readable checkpoint" in err
    assert "weights_only" not in err  # torch's advice to unpickle an unknown file is not given
    depth = sorted(jacquard_root.rglob("*_perfect_depth.tiff"))[-1]
    depth.write_bytes(b"II* truncated")
    assert main(["search", str(write_study(tmp_path, checkpoint, jacquard_root))]) == 2
    err = capsys.readouterr().err
    assert str(depth) in err and "Traceback" not in err
    assert not (tmp_path / "artifacts").exists()  # refused before any trial or baseline


def test_pareto_on_a_study_never_run_says_so(tmp_path, checkpoint, jacquard_root, capsys):
    path = write_study(tmp_path, checkpoint, jacquard_root)
    assert main(["pareto", str(path)]) == 2
    assert "ggopt search" in capsys.readouterr().err


def test_samplers_are_seeded(tmp_path):
    from search.config import default_config
    from search.study.setup import _sampler

    config = default_config(tmp_path, "x", sampler="random", seed=3)
    first = optuna.create_study(sampler=_sampler(config)).ask().suggest_float("a", 0, 1)
    again = optuna.create_study(sampler=_sampler(config)).ask().suggest_float("a", 0, 1)
    assert first == again


@pytest.mark.parametrize("path", sorted(Path("studies").glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_study_files_are_valid(path, jacquard_root):
    config = load_study_config(path, {"data_root": str(jacquard_root)})
    assert config.name == path.stem
    assert config.checkpoint_path().is_file()  # the shipped baseline, no download
    assert config.constraints and config.n_trials


def test_every_artifact_format_is_recorded_against_the_runtimes_it_changed():
    from grasp.artifact import RUNTIMES
    from search.record import FORMAT_CHANGES, files_format

    # A format bump must name the runtimes whose files it changed, or their studies would
    # resume across it (or be refused for nothing).
    assert set(FORMAT_CHANGES) == set(RUNTIMES)
    assert max(max(changes) for changes in FORMAT_CHANGES.values()) == ARTIFACT_FORMAT
    assert [files_format("torch", f) for f in range(1, ARTIFACT_FORMAT + 1)][:3] == [1, 2, 2]
    assert files_format("onnxruntime", 4) == 4


def test_resuming_with_other_knob_choices_is_refused_before_any_trial(tmp_path, checkpoint,
                                                                     jacquard_root):
    path = write_study(tmp_path, checkpoint, jacquard_root, n_trials=1)
    run_study(load_study_config(path))
    # The same study, its upsample modes narrowed: Optuna would fail every new trial.
    narrowed = '[knobs.upsample]\nmodes = ["subpixel", "lowres"]\n\n[knobs.precision]'
    path.write_text(path.read_text().replace("[knobs.precision]", narrowed))
    config = load_study_config(path, {"n_trials": 2})
    with pytest.raises(StudyConfigError, match=r"upsample.convt1 was \['keep', 'subpixel', "
                                               r"'nearest', 'bilinear'\], now \['subpixel'\];"
                                               r".*convt3 was .*, now \['subpixel', 'lowres'\]"
                                               r".*new `name`"):
        run_study(config)
    ran = [t.state for t in load_study(config).trials if t.state != TrialState.WAITING]
    assert ran == [TrialState.COMPLETE]  # the queued warm starts were not started


def test_the_study_file_reference_is_the_loaders_own():
    """docs/study-file.md is written from the keys and rules the loader reads; after a
    change to them, regenerate it: python -m search.study_file > docs/study-file.md"""
    from search.study_file import study_file_reference

    page = study_file_reference()
    assert "| `target` | string | `(unset)` |" in page and "## [knobs.prune]" in page
    assert Path("docs/study-file.md").read_text() == page, (
        "docs/study-file.md is stale: python -m search.study_file > docs/study-file.md")


def _schema_keys():
    """Every (table, key, rule) of the study-file schema that holds a plain value."""
    from search.study_file import Promote, StudyFile, table_type

    def walk(model, section):
        for name, info in model.model_fields.items():
            table = table_type(info.annotation)
            if table is None or table is Promote:
                yield section, name, info.description
            else:
                yield from walk(table, f"{section}.{name}" if section else name)

    return list(walk(StudyFile, ""))


@pytest.mark.parametrize(("section", "key", "rule"), _schema_keys(),
                         ids=lambda v: v if isinstance(v, str) and " " not in v else "")
def test_a_value_no_key_takes_is_refused_naming_the_file_key_rule_and_value(
        tmp_path, section, key, rule):
    # A TOML date is valid TOML and no key's type: each key's own rule must be quoted.
    study = tmp_path / "s.toml"
    table = f"[{section}]\n" if section else ""
    name = "" if key == "name" and not section else 'name = "x"\n'
    version = "" if key == "version" and not section else "version = 1\n"
    study.write_text(f"{version}{name}{table}{key} = 1979-05-27\n")
    with pytest.raises(StudyConfigError) as error:
        load_study_config(study)
    where = f"[{section}] {key}" if section else key
    assert str(error.value) == f"{study}: {where}: {rule}, got datetime.date(1979, 5, 27)."


def test_promotion_continues_the_front_trials_on_top_of_the_budget(tmp_path, checkpoint,
                                                                   jacquard_root):
    import torch

    from search.front import feasible_front, hypervolume, hypervolume_history
    from search.record import PROMOTED_FROM
    from search.storage import finished
    from search.study import build_trial_model, prepare
    from search.study.continuation import CONTINUE_LR_FRACTION

    path = write_study(tmp_path, checkpoint, jacquard_root, n_trials=4,
                       knobs='["prune", "precision"]', constraints="[]")
    path.write_text(path.read_text().replace(
        "n_trials = 4", "n_trials = 4\npromote = {every = 3, top = 1, steps = 4}"))
    config = load_study_config(path)
    study = run_study(config)
    trials = study.get_trials(deepcopy=False)
    promotions = [t for t in trials if PROMOTED_FROM in t.user_attrs]
    assert finished(study) == 4  # promotions come on top of n_trials
    # One round after 3 trials, one when the budget is spent; a trial is promoted once.
    assert len(promotions) == 2 and all(t.state == TrialState.COMPLETE for t in promotions)
    sources = [t.user_attrs[PROMOTED_FROM] for t in promotions]
    assert len(set(sources)) == 2 and not set(sources) & {t.number for t in promotions}
    by_number = {t.number: t for t in trials}
    for promotion, source in zip(promotions, sources, strict=True):
        assert promotion.params == by_number[source].params
        assert promotion.user_attrs["promotion"] == {
            "steps": 4, "lr": pytest.approx(config.recovery_lr * CONTINUE_LR_FRACTION),
            "recovery_steps": 6}
    # Continued from the source's kept weights: nearer them than a fresh rebuild of the model.
    promotion, source = promotions[0], by_number[sources[0]]
    kept = torch.load(source.user_attrs["weights"], weights_only=True)
    continued = torch.load(promotion.user_attrs["weights"], weights_only=True)
    fresh = build_trial_model(prepare(config), params=source.params)[0].state_dict()
    distance = lambda a, b: sum(float((a[k] - b[k]).norm()) for k in a)  # noqa: E731
    assert 0 < distance(continued, kept) < distance(continued, fresh)
    # The promotion stands for its source on the front and in the hypervolume.
    front = {t.number for t in feasible_front(study, config.objectives)}
    assert not front & set(sources)
    assert hypervolume_history(study, config.objectives)[-1] == pytest.approx(
        hypervolume(study, config.objectives))
    client = mlflow.tracking.MlflowClient(config.tracking_uri)
    experiment = client.get_experiment_by_name("tiny").experiment_id
    runs = client.search_runs([experiment], "tags.`ggopt.promoted_from` != ''")
    assert sorted(r.data.tags["ggopt.promoted_from"] for r in runs) == sorted(map(str, sources))
    from rich.console import Console

    from search.review.table import front_table

    console = Console(record=True, width=250)
    console.print(front_table(study, config.objectives))
    shown = console.export_text()
    assert any(f"{t.number} (from {t.user_attrs[PROMOTED_FROM]})" in shown
               for t in promotions if t.number in front)
    assert "continued by promotion" in " ".join(shown.split())
    # Resuming the finished study starts nothing new.
    again = run_study(config)
    assert len(again.get_trials(deepcopy=False)) == len(trials)


def test_promotion_needs_trials_that_recover(tmp_path, checkpoint, jacquard_root):
    path = write_study(tmp_path, checkpoint, jacquard_root, steps=0)
    path.write_text(path.read_text().replace(
        "n_trials = 4", "n_trials = 4\npromote = {every = 3, top = 1, steps = 4}"))
    with pytest.raises(StudyConfigError, match=r"\[search\] promote: needs trials that "
                                               r"recover \(\[recovery\] steps >= 1\)"):
        load_study_config(path)
