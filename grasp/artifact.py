"""The deployable artifact: the file a robot loads, and how to run it.

Accuracy, size and latency are all measured on this one object, so a study never scores
an fp32 model's accuracy next to an int8 model's latency. The artifact has one input
``depth`` [B, 1, S, S] and one output ``maps`` [B, 4, S, S] (pos, cos, sin, width), in one
of two runtimes:

- ``onnxruntime``: an ONNX file.
- ``torch``: a ``.pt2`` file. fp32 and fp16: a ``torch.export`` program run eagerly with
  channels_last weights (``torch.export.load``, no pickle); eager channels_last is the
  fastest fp32 form on CPU here (Inductor-compiled was slower). int8: PT2E quantized and
  compiled ahead of time by AOTInductor (``torch._inductor.aoti_load_package``), the only
  form in which its convs run as int8 kernels; the package holds compiled code, counted in
  its size. On ``cuda`` a program is exported on the GPU and timed replayed as a CUDA
  graph (:func:`cuda_graph`); int8 is built for x86 CPUs only.

Exporting always takes the free, exact speed-up of fusing the four 1-channel heads into
one 4-channel conv, so every speed-up is measured against that baseline; an ONNX export
also computes that conv as :class:`TapSumHeads`, faster on ONNX Runtime.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import functools
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from grasp.models import HEAD_NAMES, GraspHeads, example_input
from grasp.synthesis import GraspSynthesis
from timing.protocol import (
    GRASP_OUTPUT,
    INPUT_NAME,
    OUTPUT_NAME,
    TimingError,
    fixed_input,
    onnx_session,
    onnx_timed_call,
    without_synthesis,
)

__all__ = ["CHANNELS_METADATA", "PRECISIONS", "RUNTIMES", "SUFFIXES", "Artifact",
           "ArtifactError", "check_device", "check_readable", "compact_onnx", "cuda_graph",
           "deployable", "export_onnx", "export_torch", "save_program"]

RUNTIMES = ("onnxruntime", "torch")
#: The artifact file's suffix on each runtime.
SUFFIXES = {"onnxruntime": ".onnx", "torch": ".pt2"}
PRECISIONS = ("fp32", "fp16", "int8")


#: An int8 AOTInductor package's metadata key for its input channels (1 depth, 4 RGB-D).
CHANNELS_METADATA = "ggopt_input_channels"


class ArtifactError(ValueError):
    """An artifact cannot be built or loaded: the message names the file or layer."""


def check_device(runtime: str, device: str) -> None:
    """Refuses a device the installed runtime cannot run on. Left alone, onnxruntime falls
    back to its CPU provider without a word, and a study would time the CPU as "cuda"."""
    if device == "cpu":
        return
    if runtime == "torch":
        if not torch.cuda.is_available():
            raise ArtifactError(f"device {device!r}: torch {torch.__version__} sees no CUDA "
                                "device (a CPU-only build, or no GPU or driver here).")
        return
    import onnxruntime as ort

    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        raise ArtifactError(f"device {device!r}: onnxruntime {ort.__version__} offers "
                            f"{providers}, not CUDAExecutionProvider; install onnxruntime-gpu "
                            "in place of onnxruntime.")


def fuse_heads(model: nn.Module, taps: bool = False) -> nn.Module:
    """A copy whose four heads are one conv with four outputs (exactly the same maps); with
    ``taps``, that conv computed as :class:`TapSumHeads` where it can be."""
    model = copy.deepcopy(model)
    heads = [getattr(model, name, None) for name in HEAD_NAMES]
    if not isinstance(model, GraspHeads) or not all(isinstance(h, nn.Conv2d) for h in heads):
        return model  # a network of its own computes its heads as it likes
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
    model.fused_heads = TapSumHeads(fused) if taps and TapSumHeads.fits(fused) else fused
    return model


class TapSumHeads(nn.Module):
    """The fused heads' k x k conv as one 1x1 conv with a channel per (tap, head), then the
    k*k shifted crops of those channels added: the same maps (exact in real arithmetic).

    Why: with four outputs a k x k conv fills a quarter of a GEMM kernel's width, and ONNX
    Runtime first copies the whole input into a k*k-times larger im2col buffer. The 1x1 conv
    has 16 outputs (GG-CNN's 2x2 heads) and reads its input in place. Profiled on a 50 %-
    pruned int8 GG-CNN in ONNX Runtime: the heads' conv went from 2.9 to 0.56 ms, and the
    crops and adds cost 0.5 ms. In int8 the four partial sums are each rounded to the grid.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if not self.fits(conv):
            raise ValueError(f"TapSumHeads: needs a stride-1, unpadded, undilated, ungrouped "
                             f"conv with a bias, got {conv}.")
        self.kernel_size, self.heads = tuple(conv.kernel_size), conv.out_channels
        kh, kw = self.kernel_size
        self.taps = nn.Conv2d(conv.in_channels, kh * kw * self.heads, 1)
        with torch.no_grad():  # channel (i * kw + j) * heads + h is head h's tap (i, j)
            self.taps.weight.copy_(conv.weight.permute(2, 3, 0, 1).reshape(
                -1, conv.in_channels, 1, 1))
            self.taps.bias.zero_()
            self.taps.bias[:self.heads] = conv.bias  # added once, with tap (0, 0)

    @staticmethod
    def fits(conv: nn.Conv2d) -> bool:
        return (conv.kernel_size != (1, 1) and conv.stride == (1, 1)
                and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.groups == 1
                and conv.bias is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        taps = self.taps(x)
        kh, kw = self.kernel_size
        out = None
        for i in range(kh):
            for j in range(kw):
                first = (i * kw + j) * self.heads
                # Static crop bounds (negative ends): no shape arithmetic in an exported graph.
                part = taps[:, first:first + self.heads, i:i - kh + 1 or None,
                            j:j - kw + 1 or None]
                out = part if out is None else out + part
        return out


class _Maps(nn.Module):
    """One [B, 4, S, S] tensor out, as the robot consumes it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out[0] if len(out) == 1 else torch.cat(out, dim=1)


def deployable(model: nn.Module, taps: bool = False) -> nn.Module:
    """The model as shipped: heads fused (as :class:`TapSumHeads` with ``taps``), one output
    tensor, eval mode."""
    return _Maps(fuse_heads(model, taps)).eval()


class _Half(nn.Module):
    """Computes in fp16; takes and returns fp32 like every other artifact."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.half()).float()


def save_program(program: torch.export.ExportedProgram, path: str | Path) -> Path:
    """Saves an exported program atomically, without its 300x300 example input (0.36 MB
    a robot does not need)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.example_inputs = None
    tmp = path.with_suffix(".tmp.pt2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(program, str(tmp))
    os.replace(tmp, path)
    return path


def export_torch(model: nn.Module, path: str | Path, input_size: int = 300,
                 half: bool = False, device: str = "cpu") -> Path:
    """Writes the deployable form of ``model`` as a ``torch.export`` program with
    channels_last weights (1.7x faster than NCHW on CPU here), fp16 when ``half``.
    The program is exported on ``device``: its graph names the device it was traced on, so
    a CPU program moved to a GPU afterwards fails ("Tensor device mismatch")."""
    net = deployable(model).to(device=device, memory_format=torch.channels_last)
    if half:
        net = _Half(net)
    example = example_input(model, input_size, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(net, (example,))
    return save_program(program, path)


def keep_malloc_arenas() -> None:
    """Stops glibc from handing PyTorch's large activation buffers back to the kernel after
    every inference. Without it a fresh process paid ~6,000 page faults per GG-CNN
    inference (36 ms instead of 22 ms). Same as ``MALLOC_MMAP_THRESHOLD_`` and
    ``MALLOC_TRIM_THRESHOLD_`` in the environment, which is how a robot should run it."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 30)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Runs torch with ``threads`` intra-op threads, then restores the process's setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.lru_cache(maxsize=2)
def _load_torch(path: str, mtime_ns: int, precision: str) -> Callable[[torch.Tensor],
                                                                        torch.Tensor]:
    """Loads a program once; accuracy and latency share it. An int8 artifact is an
    AOTInductor package (compiled code: load only packages you built)."""
    try:
        if precision == "int8":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = torch._inductor.aoti_load_package(path)
        else:
            with warnings.catch_warnings():  # "no complete tensor found": weights on CPU
                warnings.simplefilter("ignore")
                module = torch.export.load(path).module()
    except Exception as error:  # torch.export and AOTInductor raise many error types
        raise ArtifactError(f"{path}: cannot be loaded by torch: {error}") from None
    keep_malloc_arenas()
    return module


def cuda_graph(module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
               ) -> tuple[Callable[[], None], torch.Tensor]:
    """One inference on ``x`` captured as a CUDA graph: (replay and wait, the output it
    writes). At batch 1 a GPU spends most of an eager inference launching kernels (GG-CNN
    on an H100: 0.43 ms eager, 0.18 ms replayed), so a robot's loop replays a graph, and
    latency on ``cuda`` is timed that way. Outputs are the eager ones, bit for bit."""
    with torch.inference_mode():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the default stream, as capture wants
            for _ in range(3):
                module(x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = module(x)

    def replay() -> None:
        graph.replay()
        torch.cuda.synchronize()

    return replay, out


def export_onnx(model: nn.Module, path: str | Path, input_size: int = 300) -> Path:
    """Writes the deployable form of ``model`` as ONNX (dynamic batch), atomically.

    Node names keep the module path (``/model/conv2/Conv``), which is how a per-layer
    precision choice finds a layer's nodes. The heads are :class:`TapSumHeads` here only:
    measured side by side, ONNX Runtime ran GG-CNN 8-9 % faster with them in
    fp32 and 28 % in int8, while on torch a 50 %-pruned GG-CNN ran 3-10 % slower (fp32,
    int8) and only the uncompressed fp32 one gained (2.5 %).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            deployable(model, taps=True), (example_input(model, input_size),), str(tmp),
            dynamo=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, opset_version=17,
        )
    relu_next_to_producer(tmp)
    os.replace(tmp, path)
    return path


#: Ops that only move or drop values: a ReLU gives the same result before them or after.
_DATA_MOVEMENT = frozenset({"Transpose", "Reshape", "Slice", "DepthToSpace", "Flatten",
                            "Squeeze", "Unsqueeze"})


def relu_next_to_producer(path: str | Path) -> Path:
    """Rewrites an ONNX file, exactly, so that each ReLU directly follows the op computing
    its input instead of the reshapes and crops in between (a sub-pixel layer's shuffle).
    The int8 quantizer fuses a ReLU only into the conv right before it; one left after a
    crop became a dequantize + requantize of the whole 300x300 map (1.5 of 8 ms)."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    nodes = list(model.graph.node)
    producer = {out: node for node in nodes for out in node.output}
    consumers = {out.name: 1 for out in model.graph.output}  # a graph output is a use too
    for node in nodes:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    changed = False
    for relu in [n for n in nodes if n.op_type == "Relu"]:
        chain = []  # data-movement nodes between the ReLU and the real producer, last first
        node = producer.get(relu.input[0])
        while (node is not None and node.op_type in _DATA_MOVEMENT
               and consumers.get(node.output[0], 0) == 1):
            chain.append(node)
            node = producer.get(node.input[0])
        if not chain:
            continue
        first, last = chain[-1], chain[0]
        moved_in, relu_out = first.input[0], relu.output[0]
        relu.input[0], relu.output[0] = moved_in, relu_out + "_relu_first"
        first.input[0] = relu.output[0]
        last.output[0] = relu_out
        nodes.remove(relu)
        nodes.insert(nodes.index(first), relu)
        changed = True
    if changed:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        onnx.save(model, str(path))
    return path


#: Nodes whose names ``int8_layers`` and a person reading the graph (Netron) go by; the
#: quantize/dequantize pairs around them are anonymous.
_NAMED_OPS = frozenset({"Conv", "ConvTranspose", "QLinearConv", "DepthToSpace", "Resize"})


def compact_onnx(path: str | Path) -> Path:
    """Rewrites a finished ONNX file, in place and exactly, without what only the exporter
    needed: shape arithmetic for the dynamic batch folded by onnxslim, shape annotations
    (the runtime infers them), long tensor names (``model.convt1.conv.weight_quantized_
    scale`` becomes ``1f``) and the quantize/dequantize nodes' names. Module paths stay on
    the compute nodes. Measured: an int8 GG-CNN pruned 50 % went from 41.5 to 24.9 kB,
    outputs bit-identical; the names were 40 % of the file."""
    import onnx
    import onnxslim

    path = Path(path)
    model = onnxslim.slim(onnx.load(str(path)))
    graph = model.graph
    del graph.value_info[:]
    outer = {v.name for v in graph.input} | {v.name for v in graph.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in outer:
            return name
        return names.setdefault(name, format(len(names), "x"))

    for tensor in graph.initializer:
        tensor.name = short(tensor.name)
        tensor.ClearField("doc_string")
    for node in graph.node:
        if node.op_type not in _NAMED_OPS:
            node.name = ""
        node.input[:] = [short(x) for x in node.input]
        node.output[:] = [short(x) for x in node.output]
        node.ClearField("doc_string")
    tmp = path.with_suffix(".tmp.onnx")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)
    return path


@functools.lru_cache(maxsize=4)
def _network_only(path: str, mtime_ns: int) -> bytes:
    """The file without its grasp synthesis, made once per file version (a timing makes a
    session of it in every block)."""
    return without_synthesis(Path(path).read_bytes())


@functools.lru_cache(maxsize=64)
def _onnx_outputs(path: str, mtime_ns: int) -> tuple[str, ...]:
    return tuple(o.name for o in _read_onnx(Path(path)).graph.output)


@functools.lru_cache(maxsize=32)
def _onnx_channels(path: str, mtime_ns: int) -> int:
    """The channels of an ONNX file's input (fixed at export; only the batch is dynamic)."""
    dims = _read_onnx(Path(path)).graph.input[0].type.tensor_type.shape.dim
    return dims[1].dim_value if len(dims) == 4 and dims[1].dim_value else 1


def _read_onnx(path: Path):  # -> onnx.ModelProto
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError and others, for a damaged file
        raise ArtifactError(f"{path}: not a readable ONNX file: truncated or corrupt "
                            f"({type(error).__name__}). Rebuild it from the trial's weights "
                            f"(ggopt export --rebuild) or re-run the trial.") from None


def check_readable(path: str | Path) -> None:
    """Refuses an artifact file that cannot be what it claims (a truncated or overwritten
    ONNX file, a .pt2 that is no archive) before anything is built or copied from it."""
    import zipfile

    path = Path(path)
    if path.suffix == ".onnx":
        _read_onnx(path)
    elif path.suffix == ".pt2" and not zipfile.is_zipfile(path):
        raise ArtifactError(f"{path}: not a readable .pt2 archive: truncated or corrupt.")


@dataclass(frozen=True)
class Artifact:
    """A deployable model file plus how to run it.

    ``size_bytes`` counts the one file the robot must load; nothing else is needed to run
    it besides the runtime itself (a ``.pt2`` file also holds its graph as ~30-90 kB of
    JSON, which an ONNX file stores more compactly).
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
        if Path(self.path).suffix != SUFFIXES[self.runtime]:
            raise ArtifactError(f"{self.path}: a {self.runtime} artifact must end in "
                                f"{SUFFIXES[self.runtime]}.")
        if not Path(self.path).is_file():
            raise ArtifactError(f"{self.path}: artifact file not found.")

    @property
    def size_bytes(self) -> int:
        return Path(self.path).stat().st_size

    @property
    def input_channels(self) -> int:
        """What the file reads: 1 (depth) or 4 (RGB-D), from the file itself."""
        if self.runtime == "onnxruntime":
            return _onnx_channels(str(self.path), Path(self.path).stat().st_mtime_ns)
        module = self.module()
        if self.precision == "int8":  # an AOTInductor package: its metadata says
            return int(module.get_metadata().get(CHANNELS_METADATA, 1))
        return int(next(node.meta["val"].shape[1] for node in module.graph.nodes
                        if node.op == "placeholder" and "val" in node.meta))

    @property
    def returns_grasp(self) -> bool:
        """Whether the file itself returns the grasp (an ONNX file with grasp synthesis)."""
        if self.runtime != "onnxruntime":
            return False
        return GRASP_OUTPUT in _onnx_outputs(str(self.path), Path(self.path).stat().st_mtime_ns)

    def session(self, threads: int = 1, network_only: bool = False
                ):  # -> onnxruntime.InferenceSession
        """An ONNX Runtime session with a fixed thread count (1 thread times stably).
        ``network_only``: the file without its grasp synthesis (ONNX Runtime runs every node
        of a file whatever outputs are asked for), to time the network alone."""
        if self.runtime != "onnxruntime":
            raise ArtifactError(f"{self.path}: a {self.runtime} artifact has no onnxruntime "
                                "session.")
        check_device(self.runtime, self.device)
        source: str | bytes = str(self.path)
        if network_only and self.returns_grasp:
            source = _network_only(str(self.path), Path(self.path).stat().st_mtime_ns)
        try:
            return onnx_session(source, threads, self.device)
        except TimingError as error:
            raise ArtifactError(f"{self.path}: {error}") from None

    def module(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The loaded torch program; only for the ``torch`` runtime."""
        if self.runtime != "torch":
            raise ArtifactError(f"{self.path}: a {self.runtime} artifact is not a torch program.")
        check_device(self.runtime, self.device)
        module = _load_torch(str(self.path), Path(self.path).stat().st_mtime_ns, self.precision)
        if self.device != "cpu" and isinstance(module, nn.Module):
            module.to(self.device)  # an eager program; an int8 package is compiled for x86
        return module

    def predictor(self, threads: int = 1) -> Callable[[torch.Tensor], torch.Tensor]:
        """[B, 1, S, S] -> [B, 4, S, S], computed by the artifact itself (its own precision)."""
        if self.runtime == "torch":
            module = self.module()

            def predict_torch(x: torch.Tensor) -> torch.Tensor:
                # One image at a time: the program is exported for the robot's batch of 1.
                with torch_threads(threads), torch.inference_mode():
                    return torch.cat([module(x[i:i + 1].to(self.device)).float().cpu()
                                      for i in range(len(x))])

            return predict_torch
        session = self.session(threads, network_only=True)

        def predict(x: torch.Tensor) -> torch.Tensor:
            feed = {INPUT_NAME: np.ascontiguousarray(x.detach().cpu().numpy(), np.float32)}
            return torch.from_numpy(session.run([OUTPUT_NAME], feed)[0])

        return predict

    def grasp_predictor(self, threads: int = 1) -> Callable[[torch.Tensor], np.ndarray]:
        """[B, 1, S, S] -> [B, 6] grasps (:mod:`grasp.synthesis`), as the robot gets them:
        from the file itself when it returns the grasp, else from the same synthesis graph
        run by torch on the artifact's own maps (a .pt2 program)."""
        if self.returns_grasp:
            session = self.session(threads)

            def predict(x: torch.Tensor) -> np.ndarray:
                feed = {INPUT_NAME: np.ascontiguousarray(x.detach().cpu().numpy(), np.float32)}
                return session.run([GRASP_OUTPUT], feed)[0]

            return predict
        maps, synthesis = self.predictor(threads), GraspSynthesis(self.input_size)

        def predict_maps(x: torch.Tensor) -> np.ndarray:
            with torch.inference_mode():
                return synthesis(maps(x), x.cpu()).numpy()

        return predict_maps

    def timed_call(self, threads: int = 1, seed: int = 0, end_to_end: bool = False
                   ) -> Callable[[], None]:
        """One batch-1 inference on a fixed input, with nothing else inside: what latency
        times; ``end_to_end``: depth in, grasp out (the network and grasp synthesis), else
        the network alone. The input is converted once, outside the call; a torch caller
        sets the thread count around its loop (:func:`torch_threads`)."""
        if self.runtime == "torch":
            image = fixed_input(self.input_size, seed, self.input_channels)
            module, x = self.module(), torch.from_numpy(image).to(self.device)
            synthesis = GraspSynthesis(self.input_size).to(self.device) if end_to_end else None
            if self.device == "cuda":
                program = module if synthesis is None else (lambda v: synthesis(module(v), v))
                replay, _ = cuda_graph(program, x)
                return replay

            def run_torch() -> None:
                with torch.inference_mode():
                    maps = module(x)
                    if synthesis is not None:
                        synthesis(maps, x)

            return run_torch
        if end_to_end and not self.returns_grasp:
            raise ArtifactError(f"{self.path}: has no grasp output to time end to end (written "
                                f"by an older ggopt, or maps of {self.input_size} px, too "
                                f"small for GG-CNN's peak search).")
        return onnx_timed_call(self.session(threads, network_only=not end_to_end),
                               self.input_size, end_to_end, seed)
