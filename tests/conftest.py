"""Fixtures: tiny datasets written in the real Jacquard and Cornell formats.

Each scene is a flat table at 1 m with one box on it; the labelled grasps close across the
box's short side. That is enough structure for a small network to learn within seconds.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from torch import nn

from grasp.rectangles import Grasp


def box_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, list[Grasp]]:
    """A depth image (metres) of one box on a table and grasps across the box."""
    scale = min(height, width) / 192
    depth = np.full((height, width), 1.0, np.float32)
    r0 = rng.uniform(0.35, 0.65) * height
    c0 = rng.uniform(0.35, 0.65) * width
    phi = rng.uniform(-math.pi / 2, math.pi / 2)  # direction of the box's long side
    long_side, short_side = rng.uniform(40, 70) * scale, rng.uniform(14, 22) * scale
    rows, cols = np.mgrid[0:height, 0:width]
    # Coordinates along (u) and across (v) the box, with rows growing downwards.
    u = (cols - c0) * math.cos(phi) - (rows - r0) * math.sin(phi)
    v = (cols - c0) * math.sin(phi) + (rows - r0) * math.cos(phi)
    depth[(np.abs(u) <= long_side / 2) & (np.abs(v) <= short_side / 2)] = 0.95
    grasps = []
    for t in np.linspace(-0.3, 0.3, 3) * long_side:
        center = (r0 - t * math.sin(phi), c0 + t * math.cos(phi))
        grasps.append(Grasp(center, phi + math.pi / 2, short_side * 1.8, 10 * scale))
    return depth, grasps


def write_jacquard(root: Path, objects: int = 4, views: int = 3, size: int = 192,
                   seed: int = 0, prefix: str = "object") -> Path:
    """Writes ``objects`` folders with ``views`` images each, in Jacquard's file format."""
    rng = np.random.default_rng(seed)
    for o in range(objects):
        folder = root / f"{prefix}{o:03d}"
        folder.mkdir(parents=True)
        for v in range(views):
            depth, grasps = box_scene(rng, size, size)
            stem = folder / f"{v}_{prefix}{o:03d}"
            tifffile.imwrite(f"{stem}_perfect_depth.tiff", depth)
            lines = [f"{g.center[1]:.3f};{g.center[0]:.3f};{-math.degrees(g.angle):.3f};"
                     f"{g.length:.3f};{g.width:.3f}" for g in grasps]
            Path(f"{stem}_grasps.txt").write_text("\n".join(lines) + "\n")
    return root


def write_cornell(root: Path, images: int = 3, seed: int = 0) -> Path:
    """Writes ``images`` 480x640 Cornell images in one numbered folder."""
    rng = np.random.default_rng(seed)
    folder = root / "01"
    folder.mkdir(parents=True)
    for i in range(images):
        depth, grasps = box_scene(rng, 480, 640)
        number = 100 + i
        tifffile.imwrite(folder / f"pcd{number:04d}d.tiff", depth)
        lines = [f"{c:.2f} {r:.2f}" for g in grasps for r, c in g.corners()]
        (folder / f"pcd{number:04d}cpos.txt").write_text("\n".join(lines) + "\n")
    return root


class ResidualBlock(nn.Module):
    """conv-bn-relu-conv-bn plus the identity, as GR-ConvNet's blocks are built."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))


class ResidualGraspNet(nn.Module):
    """A small grasp network of a user's own, shaped like GR-ConvNet: batch norm after every
    conv, residual blocks (nested modules, their sums coupling channels), a transposed conv
    back to the input resolution, and the four 1-channel heads. Depth in, four maps out."""

    def __init__(self, input_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_channels, 16, 9, padding=4)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 4, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.res1 = ResidualBlock(32)
        self.res2 = ResidualBlock(32)
        self.conv3 = nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1)
        self.bn3 = nn.BatchNorm2d(16)
        for name in ("pos_output", "cos_output", "sin_output", "width_output"):
            setattr(self, name, nn.Conv2d(16, 1, 1))

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.res2(self.res1(torch.relu(self.bn2(self.conv2(x)))))
        x = torch.relu(self.bn3(self.conv3(x)))
        return (self.pos_output(x), self.cos_output(x), self.sin_output(x),
                self.width_output(x))


def residual_grasp_net(seed: int = 0) -> nn.Module:
    """A :class:`ResidualGraspNet` in eval mode whose batch norms hold statistics of their
    own (not the identity a fresh one has), so that folding them is tested."""
    torch.manual_seed(seed)
    model = ResidualGraspNet()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


#: The header every Cornell point cloud starts with (PCD v.7, ASCII).
CORNELL_PCD_HEADER = """# .PCD v.7 - Point Cloud Data file format
FIELDS x y z rgb index
SIZE 4 4 4 4 4
TYPE F F F F U
COUNT 1 1 1 1 1
WIDTH {n}
HEIGHT 1
POINTS {n}
DATA ascii
"""


def write_cornell_raw(root: Path, images: int = 2, seed: int = 0
                      ) -> tuple[Path, dict[str, np.ndarray]]:
    """Cornell as it is downloaded: ``NN/pcdNNNN.txt`` point clouds (millimetres, one line
    ``x y z rgb index`` per pixel that has a point, holes where the sensor saw nothing),
    ``pcdNNNNr.png``, ``pcdNNNNcpos.txt`` / ``cneg.txt``, one positive rectangle with NaN
    corners (as two of the real files have). Returns the root and each image's true depth
    (metres, NaN at the holes), by the cloud's file name."""
    from skimage.io import imsave

    rng = np.random.default_rng(seed)
    folder = root / "01"
    folder.mkdir(parents=True)
    truth = {}
    for i in range(images):
        depth, grasps = box_scene(rng, 480, 640)
        number = 100 + i
        rows, cols = np.mgrid[0:480, 0:640]
        holes = rng.random((480, 640)) < 0.03
        holes[200:215, 40:70] = True  # a shadow beside the table, as real clouds have
        ray = np.stack([(cols - 320) / 580, (rows - 240) / 580, np.ones_like(cols, float)], -1)
        xyz = ray / np.linalg.norm(ray, axis=-1, keepdims=True) * depth[..., None] * 1000.0
        keep = ~holes.ravel()
        index = np.arange(480 * 640)[keep]
        rgb = rng.integers(0, 2 ** 24, size=index.size).astype(float)
        points = np.column_stack([xyz.reshape(-1, 3)[keep], rgb, index])
        lines = "\n".join(f"{x:.4f} {y:.4f} {z:.4f} {c:.6g} {k:d}"
                          for (x, y, z, c), k in zip(points[:, :4], index, strict=True))
        name = f"pcd{number:04d}.txt"
        (folder / name).write_text(CORNELL_PCD_HEADER.format(n=index.size) + lines + "\n")
        truth[name] = np.where(holes, np.nan, depth).astype(np.float32)
        imsave(folder / f"pcd{number:04d}r.png", rng.integers(0, 255, (480, 640, 3), np.uint8),
               check_contrast=False)
        corners = [f"{c:.2f} {r:.2f}" for g in grasps for r, c in g.corners()]
        if i == 0:
            corners += ["NaN NaN"] * 4
        (folder / f"pcd{number:04d}cpos.txt").write_text("\n".join(corners) + "\n")
        (folder / f"pcd{number:04d}cneg.txt").write_text("\n".join(corners[:4]) + "\n")
    return root, truth


@pytest.fixture
def jacquard_root(tmp_path: Path) -> Path:
    return write_jacquard(tmp_path / "jacquard")


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """An untrained GG-CNN saved as a checkpoint: the base model of the tiny studies."""
    import torch

    from grasp.checkpoints import save_checkpoint
    from grasp.models import get_model

    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "base.pt", get_model("ggcnn"), "ggcnn",
                           config={"train": {"pos_weight": 1.0}})


@pytest.fixture(scope="module")
def model():
    """An untrained GG-CNN in eval mode: what the runtime tests export and time."""
    import torch

    from grasp.models import get_model

    torch.manual_seed(0)
    return get_model("ggcnn").eval()


@pytest.fixture(scope="module")
def images():
    """Four 96x96 depth images [1, 96, 96] at table-like scale, for calibration and checks."""
    import torch

    torch.manual_seed(1)
    return [torch.rand(1, 96, 96) * 0.02 for _ in range(4)]


@pytest.fixture
def cornell_root(tmp_path: Path) -> Path:
    return write_cornell(tmp_path / "cornell")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A private PostgreSQL server for this test session. CI installs PostgreSQL, so there
    its absence fails the tests instead of skipping them."""
    import os

    from servers import find_postgres, postgres_server

    bin_dir = find_postgres()
    if bin_dir is None:
        message = "PostgreSQL is not installed (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with postgres_server(bin_dir) as url:
        yield url


@pytest.fixture(scope="session")
def mlflow_uri(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """``mlflow server`` with a PostgreSQL backend store, as the README sets it up."""
    from servers import mlflow_server

    backend = postgres_url.rsplit("/", 1)[0] + "/mlflow"
    with mlflow_server(backend, tmp_path_factory.mktemp("mlflow") / "artifacts") as uri:
        yield uri


#: How the trained fixture is made; its cache key, so a changed recipe trains anew.
TRAINED_RECIPE = {"train": 16, "val": 8, "test": 6, "views": 3, "size": 96, "epochs": 30,
                  "lr": 3e-3, "input_gain": 20.0, "pos_weight": 5.0, "seed": 0}


def write_preset_jacquard(root: Path, recipe: dict) -> Path:
    """Box scenes in the simulator's layout: train/, val/ and test/ folders of new objects."""
    for seed, name in enumerate(("train", "val", "test")):
        write_jacquard(root / name, objects=recipe[name], views=recipe["views"],
                       size=recipe["size"], seed=seed, prefix=f"{name}-object")
    return root


@pytest.fixture(scope="session")
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[Path, Path]:
    """A GG-CNN *trained* on box scenes (24 val, 18 test images; val accuracy ~0.8), and
    its dataset: (checkpoint, data root). Trained once (~1 min on 2 cores), then kept in
    pytest's cache under the recipe's hash, so tests that need a model that grasps can
    fail for the right reasons (a gate that prunes, an export that changes the score)."""
    import hashlib
    import json

    import torch

    from grasp.checkpoints import save_checkpoint
    from grasp.data import load_dataset, split
    from grasp.models import get_model
    from grasp.train import TrainConfig, train

    recipe = TRAINED_RECIPE
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    data = write_preset_jacquard(tmp_path_factory.mktemp("trained") / "data", recipe)
    cached = Path(request.config.cache.mkdir(f"ggopt-trained-{key}")) / "ggcnn.pt"
    if not cached.is_file():
        dataset = load_dataset("jacquard", data, output_size=recipe["size"])
        parts = split(dataset, "preset", 0.1, 0.1, 0)
        torch.manual_seed(recipe["seed"])
        model = get_model("ggcnn")
        config = TrainConfig(epochs=recipe["epochs"], batch_size=8, lr=recipe["lr"],
                             input_gain=recipe["input_gain"], pos_weight=recipe["pos_weight"],
                             distill_weight=0.0, seed=recipe["seed"])
        result = train(model, dataset.subset(parts["train"], augment=True),
                       dataset.subset(parts["val"]), config, progress=False)
        save_checkpoint(cached, model.eval(), "ggcnn",
                        config={"train": {"pos_weight": recipe["pos_weight"]}},
                        metrics={"val_accuracy": result.best_val_accuracy})
    return cached, data
