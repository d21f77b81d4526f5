"""Merge-NMS (``DetectOptions.merge_iou``, :func:`detector.postprocess.merge_kept`)
against a plain-Python reference: which boxes are kept, their scores and order are NMS's;
each kept box and its landmarks become the score-weighted mean of the same-class
candidates (above the score threshold) that overlap it with IoU >= merge_iou."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detector import postprocess
from detector.postprocess import Candidates, select_detections
from detector.settings import DetectOptions

K = 2  # landmarks per box


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _clustered_candidates(seed: int, images: int = 2, per_image: int = 60) -> Candidates:
    """Boxes jittered around a few centres (so that many overlap), 3 classes, K points."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.rand(images, 5, 2, generator=gen) * 200 + 30
    pick = torch.randint(0, 5, (images, per_image), generator=gen)
    xy = torch.gather(centres, 1, pick[..., None].expand(-1, -1, 2))
    xy = xy + torch.randn(images, per_image, 2, generator=gen) * 3
    wh = 20 + torch.rand(images, per_image, 2, generator=gen) * 10
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], -1)
    scores = torch.rand(images, per_image, generator=gen)
    classes = torch.randint(0, 3, (images, per_image), generator=gen)
    points = xy[:, :, None, :] + torch.randn(images, per_image, K, 2, generator=gen) * 4
    return Candidates(boxes, scores, classes, points)


def _reference(candidates: Candidates, b: int, kept, score_threshold: float, merge_iou: float):
    boxes = candidates.boxes[b].double().numpy()
    points = candidates.landmarks[b].double().numpy()
    scores = candidates.scores[b].double().numpy()
    classes = candidates.class_ids[b].numpy()
    out_boxes, out_points = [], []
    for i in kept:
        weight_sum, box_sum, point_sum = 0.0, np.zeros(4), np.zeros((K, 2))
        for j in range(len(boxes)):
            if scores[j] <= score_threshold or classes[j] != classes[i]:
                continue
            if _iou(boxes[i], boxes[j]) >= merge_iou:
                weight_sum += scores[j]
                box_sum += scores[j] * boxes[j]
                point_sum += scores[j] * points[j]
        out_boxes.append(box_sum / weight_sum)
        out_points.append(point_sum / weight_sum)
    return np.array(out_boxes).reshape(-1, 4), np.array(out_points).reshape(-1, K, 2)


@pytest.mark.parametrize("dense_pairs", [postprocess.MERGE_DENSE_PAIRS, 0])  # 0: class blocks
@pytest.mark.parametrize("merge_iou", [0.5, 0.75, 1.0])
@pytest.mark.parametrize("score_threshold", [0.0, 0.3])
def test_merge_equals_a_plain_python_reference(
    merge_iou: float, score_threshold: float, dense_pairs: int, monkeypatch
) -> None:
    monkeypatch.setattr(postprocess, "MERGE_DENSE_PAIRS", dense_pairs)
    candidates = _clustered_candidates(seed=3)
    plain = select_detections(candidates, score_threshold, 0.45, 300)
    merged = select_detections(candidates, score_threshold, 0.45, 300, merge_iou=merge_iou)
    changed = 0
    for b, (p, m) in enumerate(zip(plain, merged, strict=True)):
        torch.testing.assert_close(m.scores, p.scores, rtol=0, atol=0)
        torch.testing.assert_close(m.class_ids, p.class_ids, rtol=0, atol=0)
        # which boxes were kept: the candidate whose box NMS returned
        kept = [int((candidates.boxes[b] == box).all(1).nonzero()[0]) for box in p.boxes]
        want_boxes, want_points = _reference(candidates, b, kept, score_threshold, merge_iou)
        np.testing.assert_allclose(m.boxes.numpy(), want_boxes, rtol=0, atol=1e-3)
        np.testing.assert_allclose(m.landmarks.numpy(), want_points, rtol=0, atol=1e-3)
        changed += int((m.boxes != p.boxes).any(1).sum())
    if merge_iou < 1:
        assert changed > 0  # overlapping candidates did move boxes


def test_a_box_without_overlapping_candidates_is_unchanged() -> None:
    boxes = torch.tensor([[[0.0, 0, 10, 10], [50, 50, 60, 60], [1, 0, 11, 10]]])
    points = torch.tensor([[[[2.0, 3]], [[55, 55]], [[4, 3]]]])
    candidates = Candidates(
        boxes, torch.tensor([[0.9, 0.8, 0.3]]), torch.tensor([[0, 0, 1]]), points
    )
    (det,) = select_detections(candidates, 0.0, 0.45, 300, merge_iou=0.5)
    # box 2 overlaps box 0 but is another class: every box stands alone
    torch.testing.assert_close(det.boxes, boxes[0, [0, 1, 2]])
    torch.testing.assert_close(det.landmarks, points[0, [0, 1, 2]])


def test_merge_iou_is_checked_and_zero_turns_merging_off() -> None:
    with pytest.raises(ValueError, match=r"merge_iou must be in \[0, 1\]"):
        DetectOptions(merge_iou=1.5)
    candidates = _clustered_candidates(seed=5)
    off = select_detections(candidates, 0.0, 0.45, 300, merge_iou=0.0)
    plain = select_detections(candidates, 0.0, 0.45, 300)
    for a, b in zip(off, plain, strict=True):
        torch.testing.assert_close(a.boxes, b.boxes, rtol=0, atol=0)
