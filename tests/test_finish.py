"""Finishing a chosen trial: longer recovery before export, measured again on the file."""

import json

import mlflow
import torch

import search.finish
from search.cli import main
from search.finish import FINISH_POOL
from tests.test_search import write_study


def test_export_finish_recovers_longer_and_measures_the_new_file(
        tmp_path, checkpoint, jacquard_root, monkeypatch, capsys):
    path = write_study(tmp_path, checkpoint, jacquard_root, n_trials=3)
    assert main(["search", str(path)]) == 0
    # Bad input is refused before any work.
    assert main(["export", str(path), "--trial", "2", "--finish", "-1",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "--finish: the number of recovery steps must be >= 0, got -1" in capsys.readouterr().err
    runs = []
    original = search.finish.recover

    def counted(model, pool, steps, *args, **kwargs):
        runs.append((steps, len(pool)))
        return original(model, pool, steps, *args, **kwargs)

    monkeypatch.setattr(search.finish, "recover", counted)
    out = tmp_path / "finished"
    # Trial 2 is the warm start's 50 %-pruned int8 model; the study recovered it 2 steps.
    assert main(["export", str(path), "--trial", "2", "--finish", "6", "--out", str(out)]) == 0
    assert runs == [(6, min(6 * 2, FINISH_POOL))]  # 6 steps, on a pool sized for them
    # The finished fp32 weights are kept, and load into the architecture the params rebuild.
    from search.config import load_study_config
    from search.study import build_trial_model, prepare

    config = load_study_config(path)
    rebuilt, _ = build_trial_model(prepare(config), params=json.loads(
        (out / "config.json").read_text())["params"])
    rebuilt.load_state_dict(torch.load(out / "weights.pt", weights_only=True))
    saved = json.loads((out / "config.json").read_text())
    assert saved["finish_steps"] == 6 and saved["params"]["precision"] == "int8"
    assert saved["values"]["size"] == (out / "model.onnx").stat().st_size
    assert saved["values"]["latency"] > 0 and saved["study_values"] != saved["values"]
    card = (out / "MODEL_CARD.md").read_text()
    assert "trial 2, finished: 6 recovery steps (the study gave it 2)" in card
    assert "| objective | this model | the trial in the study | uncompressed baseline |" in card
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
    assert main(["export", str(path), "--trial", "2", "--finish", "2", "--no-register",
                 "--out", str(tmp_path / "worse")]) == 0
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "warning: finished, trial 2 scores" in err and "export without --finish" in err
    # The uncompressed trial has nothing to recover: shipped as built, said so.
    runs.clear()
    assert main(["export", str(path), "--trial", "0", "--finish", "6", "--no-register",
                 "--out", str(tmp_path / "plain")]) == 0
    assert runs == []
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["finish_steps"] == 0
