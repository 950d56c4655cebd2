"""Finishing a chosen trial: longer recovery before export, measured again on the file."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

import search.finish
from search.cli import main
from search.study.continuation import CONTINUE_LR_FRACTION, FINISH_POOL
from tests.test_search import write_study


def test_export_finish_recovers_longer_and_measures_the_new_file(
        tmp_path, checkpoint, jacquard_root, monkeypatch, capsys):
    path = write_study(tmp_path, checkpoint, jacquard_root, n_trials=3)
    assert main(["search", str(path)]) == 0
    # Bad input is refused before any work.
    assert main(["export", "--no-sim", str(path),
                 "--trial", "2", "--finish", "-1",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "--finish: the number of recovery steps must be >= 0, got -1" in capsys.readouterr().err
    from search.config import load_study_config
    from search.study import build_trial_model, load_study, prepare

    config = load_study_config(path)
    kept_path = load_study(config).trials[2].user_attrs["weights"]
    kept = torch.load(kept_path, weights_only=True)  # the study kept trial 2's recovery
    runs = []
    original = search.finish.recover

    def counted(model, pool, steps, recipe, *args, **kwargs):
        state = model.state_dict()
        starts_from_kept = state.keys() == kept.keys() and all(
            torch.equal(state[k], kept[k]) for k in kept)
        runs.append((steps, len(pool), recipe.lr, starts_from_kept))
        return original(model, pool, steps, recipe, *args, **kwargs)

    monkeypatch.setattr(search.finish, "recover", counted)
    out = tmp_path / "finished"
    capsys.readouterr()
    # Trial 2 is the warm start's 50 %-pruned int8 model; the study recovered it 2 steps.
    assert main(["export", "--no-sim", str(path),
                 "--trial", "2", "--finish", "6", "--out", str(out)]) == 0
    shown = capsys.readouterr().err  # the finished numbers beside the study's, on the terminal
    # 6 steps, on a pool sized for them, continuing the study's weights at a lower rate.
    lr = config.recovery_lr * CONTINUE_LR_FRACTION
    assert runs == [(6, min(6 * 2, FINISH_POOL), lr, True)]
    # The finished fp32 weights are kept, and load into the architecture the params rebuild.
    rebuilt, _ = build_trial_model(prepare(config), params=json.loads(
        (out / "config.json").read_text())["params"])
    rebuilt.load_state_dict(torch.load(out / "weights.pt", weights_only=True))
    saved = json.loads((out / "config.json").read_text())
    assert saved["finish_steps"] == 6 and saved["params"]["precision"] == "int8"
    assert saved["finish_continued"] is True and saved["finish_lr"] == lr
    assert saved["values"]["size"] == (out / "model.onnx").stat().st_size
    assert saved["values"]["latency"] > 0 and saved["study_values"] != saved["values"]
    card = (out / "MODEL_CARD.md").read_text()
    assert ("trial 2, finished: 6 more recovery steps continuing the study (the study gave "
            "it 2)") in card
    assert "| objective | this model | the trial in the study | uncompressed baseline |" in card
    # The finished file's accuracy re-measured with its interval, beside the study's.
    accuracy_row = re.search(r"\| IoU grasp-match accuracy, validation \(\d+ images, 95 % CI; "
                             r"chose the model\) \| ([0-9.]+) \[([0-9.]+), ([0-9.]+)\] \| "
                             r"([0-9.]+) \[", card)
    assert accuracy_row and accuracy_row[0] in shown
    assert float(accuracy_row[1]) == pytest.approx(saved["values"]["accuracy"], abs=5e-4)
    assert float(accuracy_row[2]) <= float(accuracy_row[1]) <= float(accuracy_row[3])
    assert float(accuracy_row[4]) == pytest.approx(saved["study_values"]["accuracy"], abs=5e-4)
    # What the synthesis adds, paired, for the file, the trial and the baseline.
    synthesis = re.search(r"\| what the grasp synthesis adds \(end to end minus network, "
                          r"paired over timing rounds, 95 % CI\) \|(.*)\|$", card, re.M)
    cells = [c.strip() for c in synthesis[1].split("|")]
    assert len(cells) == 3 and all(re.fullmatch(r"[+-]\d+\.\d\d ms( \[.*\])?", c)
                                   for c in cells), cells
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    version = client.search_model_versions("name = 'tiny-ggcnn'")[0]
    run = client.get_run(version.run_id)
    assert run.data.tags["ggopt.finish_steps"] == "6"
    assert run.data.metrics["size_bytes"] == saved["values"]["size"]
    # A finished model that scores below the study's artifact is flagged, not hidden.
    measured = search.finish.measure_artifact

    def worse(*args, **kwargs):
        values, details = measured(*args, **kwargs)
        return {**values, "accuracy": values["accuracy"] - 0.5}, details

    monkeypatch.setattr(search.finish, "measure_artifact", worse)
    capsys.readouterr()
    assert main(["export", "--no-sim", str(path),
                 "--trial", "2", "--finish", "2", "--no-register",
                 "--out", str(tmp_path / "worse")]) == 0
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "warning: built with --finish, trial 2 scores" in err
    assert "export without --finish" in err
    # The uncompressed trial has nothing to recover: shipped as built, said so.
    runs.clear()
    assert main(["export", "--no-sim", str(path),
                 "--trial", "0", "--finish", "6", "--no-register",
                 "--out", str(tmp_path / "plain")]) == 0
    assert runs == []
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["finish_steps"] == 0
    # A plain export ships the study's recovered fp32 weights beside the artifact.
    assert main(["export", "--no-sim", str(path),
                 "--trial", "2", "--no-register",
                 "--out", str(tmp_path / "as-studied")]) == 0
    shipped = torch.load(tmp_path / "as-studied" / "weights.pt", weights_only=True)
    assert all(torch.equal(shipped[k], kept[k]) for k in kept)


def test_finish_learning_rate_and_missing_or_foreign_kept_weights(
        tmp_path, checkpoint, jacquard_root, monkeypatch, capsys):
    path = write_study(tmp_path, checkpoint, jacquard_root, n_trials=3)
    assert main(["search", str(path)]) == 0
    for bad, message in ((["--finish", "2", "--finish-lr", "-1"],
                          "--finish-lr: the learning rate must be > 0, got -1.0"),
                         (["--finish-lr", "0.01"], "--finish-lr: only applies with --finish")):
        assert main(["export", "--no-sim", str(path),
                 "--trial", "2", "--no-register", *bad,
                     "--out", str(tmp_path / "bad")]) == 2
        assert message in capsys.readouterr().err
    rates = []
    original = search.finish.recover

    def spy(model, pool, steps, recipe, *args, **kwargs):
        rates.append(recipe.lr)
        return original(model, pool, steps, recipe, *args, **kwargs)

    monkeypatch.setattr(search.finish, "recover", spy)
    assert main(["export", "--no-sim", str(path),
                 "--trial", "2", "--finish", "2", "--finish-lr", "0.0005",
                 "--no-register", "--out", str(tmp_path / "slow")]) == 0
    assert rates == [0.0005]
    # Kept weights not on this disk (a distributed study's worker kept them on its own):
    # fetched from the trial's MLflow run, and the finish still continues them.
    from search.config import load_study_config
    from search.study import load_study

    config = load_study_config(path)
    kept = Path(load_study(config).trials[2].user_attrs["weights"])
    state = torch.load(kept, weights_only=True)
    kept.unlink()
    assert main(["export", "--no-sim", str(path),
                 "--trial", "2", "--finish", "2", "--no-register",
                 "--out", str(tmp_path / "fetched")]) == 0
    assert rates[-1] == pytest.approx(config.recovery_lr * CONTINUE_LR_FRACTION)
    assert json.loads((tmp_path / "fetched" / "config.json").read_text())["finish_continued"]
    # ...and so does the artifact, for a plain export (a command of its own: the fetched
    # copies are removed when it exits).
    Path(load_study(config).trials[2].user_attrs["artifact"]).unlink()
    temp = tmp_path / "temp"
    temp.mkdir()
    done = subprocess.run([sys.executable, "-m", "search.cli", "export", "--no-sim",
                           str(path), "--trial",
                           "2", "--no-register", "--out", str(tmp_path / "plain")],
                          env={**os.environ, "TMPDIR": str(temp)}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "plain" / "weights.pt").is_file()
    assert (tmp_path / "plain" / "model.onnx").is_file()
    assert list(temp.glob("ggopt-fetched-*")) == []
    # Kept nowhere (a tracking store without the study's runs): said, and recovered from the
    # start at the study's own rate.
    capsys.readouterr()
    assert main(["export", "--no-sim", str(path),
                 "--trial", "2", "--finish", "2", "--no-register",
                 "--tracking-uri", f"sqlite:///{tmp_path}/other.db",
                 "--out", str(tmp_path / "restart")]) == 0
    assert rates[-1] == config.recovery_lr
    assert "kept no recovered weights" in " ".join(capsys.readouterr().err.split())
    saved = json.loads((tmp_path / "restart" / "config.json").read_text())
    assert saved["finish_continued"] is False
    # Weights that do not fit the rebuilt architecture are refused, naming the file.
    torch.save({k: v[:1] for k, v in state.items()}, kept)
    assert main(["export", "--no-sim", str(path),
                 "--trial", "2", "--finish", "2", "--no-register",
                 "--out", str(tmp_path / "foreign")]) == 2
    err = capsys.readouterr().err
    assert str(kept) in "".join(err.split())  # rich wraps the long path
    assert "do not fit the model its params rebuild" in " ".join(err.split())


def test_export_rebuild_builds_the_kept_weights_anew_without_training(
        tmp_path, checkpoint, jacquard_root, monkeypatch, capsys):
    path = write_study(tmp_path, checkpoint, jacquard_root, n_trials=3)
    assert main(["search", str(path)]) == 0
    assert main(["export", "--no-sim", str(path),
                 "--trial", "2", "--rebuild", "--finish", "2",
                 "--no-register", "--out", str(tmp_path / "bad")]) == 2
    assert "--rebuild and --finish: choose one" in capsys.readouterr().err
    from search.config import load_study_config
    from search.record import ARTIFACT_FORMAT
    from search.study import load_study

    config = load_study_config(path)
    study = load_study(config)
    # Pretend an older ggopt wrote the study: a plain export ships its file and says how to
    # get this ggopt's format.
    study.set_user_attr("config", {**study.user_attrs["config"],
                                   "study.artifact_format": ARTIFACT_FORMAT - 1})
    capsys.readouterr()
    assert main(["export", "--no-sim", str(path),
                 "--trial", "2", "--no-register",
                 "--out", str(tmp_path / "as-studied")]) == 0
    assert "`--rebuild` builds and measures trial 2's file anew" in " ".join(
        capsys.readouterr().err.split())
    plain = json.loads((tmp_path / "as-studied" / "config.json").read_text())
    assert plain["artifact_format"] == ARTIFACT_FORMAT - 1 and plain["rebuilt"] is False
    trained = []
    monkeypatch.setattr(search.finish, "recover", lambda *a, **k: trained.append(a))
    out = tmp_path / "rebuilt"
    # Trial 2 is the warm start's 50 %-pruned int8 model.
    assert main(["export", "--no-sim", str(path),
                 "--trial", "2", "--rebuild", "--out", str(out)]) == 0
    assert trained == []
    # Same weights, same code: the study's own file again, byte for byte (without the kept
    # weights loaded, the pruned model's would differ), measured again.
    studied = Path(study.trials[2].user_attrs["artifact"])
    assert (out / "model.onnx").read_bytes() == studied.read_bytes()
    saved = json.loads((out / "config.json").read_text())
    assert saved["rebuilt"] is True and saved["finish_steps"] == 0
    assert saved["artifact_format"] == ARTIFACT_FORMAT
    assert saved["values"]["accuracy"] == saved["study_values"]["accuracy"]
    assert saved["values"]["size"] == saved["study_values"]["size"]
    assert saved["values"]["latency"] > 0
    card = (out / "MODEL_CARD.md").read_text()
    assert (f"trial 2, built anew in artifact format {ARTIFACT_FORMAT} from the study's "
            f"weights (the study wrote format {ARTIFACT_FORMAT - 1})") in card
    assert "| objective | this model | the trial in the study | uncompressed baseline |" in card
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(client.search_model_versions("name = 'tiny-ggcnn'")[0].run_id)
    assert run.data.tags["ggopt.rebuilt"] == "true"
    assert run.data.tags["ggopt.artifact_format"] == str(ARTIFACT_FORMAT)
    # Weights kept nowhere: nothing to rebuild from, said, naming the missing file.
    Path(study.trials[2].user_attrs["weights"]).unlink()
    capsys.readouterr()
    assert main(["export", "--no-sim", str(path),
                 "--trial", "2", "--rebuild", "--no-register",
                 "--tracking-uri", f"sqlite:///{tmp_path}/other.db",
                 "--out", str(tmp_path / "nothing")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "trial 2: the study kept no recovered weights" in err and "--finish STEPS" in err
    assert not (tmp_path / "nothing" / "model.onnx").exists()
