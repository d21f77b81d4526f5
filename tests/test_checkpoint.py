"""Checkpoint files: round trips, optimizer state, integrity checks and atomic writes."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from detector import checkpoint
from detector.checkpoint import (
    Checkpoint,
    flatten_optimizer_state,
    load_checkpoint,
    load_weights_only,
    save_checkpoint,
    unflatten_optimizer_state,
)
from detector.config import ModelConfig

CONFIG = ModelConfig(num_classes=2, class_names=("cat", "dog"))
METADATA = {"epoch": 3, "command": "detector train data.yaml", "metrics": {"ap50": 0.5}}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))


def _trained(optimizer_cls, **kwargs) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = _model()
    model(torch.randn(2, 3, 6, 6))  # materialise the lazy layer
    optimizer = optimizer_cls(model.parameters(), **kwargs)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(2, 3, 6, 6)).square().mean().backward()
        optimizer.step()
    return model, optimizer


def _assert_same(a, b) -> None:
    """Nested equality with exact tensor equality and matching types.

    Dict order is not compared: safetensors stores tensors sorted, so a loaded state dict
    has its keys in file order (``load_state_dict`` does not care).
    """
    assert type(a) is type(b), (a, b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert sorted(a, key=str) == sorted(b, key=str)
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b


def _checkpoint(with_training_state: bool = True) -> Checkpoint:
    model, optimizer = _trained(torch.optim.SGD, lr=0.1, momentum=0.9, nesterov=True)
    ema = {k: v.detach() * 0.5 for k, v in model.state_dict().items()}
    return Checkpoint(
        config=CONFIG,
        kind="grid",
        model_state=model.state_dict(),
        ema_state=ema if with_training_state else None,
        optimizer_state=optimizer.state_dict() if with_training_state else None,
        metadata=dict(METADATA),
    )


@pytest.fixture
def saved(tmp_path) -> tuple[Checkpoint, Path]:
    ckpt = _checkpoint()
    return ckpt, ckpt.save(tmp_path / "model.safetensors")


def test_checkpoint_round_trip(saved):
    ckpt, path = saved
    loaded = Checkpoint.load(path)
    assert loaded.config == CONFIG
    assert loaded.kind == "grid"
    assert loaded.metadata == METADATA
    _assert_same(dict(ckpt.model_state), loaded.model_state)
    _assert_same(ckpt.ema_state, loaded.ema_state)
    _assert_same(ckpt.optimizer_state, loaded.optimizer_state)


def test_loaded_state_restores_a_model(saved):
    ckpt, path = saved
    model = _model()
    model(torch.randn(1, 3, 6, 6))
    model.load_state_dict(Checkpoint.load(path).model_state)
    model.eval()
    reference = _model()
    reference(torch.randn(1, 3, 6, 6))
    reference.load_state_dict(ckpt.model_state)
    reference.eval()
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(model(x), reference(x))


def test_weights_only_prefers_ema(saved, tmp_path):
    ckpt, path = saved
    _assert_same(ckpt.ema_state, load_weights_only(path))
    plain = _checkpoint(with_training_state=False)
    _assert_same(dict(plain.model_state), load_weights_only(plain.save(tmp_path / "plain.st")))
    shipped = Checkpoint.load(ckpt.for_inference().save(tmp_path / "ship.safetensors"))
    assert shipped.ema_state is None and shipped.optimizer_state is None
    _assert_same(ckpt.ema_state, shipped.model_state)


def test_file_is_plain_safetensors_with_one_metadata_key(saved):
    _, path = saved
    tensors = safetensors.torch.load_file(path)
    assert {k.split("/")[0] for k in tensors} == {"model", "ema", "optim"}
    with safetensors.safe_open(path, "pt") as f:
        meta = f.metadata()
    assert list(meta) == [checkpoint.METADATA_KEY]
    record = json.loads(meta[checkpoint.METADATA_KEY])
    assert record["format_version"] == checkpoint.FORMAT_VERSION
    assert record["kind"] == "grid" and record["epoch"] == 3
    assert ModelConfig.from_dict(record["model"]) == CONFIG
    assert len(record["sha256"]) == 64


@pytest.mark.parametrize(
    ("optimizer_cls", "kwargs"),
    [
        (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
        (torch.optim.AdamW, {"lr": 1e-3, "betas": (0.8, 0.95), "weight_decay": 0.01}),
    ],
)
def test_optimizer_state_round_trip_resumes_identically(tmp_path, optimizer_cls, kwargs):
    model, optimizer = _trained(optimizer_cls, **kwargs)
    state = optimizer.state_dict()
    tensors, structure = flatten_optimizer_state(state)
    assert all(name.startswith("optim/") for name in tensors)
    structure = json.loads(json.dumps(structure))  # what the file holds
    _assert_same(state, unflatten_optimizer_state(tensors, structure))

    # Through a file: resuming from it gives the same next step as never stopping.
    ckpt = Checkpoint(CONFIG, "grid", model.state_dict(), optimizer_state=state)
    loaded = Checkpoint.load(ckpt.save(tmp_path / "resume.safetensors"))
    resumed = _model()
    resumed(torch.randn(1, 3, 6, 6))
    resumed.load_state_dict(loaded.model_state)
    resumed_optimizer = optimizer_cls(resumed.parameters(), **kwargs)
    resumed_optimizer.load_state_dict(loaded.optimizer_state)
    x = torch.randn(2, 3, 6, 6)
    for net, opt in ((model, optimizer), (resumed, resumed_optimizer)):
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_low_level_round_trip_with_extra_tensors(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "step": torch.tensor(7)}
    extra = {"anchors/0": torch.tensor([[1.0, 2.0]]), "mask": torch.tensor([True, False])}
    path = save_checkpoint(tmp_path / "a" / "b.safetensors", state, {"kind": "grid"}, extra)
    loaded_state, metadata, loaded_extra = load_checkpoint(path)
    _assert_same(state, {k: loaded_state[k] for k in state})
    _assert_same(extra, {k: loaded_extra[k] for k in extra})
    assert metadata == {"kind": "grid", "format_version": checkpoint.FORMAT_VERSION}


def test_unserialisable_metadata_and_reserved_keys_rejected(tmp_path):
    with pytest.raises(ValueError, match="JSON-serialisable"):
        save_checkpoint(tmp_path / "x", {}, {"path": Path("a")})
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "x", {}, {"sha256": "0"})
    with pytest.raises(ValueError, match="reserved"):
        Checkpoint(CONFIG, "grid", {}, metadata={"model": {}})
    with pytest.raises(ValueError, match="must not start with 'model/'"):
        save_checkpoint(tmp_path / "x", {}, {}, {"model/w": torch.ones(1)})
    assert not list(tmp_path.iterdir())


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        Checkpoint.load(tmp_path / "nope.safetensors")


def _expect_invalid(path: Path, reason: str) -> None:
    with pytest.raises(
        ValueError, match=f"{path.name} is not a valid model checkpoint: .*{reason}"
    ):
        Checkpoint.load(path)


def test_truncated_file(saved):
    _, path = saved
    data = path.read_bytes()
    for cut in (1, 100, len(data) - 20, len(data) - 4):
        path.write_bytes(data[:-cut])
        _expect_invalid(path, "")


def test_tampered_header(saved):
    _, path = saved
    data = path.read_bytes()
    # Same length, valid JSON, different metadata value: caught by the SHA-256.
    tampered = data.replace(b'\\"epoch\\": 3', b'\\"epoch\\": 4')
    assert tampered != data
    path.write_bytes(tampered)
    _expect_invalid(path, "SHA-256 mismatch")
    # A byte flipped in the JSON syntax.
    path.write_bytes(data.replace(b'"__metadata__"', b'"__metadata__\x00', 1))
    _expect_invalid(path, "not valid JSON")


def test_tampered_tensor_data(saved):
    _, path = saved
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    _expect_invalid(path, "SHA-256 mismatch")


def test_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.safetensors"
    text.write_text("hello, this is not a tensor file")
    _expect_invalid(text, "header claims")
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"abc")
    _expect_invalid(tiny, "too short")
    pickled = tmp_path / "model.pt"
    torch.save({"w": torch.ones(2)}, pickled)
    _expect_invalid(pickled, "")
    foreign = tmp_path / "foreign.safetensors"
    safetensors.torch.save_file({"w": torch.ones(2)}, foreign)
    _expect_invalid(foreign, "no 'detector' metadata")
    _expect_invalid(tmp_path, "not a regular file")


def test_newer_format_version_rejected(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "FORMAT_VERSION", checkpoint.FORMAT_VERSION + 1)
    path = save_checkpoint(tmp_path / "new.safetensors", {"w": torch.ones(1)}, {})
    monkeypatch.undo()
    _expect_invalid(path, "format_version")


def test_atomic_write_keeps_previous_file(saved, monkeypatch):
    ckpt, path = saved
    before = path.read_bytes()
    seen = []

    def crash(fd: int) -> None:
        temps = [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
        seen.extend(p.stat().st_size for p in temps)
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.os, "fsync", crash)
    changed = Checkpoint(CONFIG, "grid", {"w": torch.zeros(100)}, metadata={"epoch": 9})
    with pytest.raises(OSError, match="disk full"):
        changed.save(path)
    monkeypatch.undo()
    assert seen and seen[0] > 0  # the crash happened with a written temporary file
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert Checkpoint.load(path).metadata == METADATA


def test_header_size_matches_safetensors_layout(saved):
    _, path = saved
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    assert json.loads(data[8 : 8 + size])["__metadata__"]
    assert os.path.getsize(path) == len(data)
