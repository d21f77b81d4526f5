"""Keypoint (landmark) metrics: COCO keypoint AP through pycocotools, and NME.

* **Keypoint AP** — ``COCOeval(iouType="keypoints")``: detections are matched to ground
  truth by OKS (object keypoint similarity), ``exp(-d² / (2 · area · (2σ_k)²))`` averaged
  over a ground truth's labelled points, with ``area`` the ground-truth box area and
  ``σ_k`` the per-keypoint sigmas. AP over OKS 0.50:0.05:0.95, AP50, AP75. As in COCO, at
  most 20 detections per image are scored, and ground truth with no labelled point is
  ignored.
* **Sigmas** — the data.yaml's ``kpt_sigmas`` when given; else for the 5-point face layout
  :data:`FACE5_SIGMAS` (COCO's face sigmas: eyes 0.025, nose 0.026; mouth corners 0.025,
  as well-defined as the eye centres); else :data:`UNIFORM_SIGMA` for every point.
* **NME** (normalised mean error) — each ground truth with a labelled point is matched to
  the detection of its class with the highest box IoU, if that IoU is ≥ ``MATCH_IOU``
  (several ground truths may share a detection). NME is the mean, over the labelled points
  of matched ground truths, of ``‖predicted − true‖ / norm``, where ``norm`` is that
  object's **inter-ocular distance** (between its first two points, which must both be
  labelled; objects without them are left out and counted) for the 5-point face layout,
  else its **box diagonal**.

The 5-point face layout: ``kpt_names`` whose first two names contain "eye", or K = 5
without names (``left eye, right eye, nose, left mouth corner, right mouth corner``).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.boxes import box_iou
from detector.data.types import Sample

if TYPE_CHECKING:
    from detector.data.types import DatasetInfo
    from detector.settings import Detections

FACE5_SIGMAS = (0.025, 0.025, 0.026, 0.025, 0.025)
UNIFORM_SIGMA = 0.05  # per point, for layouts other than the 5 face points
MATCH_IOU = 0.5  # least box IoU between a ground truth and the detection it is scored on
INTER_OCULAR, BOX_DIAGONAL = "inter-ocular distance", "box diagonal"
_STATS = ("ap", "ap50", "ap75")  # COCOeval.stats[0:3] for keypoints
_UNDEFINED = -1.0

# One image's predictions: boxes (M, 4) xyxy pixels, scores (M,), classes (M,),
# landmarks (M, K, 2 or 3) pixels.
KeypointPrediction = tuple[Any, Any, Any, Any]


def is_face_layout(num_keypoints: int, names: Sequence[str] | None) -> bool:
    """Whether points 0 and 1 are the eyes (see the module docstring)."""
    if names:
        return len(names) >= 2 and all("eye" in str(n).lower() for n in names[:2])
    return num_keypoints == 5


def default_sigmas(num_keypoints: int, names: Sequence[str] | None = None) -> tuple[float, ...]:
    """:data:`FACE5_SIGMAS` for the 5 face points, else :data:`UNIFORM_SIGMA` each."""
    if num_keypoints == 5 and is_face_layout(num_keypoints, names):
        return FACE5_SIGMAS
    return (UNIFORM_SIGMA,) * num_keypoints


@dataclass(frozen=True)
class KeypointResult:
    """Keypoint metrics; ``nan`` where undefined (no labelled ground truth, no match).

    Attributes:
        ap, ap50, ap75: COCO keypoint AP over OKS 0.50:0.95, at 0.5, at 0.75.
        nme: normalised mean error (see the module docstring).
        normaliser: ``INTER_OCULAR`` or ``BOX_DIAGONAL``.
        sigmas: the per-keypoint OKS sigmas used.
        num_points: labelled points that entered the NME.
        num_matched, num_unmatched: ground truths (with a labelled point) with and without
            a detection of IoU >= MATCH_IOU.
        num_without_norm: matched ground truths left out of the NME because an eye point
            is unlabelled (inter-ocular normalisation only).
    """

    ap: float
    ap50: float
    ap75: float
    nme: float
    normaliser: str
    sigmas: tuple[float, ...]
    num_points: int
    num_matched: int
    num_unmatched: int
    num_without_norm: int

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("ap", "ap50", "ap75", "nme"):
            value = getattr(self, name)
            out[name] = None if math.isnan(value) else value
        out["nme_normaliser"] = self.normaliser
        out["sigmas"] = list(self.sigmas)
        for name in ("num_points", "num_matched", "num_unmatched", "num_without_norm"):
            out[name] = getattr(self, name)
        return out

    def format_table(self) -> str:
        fmt = lambda v: "  nan" if math.isnan(v) else f"{v:.4f}"  # noqa: E731
        lines = [
            f"COCO keypoints (OKS sigmas {', '.join(f'{s:g}' for s in self.sigmas)}):",
            f"AP {fmt(self.ap)}  AP50 {fmt(self.ap50)}  AP75 {fmt(self.ap75)}",
            f"NME {fmt(self.nme)} (normalised by the {self.normaliser}; {self.num_points} points "
            f"of {self.num_matched} matched objects, {self.num_unmatched} without a detection "
            f"at IoU >= {MATCH_IOU}"
            + (f", {self.num_without_norm} without both eyes" if self.num_without_norm else "")
            + ")",
        ]
        return "\n".join(lines)


def keypoint_metrics(
    ground_truth: Sequence[Sample],
    predictions: Sequence[KeypointPrediction],
    num_classes: int,
    sigmas: Sequence[float] | None = None,
    keypoint_names: Sequence[str] | None = None,
    verbose: bool = False,
) -> KeypointResult:
    """Keypoint AP and NME of ``predictions`` against ``ground_truth``, image by image.

    Args:
        ground_truth: one :class:`Sample` per image, with ``landmarks (N, K, 3)``.
        predictions: one ``(boxes (M, 4) xyxy, scores (M,), classes (M,), landmarks
            (M, K, 2 or 3))`` per image, pixels of the same image.
        num_classes: C; classes are ``[0, C)``.
        sigmas: K OKS sigmas; default :func:`default_sigmas`.
        keypoint_names: the K names, to recognise the face layout.
        verbose: let pycocotools print.
    """
    if len(ground_truth) != len(predictions):
        raise ValueError(f"{len(ground_truth)} ground-truth images, {len(predictions)} predictions")
    k = next((s.landmarks.shape[1] for s in ground_truth if s.landmarks is not None), None)
    if k is None:
        raise ValueError("the ground truth has no keypoints")
    sigmas = tuple(float(s) for s in (sigmas or default_sigmas(k, keypoint_names)))
    if len(sigmas) != k:
        raise ValueError(f"need {k} keypoint sigmas, got {len(sigmas)}: {list(sigmas)}")
    face = is_face_layout(k, keypoint_names)
    images, gts, dts = [], [], []
    errors: list[float] = []
    matched = unmatched = without_norm = 0
    for index, (sample, pred) in enumerate(zip(ground_truth, predictions, strict=True)):
        image_id = index + 1
        images.append({"id": image_id, "width": sample.width, "height": sample.height})
        gt_boxes = np.asarray(sample.boxes, np.float64).reshape(-1, 4)
        gt_points = np.asarray(sample.landmarks, np.float64).reshape(len(gt_boxes), k, 3)
        boxes, scores, classes, points = (_numpy(v) for v in pred)
        classes = classes.astype(np.int64).reshape(-1)
        boxes, points = (
            boxes.reshape(-1, 4),
            points.reshape(len(boxes), k, points.shape[-1])[..., :2],
        )
        for box, cls, kp in zip(gt_boxes, sample.classes, gt_points, strict=True):
            labelled = kp[:, 2] > 0
            gts.append(_annotation(len(gts) + 1, image_id, box, int(cls), kp, labelled))
        for box, score, cls, kp in zip(boxes, scores, classes, points, strict=True):
            flat = np.concatenate([kp, np.ones((k, 1))], 1)
            dts.append(
                _annotation(0, image_id, box, int(cls), flat, np.ones(k, bool))
                | {"score": float(score)}
            )
        if not len(gt_boxes):
            continue
        iou = box_iou(torch.from_numpy(gt_boxes), torch.from_numpy(boxes)).numpy()  # (N, M)
        iou[np.asarray(sample.classes)[:, None] != classes[None, :]] = -1.0
        for n, kp in enumerate(gt_points):
            labelled = kp[:, 2] > 0
            if not labelled.any():
                continue
            if not len(boxes) or iou[n].max() < MATCH_IOU:
                unmatched += 1
                continue
            matched += 1
            if face:
                if not labelled[:2].all():
                    without_norm += 1
                    continue
                norm = float(np.linalg.norm(kp[0, :2] - kp[1, :2]))
            else:
                x1, y1, x2, y2 = gt_boxes[n]
                norm = math.hypot(x2 - x1, y2 - y1)
            error = np.linalg.norm(points[iou[n].argmax()] - kp[:, :2], axis=1)[labelled]
            errors.extend((error / max(norm, 1e-9)).tolist())
    stats = _coco_keypoint_stats(images, gts, dts, num_classes, k, sigmas, verbose)
    return KeypointResult(
        *stats,
        nme=float(np.mean(errors)) if errors else math.nan,
        normaliser=INTER_OCULAR if face else BOX_DIAGONAL,
        sigmas=sigmas,
        num_points=len(errors),
        num_matched=matched,
        num_unmatched=unmatched,
        num_without_norm=without_norm,
    )


def keypoint_settings(data: str | Path) -> tuple[list[str] | None, list[float] | None]:
    """``kpt_names`` and ``kpt_sigmas`` of a YOLO data.yaml (or its folder); ``None`` for
    what it does not give, and for other dataset kinds. ``kpt_names`` may also be a
    per-class mapping (newer Ultralytics); the first class's list is taken."""
    import yaml

    data = Path(data)
    path = data / "data.yaml" if data.is_dir() else data
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        return None, None
    spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    names = spec.get("kpt_names")
    if isinstance(names, dict):
        names = next(iter(names.values()), None)
    sigmas = spec.get("kpt_sigmas")
    if sigmas is not None and not (
        isinstance(sigmas, list) and all(isinstance(v, int | float) and v > 0 for v in sigmas)
    ):
        raise ValueError(f"{path}: kpt_sigmas must be a list of positive numbers, got {sigmas}")
    return ([str(n) for n in names] if names else None), sigmas


def keypoint_result(
    detections: Sequence[Detections],
    info: DatasetInfo,
    data: str | Path,
    model_landmark_names: Sequence[str] = (),
) -> KeypointResult:
    """Keypoint AP and NME of a model's ``detections`` (one per sample of ``info``, whose
    classes are already the model's) against ``info``, with the sigmas and names of the
    dataset at ``data`` (:func:`keypoint_settings`); ``detector eval`` and the trainer's
    validation of a landmark model."""
    names, sigmas = keypoint_settings(data)
    predictions = [(d.boxes, d.scores, d.class_ids, d.landmarks) for d in detections]
    return keypoint_metrics(
        info.samples,
        predictions,
        num_classes=len(info.names),
        sigmas=sigmas,
        keypoint_names=names or info.kpt_names or list(model_landmark_names) or None,
    )


def _numpy(value) -> np.ndarray:
    """A float64 array of a tensor, an array or a list."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, np.float64)


def _annotation(ann_id, image_id, box, cls, points, labelled) -> dict:
    x1, y1, x2, y2 = (float(v) for v in box)
    flat = np.where(labelled[:, None], points[:, :3], 0.0)
    flat[:, 2] = np.where(labelled, np.maximum(flat[:, 2], 1), 0)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cls + 1,
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "area": (x2 - x1) * (y2 - y1),
        "iscrowd": 0,
        "keypoints": [float(v) for v in flat.reshape(-1)],
        "num_keypoints": int(labelled.sum()),
    }


def _coco_keypoint_stats(images, gts, dts, num_classes, k, sigmas, verbose):
    """``(ap, ap50, ap75)`` of COCOeval with ``iouType="keypoints"``; nan where undefined."""
    if not any(g["num_keypoints"] for g in gts):
        return (math.nan,) * len(_STATS)
    categories = [
        {"id": c + 1, "name": str(c), "keypoints": [f"kp{i}" for i in range(k)]}
        for c in range(num_classes)
    ]
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": gts, "categories": categories}
        coco_gt.createIndex()
        if not dts:
            return (0.0,) * len(_STATS)
        coco_dt = coco_gt.loadRes(dts)
        coco_eval = COCOeval(coco_gt, coco_dt, iouType="keypoints")
        coco_eval.params.kpt_oks_sigmas = np.asarray(sigmas, np.float64)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return tuple(math.nan if s == _UNDEFINED else float(s) for s in coco_eval.stats[:3])
