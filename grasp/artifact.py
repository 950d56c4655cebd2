"""The deployable artifact: the file a robot loads, and how to run it.

Accuracy, size and latency are all measured on this one object, so a study never scores
an fp32 model's accuracy next to an int8 model's latency. The artifact is an ONNX file
with one input ``depth`` [B, 1, S, S] and one output ``maps`` [B, 4, S, S] (pos, cos,
sin, width). Exporting always takes the free, exact speed-up of fusing the four 1-channel
heads into one 4-channel conv, so every speed-up is measured against that baseline.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from grasp.models import HEAD_NAMES

__all__ = ["PRECISIONS", "RUNTIMES", "Artifact", "ArtifactError", "deployable", "export_onnx"]

RUNTIMES = ("onnxruntime",)
PRECISIONS = ("fp32", "fp16", "int8")
INPUT_NAME, OUTPUT_NAME = "depth", "maps"


class ArtifactError(ValueError):
    """An artifact cannot be built or loaded: the message names the file or layer."""


def fuse_heads(model: nn.Module) -> nn.Module:
    """A copy whose four heads are one conv with four outputs (exactly the same maps)."""
    model = copy.deepcopy(model)
    heads = [getattr(model, name, None) for name in HEAD_NAMES]
    if not all(isinstance(h, nn.Conv2d) for h in heads):
        return model
    first = heads[0]
    if any(h.in_channels != first.in_channels or h.kernel_size != first.kernel_size
           or h.stride != first.stride or h.padding != first.padding for h in heads):
        return model
    fused = nn.Conv2d(first.in_channels, len(heads), first.kernel_size, stride=first.stride,
                      padding=first.padding)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([h.weight for h in heads]))
        fused.bias.copy_(torch.cat([h.bias for h in heads]))
    for name in HEAD_NAMES:
        delattr(model, name)
    model.fused_heads = fused
    return model


class _Maps(nn.Module):
    """One [B, 4, S, S] tensor out, as the robot consumes it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out[0] if len(out) == 1 else torch.cat(out, dim=1)


def deployable(model: nn.Module) -> nn.Module:
    """The model as shipped: heads fused, one output tensor, eval mode."""
    return _Maps(fuse_heads(model)).eval()


def export_onnx(model: nn.Module, path: str | Path, input_size: int = 300) -> Path:
    """Writes the deployable form of ``model`` as ONNX (dynamic batch), atomically.

    Node names keep the module path (``/model/conv2/Conv``), which is how a per-layer
    precision choice finds a layer's nodes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            deployable(model), (torch.zeros(1, 1, input_size, input_size),), str(tmp),
            dynamo=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, opset_version=17,
        )
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class Artifact:
    """A deployable model file plus how to run it.

    ``size_bytes`` counts the one file the robot must load; nothing else is needed to run
    it besides the runtime itself.
    """

    path: Path
    runtime: str = "onnxruntime"
    precision: str = "fp32"
    input_size: int = 300
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ArtifactError(f"runtime must be one of {RUNTIMES}, got {self.runtime!r}.")
        if self.precision not in PRECISIONS:
            raise ArtifactError(f"precision must be one of {PRECISIONS}, "
                                f"got {self.precision!r}.")
        if not Path(self.path).is_file():
            raise ArtifactError(f"{self.path}: artifact file not found.")

    @property
    def size_bytes(self) -> int:
        return Path(self.path).stat().st_size

    def session(self, threads: int = 1):  # -> onnxruntime.InferenceSession
        """An inference session with a fixed thread count (1 thread times stably)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        providers = (["CUDAExecutionProvider", "CPUExecutionProvider"]
                     if self.device == "cuda" else ["CPUExecutionProvider"])
        try:
            return ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as error:  # onnxruntime raises its own untyped errors
            raise ArtifactError(f"{self.path}: cannot be loaded by onnxruntime: {error}") from None

    def predictor(self, threads: int = 1) -> Callable[[torch.Tensor], torch.Tensor]:
        """[B, 1, S, S] -> [B, 4, S, S], computed by the artifact itself (its own precision)."""
        session = self.session(threads)

        def predict(x: torch.Tensor) -> torch.Tensor:
            feed = {INPUT_NAME: np.ascontiguousarray(x.detach().cpu().numpy(), np.float32)}
            return torch.from_numpy(session.run([OUTPUT_NAME], feed)[0])

        return predict
