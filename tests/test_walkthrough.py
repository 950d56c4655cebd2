"""docs/datasets.md, "Your own network and data", run as a user runs it: a network of one's
own (a state dict and the function that builds it) and Cornell as downloaded, through
`ggopt search` and `ggopt export` to a verified file."""

import sys

import torch
from conftest import write_cornell_raw
from test_own_network import USER_MODULE

from search.cli import main

STUDY = """version = 1
name = "mine"
constraints = ["accuracy >= baseline - 1.0"]

[model]
factory = "mynet:build"
options = {{width = 8}}
checkpoint = "{tmp}/mynet_statedict.pt"

[data]
format = "cornell"
root = "{tmp}/cornell"
split = "object"
objects = "{tmp}/cornell/objects.txt"
skip_nan_rectangles = true
output_size = 96
calibration_images = 2

[knobs]
enabled = ["prune", "precision"]

[recovery]
steps = 1
batch_size = 1

[runtime]
warmup = 1
runs = 3
min_seconds = 0.05

[search]
n_trials = 2
storage = "sqlite:///{tmp}/optuna.db"
artifacts_dir = "{tmp}/artifacts"

[tracking]
uri = "sqlite:///{tmp}/mlflow.db"
"""


def test_your_own_network_and_cornell_as_downloaded_to_a_verified_export(tmp_path,
                                                                         monkeypatch):
    monkeypatch.setenv("GGOPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    # 1-2: the user's module and the weights their own training saved.
    (tmp_path / "mynet.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import mynet

    torch.manual_seed(0)
    torch.save(mynet.build(width=8).state_dict(), tmp_path / "mynet_statedict.pt")
    sys.modules.pop("mynet", None)
    # The data, in Cornell's real layout: eight views of seven objects (a tenth of them
    # for validation, a tenth for test, as a study splits).
    root, _ = write_cornell_raw(tmp_path / "cornell", images=8)
    (root / "objects.txt").write_text("100 mug\n101 mug\n" + "".join(
        f"{n} object{n}\n" for n in range(102, 108)))
    # 3-4: the study file, search, export.
    study = tmp_path / "mine.toml"
    study.write_text(STUDY.format(tmp=tmp_path))
    assert main(["search", str(study)]) == 0
    assert main(["export", str(study), "--trial", "knee", "--out", str(tmp_path / "best"),
                 "--scenes", "3", "--no-register"]) == 0
    card = (tmp_path / "best" / "MODEL_CARD.md").read_text()
    assert (tmp_path / "best" / "model.onnx").is_file()
    assert "IoU grasp-match accuracy, test images" in card
    assert "simulated grasp success, held-out scenes" in card
    assert "Input `depth`: a depth image in metres" in card
    assert sorted(p.name for p in (root / "01").iterdir() if p.suffix == ".tiff") == []
