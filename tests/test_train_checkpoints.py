"""Crash-safe training outputs: a run killed while writing its checkpoints resumes with
``best`` and ``last`` in agreement, and without the temporary files the kill left."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from detector import checkpoint as checkpoint_module
from detector import train as train_module
from detector.checkpoint import Checkpoint, remove_stale_temporaries, temporary_path
from detector.cli import main
from detector.config import ModelConfig, TrainConfig
from detector.models.yolo import YOLODetector
from detector.train import BEST, LAST, TrainOptions, reconcile_best, train

IMGSZ = 64
FITNESS = {0: 0.1, 1: 0.2, 2: 0.05}  # scripted validation fitness by epoch (from 0)
KILLED_EPOCH = 1  # the run is killed while writing this epoch's checkpoints
OUTPUT_FILES = {BEST, LAST, "results.csv"}


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    argv = ["synth", "digits", "--out", str(root), "--train", "8", "--val", "4"]
    assert main([*argv, "--imgsz", str(IMGSZ), "--quiet"]) == 0
    return root / "data.yaml"


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def scripted_fitness(monkeypatch):
    """Validation gives ``FITNESS[epoch]`` (AP and AP50), so which epochs improve is known."""
    epoch_now = {}
    real_step, real_validate = train_module.validate_and_checkpoint, train_module.validate

    def step(run, epoch, stats):
        epoch_now["epoch"] = epoch
        return real_step(run, epoch, stats)

    def validate(*args, **kwargs):
        val = real_validate(*args, **kwargs)
        fitness = FITNESS[epoch_now["epoch"]]
        return dataclasses.replace(
            val, result=dataclasses.replace(val.result, ap=fitness, ap50=fitness)
        )

    monkeypatch.setattr(train_module, "validate_and_checkpoint", step)
    monkeypatch.setattr(train_module, "validate", validate)


def _options(data: Path, out: Path, **changes) -> TrainOptions:
    config = TrainConfig(epochs=len(FITNESS), batch_size=8, workers=0, patience=0)
    return TrainOptions(
        data=str(data), imgsz=IMGSZ, out=str(out), device="cpu", plots=False, progress=False,
        config=config, **changes,
    )  # fmt: skip


def _kill_when_writing(monkeypatch, name: str, *, half_written: bool) -> None:
    """Kill the run at the write of ``name`` for epoch ``KILLED_EPOCH``: halfway through
    its temporary file (``half_written``) or just before it starts."""
    real = checkpoint_module._atomic_write

    def write(path: Path, data: bytes) -> None:
        if path.name == name and _recorded_epoch(data) == KILLED_EPOCH:
            if half_written:
                temporary_path(path).write_bytes(data[: len(data) // 2])
            raise Killed
        real(path, data)

    monkeypatch.setattr(checkpoint_module, "_atomic_write", write)


def _recorded_epoch(data: bytes) -> int:
    """The ``epoch`` a checkpoint's bytes record."""
    header = data[8 : 8 + int.from_bytes(data[:8], "little")].decode()
    return json.loads(json.loads(header)["__metadata__"]["detector"])["epoch"]


def _assert_best_is_what_last_says(out: Path) -> None:
    last = Checkpoint.load(out / LAST)
    best = Checkpoint.load(out / BEST)
    assert best.metadata["epoch"] == last.metadata["best_epoch"]
    assert best.metadata["best_fitness"] == pytest.approx(last.metadata["best_fitness"])
    assert {p.name for p in out.iterdir()} == OUTPUT_FILES  # no temporary left


@pytest.mark.usefixtures("scripted_fitness")
def test_kill_while_writing_best_then_resume_agrees(data_yaml, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _kill_when_writing(patch, BEST, half_written=True)
        with pytest.raises(Killed):
            train(_options(data_yaml, out))
    assert any(p.name.endswith(".tmp") for p in out.iterdir())  # the kill left one
    assert Checkpoint.load(out / LAST).metadata["epoch"] == KILLED_EPOCH - 1  # best first
    train(_options(data_yaml, out, resume=True))
    _assert_best_is_what_last_says(out)
    assert Checkpoint.load(out / BEST).metadata["epoch"] == 1  # the best of FITNESS


@pytest.mark.usefixtures("scripted_fitness")
def test_kill_between_best_and_last_then_resume_keeps_the_newer_best(
    data_yaml, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _kill_when_writing(patch, LAST, half_written=False)
        with pytest.raises(Killed):
            train(_options(data_yaml, out))
    best_bytes = (out / BEST).read_bytes()
    assert Checkpoint.load(out / BEST).metadata["epoch"] == KILLED_EPOCH
    assert Checkpoint.load(out / LAST).metadata["epoch"] == KILLED_EPOCH - 1
    train(_options(data_yaml, out, resume=True))
    _assert_best_is_what_last_says(out)
    # the rerun of the killed epoch scores the same, which does not beat it: kept as is
    assert (out / BEST).read_bytes() == best_bytes


def _checkpoint(epoch: int, best_fitness: float, best_epoch: int) -> Checkpoint:
    config = ModelConfig(num_classes=1, input_size=IMGSZ)
    torch.manual_seed(epoch)
    metadata = {
        "epoch": epoch, "best_fitness": best_fitness, "best_epoch": best_epoch,
        "stale_epochs": epoch - best_epoch,
    }  # fmt: skip
    return Checkpoint(config, "grid", YOLODetector(config).state_dict(), metadata=metadata)


def test_reconcile_rewrites_best_from_last_when_last_is_the_best_epoch(tmp_path):
    last = _checkpoint(epoch=2, best_fitness=0.3, best_epoch=2)
    _checkpoint(epoch=1, best_fitness=0.2, best_epoch=1).for_inference().save(tmp_path / BEST)
    assert reconcile_best(tmp_path, last, print) == (0.3, 2, 0)
    best = Checkpoint.load(tmp_path / BEST)
    assert best.metadata["epoch"] == 2
    for name, tensor in last.inference_state.items():
        assert torch.equal(best.model_state[name], tensor), name


def test_reconcile_falls_back_to_what_best_holds_when_the_best_weights_are_gone(tmp_path):
    last = _checkpoint(epoch=3, best_fitness=0.3, best_epoch=2)
    assert reconcile_best(tmp_path, last, print) == (-1.0, -1, 1)  # no best at all
    assert not (tmp_path / BEST).exists()
    _checkpoint(epoch=1, best_fitness=0.2, best_epoch=1).for_inference().save(tmp_path / BEST)
    assert reconcile_best(tmp_path, last, print) == (0.2, 1, 1)
    agreeing = _checkpoint(epoch=3, best_fitness=0.2, best_epoch=1)
    assert reconcile_best(tmp_path, agreeing, print) == (0.2, 1, 2)


def test_remove_stale_temporaries_removes_only_its_own_pattern(tmp_path):
    ours = [temporary_path(tmp_path / LAST), temporary_path(tmp_path / BEST)]
    other = temporary_path(tmp_path / "other.safetensors")
    keep = [tmp_path / ".last.safetensors.xyz.tmp", tmp_path / "notes.tmp", tmp_path / LAST, other]
    for path in [*ours, *keep]:
        path.write_bytes(b"x")
    removed = remove_stale_temporaries(tmp_path, (LAST, BEST))
    assert sorted(removed) == sorted(ours)
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in keep)
    assert remove_stale_temporaries(tmp_path) == [other]
