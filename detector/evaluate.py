"""COCO detection metrics through pycocotools, the maintained reference evaluator.

Ground truth and predictions are held in memory as xyxy pixel boxes; this module turns
them into COCO dictionaries (boxes as ``[x, y, width, height]``), runs ``COCOeval`` for
``bbox`` and reads its numbers back into an :class:`EvalResult`.

Conventions:

- Category ids are ``class index + CATEGORY_ID_OFFSET`` (``= 1``, the COCO convention and
  what ``detector.data.formats_coco.write_coco`` writes), here and in
  :func:`predictions_to_coco_json`. Scoring against a COCO file with other ids: pass
  ``category_ids``. Image ids of :func:`ground_truth_to_coco` are the positions plus
  ``IMAGE_ID_OFFSET`` (also 1, as ``write_coco`` numbers images).
- pycocotools reports ``-1`` for a metric with no ground truth behind it (a class with no
  objects, an area range with no boxes). :class:`EvalResult` reports those as ``nan``
  and averages over the defined values only, exactly as ``COCOeval.summarize`` does.
  Predictions of a class that has no ground truth therefore do not lower any number.
- A class with ground truth but no predictions scores 0; no predictions at all scores 0
  for every defined metric.
- COCOeval keeps the 100 highest-scoring predictions per image; pass predictions from a
  low score threshold (e.g. 0.001) for comparable numbers.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.boxes import box_convert
from detector.data.types import Sample

# COCO category id of class index i is i + CATEGORY_ID_OFFSET; image id of the i-th image
# is i + IMAGE_ID_OFFSET (both as the COCO writer in detector.data.formats_coco numbers them).
CATEGORY_ID_OFFSET = 1
IMAGE_ID_OFFSET = 1

# The scalar metrics of EvalResult, in the order COCOeval.summarize() fills COCOeval.stats.
SUMMARY_FIELDS = (
    "ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar1", "ar10", "ar100"
)  # fmt: skip
# Short labels of the table's overall line.
_TABLE_LABELS = {
    "ap": "AP", "ap50": "AP50", "ap75": "AP75", "ap_small": "APs", "ap_medium": "APm",
    "ap_large": "APl", "ar100": "AR100",
}  # fmt: skip

# Axes of COCOeval.eval["precision"], shape (T IoU thresholds, R recall thresholds,
# K categories, A area ranges, M max-detection settings).
_IOU50_INDEX = 0  # params.iouThrs[0] == 0.5
_AREA_ALL_INDEX = 0  # params.areaRng "all"
_MAX_DETS_LAST = -1  # params.maxDets[-1] == 100
_UNDEFINED = -1.0  # pycocotools' value for "no ground truth behind this number"

# A plot legend with more classes than this is left out (the curves are still drawn).
MAX_LEGEND_CLASSES = 20

ArrayLike = np.ndarray | torch.Tensor | Sequence[Any]
# One image's ground truth: a Sample, or (boxes (N, 4) xyxy pixels, classes (N,), width, height).
GroundTruth = Sample | tuple[ArrayLike, ArrayLike, int, int]
# One image's predictions: (boxes (M, 4) xyxy pixels, scores (M,), classes (M,)).
Prediction = tuple[ArrayLike, ArrayLike, ArrayLike]


@dataclass(frozen=True)
class EvalResult:
    """COCO bbox metrics. Every value is in ``[0, 1]``, or ``nan`` where undefined.

    Attributes:
        ap: AP averaged over IoU 0.50:0.05:0.95 (the COCO "mAP").
        ap50, ap75: AP at IoU 0.5 and 0.75.
        ap_small, ap_medium, ap_large: AP for ground-truth areas below 32², between
            32² and 96², above 96² pixels.
        ar1, ar10, ar100: recall averaged over IoU thresholds with at most 1, 10, 100
            detections per image.
        per_class_ap, per_class_ap50: class name -> AP@[.5:.95] / AP@.5.
        recall_thresholds: ``(R,)`` recall points of the PR curves (R = 101).
        pr_curves: class name -> ``(R,)`` interpolated precision at IoU 0.5 (all areas,
            100 detections); all ``nan`` for a class without ground truth.
        num_images, num_ground_truth, num_predictions: counts that went in.
    """

    ap: float
    ap50: float
    ap75: float
    ap_small: float
    ap_medium: float
    ap_large: float
    ar1: float
    ar10: float
    ar100: float
    per_class_ap: dict[str, float]
    per_class_ap50: dict[str, float]
    recall_thresholds: np.ndarray
    pr_curves: dict[str, np.ndarray]
    num_images: int
    num_ground_truth: int
    num_predictions: int

    def to_dict(self, include_curves: bool = False) -> dict[str, Any]:
        """JSON-ready metrics; ``nan`` becomes ``None``. Curves only when asked."""
        out: dict[str, Any] = {name: _json_float(getattr(self, name)) for name in SUMMARY_FIELDS}
        out["per_class_ap"] = {k: _json_float(v) for k, v in self.per_class_ap.items()}
        out["per_class_ap50"] = {k: _json_float(v) for k, v in self.per_class_ap50.items()}
        out["num_images"] = self.num_images
        out["num_ground_truth"] = self.num_ground_truth
        out["num_predictions"] = self.num_predictions
        if include_curves:
            out["recall_thresholds"] = [float(r) for r in self.recall_thresholds]
            out["pr_curves"] = {k: [_json_float(p) for p in v] for k, v in self.pr_curves.items()}
        return out

    def format_table(self) -> str:
        """A readable table: one overall block, then AP50 and AP per class."""
        width = max([len("class"), *(len(n) for n in self.per_class_ap)])
        lines = [
            f"COCO bbox: {self.num_images} images, {self.num_ground_truth} objects, "
            f"{self.num_predictions} predictions",
            "  ".join(f"{label} {_fmt(getattr(self, f))}" for f, label in _TABLE_LABELS.items()),
            "",
            f"{'class':<{width}}  {'AP50':>6}  {'AP':>6}",
        ]
        for name in self.per_class_ap:
            ap50, ap = self.per_class_ap50[name], self.per_class_ap[name]
            lines.append(f"{name:<{width}}  {_fmt(ap50):>6}  {_fmt(ap):>6}")
        return "\n".join(lines)


def coco_metrics(
    ground_truth: Sequence[GroundTruth],
    predictions: Sequence[Prediction],
    names: Sequence[str],
    verbose: bool = False,
) -> EvalResult:
    """COCO bbox metrics of ``predictions`` against ``ground_truth``, image by image.

    Args:
        ground_truth: one entry per image, a :class:`Sample` or a tuple
            ``(boxes (N, 4) xyxy pixels, classes (N,) int in [0, C), width, height)``.
        predictions: one entry per image, same order, ``(boxes (M, 4) xyxy pixels,
            scores (M,), classes (M,) int in [0, C))``; numpy arrays, tensors or lists.
        names: the C class names, unique.
        verbose: let pycocotools print its progress and summary.

    Returns:
        An :class:`EvalResult`; see the module docstring for undefined values.
    """
    if len(ground_truth) != len(predictions):
        raise ValueError(
            f"need one prediction entry per image: {len(ground_truth)} ground-truth images, "
            f"{len(predictions)} prediction entries"
        )
    gt_dict = ground_truth_to_coco(ground_truth, names)
    image_ids = [image["id"] for image in gt_dict["images"]]
    results = predictions_to_coco(predictions, image_ids, num_classes=len(names))

    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        coco_gt = COCO()
        coco_gt.dataset = gt_dict
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results) if results else _empty_results(coco_gt)
        coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return _read_result(coco_eval, names, len(gt_dict["annotations"]), len(results))


def ground_truth_to_coco(ground_truth: Sequence[GroundTruth], names: Sequence[str]) -> dict:
    """A COCO ground-truth dictionary (the content of an ``instances_*.json``).

    Image ids are the positions in ``ground_truth`` plus ``IMAGE_ID_OFFSET``; annotation
    ids start at 1 (COCOeval
    treats id 0 as "unmatched"); ``area`` is the box area ``w * h``; ``iscrowd`` is 0.

    Args:
        ground_truth: as in :func:`coco_metrics`.
        names: the C class names; category id of class i is ``i + CATEGORY_ID_OFFSET``.
    """
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"class names must be a non-empty list of unique names, got {names}")
    images, annotations = [], []
    for index, entry in enumerate(ground_truth):
        boxes, classes, width, height = _unpack_ground_truth(entry, index)
        _check_classes(classes, len(names), f"ground truth of image {index}")
        image_id = index + IMAGE_ID_OFFSET
        images.append({"id": image_id, "width": int(width), "height": int(height)})
        for box, cls in zip(_xywh_lists(boxes), classes.tolist(), strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cls + CATEGORY_ID_OFFSET,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    categories = [
        {"id": i + CATEGORY_ID_OFFSET, "name": name, "supercategory": "object"}
        for i, name in enumerate(names)
    ]
    return {"images": images, "annotations": annotations, "categories": categories}


def predictions_to_coco(
    predictions: Sequence[Prediction],
    image_ids: Sequence[int],
    category_ids: Sequence[int] | None = None,
    num_classes: int | None = None,
) -> list[dict]:
    """COCO results: one ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``
    per predicted box.

    Args:
        predictions: one ``(boxes (M, 4) xyxy pixels, scores (M,), classes (M,))`` per image.
        image_ids: the COCO image id of each entry of ``predictions``.
        category_ids: COCO category id of each class index; default
            ``class index + CATEGORY_ID_OFFSET``.
        num_classes: when given, class indices must lie in ``[0, num_classes)``.
    """
    if len(predictions) != len(image_ids):
        raise ValueError(
            f"need one image id per prediction entry: {len(predictions)} entries, "
            f"{len(image_ids)} image ids"
        )
    if category_ids is not None:
        num_classes = len(category_ids) if num_classes is None else num_classes
        if num_classes > len(category_ids):
            raise ValueError(f"{len(category_ids)} category ids for {num_classes} classes")
    results = []
    for index, (entry, image_id) in enumerate(zip(predictions, image_ids, strict=True)):
        boxes, scores, classes = _unpack_prediction(entry, index)
        if num_classes is not None:
            _check_classes(classes, num_classes, f"predictions of image {index}")
        for box, score, cls in zip(
            _xywh_lists(boxes), scores.tolist(), classes.tolist(), strict=True
        ):
            category = category_ids[cls] if category_ids is not None else cls + CATEGORY_ID_OFFSET
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(category),
                    "bbox": box,
                    "score": float(score),
                }
            )
    return results


def predictions_to_coco_json(
    predictions: Sequence[Prediction],
    image_ids: Sequence[int],
    path: str | Path,
    category_ids: Sequence[int] | None = None,
) -> Path:
    """Write :func:`predictions_to_coco` to a COCO results JSON file that any COCO tool
    (``COCO.loadRes``) can score. Returns the path written."""
    path = Path(path)
    results = predictions_to_coco(predictions, image_ids, category_ids)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results))
    return path


def plot_pr_curves(result: EvalResult, path: str | Path) -> Path:
    """Save a PNG of precision against recall at IoU 0.5: one line per class with ground
    truth, and their mean in bold. Returns the path written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    figure = Figure(figsize=(7, 6))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    recall = result.recall_thresholds
    defined = {k: v for k, v in result.pr_curves.items() if not np.isnan(v).all()}
    for name, precision in defined.items():
        ap50 = _fmt(result.per_class_ap50[name])
        axes.plot(recall, precision, linewidth=1, label=f"{name} {ap50}")
    if defined:
        mean = np.mean(np.stack(list(defined.values())), axis=0)
        axes.plot(recall, mean, color="black", linewidth=3, label=f"mean {_fmt(result.ap50)}")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_title("Precision-recall at IoU 0.5 (legend: AP50)")
    axes.grid(alpha=0.3)
    if defined and len(defined) <= MAX_LEGEND_CLASSES:
        axes.legend(loc="lower left", fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def _read_result(
    coco_eval: COCOeval, names: Sequence[str], num_ground_truth: int, num_predictions: int
) -> EvalResult:
    stats = [_nan_if_undefined(float(s)) for s in coco_eval.stats]
    precision = coco_eval.eval["precision"]  # (T, R, K, A, M)
    category_ids = coco_eval.params.catIds
    per_class_ap, per_class_ap50, pr_curves = {}, {}, {}
    for i, name in enumerate(names):
        k = category_ids.index(i + CATEGORY_ID_OFFSET)
        class_precision = precision[:, :, k, _AREA_ALL_INDEX, _MAX_DETS_LAST]  # (T, R)
        per_class_ap[name] = _mean_defined(class_precision)
        per_class_ap50[name] = _mean_defined(class_precision[_IOU50_INDEX])
        curve = class_precision[_IOU50_INDEX].astype(np.float64)  # (R,)
        pr_curves[name] = np.where(curve > _UNDEFINED, curve, np.nan)
    return EvalResult(
        **dict(zip(SUMMARY_FIELDS, stats[: len(SUMMARY_FIELDS)], strict=True)),
        per_class_ap=per_class_ap,
        per_class_ap50=per_class_ap50,
        recall_thresholds=np.asarray(coco_eval.params.recThrs, dtype=np.float64),
        pr_curves=pr_curves,
        num_images=len(coco_eval.params.imgIds),
        num_ground_truth=num_ground_truth,
        num_predictions=num_predictions,
    )


def _empty_results(coco_gt: COCO) -> COCO:
    """A results object with no detections (``loadRes`` cannot take an empty list)."""
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": list(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    coco_dt.createIndex()
    return coco_dt


def _unpack_ground_truth(entry: GroundTruth, index: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    if isinstance(entry, Sample):
        boxes, classes, width, height = entry.boxes, entry.classes, entry.width, entry.height
    else:
        if len(entry) != 4:
            raise ValueError(
                f"ground truth of image {index} must be a Sample or "
                f"(boxes, classes, width, height), got {len(entry)} items"
            )
        boxes, classes, width, height = entry
    boxes = _boxes_array(boxes, f"ground-truth boxes of image {index}")
    classes = _int_array(classes, len(boxes), f"ground-truth classes of image {index}")
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"image {index} must have a positive size, got {width}x{height}")
    return boxes, classes, int(width), int(height)


def _unpack_prediction(entry: Prediction, index: int) -> tuple[np.ndarray, ...]:
    if len(entry) != 3:
        raise ValueError(
            f"predictions of image {index} must be (boxes, scores, classes), got {len(entry)} items"
        )
    boxes = _boxes_array(entry[0], f"predicted boxes of image {index}")
    scores = _to_numpy(entry[1]).astype(np.float64).reshape(-1)
    if len(scores) != len(boxes):
        raise ValueError(
            f"predictions of image {index}: {len(boxes)} boxes but {len(scores)} scores"
        )
    classes = _int_array(entry[2], len(boxes), f"predicted classes of image {index}")
    return boxes, scores, classes


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _boxes_array(x: ArrayLike, what: str) -> np.ndarray:
    boxes = _to_numpy(x).astype(np.float64)
    if boxes.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{what} must have shape (N, 4) xyxy, got {boxes.shape}")
    return boxes


def _int_array(x: ArrayLike, count: int, what: str) -> np.ndarray:
    values = _to_numpy(x).reshape(-1)
    if len(values) != count:
        raise ValueError(f"{what}: expected {count} values (one per box), got {len(values)}")
    return values.astype(np.int64)


def _check_classes(classes: np.ndarray, num_classes: int, what: str) -> None:
    bad = classes[(classes < 0) | (classes >= num_classes)]
    if len(bad):
        raise ValueError(f"{what}: class ids must be in [0, {num_classes}), got {bad.tolist()}")


def _xywh_lists(boxes: np.ndarray) -> list[list[float]]:
    """``(N, 4)`` xyxy -> list of ``[x, y, w, h]`` Python floats."""
    return box_convert(torch.from_numpy(boxes), "xyxy", "xywh").tolist()


def _mean_defined(values: np.ndarray) -> float:
    defined = values[values > _UNDEFINED]
    return float(np.mean(defined)) if defined.size else math.nan


def _nan_if_undefined(value: float) -> float:
    return math.nan if value <= _UNDEFINED else value


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"
