"""The trainer end to end on a tiny synthetic set: smoke run, exact resume, early stop,
the learning-rate schedule, bad images, and a 2-process DDP run on CPU (gloo)."""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.checkpoint import Checkpoint
from detector.cli import build_parser, main
from detector.commands.train import train_config
from detector.config import ASSIGN_RULES, LossConfig, ModelConfig, TrainConfig
from detector.data.dataset import DetectionDataset, read_rgb
from detector.data.formats import load_dataset
from detector.data.transforms import AugmentConfig, Augmenter
from detector.encoding import TargetEncoder
from detector.predict import Detector
from detector.train import RESULTS_FIELDS, TrainOptions, learning_rate, train

REPO = Path(__file__).resolve().parents[1]
IMGSZ = 64  # model input side: small enough for CPU tests
BATCH = 8
TRAIN_IMAGES = 16
VAL_IMAGES = 8
OUTPUT_FILES = {"best.safetensors", "last.safetensors", "results.csv"}
TIMING_FIELDS = ("images_per_s", "seconds")  # results.csv columns that vary run to run
DDP_TIMEOUT_S = 300
OMP_THREADS = "OMP_NUM_THREADS"


pytestmark = pytest.mark.usefixtures("one_training_thread")


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A YOLO digits dataset: 16 train and 8 val images of 64 px."""
    root = tmp_path_factory.mktemp("digits")
    argv = ["synth", "digits", "--out", str(root), "--train", str(TRAIN_IMAGES)]
    argv += ["--val", str(VAL_IMAGES), "--imgsz", str(IMGSZ), "--quiet"]
    assert main(argv) == 0
    return root / "data.yaml"


def _options(data: Path, out: Path, epochs: int, **changes) -> TrainOptions:
    config = TrainConfig(epochs=epochs, batch_size=BATCH, workers=0, patience=0)
    config = replace(config, **changes.pop("config", {}))
    return TrainOptions(
        data=str(data),
        imgsz=IMGSZ,
        out=str(out),
        device="cpu",
        plots=False,
        progress=False,
        config=config,
        **changes,
    )


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == RESULTS_FIELDS
        return list(reader)


def _without_timing(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in rows]


def _assert_states_equal(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{what} differ in {len(different)} tensors, e.g. {different[:3]}"


def test_one_epoch_smoke_through_cli(data_yaml: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["train", "--data", str(data_yaml), "--imgsz", str(IMGSZ), "--batch", str(BATCH)]
    argv += ["--workers", "0", "--epochs", "1", "--device", "cpu", "--out", str(out)]
    argv += ["--box-gain", "0.2", "--val-images", "3"]
    assert main([*argv, "--no-plots", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "best-possible recall" in printed
    assert f"train: {TRAIN_IMAGES} images" in printed
    assert f"val: validating on the first 3 of {VAL_IMAGES} images (--val-images)" in printed

    assert {p.name for p in out.iterdir()} == OUTPUT_FILES  # no temporary files left
    rows = _rows(out)
    assert [row["epoch"] for row in rows] == ["1"]
    assert all(np.isfinite(float(rows[0][k])) for k in ("box", "obj", "cls"))

    last = Checkpoint.load(out / "last.safetensors")
    assert last.metadata["epoch"] == 0
    assert last.ema_state is not None and last.optimizer_state is not None
    assert last.metadata["ema_updates"] == TRAIN_IMAGES // BATCH
    assert last.config.input_size == IMGSZ
    assert last.metadata["command"] == shlex.join(["detector", *argv, "--no-plots", "--quiet"])
    loss_config = last.metadata["train_config"]["loss"]  # the defaults but the box gain
    assert loss_config == json.loads(json.dumps({**asdict(LossConfig()), "box_gain": 0.2}))
    best = Checkpoint.load(out / "best.safetensors")
    assert best.ema_state is None and best.optimizer_state is None
    _assert_states_equal(best.model_state, last.ema_state, "best weights and last EMA")

    detector = Detector.load(out / "best.safetensors", device="cpu")
    image = read_rgb(next((data_yaml.parent / "images" / "val").iterdir()))
    (detections,) = detector.detect([image], score_threshold=0.0)
    assert len(detections) > 0
    assert set(detections.labels) <= set(detector.names)


def test_val_images_keeps_the_first_images_of_the_split(data_yaml: Path, tmp_path: Path) -> None:
    from detector.train import _load_data

    logged: list[str] = []
    options = _options(data_yaml, tmp_path / "run", 1, val_images=3)
    _, val_info = _load_data(options, logged.append)
    whole = load_dataset(str(data_yaml), "val")
    assert [s.image_path for s in val_info.samples] == [s.image_path for s in whole.samples[:3]]
    assert any("first 3 of" in line for line in logged)
    _, everything = _load_data(_options(data_yaml, tmp_path / "all", 1, val_images=99), print)
    assert len(everything.samples) == VAL_IMAGES
    with pytest.raises(ValueError, match="val_images"):
        _options(data_yaml, tmp_path / "bad", 1, val_images=0)
    argv = ["train", "--data", str(data_yaml), "--val-images", "-1", "--out", str(tmp_path)]
    assert main(argv) == 2


@pytest.mark.parametrize("assign", sorted(ASSIGN_RULES))
def test_assign_flag_selects_the_positive_rule(assign: str) -> None:
    args = build_parser().parse_args(["train", "--data", "d.yaml", "--assign", assign])
    config = train_config(args)
    assert config.loss == LossConfig(**ASSIGN_RULES[assign])
    default = train_config(build_parser().parse_args(["train", "--data", "d.yaml"]))
    assert default.loss == LossConfig() == LossConfig(**ASSIGN_RULES["multi"])


def test_loss_and_warmup_flags_reach_the_train_config() -> None:
    argv = ["train", "--data", "d.yaml", "--obj-gain", "0.7", "--cls-gain", "1.5"]
    argv += ["--obj-target", "one", "--warmup-epochs", "2.5"]
    argv += ["--landmark-gain", "0.9", "--landmark-loss", "smooth-l1"]
    config = train_config(build_parser().parse_args(argv))
    assert (config.loss.obj_gain, config.loss.cls_gain) == (0.7, 1.5)
    assert (config.loss.landmark_gain, config.loss.landmark_loss) == (0.9, "smooth-l1")
    assert config.loss.iou_objectness is False
    assert config.warmup_epochs == 2.5
    default = train_config(build_parser().parse_args(["train", "--data", "d.yaml"]))
    iou = train_config(build_parser().parse_args([*argv[:3], "--obj-target", "iou"]))
    assert iou.loss.iou_objectness is True
    assert default.loss.iou_objectness is LossConfig.iou_objectness


def test_cli_minimum_warmup_steps_is_the_trainers() -> None:
    from detector.commands import train as command
    from detector.train_blocks import MIN_WARMUP_STEPS

    assert command.MIN_WARMUP_STEPS == MIN_WARMUP_STEPS


def test_resume_continues_exactly_where_a_stopped_run_stopped(
    data_yaml: Path, tmp_path: Path
) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(_options(data_yaml, straight, epochs=2))

    train(_options(data_yaml, resumed, epochs=2, stop_after_epochs=1))
    assert [row["epoch"] for row in _rows(resumed)] == ["1"]
    assert Checkpoint.load(resumed / "last.safetensors").metadata["epoch"] == 0
    # A run killed after writing epoch 2's row but before its checkpoint: the row is dropped.
    with (resumed / "results.csv").open("a", newline="") as f:
        csv.writer(f).writerow(["2", *["0"] * (len(RESULTS_FIELDS) - 1)])
    # Worker processes must not change the data: resume with 2 of them.
    train(_options(data_yaml, resumed, epochs=2, resume=True, config={"workers": 2}))

    a = Checkpoint.load(straight / "last.safetensors")
    b = Checkpoint.load(resumed / "last.safetensors")
    _assert_states_equal(a.model_state, b.model_state, "raw weights")
    _assert_states_equal(a.ema_state, b.ema_state, "EMA weights")
    momentum_a = a.optimizer_state["state"]
    momentum_b = b.optimizer_state["state"]
    assert momentum_a.keys() == momentum_b.keys() and momentum_a
    for key in momentum_a:
        _assert_states_equal(momentum_a[key], momentum_b[key], f"optimizer state {key}")
    for field in ("epoch", "ema_updates", "best_fitness", "stale_epochs"):
        assert a.metadata[field] == b.metadata[field], field
    assert _without_timing(_rows(straight)) == _without_timing(_rows(resumed))
    assert {p.name for p in resumed.iterdir()} == OUTPUT_FILES


def test_resume_without_checkpoint_is_a_clear_error(data_yaml: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(_options(data_yaml, tmp_path / "empty", epochs=1, resume=True))


def test_stop_after_epochs_must_be_positive(data_yaml: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="stop_after_epochs"):
        _options(data_yaml, tmp_path, epochs=1, stop_after_epochs=0)


def test_early_stop_when_validation_never_improves(data_yaml: Path, tmp_path: Path, capsys) -> None:
    epochs = 4
    # lr 0: the weights never move, so no epoch after the first can improve on it.
    options = _options(data_yaml, tmp_path, epochs=epochs, config={"lr": 0.0, "patience": 1})
    train(options)
    assert "early stop" in capsys.readouterr().out
    epochs_run = [int(row["epoch"]) for row in _rows(tmp_path)]
    # The first epoch always improves on "nothing yet"; the first that does not stops the run.
    assert epochs_run == list(range(1, len(epochs_run) + 1))
    assert 2 <= len(epochs_run) < epochs
    assert Checkpoint.load(tmp_path / "last.safetensors").metadata["stale_epochs"] == 1


def test_learning_rate_warmup_peak_and_cosine_floor() -> None:
    cfg = TrainConfig(lr=0.02, final_lr_ratio=0.05)
    total, warmup = 100, 10
    lrs = np.array([learning_rate(step, total, warmup, cfg) for step in range(total + 1)])
    rise = np.diff(lrs[:warmup])
    assert np.all(rise > 0) and np.allclose(rise, cfg.lr / warmup)  # linear warm-up
    assert lrs[warmup - 1] == pytest.approx(cfg.lr) and lrs.max() == pytest.approx(cfg.lr)
    assert np.all(np.diff(lrs[warmup - 1 :]) <= 0)  # never rises after the warm-up
    floor = cfg.lr * cfg.final_lr_ratio
    assert lrs[-1] == pytest.approx(floor)
    assert lrs[total - 1] == pytest.approx(floor, rel=1e-2)
    assert lrs.min() >= floor - 1e-12


def _copy_with_corrupt_image(data_yaml: Path, destination: Path) -> tuple[Path, Path]:
    """A copy of the dataset whose first training image holds garbage bytes."""
    shutil.copytree(data_yaml.parent, destination)
    corrupt = sorted((destination / "images" / "train").iterdir())[0]
    corrupt.write_bytes(b"not a png" * 10)
    return destination / data_yaml.name, corrupt


def test_corrupt_image_is_skipped_and_reported(data_yaml: Path, tmp_path: Path, capsys) -> None:
    copy, corrupt = _copy_with_corrupt_image(data_yaml, tmp_path / "data")
    out = tmp_path / "run"
    train(_options(copy, out, epochs=1))
    printed = capsys.readouterr().out
    assert f"train: {TRAIN_IMAGES - 1} images" in printed and "1 skipped" in printed
    assert f"skipped: {corrupt}" in printed and "cannot be decoded" in printed
    assert [row["epoch"] for row in _rows(out)] == ["1"]


def _dataset(info, augment: bool, cache: bool = False) -> DetectionDataset:
    config = ModelConfig(num_classes=len(info.names), input_size=IMGSZ)
    encoder = TargetEncoder.from_config(config)
    augmenter = Augmenter(AugmentConfig(), IMGSZ)
    return DetectionDataset(info, encoder, augmenter, augment=augment, seed=7, cache=cache)


@pytest.mark.parametrize("cache", [False, True], ids=["read", "cached"])
def test_image_corrupted_after_listing_is_replaced_by_the_next(
    data_yaml: Path, tmp_path: Path, capsys, cache: bool
) -> None:
    copy = tmp_path / "data"
    shutil.copytree(data_yaml.parent, copy)
    info = load_dataset(str(copy / data_yaml.name), "train")
    Path(info.samples[0].image_path).write_bytes(b"garbage")
    dataset = _dataset(info, augment=False, cache=cache)
    image, targets, index = dataset[0]
    assert index == 0 and image.shape == (3, IMGSZ, IMGSZ)
    assert "cannot read image" in capsys.readouterr().err
    expected, _, _ = dataset[1]
    assert torch.equal(image, expected)  # sample 0 is replaced by sample 1


def test_cached_dataset_gives_the_same_items_and_cannot_be_changed(data_yaml: Path) -> None:
    info = load_dataset(str(data_yaml), "train")
    read, cached = _dataset(info, augment=True), _dataset(info, augment=True, cache=True)
    assert cached.cache_bytes() == TRAIN_IMAGES * IMGSZ * IMGSZ * 3 and read.cache_bytes() == 0
    for epoch in (0, 1):
        read.set_epoch(epoch)
        cached.set_epoch(epoch)
        for i in range(len(info.samples)):  # mosaic, affine, HSV: every transform runs
            (a, ta, _), (b, tb, _) = read[i], cached[i]
            assert torch.equal(a, b), (epoch, i)
            for x, y in zip(ta.target + ta.state, tb.target + tb.state, strict=True):
                assert torch.equal(x, y), (epoch, i)
    with pytest.raises(ValueError, match="read-only"):
        cached.images[0][0, 0, 0] = 1


def test_close_mosaic_trains_the_last_epochs_on_whole_images(
    data_yaml: Path, tmp_path: Path, capsys
) -> None:
    closed, plain = tmp_path / "closed", tmp_path / "plain"
    train(_options(data_yaml, closed, epochs=2, config={"close_mosaic": 2}))
    assert "mosaic off for the last 2 epochs" in capsys.readouterr().out
    train(_options(data_yaml, plain, epochs=2, augment=AugmentConfig(mosaic=0.0)))
    a = Checkpoint.load(closed / "last.safetensors")
    b = Checkpoint.load(plain / "last.safetensors")
    _assert_states_equal(a.model_state, b.model_state, "weights with mosaic closed and off")
    with pytest.raises(ValueError, match="close_mosaic"):
        TrainConfig(epochs=2, close_mosaic=3)


@pytest.mark.slow
def test_two_process_gloo_run_writes_once(data_yaml: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", "-m", "detector.train", "--data", str(data_yaml)]
    command += ["--imgsz", str(IMGSZ), "--batch", str(BATCH // 2), "--workers", "0"]
    command += ["--epochs", "1", "--device", "cpu", "--out", str(out), "--no-plots", "--quiet"]
    env = os.environ | {OMP_THREADS: "1"}
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=DDP_TIMEOUT_S
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert done.stdout.count("epoch 1: AP") == 1  # only rank 0 logs and validates
    assert {p.name for p in out.iterdir()} == OUTPUT_FILES
    assert [row["epoch"] for row in _rows(out)] == ["1"]
    last = Checkpoint.load(out / "last.safetensors")
    assert last.metadata["epoch"] == 0
    # Each of the 2 processes takes ceil(16 / 2 / 4) = 2 steps: the EMA counts steps.
    assert last.metadata["ema_updates"] == TRAIN_IMAGES // BATCH
    Detector.load(out / "best.safetensors", device="cpu")


def test_init_starts_from_given_weights_with_a_new_schedule(
    data_yaml: Path, tmp_path: Path
) -> None:
    first = tmp_path / "first"
    train(_options(data_yaml, first, 1))
    start = Checkpoint.load(first / "best.safetensors")
    second = tmp_path / "second"
    train(_options(data_yaml, second, 1, init=str(first / "best.safetensors"), config={"lr": 0.0}))
    after = Checkpoint.load(second / "last.safetensors")
    assert after.config == start.config  # anchors and classes come from the init model
    assert after.metadata["epoch"] == 0  # a new schedule, not a resume
    # With a learning rate of 0 the weights stay those of the init model (BatchNorm's
    # running statistics still move in training mode, so only parameters are compared).
    params = {k for k in start.model_state if "running" not in k and "num_batches" not in k}
    _assert_states_equal(
        {k: after.model_state[k] for k in params}, {k: start.model_state[k] for k in params}, "init"
    )
