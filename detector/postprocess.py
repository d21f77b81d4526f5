"""From decoded predictions to final detections: score, threshold, per-class NMS, top-k."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from detector.boxes import nms
from detector.encoding import Decoded

MAX_CANDIDATES = 10_000  # boxes entering NMS per image, highest scores first


@dataclass
class RawDetections:
    """Detections of one image in model-input pixels.

    Attributes:
        boxes: ``(N, 4)`` xyxy.
        scores: ``(N,)`` objectness × class probability, decreasing.
        class_ids: ``(N,)`` int64.
        landmarks: ``(N, K, 2)`` xy (``K`` may be 0).
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    class_ids: torch.Tensor
    landmarks: torch.Tensor


def select_detections(
    decoded: Decoded,
    score_threshold: float,
    iou_threshold: float,
    max_detections: int,
    classes: Sequence[int] | None = None,
) -> list[RawDetections]:
    """Turn a batch of decoded predictions into per-image detections.

    The settings are those of :class:`~detector.settings.DetectOptions`, already checked
    there; ``classes`` are class ids in ``[0, C)`` (see :func:`detector.settings.class_ids`).
    Each anchor keeps its best class; its score is objectness × that class's
    probability. With ``classes``, anchors whose best class is not among them are
    dropped, so the result equals the unfiltered one restricted to those classes (up to
    the ``max_detections`` cut). Scores at or below ``score_threshold`` are dropped, at
    most ``MAX_CANDIDATES`` enter per-class NMS, at most ``max_detections`` come out.

    Returns:
        One :class:`RawDetections` per image, on the input's device.
    """
    best_prob, best_class = decoded.class_probs.max(-1)  # (B, P)
    scores = decoded.objectness * best_prob  # (B, P)
    if classes is not None:
        allowed = torch.zeros(decoded.class_probs.shape[-1], dtype=torch.bool, device=scores.device)
        allowed[list(classes)] = True
        scores = scores * allowed[best_class]  # (B, P), 0 where the best class is filtered out
    results = []
    for b in range(scores.shape[0]):
        keep = torch.nonzero(scores[b] > score_threshold).flatten()
        if keep.numel() > MAX_CANDIDATES:
            keep = keep[scores[b, keep].topk(MAX_CANDIDATES).indices]
        boxes = decoded.boxes[b, keep]
        kept = nms(
            boxes,
            scores[b, keep],
            best_class[b, keep],
            iou_threshold,
            max_detections=max_detections,
        )
        idx = keep[kept]
        results.append(
            RawDetections(
                boxes=decoded.boxes[b, idx],
                scores=scores[b, idx],
                class_ids=best_class[b, idx],
                landmarks=decoded.landmarks[b, idx],
            )
        )
    return results
