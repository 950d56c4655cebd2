"""The numeric precision of the shipped model: builds the deployable Artifact.

fp32 is the exported model; fp16 stores weights and computes in half precision (inputs
and outputs stay fp32); int8 is static quantization with per-channel int8 weights and
uint8 activations calibrated on training images (never validation images), one image at a
time, by the runtime's own tool:

- ``onnxruntime``: static QDQ (``quantize_static``), each activation's range set at the
  99.99th percentile of its calibration histogram: measured, min-max ranges
  cost the uncompressed GG-CNN 1.2 pp and a 50 %-pruned one 0.9 pp against fp32; percentile
  ranges cost the first nothing and scored the second 2.9 pp above fp32. A few extreme
  activations no longer stretch the grid that all the others share. Weights use 7 of
  their 8 bits (``reduce_range``): x86 CPUs without VNNI (AVX2, AVX-512 before Cascade
  Lake / Zen 4) sum uint8 x int8 products in pairs into int16, which saturates when both
  are large, and a depth image's background sits at the top of its uint8 range. On an
  AVX2 EPYC the full-range file scored 0.25 where fp32 scored 1.00 (the quick start);
  7 bits scored 1.00 at the same latency. A robot's CPU may be such a CPU
  even where the study's is not, so every file is built this way.
- ``torch``: PyTorch 2 export quantization (torchao's PT2E with the X86 Inductor
  quantizer), compiled ahead of time by AOTInductor when the artifact is built.

Not offered: keeping single layers in float inside an int8 model. ONNX Runtime's optimiser
re-quantizes an excluded conv's float weights whenever its neighbours are quantized (seen
with onnxruntime 1.31), so the file would not run what it claims.

ConvTranspose2d is not run in int8 by either: :func:`int8_layers` reports which layers really
were quantized, so the upsample knob's sub-pixel rewrite is what lets int8 pay off.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import optuna
import torch
from torch import nn

from grasp.artifact import (
    CHANNELS_METADATA,
    INPUT_NAME,
    PRECISIONS,
    RUNTIMES,
    SUFFIXES,
    Artifact,
    ArtifactError,
    compact_onnx,
    deployable,
    export_onnx,
    export_torch,
)
from grasp.models import example_input
from grasp.synthesis import MIN_DISTANCE, attach_to_onnx
from spaces.base import KnobConfig, KnobError, register_knob

__all__ = ["PrecisionConfig", "PrecisionKnob", "build_artifact", "int8_layers", "quantize_pt2e"]

@dataclass(frozen=True)
class PrecisionConfig(KnobConfig):
    """The precision the artifact computes in."""

    precision: str = "fp32"

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrecisionConfig:
        return cls(str(data.get("precision", "fp32")))


#: ONNX Runtime int8: the percentile of each activation's calibration histogram that ends
#: its int8 range (see the module docstring).
CALIBRATION_PERCENTILE = 99.99
#: ONNX Runtime int8: weights on 7 bits, so that CPUs without VNNI cannot saturate (see the
#: module docstring; ``benchmarks/int8_weight_bits.py`` measures both on a CPU).
WEIGHTS_ON_7_BITS = True


def _batch_of_one(image: torch.Tensor) -> torch.Tensor:
    return image.reshape(1, -1, *image.shape[-2:]).float()  # [C, H, W] or [H, W]


class _Calibration:
    """ONNX Runtime's calibration reader over training images, one at a time (batch 1)."""

    def __init__(self, images: Iterable[torch.Tensor]) -> None:
        self._images = iter(images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self._images, None)
        if image is None:
            return None
        return {INPUT_NAME: _batch_of_one(image).numpy()}


def _torchao() -> SimpleNamespace:
    """torchao's x86 quantizer module and its PT2E entry points, imported without its
    start-up noise on a CPU machine (CUDA kernels it cannot load, a deprecation notice)."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        import torchao.quantization.pt2e as pt2e
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
        from torchao.quantization.pt2e.quantize_pt2e import (
            convert_pt2e,
            prepare_pt2e,
            prepare_qat_pt2e,
        )
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    return SimpleNamespace(x86=x86, prepare=prepare_pt2e, prepare_qat=prepare_qat_pt2e,
                           convert=convert_pt2e, to_train=pt2e.move_exported_model_to_train,
                           to_eval=pt2e.move_exported_model_to_eval)


def quantize_pt2e(model: nn.Module, calibration: Sequence[torch.Tensor],
                  input_size: int = 300,
                  finetune: Callable[[nn.Module], None] | None = None) -> torch.fx.GraphModule:
    """The deployable model quantized by PT2E for x86 (per-channel int8 weights, uint8
    activations), calibrated one image at a time; float weights the int8 graph no longer
    reads are dropped so the file holds only what runs.

    With ``finetune``, quantization-aware: the graph gets fake-quantize nodes, is
    calibrated, and ``finetune`` trains it in place (straight-through gradients; any batch,
    any square side that is a multiple of 12) before conversion, so the weights learn values
    that int8 holds."""
    ao = _torchao()
    net = deployable(model)
    quantizer = ao.x86.X86InductorQuantizer()
    quantizer.set_global(ao.x86.get_default_x86_inductor_quantization_config(
        is_qat=finetune is not None))
    if finetune is None:
        example = example_input(model, input_size)
        prepared = ao.prepare(torch.export.export(net, (example,)).module(), quantizer)
    else:
        # Any batch and any square side that is a multiple of 12 (GG-CNN's total stride):
        # training runs on the recovery pool's crops, the artifact on full images.
        side = 12 * torch.export.Dim("side_in_12s", min=2, max=1000)
        shapes = ({0: torch.export.Dim("batch", min=1, max=4096), 2: side, 3: side},)
        example = example_input(model, 12 * max(2, input_size // 12), batch=2)
        graph = torch.export.export(net, (example,), dynamic_shapes=shapes).module()
        prepared = ao.prepare_qat(graph, quantizer)
    with torch.no_grad():
        for image in calibration:
            prepared(_batch_of_one(image))
    if finetune is not None:
        ao.to_train(prepared)
        finetune(prepared)
        ao.to_eval(prepared)
    converted = ao.convert(prepared)
    read = {node.target for node in converted.graph.nodes if node.op == "get_attr"}
    for name in [n for n, _ in converted.named_parameters()] + [
            n for n, _ in converted.named_buffers()]:
        if name not in read:
            owner, _, attr = name.rpartition(".")
            delattr(converted.get_submodule(owner) if owner else converted, attr)
    return converted


AOTI_CONFIGS = {"freezing": True, "aot_inductor.enable_line_tables": False}


def compile_int8(program: torch.export.ExportedProgram, path: Path) -> Path:
    """Compiles a PT2E program ahead of time with AOTInductor into a package (a shared
    library plus its int8 weights), atomically. Frozen weights are what let Inductor fuse
    each quantize/dequantize pair into a prepacked int8 oneDNN conv; torch.compile of the
    loaded program does not manage it here (torch 2.13: no fake kernel for qconv_prepack).
    The library is built without AOTInductor's default line tables (``-g1``): they are
    debug data a robot never reads, and were ~70 % of every package (1.8 MB for GG-CNN)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.pt2")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        channels = next(node.meta["val"].shape[1] for node in program.graph.nodes
                        if node.op == "placeholder" and node.name in program.graph_signature
                        .user_inputs)
        torch._inductor.aoti_compile_and_package(program, package_path=str(tmp),
                                                 inductor_configs={**AOTI_CONFIGS, (
                                                     "aot_inductor.metadata"): {
                                                     CHANNELS_METADATA: str(channels)}})
    os.replace(tmp, path)
    return path


def _float_resize_nodes(path: Path) -> list[str]:
    """The resize of the maps (``lowres`` decoders) stays in float: ONNX Runtime runs a
    bilinear Resize in float either way, so quantizing its output only added a quantize +
    dequantize pair over the four full-size maps (0.27 of 4.5 ms, profiled)."""
    import onnx

    return [node.name for node in onnx.load(str(path)).graph.node
            if node.op_type == "Resize" and node.name.startswith("/model/resize_maps/")]


def build_artifact(model: nn.Module, config: PrecisionConfig, path: str | Path,
                   calibration: Sequence[torch.Tensor] = (), input_size: int = 300,
                   device: str = "cpu", timings: dict[str, float] | None = None,
                   runtime: str = "onnxruntime",
                   finetune: Callable[[nn.Module], None] | None = None,
                   int8_only: Sequence[str] | None = None) -> Artifact:
    """Exports ``model`` at ``config.precision`` for ``runtime`` to ``path`` (its suffix
    becomes the runtime's: .onnx or .pt2); ``timings`` receives ``calibration_s``, the int8
    calibration and quantization time (training included). ``finetune`` makes a torch int8
    build quantization-aware (:func:`quantize_pt2e`); other builds ignore it.
    ``int8_only`` (ONNX int8) quantizes the convs of those layers alone, the rest
    stays float: what ``ggopt sensitivity`` measures int8 per layer with."""
    if config.precision not in PRECISIONS:
        raise KnobError(f"precision: must be one of {', '.join(PRECISIONS)}, "
                        f"got {config.precision!r}.")
    if runtime not in RUNTIMES:
        raise ArtifactError(f"runtime must be one of {RUNTIMES}, got {runtime!r}.")
    path = Path(path).with_suffix(SUFFIXES[runtime])
    if config.precision == "int8" and not calibration:
        raise KnobError("precision: int8 needs calibration images (training images).")
    if runtime == "torch":
        if config.precision == "int8":
            start = time.perf_counter()
            quantized = quantize_pt2e(model, calibration, input_size, finetune)
            example = example_input(model, input_size)
            compile_int8(torch.export.export(quantized, (example,)), path)
            if timings is not None:
                timings["calibration_s"] = time.perf_counter() - start
        else:
            export_torch(model, path, input_size, half=config.precision == "fp16",
                         device=device)
        return Artifact(path, runtime, config.precision, input_size, device)
    if config.precision == "fp32":
        _with_synthesis(compact_onnx(export_onnx(model, path, input_size)), input_size)
        return Artifact(path, precision="fp32", input_size=input_size, device=device)
    fp32 = export_onnx(model, path.with_suffix(".fp32.onnx"), input_size)
    try:
        if config.precision == "fp16":
            import onnx
            from onnxruntime.transformers.float16 import convert_float_to_float16

            onnx.save(convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True),
                      str(path))
        else:
            from onnxruntime.quantization import (
                CalibrationMethod,
                QuantFormat,
                QuantType,
                quantize_static,
            )
            from onnxruntime.quantization.shape_inference import quant_pre_process

            start = time.perf_counter()
            prepared = path.with_suffix(".pre.onnx")
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            with contextlib.redirect_stdout(io.StringIO()):  # its histogram chatter
                quantize_static(
                    str(prepared), str(path), _Calibration(calibration),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    reduce_range=WEIGHTS_ON_7_BITS,
                    calibrate_method=CalibrationMethod.Percentile,
                    nodes_to_exclude=_float_resize_nodes(prepared),
                    nodes_to_quantize=(None if int8_only is None
                                       else _layer_convs(prepared, int8_only)),
                    extra_options={"CalibPercentile": CALIBRATION_PERCENTILE},
                )
            prepared.unlink(missing_ok=True)
            if timings is not None:
                timings["calibration_s"] = time.perf_counter() - start
    finally:
        fp32.unlink(missing_ok=True)
    _with_synthesis(compact_onnx(path), input_size)
    return Artifact(path, precision=config.precision, input_size=input_size, device=device)


def _layer_convs(path: Path, layers: Sequence[str]) -> list[str]:
    """The Conv nodes of the given layers (ONNX node names keep their module paths)."""
    import onnx

    nodes = [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"
             and any(f"/{layer}/" in n.name for layer in layers)]
    if not nodes:
        raise KnobError(f"precision: no conv of layers {list(layers)} in the exported file.")
    return nodes


def _with_synthesis(path: Path, input_size: int) -> Path:
    """The shipped ONNX file returns the grasp too (grasp.synthesis), in float32 after any
    precision: the robot's whole depth -> grasp job in one runtime call. Maps too small for
    GG-CNN's peak search (tests' tiny models) ship maps only."""
    if input_size > 2 * MIN_DISTANCE:
        attach_to_onnx(path, input_size)
    return path


def _int8_layers_torch(artifact: Artifact) -> list[str]:
    """The convs the AOTInductor package runs as int8 oneDNN kernels, read from the
    package's generated wrapper: each ``qconv`` call names its layer by its bias (a module
    path with dots spelled as underscores, e.g. ``convt1_conv`` for ``convt1.conv``)."""
    import re
    import zipfile

    with zipfile.ZipFile(artifact.path) as package:
        code = "".join(package.read(name).decode(errors="replace")
                       for name in package.namelist() if name.endswith("wrapper.cpp"))
    layers = []
    for number, call in enumerate(re.findall(r"_qconv\w*\(([^;]*)\);", code)):
        bias = re.search(r"model_(\w+?)_bias\b", call)
        layer = bias.group(1) if bias else f"conv#{number}"
        if layer not in layers:
            layers.append(layer)
    return layers


def int8_layers(artifact: Artifact) -> list[str]:
    """The top-level layers that really compute in int8.

    ONNX Runtime: a QDQ file marks every quantized weight, but only the kernels the runtime
    fuses into integer ops (QLinearConv) run in int8; the rest dequantize and run in float
    (e.g. ConvTranspose). So this reads the runtime's own optimised graph. torch: the int8
    oneDNN convs that AOTInductor's generated code calls.
    """
    import tempfile

    if artifact.runtime == "torch":
        return _int8_layers_torch(artifact)

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(str(artifact.path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    layers = []
    for node in graph.node:
        if node.op_type in ("QLinearConv", "ConvInteger", "QLinearConvTranspose"):
            parts = node.name.split("/")
            layer = parts[2] if len(parts) > 2 and parts[1] == "model" else node.name
            if layer not in layers:
                layers.append(layer)
    return layers


class PrecisionKnob:
    """Parameter: ``precision`` (one of the study's precisions).

    Unlike the structural knobs it does not change the model: :meth:`build` turns the final
    model into the Artifact that every objective measures. With ``qat_steps``, a torch int8
    build trains that many steps through fake-quantize nodes (the ``train`` given to
    :meth:`build`) instead of quantizing the float weights as they are.
    """

    name: ClassVar[str] = "precision"

    def __init__(self, precisions: tuple[str, ...] = PRECISIONS, qat_steps: int = 0) -> None:
        bad = [p for p in precisions if p not in PRECISIONS]
        if bad or not precisions:
            raise KnobError(f"precision.precisions: each must be one of {PRECISIONS}, "
                            f"got {list(precisions)}.")
        if qat_steps < 0:
            raise KnobError(f"precision.qat_steps: must be >= 0, got {qat_steps}.")
        self.precisions = tuple(precisions)
        self.qat_steps = qat_steps

    def suggest(self, trial: optuna.Trial, model: nn.Module) -> PrecisionConfig:
        return PrecisionConfig(trial.suggest_categorical("precision", self.precisions))

    def from_params(self, params: dict[str, Any], model: nn.Module) -> PrecisionConfig:
        return PrecisionConfig(str(params.get("precision", self.precisions[0])))

    def apply(self, model: nn.Module, config: PrecisionConfig) -> nn.Module:
        """Checks the config; the model is unchanged (precision is applied by :meth:`build`)."""
        if config.precision not in self.precisions:
            raise KnobError(f"precision: must be one of {', '.join(self.precisions)}, "
                            f"got {config.precision!r}.")
        return model

    def build(self, model: nn.Module, config: PrecisionConfig, path: str | Path,
              calibration: Sequence[torch.Tensor] = (), input_size: int = 300,
              device: str = "cpu", timings: dict[str, float] | None = None,
              runtime: str = "onnxruntime",
              train: Callable[[nn.Module, int], None] | None = None) -> Artifact:
        """The artifact; ``train(module, steps)`` trains a module in place, used for
        quantization-aware int8 on torch when ``qat_steps`` > 0."""
        self.apply(model, config)
        finetune = None
        if train is not None and self.qat_steps and config.precision == "int8" \
                and runtime == "torch":
            def finetune(graph: nn.Module) -> None:
                train(graph, self.qat_steps)
        try:
            return build_artifact(model, config, path, calibration, input_size, device, timings,
                                  runtime, finetune)
        except (ArtifactError, KnobError):
            raise
        except Exception as error:  # exporters and quantizers raise untyped errors
            raise KnobError(f"precision: building the {config.precision} artifact failed: "
                            f"{error}") from error


register_knob(PrecisionKnob)
