"""k-means anchors, their coverage metrics and the per-stride split."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.anchors import (
    DEFAULT_RECALL_IOU,
    anchors_report,
    best_anchor_iou,
    best_possible_recall,
    kmeans_anchors,
    letterboxed_wh,
    mean_best_iou,
    positive_wh,
    split_anchors,
)
from detector.config import ModelConfig
from detector.data.types import DatasetInfo, Sample

KNOWN_SHAPES = np.array([[12.0, 20.0], [60.0, 35.0], [150.0, 180.0]])


def noisy_shapes(shapes: np.ndarray, per_shape: int, noise: float, seed: int) -> np.ndarray:
    """``(len(shapes) * per_shape, 2)`` sizes: each shape times ``1 + U(-noise, noise)``."""
    rng = np.random.default_rng(seed)
    wh = np.repeat(shapes, per_shape, axis=0)
    return wh * (1 + rng.uniform(-noise, noise, size=wh.shape))


def test_kmeans_recovers_known_shapes():
    wh = noisy_shapes(KNOWN_SHAPES, per_shape=200, noise=0.03, seed=0)
    for seed in range(3):
        anchors = kmeans_anchors(wh, k=3, seed=seed)
        assert anchors.shape == (3, 2) and anchors.dtype == torch.float32
        np.testing.assert_allclose(anchors.numpy(), KNOWN_SHAPES, rtol=0.05)


def test_kmeans_is_deterministic_and_sorted_by_area():
    wh = np.random.default_rng(1).uniform(4, 200, size=(500, 2))
    first = kmeans_anchors(wh, k=9, seed=3)
    assert torch.equal(first, kmeans_anchors(torch.from_numpy(wh), k=9, seed=3))
    areas = first.prod(dim=1)
    assert (areas[1:] >= areas[:-1]).all()
    assert not torch.equal(first, kmeans_anchors(wh, k=9, seed=4))


def test_kmeans_anchors_are_a_local_optimum_of_their_assignment():
    # Each anchor is the per-axis median of the boxes that pick it (the update rule).
    wh = torch.from_numpy(np.random.default_rng(2).uniform(4, 200, size=(301, 2)))
    anchors = kmeans_anchors(wh, k=4, seed=0).double()
    from detector.boxes import wh_iou

    assignment = wh_iou(wh, anchors).argmax(dim=1)
    for cluster in range(4):
        members = wh[assignment == cluster]
        torch.testing.assert_close(
            anchors[cluster], members.quantile(0.5, dim=0), rtol=1e-6, atol=1e-4
        )


def test_kmeans_k_equal_to_boxes_and_duplicates():
    wh = np.array([[10.0, 10.0], [20.0, 40.0], [80.0, 50.0]])
    anchors = kmeans_anchors(wh, k=3)
    np.testing.assert_allclose(anchors.numpy(), wh, rtol=1e-6)
    same = kmeans_anchors(np.full((5, 2), 7.0), k=2)
    np.testing.assert_allclose(same.numpy(), np.full((2, 2), 7.0))


@pytest.mark.parametrize(
    "wh,k,match",
    [
        (np.ones((5, 2)), 0, "k must be >= 1"),
        (np.ones((2, 2)), 3, "at least k = 3 boxes"),
        (np.array([[1.0, 2.0], [0.0, 3.0], [4.0, 5.0]]), 2, "positive"),
        (np.array([[1.0, np.nan], [2.0, 3.0]]), 1, "finite"),
        (np.ones((4, 3)), 2, r"\(N, 2\)"),
    ],
)
def test_kmeans_errors(wh, k, match):
    with pytest.raises(ValueError, match=match):
        kmeans_anchors(wh, k)


def test_best_possible_recall_hand_cases():
    shapes = torch.tensor([[10.0, 10.0], [40.0, 20.0]])
    wh = torch.tensor([[10.0, 10.0], [40.0, 20.0], [10.0, 10.0], [40.0, 20.0]])
    assert best_possible_recall(wh, shapes) == 1.0
    assert mean_best_iou(wh, shapes) == pytest.approx(1.0)
    # One anchor 10x10: the 40x20 boxes have shape IoU 100 / 800 = 0.125 with it.
    one = torch.tensor([[10.0, 10.0]])
    torch.testing.assert_close(
        best_anchor_iou(wh, one), torch.tensor([1.0, 0.125, 1.0, 0.125], dtype=torch.float64)
    )
    assert best_possible_recall(wh, one) == 0.5
    assert best_possible_recall(wh, one, iou_threshold=0.125) == 1.0
    assert mean_best_iou(wh, one) == pytest.approx(0.5625)
    far = torch.tensor([[300.0, 300.0]])
    assert best_possible_recall(wh, far) == 0.0
    # The documented default: a box twice the anchor's sides has IoU exactly 0.25.
    assert DEFAULT_RECALL_IOU == 0.25
    assert best_possible_recall(torch.tensor([[20.0, 20.0]]), one) == 1.0


def test_metric_errors():
    with pytest.raises(ValueError, match="iou_threshold"):
        best_possible_recall(np.ones((2, 2)), torch.ones(1, 2), iou_threshold=1.5)
    with pytest.raises(ValueError, match="at least one box"):
        best_possible_recall(np.zeros((0, 2)), torch.ones(1, 2))
    with pytest.raises(ValueError, match="anchors must not be empty"):
        mean_best_iou(np.ones((2, 2)), torch.zeros(0, 2))


def test_split_anchors_matches_model_config_format():
    anchors = torch.tensor([[float(i), float(i)] for i in (9, 1, 5, 3, 7, 2, 8, 4, 6)])
    split = split_anchors(anchors)
    assert split == (
        ((1.0, 1.0), (2.0, 2.0), (3.0, 3.0)),
        ((4.0, 4.0), (5.0, 5.0), (6.0, 6.0)),
        ((7.0, 7.0), (8.0, 8.0), (9.0, 9.0)),
    )
    assert ModelConfig(num_classes=1, anchors=split).num_anchors == 3
    with pytest.raises(ValueError, match="multiple of num_scales"):
        split_anchors(anchors[:8])


def test_positive_wh_and_report():
    wh = np.vstack(
        [noisy_shapes(KNOWN_SHAPES, 50, 0.02, seed=5), [[0.0, 4.0], [3.0, -1.0], [np.inf, 2]]]
    )
    sizes, dropped = positive_wh(wh)
    assert sizes.shape == (150, 2) and dropped == 3
    report = anchors_report(wh, k=3, seed=0)
    assert report.num_boxes == 150 and report.num_dropped == 3
    np.testing.assert_allclose(report.anchors.numpy(), KNOWN_SHAPES, rtol=0.05)
    assert report.best_possible_recall == 1.0
    assert 0.9 < report.mean_iou <= 1.0
    assert report.recall_iou == DEFAULT_RECALL_IOU


def test_letterboxed_wh_scales_by_input_over_longest_side():
    samples = [
        Sample(Path("a.jpg"), 640, 480, np.array([[0, 0, 64, 32]], np.float32), np.zeros(1)),
        Sample(Path("b.jpg"), 100, 200, np.array([[5, 5, 15, 45]], np.float32), np.zeros(1)),
        Sample(Path("c.jpg"), 50, 50, np.zeros((0, 4), np.float32), np.zeros(0)),
    ]
    wh = letterboxed_wh(DatasetInfo(names=["x"], samples=samples), 320)
    torch.testing.assert_close(wh, torch.tensor([[32.0, 16.0], [16.0, 64.0]], dtype=torch.float64))


# ---------------------------------------------------------------- the command


def write_yolo_dataset(root: Path, shapes: np.ndarray, per_shape: int) -> Path:
    """A YOLO dataset of 640x480 images, one box per image, sizes ``shapes`` (+-2 %)."""
    import cv2

    wh = noisy_shapes(shapes, per_shape, noise=0.02, seed=9)
    width, height = 640, 480
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    image = np.zeros((height, width, 3), dtype=np.uint8)
    for i, (w, h) in enumerate(wh):
        cv2.imwrite(str(root / "images" / "train" / f"{i:04d}.png"), image)
        line = f"0 0.5 0.5 {w / width:.6f} {h / height:.6f}\n"
        (root / "labels" / "train" / f"{i:04d}.txt").write_text(line)
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nnames: [thing]\n")
    return root / "data.yaml"


def test_command_defaults_agree_with_library():
    import detector.anchors as library
    import detector.commands.anchors as command

    assert command.DEFAULT_ITERATIONS == library.DEFAULT_ITERATIONS
    assert command.DEFAULT_RECALL_IOU == library.DEFAULT_RECALL_IOU


def test_anchors_command_prints_scaled_anchors(tmp_path, capsys):
    from detector.cli import main

    shapes = np.array([[40.0, 30.0], [120.0, 200.0], [400.0, 300.0]])  # original pixels
    data = write_yolo_dataset(tmp_path, shapes, per_shape=4)
    assert main(["anchors", "--data", str(data), "-k", "3", "--imgsz", "320"]) == 0
    out = capsys.readouterr().out
    assert "12 images" in out and "12 used" in out
    assert "best-possible recall (IoU >= 0.25): 1.0000" in out
    # 640 wide -> 320: every size halves; -k 3 over 3 strides: one anchor per stride.
    line = next(row for row in out.splitlines() if row.startswith("ModelConfig.anchors = "))
    printed = np.array(ast.literal_eval(line.split("=", 1)[1].strip()), dtype=np.float64)
    printed = printed.reshape(3, 2)
    np.testing.assert_allclose(printed, shapes / 2, rtol=0.05)


def test_anchors_command_errors(tmp_path, capsys):
    from detector.cli import main

    assert main(["anchors", "--data", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    data = write_yolo_dataset(tmp_path / "d", KNOWN_SHAPES, per_shape=1)
    assert main(["anchors", "--data", str(data), "-k", "9"]) == 2
    assert "at least k = 9 boxes" in capsys.readouterr().err
