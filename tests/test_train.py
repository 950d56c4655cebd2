import mlflow
import pytest
import torch

from grasp.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from grasp.data import JacquardDataset, split
from grasp.models import get_model
from grasp.train import TrainConfig, distillation_loss, evaluate, ggcnn_loss, train
from search.cli import main

SIZE = 96


@pytest.fixture
def dataset(jacquard_root):
    return JacquardDataset(jacquard_root, output_size=SIZE)


def _fixed_batch(ds):
    items = [ds.item(i) for i in range(len(ds))]
    return torch.stack([x for x, _, _ in items]), torch.stack([y for _, y, _ in items])


def test_training_lowers_the_loss(dataset):
    torch.manual_seed(0)
    model = get_model("ggcnn")
    x, y = _fixed_batch(dataset)
    with torch.no_grad():
        before = float(ggcnn_loss(model(x), y))
    result = train(model, dataset.subset(range(len(dataset)), augment=True), None,
                   TrainConfig(epochs=6, batch_size=4, lr=3e-3), progress=False)
    with torch.no_grad():
        after = float(ggcnn_loss(model(x), y))
    assert result.steps == 18
    assert after < 0.7 * before


def test_distillation_pulls_the_student_to_the_teacher(dataset):
    torch.manual_seed(1)
    teacher, student = get_model("ggcnn").eval(), get_model("ggcnn")
    x, _ = _fixed_batch(dataset)
    with torch.no_grad():
        before = float(distillation_loss(student(x), teacher(x)))
    train(student, dataset.subset(range(len(dataset))), None,
          TrainConfig(epochs=4, batch_size=4, lr=3e-3, distill_weight=1.0),
          teacher=teacher, progress=False)
    with torch.no_grad():
        after = float(distillation_loss(student(x), teacher(x)))
    assert after < 0.5 * before


def test_weighted_distillation_counts_errors_where_the_teacher_sees_a_grasp_more():
    teacher = [torch.zeros(1, 1, 8, 8) for _ in range(4)]
    teacher[0][0, 0, 2, 2] = 1.0  # the teacher's one grasp pixel

    def loss_with_error_at(row: int, pos_weight: float) -> float:
        pred = [t.clone() for t in teacher]
        pred[1][0, 0, row, 2] += 0.5  # a wrong angle (cos map) at one pixel
        return float(distillation_loss(pred, teacher, pos_weight))

    assert loss_with_error_at(2, 1.0) == pytest.approx(loss_with_error_at(5, 1.0))
    assert loss_with_error_at(2, 10.0) == pytest.approx(10 * loss_with_error_at(5, 10.0))
    assert float(distillation_loss(teacher, teacher, 10.0)) == 0.0


def test_max_steps_bounds_the_work(dataset):
    result = train(get_model("ggcnn2"), dataset.subset(range(len(dataset))), None,
                   TrainConfig(epochs=5, batch_size=2, max_steps=3), progress=False)
    assert result.steps == 3


def test_validation_keeps_the_best_epoch(dataset):
    parts = split(dataset, "object", 0.25, 0.0)
    result = train(get_model("ggcnn"), dataset.subset(parts["train"], augment=True),
                   dataset.subset(parts["val"]), TrainConfig(epochs=3, batch_size=4),
                   progress=False)
    accuracies = [h["val_accuracy"] for h in result.history]
    assert result.best_val_accuracy == max(accuracies)
    assert result.best_epoch == max(i for i, a in enumerate(accuracies) if a == max(accuracies))


def test_perfect_predictor_scores_one_and_empty_scores_zero(dataset):
    sub = dataset.subset(range(len(dataset)))

    def oracle(x):
        return torch.stack([dataset.item(i)[1] for i in range(len(x))])

    def blank(x):
        return torch.zeros(len(x), 4, SIZE, SIZE)

    oracle_hits = evaluate(lambda x: oracle(x), dataset.subset([0]))
    assert oracle_hits == 1.0
    assert evaluate(blank, sub) == 0.0


def test_config_rules_name_the_value():
    with pytest.raises(ValueError, match=r"`0 <= distill_weight <= 1` must hold, but got 1.5"):
        TrainConfig(distill_weight=1.5)
    with pytest.raises(ValueError, match="epochs >= 1"):
        TrainConfig(epochs=0)


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    model = get_model("ggcnn2").eval()
    path = save_checkpoint(tmp_path / "m.pt", model, "ggcnn2", {"a": 1}, {"acc": 0.5})
    payload = torch.load(path, weights_only=True)
    assert payload["model"] == "ggcnn2"
    ckpt = load_checkpoint(path)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(x), ckpt.model(x), strict=True))
    assert ckpt.config == {"a": 1} and ckpt.metrics == {"acc": 0.5}


def test_checkpoint_errors_name_the_file(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", get_model("ggcnn"), "ggcnn")
    with pytest.raises(CheckpointError, match=rf"{path}: checkpoint holds model 'ggcnn'"):
        load_checkpoint(path, model_name="ggcnn2")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=rf"{bad}: not a readable checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")
    wrong = tmp_path / "wrong.pt"
    payload = torch.load(path, weights_only=True)
    payload["model"] = "ggcnn2"
    torch.save(payload, wrong)
    with pytest.raises(CheckpointError, match=rf"{wrong}: weights do not fit model 'ggcnn2'"):
        load_checkpoint(wrong)


def test_cli_train_writes_checkpoint_and_mlflow_run(jacquard_root, tmp_path, capsys):
    out = tmp_path / "ckpt" / "ggcnn.pt"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["train", str(jacquard_root), "--output-size", str(SIZE), "--epochs", "2",
                 "--batch-size", "4", "--val-fraction", "0.25", "--test-fraction", "0.25",
                 "--out", str(out), "--tracking-uri", uri, "--experiment", "t"])
    assert code == 0
    ckpt = load_checkpoint(out, model_name="ggcnn")
    assert ckpt.config["job"]["split_by"] == "object"
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["t"])
    assert len(runs) == 1
    assert "metrics.best_val_accuracy" in runs.columns
    assert runs["params.job.model"][0] == "ggcnn"


def test_cli_bad_input_is_one_line_without_traceback(tmp_path, capsys):
    code = main(["train", str(tmp_path / "missing"), "--tracking-uri",
                 f"sqlite:///{tmp_path / 'm.db'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "missing: dataset folder not found" in err
    assert "Traceback" not in err


def test_input_gain_scales_the_first_layer_only(dataset):
    torch.manual_seed(0)
    model = get_model("ggcnn")
    before = model.conv1.weight.detach().clone()
    other = model.conv2.weight.detach().clone()
    from grasp.train import _optimizer

    optimizer = _optimizer(model, TrainConfig(input_gain=20.0, lr=1e-3))
    assert torch.allclose(model.conv1.weight, 20 * before)
    assert torch.equal(model.conv2.weight, other)
    lrs = sorted(group["lr"] for group in optimizer.param_groups)
    assert lrs == pytest.approx([1e-3, 2e-2])
    with pytest.raises(ValueError, match="input_gain > 0"):
        TrainConfig(input_gain=0.0)


def test_best_epochs_are_reported_as_they_happen(dataset):
    parts = split(dataset, "object", 0.25, 0.0)
    seen = []
    result = train(get_model("ggcnn"), dataset.subset(parts["train"]),
                   dataset.subset(parts["val"]), TrainConfig(epochs=3, batch_size=4),
                   on_best=lambda epoch, m: seen.append((epoch, m["val_accuracy"])),
                   progress=False)
    assert seen and seen[-1] == (result.best_epoch, result.best_val_accuracy)
    assert [a for _, a in seen] == sorted(a for _, a in seen)


def test_init_from_trained_weights_keeps_the_first_layer_under_input_gain(
        jacquard_root, tmp_path):
    """A run continued with --init and --input-gain once started from a first layer 20x too
    large (a trained GG-CNN fell from 50 % to 19 % before its first step)."""
    start = tmp_path / "start.pt"
    torch.manual_seed(0)
    save_checkpoint(start, get_model("ggcnn"), "ggcnn")
    before = load_checkpoint(start).model.conv1.weight.detach()
    out = tmp_path / "continued.pt"
    code = main(["train", str(jacquard_root), "--output-size", str(SIZE), "--epochs", "1",
                 "--max-steps", "1", "--lr", "1e-9", "--input-gain", "20", "--init", str(start),
                 "--val-fraction", "0.25", "--test-fraction", "0.25", "--out", str(out),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    assert code == 0
    after = load_checkpoint(out).model.conv1.weight.detach()
    assert torch.allclose(after, before, atol=1e-6)
    from grasp.train import _optimizer

    fresh = get_model("ggcnn")
    first = fresh.conv1.weight.detach().clone()
    _optimizer(fresh, TrainConfig(input_gain=20.0))
    assert torch.allclose(fresh.conv1.weight, 20 * first)


def test_random_crops_cut_the_same_window_from_input_and_maps():
    from grasp.train import random_crops

    x = torch.arange(2 * 120 * 120, dtype=torch.float32).reshape(2, 1, 120, 120)
    y = torch.cat([x, -x, 2 * x, x + 1], dim=1)
    cx, cy = random_crops(x, y, 96, torch.Generator().manual_seed(0))
    assert cx.shape == (2, 1, 96, 96) and cy.shape == (2, 4, 96, 96)
    assert torch.equal(cy[:, :1], cx) and torch.equal(cy[:, 3:], cx + 1)
    assert not torch.equal(cx, x[..., :96, :96]) or not torch.equal(cx, x[..., 24:, 24:])
    with pytest.raises(ValueError, match=r"crop: must be in \(0, 120\].*got 144"):
        random_crops(x, y, 144, torch.Generator())


def test_crop_trains_on_windows_and_validates_on_whole_images(jacquard_root):
    data = JacquardDataset(jacquard_root, output_size=120)
    parts = split(data, "object", 0.25, 0.0)
    model = get_model("ggcnn")
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append((m.training, args[0].shape[-1])))
    train(model, data.subset(parts["train"], augment=True), data.subset(parts["val"]),
          TrainConfig(epochs=1, batch_size=2, crop=96), progress=False)
    assert {size for training, size in seen if training} == {96}
    assert {size for training, size in seen if not training} == {120}


def test_cosine_schedule_decays_the_lr_to_zero(dataset):
    config = dict(epochs=3, batch_size=4, lr=1e-3)
    cosine = train(get_model("ggcnn"), dataset.subset(range(len(dataset))), None,
                   TrainConfig(**config, lr_schedule="cosine"), progress=False)
    lrs = [h["lr"] for h in cosine.history]
    assert lrs[0] < 1e-3 and lrs == sorted(lrs, reverse=True) and lrs[-1] < 1e-9
    constant = train(get_model("ggcnn"), dataset.subset(range(len(dataset))), None,
                     TrainConfig(**config), progress=False)
    assert [h["lr"] for h in constant.history] == [1e-3] * 3


def test_crop_and_schedule_rules_name_the_value(jacquard_root, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"crop % 12 == 0.*got 100"):
        TrainConfig(crop=100)
    with pytest.raises(ValueError, match=r"lr_schedule in .*got 'step'"):
        TrainConfig(lr_schedule="step")
    code = main(["train", str(jacquard_root), "--output-size", "96", "--crop", "144",
                 "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--crop 144: must be at most the image size (--output-size 96)" in err


def test_cli_train_records_the_saved_models_accuracy_on_the_test_split(trained, tmp_path):
    """Fine-tuned briefly from a model that grasps, so the figure is not trivially 0: the
    recorded test accuracy is the saved model's, on the preset test split only."""
    from grasp.data import load_dataset
    from grasp.train import predict_maps

    checkpoint, data = trained
    out = tmp_path / "tuned.pt"
    assert main(["train", str(data), "--split", "preset", "--init", str(checkpoint),
                 "--output-size", str(SIZE), "--max-steps", "2", "--lr", "1e-6",
                 "--input-gain", "20", "--out", str(out),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 0
    tuned = load_checkpoint(out, model_name="ggcnn")
    dataset = load_dataset("jacquard", data, output_size=SIZE)
    parts = split(dataset, "preset")
    by_split = {name: evaluate(predict_maps(tuned.model.eval()), dataset.subset(parts[name]))
                for name in ("val", "test")}
    assert tuned.metrics["test_accuracy"] == by_split["test"] > 0
    assert by_split["val"] != by_split["test"]  # so reading the wrong split would show


def test_a_study_refuses_a_checkpoint_trained_on_its_held_out_images(trained, tmp_path,
                                                                     capsys):
    """`ggopt train` records the images it learnt from; a study whose validation or test
    images are among them is refused before any work, naming an image. By default train
    splits a folder with train/ val/ test/ as a study does, which passes."""
    from test_search import write_study

    from search.config import StudyConfigError, load_study_config
    from search.study import prepare

    _, data = trained
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["--output-size", str(SIZE), "--max-steps", "1", "--tracking-uri", uri]
    leaky, clean = tmp_path / "leaky.pt", tmp_path / "clean.pt"
    assert main(["train", str(data), "--split", "image", "--out", str(leaky), *common]) == 0
    assert main(["train", str(data), "--out", str(clean), *common]) == 0
    assert load_checkpoint(clean).config["job"]["split_by"] == "preset"
    recorded = load_checkpoint(leaky).config["train_images"]
    assert len(recorded) == len(set(recorded)) > 0
    with pytest.raises(StudyConfigError, match=r"leaky.pt was trained on \d+ of the study's "
                                               r"\d+ val images \(e\.g\. .*perfect_depth"):
        prepare(load_study_config(write_study(tmp_path, leaky, data, split="preset")))
    capsys.readouterr()
    prepare(load_study_config(write_study(tmp_path, clean, data, split="preset")))
    assert "does not record" not in capsys.readouterr().err
    # A checkpoint that records nothing (not from ggopt train) is named as unchecked.
    bare = save_checkpoint(tmp_path / "bare.pt", get_model("ggcnn"), "ggcnn")
    prepare(load_study_config(write_study(tmp_path, bare, data, split="preset")))
    err = " ".join(capsys.readouterr().err.split())  # as read, whatever the terminal's width
    assert "[model] checkpoint" in err and "does not record the images it was trained on" in err


def test_data_sim_refuses_the_seed_of_the_verification_scenes(tmp_path, capsys):
    out = tmp_path / "sim"
    assert main(["data", "sim", "--scenes", "1", "--seed", "7000", "--out", str(out)]) == 2
    assert "--seed 7000" in capsys.readouterr().err and not out.exists()
