"""Anchor shapes: k-means on box sizes with ``1 - IoU`` as the distance, and their fit.

Box *shapes* are compared as if centred on the same point (:func:`detector.boxes.wh_iou`),
so the distance ignores position and depends only on width and height. All sizes are in
pixels of the letterboxed model input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from detector.boxes import letterbox_params, wh_iou
from detector.config import Anchors
from detector.data.types import DatasetInfo

# A box is "covered" when some anchor shape has IoU >= this with it. IoU 0.25 is e.g. a
# box twice (or half) the anchor's width and height: the same bound as the common YOLO
# anchor check "every side within a factor 2 of an anchor's" for boxes of the anchor's
# aspect ratio.
DEFAULT_RECALL_IOU = 0.25
DEFAULT_ITERATIONS = 300
UNASSIGNED = -1  # k-means assignment before the first round


def _to_wh(wh: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """``(N, 2)`` float64 CPU copy of ``wh``; raises on any other shape."""
    out = wh if torch.is_tensor(wh) else torch.as_tensor(np.asarray(wh, dtype=np.float64))
    out = out.detach().to(device="cpu", dtype=torch.float64)
    if out.ndim != 2 or out.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2) (width, height), got {tuple(out.shape)}")
    return out


def _positive_sizes(wh: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """``(N, 2)`` float64 copy of ``wh``; raises unless every size is finite and > 0."""
    out = _to_wh(wh, name)
    bad = int((~(torch.isfinite(out) & (out > 0)).all(dim=1)).sum())
    if bad:
        raise ValueError(
            f"{name} must have finite, positive widths and heights; {bad} rows do not "
            "(drop them first, e.g. with positive_wh)"
        )
    return out


def positive_wh(wh: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, int]:
    """The rows of ``(N, 2)`` sizes with finite width and height > 0.

    Returns:
        ``(M, 2)`` float64 sizes and the number ``N - M`` of rows dropped.
    """
    out = _to_wh(wh, "wh")
    keep = (torch.isfinite(out) & (out > 0)).all(dim=1)
    return out[keep], int((~keep).sum())


def _kmeans_plus_plus(wh: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding with ``1 - IoU``: ``(k, 2)`` centres picked among the rows of ``wh``."""
    first = int(torch.randint(len(wh), (1,), generator=generator))
    centres = [wh[first]]
    distance = 1 - wh_iou(wh, wh[first : first + 1])[:, 0]  # (N,) to the nearest centre
    for _ in range(1, k):
        weights = distance.square()
        if weights.sum() <= 0:  # every box coincides with a centre: pick uniformly
            weights = torch.ones_like(weights)
        pick = int(torch.multinomial(weights, 1, generator=generator))
        centres.append(wh[pick])
        distance = torch.minimum(distance, 1 - wh_iou(wh, wh[pick : pick + 1])[:, 0])
    return torch.stack(centres)


def kmeans_anchors(
    wh: np.ndarray | torch.Tensor,
    k: int,
    seed: int = 0,
    iterations: int = DEFAULT_ITERATIONS,
) -> torch.Tensor:
    """Cluster box sizes into ``k`` anchor shapes, with ``1 - IoU`` as the distance.

    k-means++ seeding from ``seed``; then, until assignments stop changing or
    ``iterations`` rounds have run: assign every box to the anchor of highest shape IoU
    (ties: the lower anchor index), and move every anchor to the per-axis median of its
    boxes (robust to outliers). An anchor left without boxes is re-seeded at the box
    worst served by the current anchors. Deterministic for a given ``seed``. With fewer
    distinct sizes than ``k`` some anchors repeat.

    Args:
        wh: ``(N, 2)`` box widths and heights in pixels, all ``> 0`` (drop zero-size boxes
            first, e.g. with :func:`positive_wh`); ``N >= k``.
        k: number of anchors, ``>= 1``.
        seed: seed of the k-means++ initialisation.
        iterations: the most assignment/update rounds, ``>= 1``.

    Returns:
        ``(k, 2)`` float32 anchor ``(w, h)`` in pixels, sorted by area, smallest first.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    sizes = _positive_sizes(wh, "wh")
    if len(sizes) < k:
        raise ValueError(f"need at least k = {k} boxes to fit {k} anchors, got {len(sizes)}")
    generator = torch.Generator().manual_seed(seed)
    centres = _kmeans_plus_plus(sizes, k, generator)  # (k, 2)
    assignment = torch.full((len(sizes),), UNASSIGNED, dtype=torch.int64)
    reseeded = False
    for _ in range(iterations):
        iou = wh_iou(sizes, centres)  # (N, k)
        new_assignment = iou.argmax(dim=1)  # (N,)
        if torch.equal(new_assignment, assignment) and not reseeded:
            break
        assignment = new_assignment
        best_iou = iou.max(dim=1).values  # (N,)
        reseeded = False
        for cluster in range(k):
            members = sizes[assignment == cluster]  # (Nc, 2)
            if len(members):
                centres[cluster] = members.quantile(0.5, dim=0)
                continue
            worst = int(best_iou.argmin())
            # A box already matched exactly (duplicate sizes) gains nothing from re-seeding.
            reseeded = reseeded or bool(best_iou[worst] < 1)
            centres[cluster] = sizes[worst]
            best_iou[worst] = 1.0  # the next empty cluster takes another box
    order = centres.prod(dim=1).argsort(stable=True)
    return centres[order].to(torch.float32)


def best_anchor_iou(wh: np.ndarray | torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """``(N,)`` float64: for each box size, the highest shape IoU over the anchors.

    Args:
        wh: ``(N, 2)`` box sizes, ``> 0``.
        anchors: ``(A, 2)`` anchor sizes, ``> 0``, same units.
    """
    sizes = _positive_sizes(wh, "wh")
    anchor_sizes = _positive_sizes(anchors, "anchors")
    if len(anchor_sizes) == 0:
        raise ValueError("anchors must not be empty")
    if len(sizes) == 0:
        return torch.zeros(0, dtype=torch.float64)
    return wh_iou(sizes, anchor_sizes).max(dim=1).values


def best_possible_recall(
    wh: np.ndarray | torch.Tensor,
    anchors: torch.Tensor,
    iou_threshold: float = DEFAULT_RECALL_IOU,
) -> float:
    """Fraction of boxes whose best anchor shape IoU is ``>= iou_threshold``.

    Args:
        wh: ``(N, 2)`` box sizes in pixels, ``> 0``; ``N >= 1``.
        anchors: ``(A, 2)`` anchor sizes in the same pixels.
        iou_threshold: in ``[0, 1]``; the default :data:`DEFAULT_RECALL_IOU` is 0.25.
    """
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    best = best_anchor_iou(wh, anchors)
    if len(best) == 0:
        raise ValueError("best_possible_recall needs at least one box")
    return float((best >= iou_threshold).double().mean())


def mean_best_iou(wh: np.ndarray | torch.Tensor, anchors: torch.Tensor) -> float:
    """Mean over boxes of the best anchor shape IoU.

    Args:
        wh: ``(N, 2)`` box sizes in pixels, ``> 0``; ``N >= 1``.
        anchors: ``(A, 2)`` anchor sizes in the same pixels.
    """
    best = best_anchor_iou(wh, anchors)
    if len(best) == 0:
        raise ValueError("mean_best_iou needs at least one box")
    return float(best.mean())


def split_anchors(anchors: torch.Tensor, num_scales: int = 3) -> Anchors:
    """Group ``(A, 2)`` anchors by area into ``num_scales`` equal sets, smallest first.

    The result has the format of ``ModelConfig.anchors``: one tuple of ``(w, h)`` per
    output stride, the smallest anchors for the smallest stride (8).

    Args:
        anchors: ``(A, 2)`` anchor sizes in input pixels, ``A`` a multiple of ``num_scales``.
        num_scales: number of output strides, ``>= 1``.
    """
    sizes = _positive_sizes(anchors, "anchors")
    if num_scales < 1:
        raise ValueError(f"num_scales must be >= 1, got {num_scales}")
    if len(sizes) == 0 or len(sizes) % num_scales:
        raise ValueError(
            f"need a positive multiple of num_scales = {num_scales} anchors, got {len(sizes)}"
        )
    ordered = sizes[sizes.prod(dim=1).argsort(stable=True)].tolist()
    per_scale = len(ordered) // num_scales
    return tuple(
        tuple((float(w), float(h)) for w, h in ordered[i * per_scale : (i + 1) * per_scale])
        for i in range(num_scales)
    )


def letterboxed_wh(info: DatasetInfo, input_size: int) -> torch.Tensor:
    """Sizes of every labelled box, in pixels of the letterboxed ``input_size`` input.

    Each box is scaled by its image's letterbox map (about ``input_size / max(w, h)``).

    Returns:
        ``(N, 2)`` float64 ``(w, h)`` over all samples; zero-size boxes included.
    """
    if input_size <= 0:
        raise ValueError(f"input_size must be positive, got {input_size}")
    parts = [torch.zeros(0, 2, dtype=torch.float64)]
    for sample in info.samples:
        if len(sample.boxes) == 0:
            continue
        lb = letterbox_params((sample.height, sample.width), input_size)
        boxes = torch.as_tensor(np.asarray(sample.boxes, dtype=np.float64)).reshape(-1, 4)
        wh = boxes[:, 2:] - boxes[:, :2]  # (n, 2) original pixels
        parts.append(wh * torch.tensor([lb.scale_x, lb.scale_y], dtype=torch.float64))
    return torch.cat(parts)


@dataclass(frozen=True)
class AnchorReport:
    """Anchors fitted to a set of box sizes and how well they cover them."""

    anchors: torch.Tensor  # (k, 2) float32 (w, h) in input pixels, by area ascending
    mean_iou: float  # mean best anchor shape IoU over the boxes
    best_possible_recall: float  # fraction of boxes with best IoU >= recall_iou
    recall_iou: float  # the IoU threshold of best_possible_recall
    num_boxes: int  # boxes used for the fit
    num_dropped: int  # zero-size or non-finite boxes left out


def anchors_report(
    wh: np.ndarray | torch.Tensor,
    k: int,
    seed: int = 0,
    iterations: int = DEFAULT_ITERATIONS,
    recall_iou: float = DEFAULT_RECALL_IOU,
) -> AnchorReport:
    """Fit ``k`` anchors to ``(N, 2)`` box sizes (zero-size boxes dropped) and score them."""
    sizes, dropped = positive_wh(wh)
    anchors = kmeans_anchors(sizes, k, seed=seed, iterations=iterations)
    return AnchorReport(
        anchors=anchors,
        mean_iou=mean_best_iou(sizes, anchors),
        best_possible_recall=best_possible_recall(sizes, anchors, recall_iou),
        recall_iou=recall_iou,
        num_boxes=len(sizes),
        num_dropped=dropped,
    )
