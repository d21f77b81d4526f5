"""Landmark mode (K > 0): the loss term against a naive reference, and training a K > 0
model end to end through ``detector train`` with both assignment rules."""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detector.checkpoint import Checkpoint
from detector.cli import main
from detector.config import ASSIGN_RULES, LossConfig, ModelConfig
from detector.data.dataset import read_rgb
from detector.encoding import CLS, POSITIVE, TargetEncoder, Targets
from detector.loss import DetectionLoss
from detector.predict import Detector

K = 2
NUM_CLASSES = 2
SIZE = 64
ANCHORS = (
    ((6.0, 8.0), (10.0, 10.0), (14.0, 9.0)),
    ((20.0, 24.0), (24.0, 18.0), (30.0, 30.0)),
    ((40.0, 36.0), (50.0, 56.0), (60.0, 60.0)),
)


def _smooth_l1(d: float) -> float:
    """Smooth-L1 with beta 1, one element."""
    return 0.5 * d * d if abs(d) < 1 else abs(d) - 0.5


POINT_ERRORS = {"l1": abs, "smooth-l1": _smooth_l1}  # LossConfig.landmark_loss -> error


def _reference_landmark_loss(raw, targets: Targets, config: ModelConfig, kind: str) -> float:
    """The landmark term, one positive slot and one point at a time in plain Python:
    per scale, the mean over labelled points of err(x) + err(y) (``kind``) of the
    offsets in anchor units from the cell centre, weighted by that scale's positives;
    the sum over scales divided by all positives."""
    c, total, num_pos = config.num_classes, 0.0, 0
    for scale, (out, target, state, mask) in enumerate(
        zip(raw, targets.target, targets.state, targets.landmark_mask, strict=True)
    ):
        stride = config.strides[scale]
        errors, pos, err = [], 0, POINT_ERRORS[kind]
        for b, gy, gx, a in torch.nonzero(state == POSITIVE).tolist():
            pos += 1
            aw, ah = config.anchors[scale][a]
            cx, cy = (gx + 0.5) * stride, (gy + 0.5) * stride
            for k in range(config.num_landmarks):
                if not mask[b, gy, gx, a, k]:
                    continue
                x, y = target[b, gy, gx, a, CLS + c + 2 * k : CLS + c + 2 * k + 2].tolist()
                px, py = out[b, gy, gx, a, CLS + c + 2 * k : CLS + c + 2 * k + 2].tolist()
                errors.append(err(px - (x - cx) / aw) + err(py - (y - cy) / ah))
        if errors:
            total += pos * sum(errors) / len(errors)
        num_pos += pos
    return total / max(num_pos, 1)


def _hand_made_targets(config: ModelConfig) -> Targets:
    """Two images; positives at every scale and at anchors 0, 1 and 2, some points unlabelled,
    one scale with positives but no labelled point."""
    encoder = TargetEncoder.from_config(config)
    images = [encoder.empty(), encoder.empty()]
    d = config.num_outputs
    # (image, scale, gy, gx, anchor, class, landmarks (x, y), labelled)
    slots = [
        (0, 0, 2, 3, 2, 1, [(30.0, 21.0), (25.0, 19.5)], [True, True]),
        (0, 0, 5, 1, 0, 0, [(9.0, 47.0), (20.0, 40.0)], [True, False]),
        (0, 1, 1, 2, 1, 0, [(35.0, 20.0), (44.0, 29.0)], [True, True]),
        (1, 1, 3, 0, 2, 1, [(2.0, 60.0), (14.0, 50.0)], [False, False]),
        (1, 2, 0, 1, 1, 0, [(30.0, 10.0), (58.0, 3.0)], [False, True]),
        (1, 0, 7, 7, 1, 1, [(63.0, 63.0), (50.0, 55.0)], [True, True]),
    ]
    for image, scale, gy, gx, a, cls, points, labelled in slots:
        t = torch.zeros(d)
        t[0:4] = torch.tensor([gx * 8.0 + 4, gy * 8.0 + 4, 12.0, 12.0])
        t[4], t[CLS + cls] = 1.0, 1.0
        t[CLS + config.num_classes :] = torch.tensor(points).reshape(-1)
        images[image].target[scale][gy, gx, a] = t
        images[image].state[scale][gy, gx, a] = POSITIVE
        images[image].landmark_mask[scale][gy, gx, a] = torch.tensor(labelled)
    return Targets.stack(images)


@pytest.mark.parametrize("kind", sorted(POINT_ERRORS))
def test_landmark_loss_matches_a_naive_reference(kind: str) -> None:
    config = ModelConfig(NUM_CLASSES, input_size=SIZE, anchors=ANCHORS, num_landmarks=K)
    targets = _hand_made_targets(config)
    gen = torch.Generator().manual_seed(0)
    raw = [
        (torch.randn(2, g, g, 3, config.num_outputs, generator=gen) * 2).requires_grad_()
        for g in (SIZE // s for s in config.strides)
    ]
    gain = 0.7
    loss = DetectionLoss(config, LossConfig(landmark_gain=gain, landmark_loss=kind))
    total, items = loss(raw, targets)
    expected = _reference_landmark_loss(raw, targets, config, kind)
    assert items.landmark == pytest.approx(expected, rel=1e-5)
    assert expected > 0

    # The term enters the total as batch · gain · term, and only through labelled points.
    without, _ = DetectionLoss(config, LossConfig(landmark_gain=0.0, landmark_loss=kind))(
        raw, targets
    )
    assert float((total - without).detach()) == pytest.approx(2 * gain * expected, rel=1e-4)
    (total - without).backward()
    c = config.num_classes
    for out, state, mask in zip(raw, targets.state, targets.landmark_mask, strict=True):
        grad = out.grad[..., CLS + c :].reshape(*out.shape[:4], K, 2)
        labelled = (state == POSITIVE)[..., None] & mask  # (B, H, W, A, K)
        assert torch.all(grad[~labelled] == 0)
        assert torch.all(grad[labelled].abs().sum(-1) > 0)


def test_an_unknown_landmark_loss_is_refused() -> None:
    with pytest.raises(ValueError, match="landmark_loss must be one of l1, smooth-l1"):
        LossConfig(landmark_loss="wing")


def test_landmark_loss_is_zero_without_labelled_points() -> None:
    config = ModelConfig(NUM_CLASSES, input_size=SIZE, anchors=ANCHORS, num_landmarks=K)
    targets = _hand_made_targets(config)
    for mask in targets.landmark_mask:
        mask.zero_()
    raw = [torch.randn(2, g, g, 3, config.num_outputs) for g in (8, 4, 2)]
    _, items = DetectionLoss(config)(raw, targets)
    assert items.landmark == 0.0


# --- end to end: a tiny pose dataset through `detector train` ------------------------------

TRAIN_IMAGES, VAL_IMAGES, IMAGE_SIDE = 8, 4, 96


def _write_pose_split(root: Path, split: str, count: int, rng: np.random.Generator) -> None:
    """Rectangles with a dot at each end (K = 2 points) on a plain background."""
    (root / "images" / split).mkdir(parents=True)
    (root / "labels" / split).mkdir(parents=True)
    for i in range(count):
        image = np.full((IMAGE_SIDE, IMAGE_SIDE, 3), 40, np.uint8)
        lines = []
        for _ in range(2):
            w, h = rng.uniform(20, 40, 2)
            cx, cy = rng.uniform(25, IMAGE_SIDE - 25, 2)
            cv2.rectangle(
                image,
                (int(cx - w / 2), int(cy - h / 2)),
                (int(cx + w / 2), int(cy + h / 2)),
                (200, 180, 90),
                -1,
            )
            points = [(cx - w / 4, cy), (cx + w / 4, cy)]
            for x, y in points:
                cv2.circle(image, (int(x), int(y)), 2, (0, 0, 255), -1)
            text = [f"{v / IMAGE_SIDE:.5f}" for v in (cx, cy, w, h)]
            for x, y in points:
                text += [f"{x / IMAGE_SIDE:.5f}", f"{y / IMAGE_SIDE:.5f}", "2"]
            lines.append("0 " + " ".join(text))
        cv2.imwrite(str(root / "images" / split / f"{i}.png"), image)
        (root / "labels" / split / f"{i}.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def pose_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pose")
    rng = np.random.default_rng(0)
    _write_pose_split(root, "train", TRAIN_IMAGES, rng)
    _write_pose_split(root, "val", VAL_IMAGES, rng)
    (root / "data.yaml").write_text(
        "train: images/train\nval: images/val\nnames: {0: bar}\n"
        f"kpt_shape: [{K}, 3]\nflip_idx: [1, 0]\nkpt_names: [west, east]\nskeleton: [[0, 1]]\n"
    )
    return root / "data.yaml"


@pytest.fixture()
def one_thread(monkeypatch: pytest.MonkeyPatch):
    """One intra-op thread: faster on 64-pixel images on a busy machine (see test_train)."""
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("assign", sorted(ASSIGN_RULES))
def test_train_a_landmark_model_through_the_cli(
    assign: str, pose_yaml: Path, tmp_path: Path, one_thread
) -> None:
    out = tmp_path / "run"
    argv = ["train", "--data", str(pose_yaml), "--imgsz", str(SIZE), "--batch", "8"]
    argv += ["--workers", "0", "--epochs", "1", "--device", "cpu", "--out", str(out)]
    assert main([*argv, "--assign", assign, "--no-plots", "--quiet"]) == 0
    assert os.environ["OMP_NUM_THREADS"] == "1"

    checkpoint = Checkpoint.load(out / "best.safetensors")
    assert checkpoint.config.num_landmarks == K
    assert checkpoint.config.flip_idx == (1, 0)
    assert checkpoint.config.landmark_names == ("west", "east")
    assert checkpoint.config.skeleton == ((0, 1),)
    header, row = ((out / "results.csv").read_text().splitlines()[i].split(",") for i in (0, 1))
    lmk = float(row[header.index("lmk")])
    assert math.isfinite(lmk) and lmk > 0

    detector = Detector.load(out / "best.safetensors", device="cpu")
    image = read_rgb(pose_yaml.parent / "images" / "val" / "0.png")
    (detections,) = detector.detect([image], score_threshold=0.0)
    assert len(detections) > 0
    assert detections.landmarks is not None
    assert detections.landmarks.shape == (len(detections), K, 3)
    assert np.isfinite(detections.landmarks).all()


# --- names and skeleton: from the data into the model config ------------------------------


def test_model_config_skeleton_is_checked_and_old_configs_load() -> None:
    config = ModelConfig(
        1, num_landmarks=3, landmark_names=("a", "b", "c"), skeleton=((0, 1), (1, 2))
    )
    assert ModelConfig.from_dict(config.to_dict()) == config
    old = config.to_dict()
    del old["skeleton"]  # written before the field existed
    assert ModelConfig.from_dict(old).skeleton == ()
    with pytest.raises(ValueError, match=r"skeleton pair \(0, 3\) must be two landmark indices"):
        ModelConfig(1, num_landmarks=3, skeleton=((0, 3),))
    with pytest.raises(ValueError, match="skeleton pair"):
        ModelConfig(1, skeleton=((0, 1),))  # no landmarks at all
    with pytest.raises(ValueError, match="2 landmark names for 3 landmarks"):
        ModelConfig(1, num_landmarks=3, landmark_names=("a", "b"))


def test_init_takes_the_datasets_landmark_names_and_skeleton(
    pose_yaml: Path, tmp_path: Path
) -> None:
    """``--init`` from a model without names: the new model records the data's; a model
    with another K is refused before any weight is loaded."""
    from detector.data.formats import load_dataset
    from detector.models.yolo import YOLODetector
    from detector.train import TrainOptions, _start_from

    info = load_dataset(pose_yaml, "train")
    unnamed = ModelConfig(
        1, input_size=SIZE, anchors=ANCHORS, num_landmarks=K, class_names=("bar",)
    )
    path = Checkpoint(unnamed, "grid", YOLODetector(unnamed).state_dict()).save(
        tmp_path / "init.safetensors"
    )
    config, resume, init = _start_from(TrainOptions(str(pose_yaml), init=str(path)), info, print)
    assert resume is None and init is not None
    assert config.landmark_names == ("west", "east") and config.skeleton == ((0, 1),)
    assert config.flip_idx == (1, 0) and config.anchors == ANCHORS

    other_k = ModelConfig(
        1, input_size=SIZE, anchors=ANCHORS, num_landmarks=3, class_names=("bar",)
    )
    path = Checkpoint(other_k, "grid", YOLODetector(other_k).state_dict()).save(
        tmp_path / "k3.safetensors"
    )
    with pytest.raises(ValueError, match="its 3 landmarks differ from the dataset's 2"):
        _start_from(TrainOptions(str(pose_yaml), init=str(path)), info, print)
