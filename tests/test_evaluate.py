"""COCO metrics: known cases and a reference run of pycocotools the classic way (JSON files)."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.data.types import Sample
from detector.evaluate import (
    CATEGORY_ID_OFFSET,
    EvalResult,
    coco_metrics,
    plot_pr_curves,
    predictions_to_coco_json,
)

NAMES = ["cat", "dog"]
IMAGE_SIZE = 640

# One box per COCO area range (small < 32², medium < 96², large above), two classes.
GT_BOXES = np.array(
    [[10, 10, 30, 30], [100, 100, 160, 160], [200, 200, 400, 400], [50, 300, 90, 350]],
    dtype=np.float32,
)
GT_CLASSES = np.array([0, 0, 1, 1])


def _gt(boxes=GT_BOXES, classes=GT_CLASSES):
    return [(boxes, classes, IMAGE_SIZE, IMAGE_SIZE)]


def _perfect(boxes=GT_BOXES, classes=GT_CLASSES):
    return [(boxes, np.linspace(0.9, 0.6, len(boxes)), classes)]


def _overall(result: EvalResult) -> list[float]:
    return [
        result.ap,
        result.ap50,
        result.ap75,
        result.ap_small,
        result.ap_medium,
        result.ap_large,
        result.ar1,
        result.ar10,
        result.ar100,
    ]


def test_perfect_predictions_score_one():
    result = coco_metrics(_gt(), _perfect(), NAMES)
    # ar1 keeps one detection per image and class: 1 of 2 objects of each class.
    # (pycocotools divides by tp + fp + machine epsilon: "1" is 1 - 2e-16.)
    overall = _overall(result)
    assert overall == pytest.approx([1.0] * 6 + [0.5, 1.0, 1.0])
    assert result.per_class_ap == pytest.approx({"cat": 1.0, "dog": 1.0})
    assert result.per_class_ap50 == pytest.approx({"cat": 1.0, "dog": 1.0})
    np.testing.assert_allclose(result.pr_curves["cat"], np.ones(101))
    assert len(result.recall_thresholds) == 101
    assert (result.num_images, result.num_ground_truth, result.num_predictions) == (1, 4, 4)


def test_accepts_samples_and_tensors():
    sample = Sample(Path("a.png"), IMAGE_SIZE, IMAGE_SIZE, GT_BOXES, GT_CLASSES)
    prediction = (torch.from_numpy(GT_BOXES), torch.ones(4), torch.from_numpy(GT_CLASSES))
    result = coco_metrics([sample], [prediction], NAMES)
    assert result.ap == pytest.approx(1.0)


def test_undefined_area_range_is_nan():
    large, dog = GT_BOXES[2:3], GT_CLASSES[2:3]
    result = coco_metrics(_gt(large, dog), _perfect(large, dog), NAMES)
    assert math.isnan(result.ap_small) and math.isnan(result.ap_medium)
    assert result.ap_large == pytest.approx(1.0)
    # "cat" has no ground truth: undefined, and left out of the mean.
    assert math.isnan(result.per_class_ap["cat"]) and np.isnan(result.pr_curves["cat"]).all()
    assert result.ap == pytest.approx(1.0)
    assert result.to_dict()["ap_small"] is None


def test_no_predictions_score_zero():
    empty = [(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))]
    result = coco_metrics(_gt(), empty, NAMES)
    assert _overall(result) == [0.0] * 9
    assert result.per_class_ap50 == {"cat": 0.0, "dog": 0.0}
    assert result.num_predictions == 0


def test_one_class_perfect_one_missing():
    cats = GT_CLASSES == 0
    result = coco_metrics(_gt(), _perfect(GT_BOXES[cats], GT_CLASSES[cats]), NAMES)
    assert result.per_class_ap50 == pytest.approx({"cat": 1.0, "dog": 0.0})
    assert result.per_class_ap == pytest.approx({"cat": 1.0, "dog": 0.0})
    assert result.ap50 == pytest.approx(0.5)
    assert result.ap == pytest.approx(0.5)


def test_iou_0_61_counts_for_ap50_not_ap75():
    gt_box = np.array([[0, 0, 100, 100]], dtype=np.float32)
    shift = 24.0  # IoU = (100 - 24) / (100 + 24) = 0.613
    pred_box = gt_box + np.array([shift, 0, shift, 0], dtype=np.float32)
    classes = np.array([0])
    result = coco_metrics(_gt(gt_box, classes), _perfect(pred_box, classes), ["cat"])
    assert result.ap50 == pytest.approx(1.0)
    assert result.ap75 == 0.0
    # Matched at IoU thresholds 0.50, 0.55, 0.60: 3 of 10.
    assert result.ap == pytest.approx(0.3)


def _random_case(seed: int, num_images: int = 6, num_classes: int = 3):
    rng = np.random.default_rng(seed)
    ground_truth, predictions = [], []
    for _ in range(num_images):
        n = int(rng.integers(0, 8))
        xy = rng.uniform(0, 400, (n, 2))
        wh = rng.uniform(8, 200, (n, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
        classes = rng.integers(0, num_classes, n)
        ground_truth.append((boxes, classes, IMAGE_SIZE, IMAGE_SIZE))
        keep = rng.random(n) < 0.8
        jitter = rng.normal(0, 10, (int(keep.sum()), 4))
        false_xy = rng.uniform(0, 400, (3, 2))
        false_boxes = np.concatenate([false_xy, false_xy + rng.uniform(8, 150, (3, 2))], axis=1)
        pred_boxes = np.concatenate([boxes[keep] + jitter, false_boxes])
        pred_classes = np.concatenate([classes[keep], rng.integers(0, num_classes, 3)])
        predictions.append((pred_boxes, rng.random(len(pred_boxes)), pred_classes))
    return ground_truth, predictions, [f"class{i}" for i in range(num_classes)]


def _reference_gt_json(ground_truth, names, path: Path) -> Path:
    """A COCO instances file written independently of detector.evaluate."""
    images, annotations = [], []
    for image_id, (boxes, classes, width, height) in enumerate(ground_truth, start=1):
        images.append({"id": image_id, "width": width, "height": height})
        for (x1, y1, x2, y2), cls in zip(boxes.tolist(), classes.tolist(), strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cls + CATEGORY_ID_OFFSET,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + CATEGORY_ID_OFFSET, "name": n} for i, n in enumerate(names)]
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return path


def _reference_stats(gt_path: Path, dt_path: Path, category: int | None = None) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        coco_dt = coco_gt.loadRes(str(dt_path))
        coco_eval = COCOeval(coco_gt, coco_dt, "bbox")
        if category is not None:
            coco_eval.params.catIds = [category]
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return np.where(coco_eval.stats > -1, coco_eval.stats, np.nan)


def test_matches_pycocotools_on_json_files(tmp_path):
    ground_truth, predictions, names = _random_case(seed=3)
    result = coco_metrics(ground_truth, predictions, names)

    gt_path = _reference_gt_json(ground_truth, names, tmp_path / "gt.json")
    dt_path = predictions_to_coco_json(
        predictions, range(1, len(predictions) + 1), tmp_path / "dt.json"
    )
    reference = _reference_stats(gt_path, dt_path)
    np.testing.assert_allclose(_overall(result), reference[[0, 1, 2, 3, 4, 5, 6, 7, 8]])
    assert 0.0 < result.ap < 1.0  # a non-trivial case

    for i, name in enumerate(names):
        per_class = _reference_stats(gt_path, dt_path, category=i + CATEGORY_ID_OFFSET)
        np.testing.assert_allclose(
            [result.per_class_ap[name], result.per_class_ap50[name]], per_class[:2]
        )


def test_predictions_json_loads_in_pycocotools(tmp_path):
    predictions = _perfect()
    path = predictions_to_coco_json(predictions, [7], tmp_path / "sub" / "dt.json")
    gt = COCO()
    gt.dataset = {
        "images": [{"id": 7, "width": IMAGE_SIZE, "height": IMAGE_SIZE}],
        "annotations": [],
        "categories": [{"id": i + CATEGORY_ID_OFFSET, "name": n} for i, n in enumerate(NAMES)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        loaded = gt.loadRes(str(path))
    anns = loaded.loadAnns(loaded.getAnnIds(imgIds=[7]))
    assert len(anns) == len(GT_BOXES)
    first = anns[0]
    x1, y1, x2, y2 = GT_BOXES[0].tolist()
    assert first["bbox"] == [x1, y1, x2 - x1, y2 - y1]
    assert first["category_id"] == GT_CLASSES[0] + CATEGORY_ID_OFFSET
    assert first["score"] == pytest.approx(0.9)


def test_custom_category_ids(tmp_path):
    path = predictions_to_coco_json(_perfect(), [0], tmp_path / "dt.json", category_ids=[18, 44])
    ids = [r["category_id"] for r in json.loads(path.read_text())]
    assert ids == [18, 18, 44, 44]


def test_to_dict_is_json_and_table_lists_classes():
    result = coco_metrics(_gt(), _perfect(), NAMES)
    data = json.loads(json.dumps(result.to_dict(include_curves=True), allow_nan=False))
    assert data["ap50"] == pytest.approx(1.0)
    assert data["per_class_ap"] == pytest.approx({"cat": 1.0, "dog": 1.0})
    assert len(data["pr_curves"]["dog"]) == 101
    table = result.format_table()
    assert "AP50 1.000" in table
    assert any(
        line.startswith("cat") and line.split()[1:] == ["1.000", "1.000"]
        for line in table.splitlines()
    )


def test_plot_pr_curves_writes_png(tmp_path):
    ground_truth, predictions, names = _random_case(seed=1)
    path = plot_pr_curves(coco_metrics(ground_truth, predictions, names), tmp_path / "pr.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("ground_truth", "predictions", "message"),
    [
        (_gt(), [], "one prediction entry per image"),
        (_gt(), [(GT_BOXES, np.ones(3), GT_CLASSES)], "4 boxes but 3 scores"),
        (_gt(), [(GT_BOXES, np.ones(4), GT_CLASSES + 1)], r"class ids must be in \[0, 2\)"),
        ([(GT_BOXES[:, :3], GT_CLASSES, 10, 10)], _perfect(), r"shape \(N, 4\)"),
    ],
)
def test_bad_input_raises(ground_truth, predictions, message):
    with pytest.raises(ValueError, match=message):
        coco_metrics(ground_truth, predictions, NAMES)
