"""Export a grid model to ONNX or to a Triton Inference Server model repository, and run
an exported file with ONNX Runtime.

The exported graph is the raw network, :class:`~detector.models.yolo.YOLODetector`'s
``forward`` and nothing more (no decoding, no NMS):

- input ``images``: float32 ``(B, 3, H, W)``, RGB, values in ``[0, 1]`` (uint8 / 255),
  letterboxed as :meth:`detector.predict.Detector.preprocess` does (grey 114 padding).
  ``B >= 1``, ``H`` and ``W`` positive multiples of the largest stride (32); all three are
  dynamic. The model was trained at ``input_size`` × ``input_size`` (in the metadata).
- outputs ``raw_s8``, ``raw_s16``, ``raw_s32``: float32 ``(B, H/s, W/s, A, 5 + C + 2K)``,
  the raw values of each stride ``s``; :func:`detector.encoding.decode` turns them into
  boxes, scores and landmarks (``OnnxRuntimeNetwork.config`` is the config it needs).
- ``metadata_props["detector"]``: a JSON object with the keys of :data:`METADATA_KEYS`
  (kind, class names, anchors in input pixels per stride, strides, input size, landmarks,
  their names and flip permutation, the input's and outputs' names and layouts, and the
  model's full config for :meth:`ModelConfig.from_dict`).

A Triton repository is ``<out>/<name>/config.pbtxt`` + ``<out>/<name>/1/model.onnx``; the
config's names, data types and dims are read from the exported ONNX graph itself.

``onnx``, ``onnxscript`` and ``onnxruntime`` are optional (the ``onnx`` extra); they are
imported only by the functions that need them.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from detector.checkpoint import Checkpoint
from detector.config import ModelConfig
from detector.models.yolo import YOLODetector

INPUT_NAME = "images"
OUTPUT_PREFIX = "raw_s"  # one output per stride: raw_s8, raw_s16, raw_s32
METADATA_KEY = "detector"  # the metadata_props entry holding the JSON record
METADATA_VERSION = 1
METADATA_KEYS = (
    "format_version",  # METADATA_VERSION
    "kind",  # checkpoint kind: "grid" or "landmark"
    "name",  # model name (file stem)
    "classes",  # class names, index = class id
    "num_classes",
    "anchors",  # per stride, A (w, h) in input pixels
    "strides",
    "input_size",  # side of the square letterboxed training input
    "num_landmarks",  # K
    "landmark_names",
    "flip_idx",  # landmark permutation of a horizontal flip
    "input",  # name, dtype, layout, channels, value range, dims multiple of
    "outputs",  # per stride: name, stride, layout
    "model",  # ModelConfig.to_dict()
)
EXPORTABLE_KINDS = ("grid", "landmark")  # kinds whose network is YOLODetector
DEFAULT_OPSET = 18
EXAMPLE_BATCH = 2  # the traced example's batch size (1 would invite specialising on it)
ONNX_FLOAT = 1  # onnx.TensorProto.FLOAT

# Triton model repository defaults (the service's own batcher defaults to 8 images).
TRITON_PLATFORM = "onnxruntime_onnx"
TRITON_VERSION = "1"
TRITON_MODEL_FILE = "model.onnx"
DEFAULT_MAX_BATCH = 16
DEFAULT_PREFERRED_BATCHES = (4, 8, 16)
DEFAULT_MAX_QUEUE_DELAY_US = 2000
TRITON_TYPES = {ONNX_FLOAT: "TYPE_FP32"}  # ONNX element type -> Triton data type


def output_names(config: ModelConfig) -> list[str]:
    """The ONNX output names, in stride order: ``raw_s8``, ``raw_s16``, ``raw_s32``."""
    return [f"{OUTPUT_PREFIX}{stride}" for stride in config.strides]


def load_network(weights: str | Path) -> tuple[YOLODetector, Checkpoint, Path]:
    """The eval-mode float32 CPU network of a model file or shipped model name, with its
    checkpoint and path (the inference weights: EMA when stored)."""
    from detector.predict import resolve_model_path

    path = resolve_model_path(weights)
    checkpoint = Checkpoint.load(path)
    if checkpoint.kind not in EXPORTABLE_KINDS:
        raise ValueError(
            f"{path}: model kind {checkpoint.kind!r} cannot be exported; "
            f"expected one of {EXPORTABLE_KINDS}"
        )
    model = YOLODetector(checkpoint.config)
    model.load_state_dict(checkpoint.inference_state)
    return model.float().eval(), checkpoint, path


def export_metadata(config: ModelConfig, kind: str = "grid", name: str = "model") -> dict:
    """The JSON record stored under ``metadata_props["detector"]`` (keys: ``METADATA_KEYS``)."""
    stride = max(config.strides)
    layout = "(B, H/s, W/s, A, D), D = 5 + C + 2K: tx, ty, tw, th, objectness, C class logits, 2K landmark offsets"
    return {
        "format_version": METADATA_VERSION,
        "kind": kind,
        "name": name,
        "classes": list(config.names),
        "num_classes": config.num_classes,
        "anchors": [[list(wh) for wh in level] for level in config.anchors],
        "strides": list(config.strides),
        "input_size": config.input_size,
        "num_landmarks": config.num_landmarks,
        "landmark_names": list(config.landmark_names),
        "flip_idx": list(config.flip_idx),
        "input": {
            "name": INPUT_NAME,
            "dtype": "float32",
            "layout": "(B, 3, H, W)",
            "channels": "RGB",
            "range": [0.0, 1.0],
            "multiple_of": stride,
            "letterbox_pad": 114,
        },
        "outputs": [
            {"name": out, "stride": s, "layout": layout}
            for out, s in zip(output_names(config), config.strides, strict=True)
        ],
        "model": json.loads(json.dumps(config.to_dict())),  # tuples as JSON lists
    }


def export_onnx(
    model: YOLODetector,
    path: str | Path,
    kind: str = "grid",
    name: str = "model",
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Write ``model``'s raw network to ``path`` as ONNX (see the module docstring).

    Uses ``torch.onnx.export(dynamo=True)`` (needs ``onnx`` and ``onnxscript``) with a
    dynamic batch and a height and width of any multiple of the largest stride.

    Returns:
        The path written.
    """
    onnx = _require("onnx")
    _require("onnxscript")
    config = model.config
    path = Path(path)
    multiple = max(config.strides)
    batch = torch.export.Dim("batch", min=1)
    height = torch.export.Dim("height_blocks", min=1)
    width = torch.export.Dim("width_blocks", min=1)
    size = config.input_size
    example = torch.rand(EXAMPLE_BATCH, 3, size, size)
    names = output_names(config)
    model = model.float().eval().cpu()
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress
        program = torch.onnx.export(
            model,
            (example,),
            input_names=[INPUT_NAME],
            output_names=names,
            dynamic_shapes={"images": {0: batch, 2: multiple * height, 3: multiple * width}},
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    proto = program.model_proto
    _name_dims(proto, config)
    proto.producer_name = "yolo-detector"
    proto.doc_string = (
        f"{name}: raw output of a YOLO-style grid detector. Input {INPUT_NAME!r}: float32 "
        f"(B, 3, H, W) RGB in [0, 1], H and W multiples of {multiple}. Outputs "
        f"{', '.join(names)}: float32 (B, H/s, W/s, A, 5 + C + 2K) per stride s. "
        f"metadata_props[{METADATA_KEY!r}] holds the JSON a runtime needs."
    )
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = json.dumps(export_metadata(config, kind, name))
    onnx.checker.check_model(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return path


def _name_dims(proto: Any, config: ModelConfig) -> None:
    """Give the graph's input and outputs readable dynamic dimension names."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(dims, ("batch", 3, "height", "width"), strict=True):
        _set_dim(dim, value)
    for output, stride in zip(proto.graph.output, config.strides, strict=True):
        values = ("batch", f"height/{stride}", f"width/{stride}")
        for dim, value in zip(output.type.tensor_type.shape.dim[:3], values, strict=True):
            _set_dim(dim, value)


def _set_dim(dim: Any, value: str | int) -> None:
    if isinstance(value, str):
        dim.dim_param = value
    else:
        dim.dim_value = value


def triton_config(
    onnx_path: str | Path,
    name: str,
    max_batch_size: int = DEFAULT_MAX_BATCH,
    preferred_batch_sizes: Sequence[int] = DEFAULT_PREFERRED_BATCHES,
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US,
) -> str:
    """A Triton ``config.pbtxt`` (protobuf text format of ``inference.ModelConfig``) for
    an ONNX file written by :func:`export_onnx`.

    The input and output names, data types and dims come from the ONNX graph; the batch
    dimension is left out (``max_batch_size > 0``) and dynamic dims are ``-1``.
    Dynamic batching prefers ``preferred_batch_sizes`` (each at most ``max_batch_size``)
    and waits at most ``max_queue_delay_us`` microseconds for a batch to fill.
    """
    onnx = _require("onnx")
    _check_triton_settings(max_batch_size, preferred_batch_sizes, max_queue_delay_us, name)
    graph = onnx.load(str(onnx_path), load_external_data=False).graph

    def tensor(value_info: Any) -> str:
        kind = value_info.type.tensor_type.elem_type
        if kind not in TRITON_TYPES:
            raise ValueError(f"{onnx_path}: {value_info.name!r} has ONNX element type {kind}")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in _dims(value_info)[1:]]
        return (
            "  {\n"
            f'    name: "{value_info.name}"\n'
            f"    data_type: {TRITON_TYPES[kind]}\n"
            f"    dims: [ {', '.join(str(d) for d in dims)} ]\n"
            "  }"
        )

    preferred = ", ".join(str(b) for b in sorted(set(preferred_batch_sizes)))
    inputs = ",\n".join(tensor(v) for v in graph.input)
    outputs = ",\n".join(tensor(v) for v in graph.output)
    return (
        f'name: "{name}"\n'
        f'platform: "{TRITON_PLATFORM}"\n'
        f"max_batch_size: {max_batch_size}\n"
        f"input [\n{inputs}\n]\n"
        f"output [\n{outputs}\n]\n"
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {preferred} ]\n"
        f"  max_queue_delay_microseconds: {max_queue_delay_us}\n"
        "}\n"
    )


def _dims(value_info: Any) -> list[Any]:
    return list(value_info.type.tensor_type.shape.dim)


def export_triton(
    model: YOLODetector,
    out: str | Path,
    name: str,
    kind: str = "grid",
    opset: int = DEFAULT_OPSET,
    max_batch_size: int = DEFAULT_MAX_BATCH,
    preferred_batch_sizes: Sequence[int] = DEFAULT_PREFERRED_BATCHES,
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US,
) -> Path:
    """Write a Triton model repository entry ``<out>/<name>/`` (``config.pbtxt`` and
    ``1/model.onnx``); returns the model's folder. The settings are checked before the
    (slow) export."""
    folder = Path(out) / name
    scratch = Path(out) / f".{name}.partial"
    shutil.rmtree(scratch, ignore_errors=True)
    _check_triton_settings(max_batch_size, preferred_batch_sizes, max_queue_delay_us, name)
    try:
        export_onnx(model, scratch / TRITON_VERSION / TRITON_MODEL_FILE, kind, name, opset)
        text = triton_config(
            scratch / TRITON_VERSION / TRITON_MODEL_FILE,
            name,
            max_batch_size,
            preferred_batch_sizes,
            max_queue_delay_us,
        )
        (scratch / "config.pbtxt").write_text(text)
        shutil.rmtree(folder, ignore_errors=True)
        scratch.rename(folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder


def _check_triton_settings(
    max_batch_size: int, preferred: Sequence[int], max_queue_delay_us: int, name: str
) -> None:
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    bad = [b for b in preferred if not 1 <= b <= max_batch_size]
    if bad:
        raise ValueError(f"preferred batch sizes must be in [1, {max_batch_size}], got {bad}")
    if max_queue_delay_us < 0:
        raise ValueError(f"max_queue_delay_us must be >= 0, got {max_queue_delay_us}")
    if not name or any(c in name for c in '/\\"') or name.startswith("."):
        raise ValueError(f'model name must be non-empty, without / \\ " or a leading dot: {name!r}')


class OnnxRuntimeNetwork:
    """An exported ``.onnx`` file run by ONNX Runtime, used like the torch network.

    Called with a float ``(B, 3, H, W)`` tensor (RGB in [0, 1], H and W multiples of 32) it
    returns the raw outputs as a list of float32 torch tensors, one ``(B, H/s, W/s, A, D)``
    per stride, on the input's device (or the one given to :meth:`to`), so that
    :func:`detector.encoding.decode` and ``Detector`` take it in place of
    :class:`YOLODetector`.

    Args:
        path: a file written by :func:`export_onnx` (or a Triton repository's model.onnx).
        providers: ONNX Runtime execution providers in order of preference; default CPU.
        threads: intra-op threads of the session (0: ONNX Runtime's choice).

    Attributes:
        config: the model's :class:`ModelConfig`, from the file's metadata.
        kind, name: the exported model's kind and name.
        metadata: the file's whole ``"detector"`` metadata record.
    """

    # Torch threads for Detector's own steps around this network (uint8 to float,
    # decoding, NMS, mapping back; detector.predict.torch_threads): after a parallel region
    # torch's idle OpenMP threads spin for a while and took the cores from ONNX Runtime's
    # threads. Detector.detect with ONNX Runtime on a 640x480 frame, 2-core CPU: 49
    # images/s with torch at 2 threads, 110-115 at 1 for those steps (one run, interleaved).
    torch_threads = 1

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None, threads: int = 0):
        ort = _require("onnxruntime")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {path} does not exist")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(path), options, providers=list(providers or ["CPUExecutionProvider"])
        )
        record = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if record is None:
            raise ValueError(f"{path} has no {METADATA_KEY!r} metadata: not written by export")
        self.metadata = json.loads(record)
        version = self.metadata.get("format_version")
        if not isinstance(version, int) or version > METADATA_VERSION:
            raise ValueError(f"{path}: metadata format_version {version!r} is not supported")
        self.config = ModelConfig.from_dict(self.metadata["model"])
        self.kind = self.metadata["kind"]
        self.name = self.metadata["name"]
        self.output_names = [o["name"] for o in self.metadata["outputs"]]
        self.path = path
        self.device: torch.device | None = None  # None: outputs go to the input's device

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Raw outputs of ``images`` ``(B, 3, H, W)`` float: per stride ``(B, H/s, W/s, A, D)``."""
        multiple = max(self.config.strides)
        if (
            images.ndim != 4
            or images.shape[1] != 3
            or images.shape[0] < 1
            or not images.is_floating_point()
            or images.shape[2] % multiple
            or images.shape[3] % multiple
            or min(images.shape[2:]) < multiple
        ):
            raise ValueError(
                f"images must be a float (B, 3, H, W) tensor, B >= 1, H and W positive "
                f"multiples of {multiple}; got {tuple(images.shape)} {images.dtype}"
            )
        x = images.detach().to("cpu", torch.float32).contiguous().numpy()  # (B, 3, H, W)
        outputs = self.session.run(self.output_names, {INPUT_NAME: x})
        device = self.device or images.device
        return [torch.from_numpy(out).to(device) for out in outputs]

    def to(self, device: str | torch.device | None = None, **_: Any) -> OnnxRuntimeNetwork:
        """Put outputs on ``device`` (the session's providers decide where it runs);
        keyword arguments of ``torch.nn.Module.to`` (``memory_format``) are ignored."""
        self.device = None if device is None else torch.device(device)
        return self

    def eval(self) -> OnnxRuntimeNetwork:
        """No-op: an exported graph is always in inference mode."""
        return self


def export_model(
    weights: str | Path,
    fmt: str,
    out: str | Path,
    name: str | None = None,
    opset: int = DEFAULT_OPSET,
    max_batch_size: int = DEFAULT_MAX_BATCH,
    preferred_batch_sizes: Sequence[int] = DEFAULT_PREFERRED_BATCHES,
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US,
) -> Path:
    """``detector export``: ``fmt`` ``"onnx"`` writes the file ``out``; ``"triton"``
    writes the repository entry ``<out>/<name>/`` (name: the model file's stem).

    Returns:
        The ONNX file, or the Triton model folder.
    """
    if fmt not in ("onnx", "triton"):
        raise ValueError(f"unknown export format {fmt!r}; expected 'onnx' or 'triton'")
    model, checkpoint, path = load_network(weights)
    name = name or path.stem
    if fmt == "onnx":
        return export_onnx(model, out, checkpoint.kind, name, opset)
    return export_triton(
        model,
        out,
        name,
        checkpoint.kind,
        opset,
        max_batch_size,
        preferred_batch_sizes,
        max_queue_delay_us,
    )


def _require(module: str) -> Any:
    """Import an optional dependency, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            f"{module} is needed for ONNX export and ONNX Runtime; install the 'onnx' "
            f"extra: pip install 'yolo-detector[onnx]' (or uv sync)"
        ) from err
