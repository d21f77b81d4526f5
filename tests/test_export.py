"""``detector export``: the ONNX graph, its metadata, the Triton repository and the ONNX
Runtime backend, checked against the torch network.

Tests that need onnx / onnxscript / onnxruntime skip without them (the ``onnx`` extra).
The Triton ``config.pbtxt`` is parsed with ``google.protobuf.text_format`` into a subset
of Triton's ``inference.ModelConfig`` message defined here (field names and numbers as in
triton-inference-server/common ``protobuf/model_config.proto``); parsing is strict, so
a misspelt or unknown field fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from detector.checkpoint import Checkpoint
from detector.cli import build_parser, main
from detector.config import ModelConfig
from detector.encoding import decode
from detector.export import (
    INPUT_NAME,
    METADATA_KEY,
    METADATA_KEYS,
    export_metadata,
    output_names,
    triton_config,
)
from detector.models.yolo import YOLODetector

CONFIG = ModelConfig(
    num_classes=3,
    class_names=("cat", "dog", "bird"),
    num_landmarks=2,
    landmark_names=("left_eye", "right_eye"),
    flip_idx=(1, 0),
    head="decoupled",  # what training gives a new model; the CLI test below is coupled
)
SHAPES = [(1, 320, 320), (3, 256, 320), (3, 64, 96)]  # (B, H, W)
TOLERANCE = 1e-4
TRITON_DATA_TYPES = [
    "TYPE_INVALID",
    "TYPE_BOOL",
    "TYPE_UINT8",
    "TYPE_UINT16",
    "TYPE_UINT32",
    "TYPE_UINT64",
    "TYPE_INT8",
    "TYPE_INT16",
    "TYPE_INT32",
    "TYPE_INT64",
    "TYPE_FP16",
    "TYPE_FP32",
    "TYPE_FP64",
    "TYPE_STRING",
    "TYPE_BF16",
]


def needs_onnx():
    """Skip unless the optional export and runtime packages are installed."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    return pytest.importorskip("onnxruntime")


def write_model(path: Path, config: ModelConfig, seed: int, kind: str = "grid") -> YOLODetector:
    """A random-weights model file (BatchNorm statistics perturbed so they matter)."""
    torch.manual_seed(seed)
    model = YOLODetector(config)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    Checkpoint(config, kind, model.state_dict()).save(path)
    return model.eval()


@pytest.fixture(scope="module")
def torch_model(tmp_path_factory) -> tuple[YOLODetector, Path]:
    path = tmp_path_factory.mktemp("weights") / "faces.safetensors"
    return write_model(path, CONFIG, seed=0), path


@pytest.fixture(scope="module")
def triton_repo(torch_model, tmp_path_factory) -> Path:
    """``detector export --format triton`` of the module's model: one export for all."""
    needs_onnx()
    _, weights = torch_model
    out = tmp_path_factory.mktemp("triton")
    argv = ["export", "--weights", str(weights), "--format", "triton", "--out", str(out)]
    argv += ["--max-batch", "8", "--preferred-batch", "2", "4", "--max-queue-delay-us", "500"]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def onnx_path(triton_repo) -> Path:
    return triton_repo / "faces" / "1" / "model.onnx"


def triton_model_config_class():
    """A strict subset of Triton's ``inference.ModelConfig``: what the export writes."""
    file = descriptor_pb2.FileDescriptorProto(
        name="triton_model_config_subset.proto", package="inference", syntax="proto3"
    )
    data_type = file.enum_type.add(name="DataType")
    for number, name in enumerate(TRITON_DATA_TYPES):
        data_type.value.add(name=name, number=number)
    field = descriptor_pb2.FieldDescriptorProto
    optional, repeated = field.LABEL_OPTIONAL, field.LABEL_REPEATED

    def message(name: str, *fields: tuple) -> None:
        proto = file.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            added = proto.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                added.type_name = type_name

    string, int32, int64, uint64 = (
        field.TYPE_STRING,
        field.TYPE_INT32,
        field.TYPE_INT64,
        field.TYPE_UINT64,
    )
    enum, msg = field.TYPE_ENUM, field.TYPE_MESSAGE
    message(
        "ModelInput",
        ("name", 1, string, optional, ""),
        ("data_type", 2, enum, optional, ".inference.DataType"),
        ("dims", 4, int64, repeated, ""),
    )
    message(
        "ModelOutput",
        ("name", 1, string, optional, ""),
        ("data_type", 2, enum, optional, ".inference.DataType"),
        ("dims", 3, int64, repeated, ""),
    )
    message(
        "ModelDynamicBatching",
        ("preferred_batch_size", 1, int32, repeated, ""),
        ("max_queue_delay_microseconds", 2, uint64, optional, ""),
    )
    message(
        "ModelConfig",
        ("name", 1, string, optional, ""),
        ("platform", 2, string, optional, ""),
        ("max_batch_size", 4, int32, optional, ""),
        ("input", 5, msg, repeated, ".inference.ModelInput"),
        ("output", 6, msg, repeated, ".inference.ModelOutput"),
        ("dynamic_batching", 11, msg, optional, ".inference.ModelDynamicBatching"),
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


# ---------------------------------------------------------------- without onnx


def test_export_is_a_cli_command():
    assert "export" in build_parser().format_help()


def test_metadata_record():
    record = export_metadata(CONFIG, "grid", "faces")
    assert tuple(record) == METADATA_KEYS
    assert json.loads(json.dumps(record)) == record
    assert record["classes"] == ["cat", "dog", "bird"]
    assert record["anchors"] == [[list(wh) for wh in level] for level in CONFIG.anchors]
    assert record["strides"] == [8, 16, 32] and record["input_size"] == 320
    assert record["num_landmarks"] == 2 and record["flip_idx"] == [1, 0]
    assert record["landmark_names"] == ["left_eye", "right_eye"]
    assert record["input"]["name"] == INPUT_NAME and record["input"]["range"] == [0.0, 1.0]
    assert [o["name"] for o in record["outputs"]] == ["raw_s8", "raw_s16", "raw_s32"]
    assert ModelConfig.from_dict(record["model"]) == CONFIG


def test_export_rejects_other_kinds_and_bad_settings(tmp_path, capsys):
    from detector.models.window import WindowConfig
    from detector.window_pyramid import WindowDetector

    window = WindowConfig(num_classes=2, window=24, input_size=64)
    weights = tmp_path / "window.safetensors"
    Checkpoint(window, "sliding-window", WindowDetector(window).state_dict()).save(weights)
    argv = ["export", "--weights", str(weights), "--out", str(tmp_path / "w.onnx")]
    assert main(argv) == 2
    assert "sliding-window" in capsys.readouterr().err
    assert main(["export", "--weights", str(tmp_path / "missing"), "--out", "x.onnx"]) == 2
    assert "no model file" in capsys.readouterr().err


def test_triton_settings_fail_before_exporting(torch_model, tmp_path, capsys):
    _, weights = torch_model
    argv = ["export", "--weights", str(weights), "--format", "triton", "--out", str(tmp_path)]
    assert main([*argv, "--max-batch", "4", "--preferred-batch", "8"]) == 2
    assert "preferred batch sizes must be in [1, 4]" in capsys.readouterr().err
    assert main([*argv, "--name", "a/b"]) == 2
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- the ONNX file


def test_onnx_names_dims_and_metadata(onnx_path):
    import onnx

    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model, full_check=True)

    def dims(value_info):
        return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]

    (images,) = model.graph.input
    assert images.name == "images" and dims(images) == ["batch", 3, "height", "width"]
    assert images.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    d = CONFIG.num_outputs
    assert [(o.name, dims(o)) for o in model.graph.output] == [
        (f"raw_s{s}", ["batch", f"height/{s}", f"width/{s}", 3, d]) for s in (8, 16, 32)
    ]
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props[METADATA_KEY]) == export_metadata(CONFIG, "grid", "faces")


@pytest.mark.parametrize("batch,height,width", SHAPES)
def test_onnxruntime_raw_outputs_equal_torch(torch_model, onnx_path, batch, height, width):
    ort = needs_onnx()
    model, _ = torch_model
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    images = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(batch))
    got = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        expected = model(images)
    assert [o.name for o in session.get_outputs()] == output_names(CONFIG)
    for out, ref in zip(got, expected, strict=True):
        torch.testing.assert_close(torch.from_numpy(out), ref, atol=TOLERANCE, rtol=TOLERANCE)


# ---------------------------------------------------------------- Triton


def test_triton_config_parses_and_names_the_onnx_tensors(triton_repo, onnx_path):
    ort = needs_onnx()
    assert sorted(p.relative_to(triton_repo).as_posix() for p in triton_repo.rglob("*")) == [
        "faces",
        "faces/1",
        "faces/1/model.onnx",
        "faces/config.pbtxt",
    ]
    text = (triton_repo / "faces" / "config.pbtxt").read_text()
    config = text_format.Parse(text, triton_model_config_class()())
    assert config.name == "faces" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 8
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    fp32 = TRITON_DATA_TYPES.index("TYPE_FP32")
    assert [i.name for i in config.input] == [i.name for i in session.get_inputs()]
    assert [o.name for o in config.output] == [o.name for o in session.get_outputs()]
    assert [(i.data_type, list(i.dims)) for i in config.input] == [(fp32, [3, -1, -1])]
    d = CONFIG.num_outputs
    assert [(o.data_type, list(o.dims)) for o in config.output] == [(fp32, [-1, -1, 3, d])] * 3


def test_triton_config_rejects_bad_settings(onnx_path):
    with pytest.raises(ValueError, match="max_batch_size"):
        triton_config(onnx_path, "m", max_batch_size=0)
    with pytest.raises(ValueError, match="preferred"):
        triton_config(onnx_path, "m", max_batch_size=4, preferred_batch_sizes=(8,))
    with pytest.raises(ValueError, match="max_queue_delay_us"):
        triton_config(onnx_path, "m", max_queue_delay_us=-1)


# ---------------------------------------------------------------- the ONNX Runtime backend


@pytest.mark.parametrize("batch,height,width", SHAPES)
def test_backend_decodes_like_the_torch_model(torch_model, onnx_path, batch, height, width):
    needs_onnx()
    from detector.export import OnnxRuntimeNetwork

    model, _ = torch_model
    network = OnnxRuntimeNetwork(onnx_path).to("cpu").eval()
    assert network.config == CONFIG and network.kind == "grid" and network.name == "faces"
    images = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        raw = network(images)
        expected = decode(model(images), CONFIG)
    assert all(r.dtype == torch.float32 and r.device == images.device for r in raw)
    got = decode(raw, network.config)
    for name in ("boxes", "objectness", "class_probs", "landmarks"):
        torch.testing.assert_close(
            getattr(got, name), getattr(expected, name), atol=TOLERANCE, rtol=TOLERANCE
        )


def test_backend_rejects_bad_inputs_and_foreign_files(onnx_path, tmp_path):
    needs_onnx()
    import onnx
    from onnx import TensorProto, helper

    from detector.export import OnnxRuntimeNetwork

    network = OnnxRuntimeNetwork(onnx_path)
    for bad in (torch.rand(1, 3, 100, 96), torch.rand(3, 64, 64), torch.zeros(1, 3, 64, 64).int()):
        with pytest.raises(ValueError, match="multiples of 32"):
            network(bad)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    foreign = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), foreign)
    with pytest.raises(ValueError, match="no 'detector' metadata"):
        OnnxRuntimeNetwork(foreign)
    with pytest.raises(FileNotFoundError):
        OnnxRuntimeNetwork(tmp_path / "missing.onnx")


@pytest.mark.slow
def test_cli_onnx_format_without_landmarks(tmp_path):
    needs_onnx()
    from detector.export import OnnxRuntimeNetwork

    config = ModelConfig(num_classes=1, size="tiny", input_size=256)
    model = write_model(tmp_path / "boxes.safetensors", config, seed=1)
    out = tmp_path / "exported" / "boxes.onnx"
    argv = ["export", "--weights", str(tmp_path / "boxes.safetensors"), "--out", str(out)]
    assert main([*argv, "--format", "onnx"]) == 0
    network = OnnxRuntimeNetwork(out)
    assert network.config == config and network.metadata["num_landmarks"] == 0
    images = torch.rand(2, 3, 128, 192)
    with torch.no_grad():
        for got, ref in zip(network(images), model(images), strict=True):
            torch.testing.assert_close(got, ref, atol=TOLERANCE, rtol=TOLERANCE)


def test_command_defaults_are_the_library_defaults():
    from detector import export
    from detector.commands import export as command

    assert command.DEFAULT_OPSET == export.DEFAULT_OPSET
    assert command.DEFAULT_MAX_BATCH == export.DEFAULT_MAX_BATCH
    assert command.DEFAULT_PREFERRED_BATCHES == export.DEFAULT_PREFERRED_BATCHES
    assert command.DEFAULT_MAX_QUEUE_DELAY_US == export.DEFAULT_MAX_QUEUE_DELAY_US


# ---------------------------------------------------------------- the onnxruntime backend


def test_detector_with_the_onnxruntime_backend_equals_torch(torch_model, onnx_path, tmp_path):
    """Detector.load(..., backend="onnxruntime") runs the exported file with the same
    pre- and post-processing: the same detections as the torch model, for a landscape,
    a portrait and a square image (minimal padding gives three input shapes)."""
    import numpy as np

    from detector.predict import Detector

    _, weights = torch_model
    on_torch = Detector.load(weights, device="cpu")
    onnx_file = tmp_path / "faces.onnx"
    onnx_file.write_bytes(onnx_path.read_bytes())
    on_ort = Detector.load(onnx_file, device="cpu", backend="onnxruntime")
    assert on_ort.kind == on_torch.kind and on_ort.names == on_torch.names
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, s, np.uint8) for s in ((240, 320, 3), (300, 200, 3), (90, 90, 3))
    ]
    for image in images:
        letterboxed, _ = on_torch.preprocess(image)
        want = on_torch.forward(letterboxed[None])
        got = on_ort.forward(letterboxed[None])
        torch.testing.assert_close(got.boxes, want.boxes, atol=1e-3, rtol=0)
        torch.testing.assert_close(got.scores, want.scores, atol=1e-5, rtol=0)
        torch.testing.assert_close(got.landmarks, want.landmarks, atol=1e-3, rtol=0)
    for want, got in zip(on_torch.detect(images), on_ort.detect(images), strict=True):
        assert got.image_size == want.image_size and len(got) == len(want)
    with pytest.raises(ValueError, match="backend='onnxruntime'"):
        Detector.load(onnx_file, device="cpu")
    with pytest.raises(ValueError, match=r"\.onnx file"):
        Detector.load(weights, device="cpu", backend="onnxruntime")
    with pytest.raises(ValueError, match="unknown backend"):
        Detector.load(weights, device="cpu", backend="tensorrt")


def test_the_onnxruntime_backend_runs_its_torch_steps_on_one_thread(onnx_path, tmp_path):
    """Around an ONNX Runtime network, torch's own steps (and so its OpenMP pool, whose idle
    threads spin and took the cores from ONNX Runtime) run on one thread; the process's
    setting is back afterwards, also after an error."""
    import numpy as np

    from detector.export import OnnxRuntimeNetwork
    from detector.predict import Detector, torch_threads

    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(onnx_path.read_bytes())
    detector = Detector.load(onnx_file, device="cpu", backend="onnxruntime")
    assert detector.torch_threads == 1
    network = OnnxRuntimeNetwork(onnx_file, threads=2)  # built by hand, as bench_predict does
    assert Detector(network, network.config, torch.device("cpu"), network.kind).torch_threads == 1
    seen = []
    network = detector.model
    detector.model = lambda x: seen.append(torch.get_num_threads()) or network(x)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), np.uint8)
        detector.detect([image, image])
        assert seen == [1] and torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="boom"), torch_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError("boom")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_predict_and_the_server_repository_take_the_onnxruntime_backend(onnx_path, tmp_path):
    import json as json_module

    import cv2
    import numpy as np

    from server.repository import ModelRepository

    folder = tmp_path / "models"
    folder.mkdir()
    onnx_file = folder / "faces.onnx"
    onnx_file.write_bytes(onnx_path.read_bytes())
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.random.default_rng(1).integers(0, 256, (120, 160, 3), np.uint8))
    out = tmp_path / "out.jsonl"
    argv = ["predict", str(image), "--weights", str(onnx_file), "--backend", "onnxruntime"]
    assert main([*argv, "--device", "cpu", "--no-save", "--json", str(out), "--quiet"]) == 0
    (record,) = [json_module.loads(line) for line in out.read_text().splitlines()]
    assert record["image"] == str(image) and "detections" in record
    repository = ModelRepository.from_folder(folder, device="cpu", backend="onnxruntime")
    assert repository.names == ["faces"] and repository.get().detector.names == [
        "cat",
        "dog",
        "bird",
    ]
