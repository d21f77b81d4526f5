"""From candidates to final detections: threshold, per-class NMS, top-k.

Every model kind turns its raw output into :class:`Candidates` (see
:mod:`detector.kinds`); from there on, everything is shared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from detector.boxes import nms

MAX_CANDIDATES = 10_000  # boxes entering NMS per image, highest scores first


@dataclass
class Candidates:
    """A batch's candidate boxes before any threshold, in model-input pixels (``P``
    candidates per image, the same count for every image of the batch).

    Attributes:
        boxes: ``(B, P, 4)`` xyxy.
        scores: ``(B, P)`` in [0, 1] (a grid model: objectness × best class probability).
        class_ids: ``(B, P)`` int64, each candidate's best class.
        landmarks: ``(B, P, K, 2)`` xy (``K`` may be 0).
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    class_ids: torch.Tensor
    landmarks: torch.Tensor

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def take(self, indices: Sequence[int]) -> Candidates:
        """The candidates of the images at ``indices`` (a new batch of len(indices))."""
        idx = torch.as_tensor(list(indices), dtype=torch.long, device=self.boxes.device)
        return Candidates(
            self.boxes[idx], self.scores[idx], self.class_ids[idx], self.landmarks[idx]
        )


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
    candidates: Candidates,
    score_threshold: float,
    iou_threshold: float,
    max_detections: int,
    classes: Sequence[int] | None = None,
) -> list[RawDetections]:
    """Turn a batch of candidates into per-image detections.

    The settings are those of :class:`~detector.settings.DetectOptions`, already checked
    there; ``classes`` are class ids in ``[0, C)`` (see :func:`detector.settings.class_ids`).
    With ``classes``, candidates whose best class is not among them are dropped, so the result equals the unfiltered one restricted to those classes (up to
    the ``max_detections`` cut). Scores at or below ``score_threshold`` are dropped, at
    most ``MAX_CANDIDATES`` enter per-class NMS, at most ``max_detections`` come out.

    Returns:
        One :class:`RawDetections` per image, on the input's device.
    """
    scores, best_class = candidates.scores, candidates.class_ids  # (B, P) each
    if classes is not None:
        wanted = torch.as_tensor(list(classes), dtype=best_class.dtype, device=best_class.device)
        # (B, P), 0 where the best class is filtered out
        scores = scores * torch.isin(best_class, wanted)
    results = []
    for b in range(scores.shape[0]):
        idx = nms(
            candidates.boxes[b],
            scores[b],
            best_class[b],
            iou_threshold,
            score_threshold,
            max_detections=max_detections,
            max_candidates=MAX_CANDIDATES,
        )
        results.append(
            RawDetections(
                boxes=candidates.boxes[b, idx],
                scores=scores[b, idx],
                class_ids=best_class[b, idx],
                landmarks=candidates.landmarks[b, idx],
            )
        )
    return results
