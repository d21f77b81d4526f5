"""Box geometry: formats, areas, IoU, per-class NMS and the letterbox map.

Every function here is pure and works on tensors. The one internal box format is
``xyxy`` in pixels, ``(x1, y1, x2, y2)`` with ``x1 <= x2`` and ``y1 <= y2``; other
formats are converted at the edges with :func:`box_convert`.

Empty input is a normal case: it returns a typed empty tensor on the input's device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torchvision.ops import nms as torchvision_nms

# Grey used by YOLO-family models to pad letterboxed images (one value, in config).
from detector.config import LETTERBOX_PAD_VALUE

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")

# The most boxes nms takes (its rank pseudo-scores N, N-1, ..., 1 are exact far beyond).
MAX_NMS_BOXES = 2**24
# Up to this many candidates nms suppresses every class in one kernel call; above, one
# call per class. The kernel's work grows as (boxes kept) x (boxes), so on the CPU many
# kept boxes make the one call slower than per-class calls: on the digits model's
# candidates (1 thread) one call is 2.4x faster at 300, even at 1,000, 0.7x at 3,000
# (torchvision.ops.batched_nms switches at the same 1,000 boxes on the CPU). The CUDA
# kernel builds its IoU mask in parallel; torchvision switches there at 5,000.
ONE_CALL_MAX_BOXES_CPU = 1000
ONE_CALL_MAX_BOXES_CUDA = 5000
# cv2.copyMakeBorder takes a fill value of at most four channels.
MAX_LETTERBOX_CHANNELS = 4


def box_convert(boxes: torch.Tensor, in_fmt: str, out_fmt: str) -> torch.Tensor:
    """Convert boxes between formats.

    Args:
        boxes: ``(N, 4)`` (or ``(..., 4)``) float tensor.
        in_fmt, out_fmt: one of ``"xyxy"`` (corners), ``"xywh"`` (top-left corner, width,
            height) or ``"cxcywh"`` (centre, width, height).

    Returns:
        A new tensor of the same shape in ``out_fmt``; the input is never modified.
    """
    for fmt in (in_fmt, out_fmt):
        if fmt not in BOX_FORMATS:
            raise ValueError(f"unknown box format {fmt!r}; expected one of {BOX_FORMATS}")
    if boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (..., 4), got {tuple(boxes.shape)}")
    if in_fmt == out_fmt:
        return boxes.clone()
    a, b, c, d = boxes.unbind(-1)
    if in_fmt == "xywh":
        x1, y1, x2, y2 = a, b, a + c, b + d
    elif in_fmt == "cxcywh":
        x1, y1, x2, y2 = a - c / 2, b - d / 2, a + c / 2, b + d / 2
    else:
        x1, y1, x2, y2 = a, b, c, d
    if out_fmt == "xyxy":
        out = (x1, y1, x2, y2)
    elif out_fmt == "xywh":
        out = (x1, y1, x2 - x1, y2 - y1)
    else:
        out = ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)
    return torch.stack(out, dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of ``(N, 4)`` xyxy boxes, ``(N,)``. Degenerate boxes have area 0."""
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Pairwise intersection over union.

    Args:
        boxes1: ``(N, 4)`` xyxy.
        boxes2: ``(M, 4)`` xyxy.
        eps: added to the union; with the default 0, two zero-area boxes give IoU 0
            (never NaN).

    Returns:
        ``(N, M)`` IoU in ``[0, 1]``, dtype of the inputs.
    """
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    rb = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]  # (N, M)
    union = area1[:, None] + area2[None, :] - inter + eps
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(inter.dtype).tiny), 0.0)


def wh_iou(wh1: torch.Tensor, wh2: torch.Tensor) -> torch.Tensor:
    """IoU of box *shapes* as if centred on the same point.

    Args:
        wh1: ``(N, 2)`` widths and heights.
        wh2: ``(M, 2)`` widths and heights.

    Returns:
        ``(N, M)`` IoU.
    """
    inter = torch.minimum(wh1[:, None, :], wh2[None, :, :]).prod(-1)  # (N, M)
    union = wh1.prod(-1)[:, None] + wh2.prod(-1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(inter.dtype).tiny), 0.0)


def clip_boxes(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Clip ``(N, 4)`` xyxy boxes to an image of ``size = (height, width)``; returns a copy."""
    height, width = size
    out = boxes.clone()
    out[..., 0::2] = out[..., 0::2].clamp(0, width)
    out[..., 1::2] = out[..., 1::2].clamp(0, height)
    return out


def nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    iou_threshold: float,
    score_threshold: float = 0.0,
    max_detections: int | None = None,
    max_candidates: int | None = None,
) -> torch.Tensor:
    """Greedy non-maximum suppression, independently per class.

    The algorithm, exactly:

    1. drop every box with ``score <= score_threshold``;
    2. order the rest by decreasing score; equal scores keep their input order (the lower
       input index comes first); with ``max_candidates``, only the first that many go on;
    3. per class, greedily: keep the first remaining box and drop every remaining box of
       the same class whose IoU with it is ``>= iou_threshold``. Boxes of different classes
       never suppress each other.
    4. keep the first ``max_detections`` survivors in that order.

    Scores are compared in float32 (half inputs are upcast). IoU is that of the boxes'
    coordinates computed in float64 (float32 and half coordinates are exact in float64)
    and compared with ``iou_threshold`` as a Python float. ``torchvision.ops.nms``
    underneath drops ``IoU > threshold`` strictly, so it is given the float64 predecessor
    of ``iou_threshold``: ``IoU > predecessor`` is the same test as ``IoU >= threshold``.
    It is given unique rank pseudo-scores rather than the scores themselves, which makes
    ties deterministic.

    Up to ``ONE_CALL_MAX_BOXES_CPU`` candidates (``ONE_CALL_MAX_BOXES_CUDA`` on CUDA),
    all classes go through one ``torchvision.ops.nms`` call: the class-offset trick of
    ``torchvision.ops.batched_nms``, made exact. Class ``k`` (counted from the smallest
    class id present) is moved by ``k * step``, ``step`` the smallest power of two above
    ``span + 1`` (``span`` = largest minus smallest coordinate), so boxes of different
    classes are more than 1 apart and never overlap, whatever the sign or size of the
    coordinates. The shift is done in float64 and checked to be exact (an error-free sum
    per coordinate), so the IoU of every same-class pair is bit-for-bit that of the
    unshifted boxes. Each class gets its own
    kernel call instead, with the same result, above that size (where one call costs
    more, see ``ONE_CALL_MAX_BOXES_CPU``) or if a shift would round: float32 and half
    coordinates round only when they span more than about 2**29 times their own
    precision; float64 coordinates that use all 53 bits, and non-finite ones, usually
    round. ``iou_threshold == 0`` keeps the best box of each class.

    Args:
        boxes: ``(N, 4)`` xyxy, any float dtype, any sign.
        scores: ``(N,)`` scores, compared as float32.
        classes: ``(N,)`` integer class ids.
        iou_threshold: suppression threshold in ``[0, 1]``; a same-class box whose IoU with
            a kept box is ``>=`` this is dropped.
        score_threshold: in ``[0, 1]``; boxes with ``score <= score_threshold`` are
            discarded before suppression.
        max_detections: keep at most this many (the highest scores) after suppression;
            ``None`` keeps all.
        max_candidates: at most this many boxes (the highest scores, after the score
            threshold) enter suppression; ``None``: all.

    Returns:
        ``(K,)`` int64 indices into the input, sorted by decreasing score (ties: lower
        index first), on the input's device. Never modifies the inputs.
    """
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {tuple(boxes.shape)}")
    num_boxes = boxes.shape[0]
    for name, tensor in (("scores", scores), ("classes", classes)):
        if tensor.shape != (num_boxes,):
            raise ValueError(
                f"{name} must have shape ({num_boxes},) to match boxes, got {tuple(tensor.shape)}"
            )
        if tensor.device != boxes.device:
            raise ValueError(f"{name} is on {tensor.device} but boxes are on {boxes.device}")
    for name, value in (("iou_threshold", iou_threshold), ("score_threshold", score_threshold)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    for name, limit in (("max_detections", max_detections), ("max_candidates", max_candidates)):
        if limit is not None and limit < 0:
            raise ValueError(f"{name} must be >= 0 or None, got {limit}")
    if num_boxes > MAX_NMS_BOXES:
        raise ValueError(f"nms supports at most {MAX_NMS_BOXES} boxes, got {num_boxes}")

    empty = torch.empty((0,), dtype=torch.int64, device=boxes.device)
    candidates = ranked_candidates(scores, score_threshold, max_candidates)  # (M,)
    if candidates.numel() == 0 or max_detections == 0:
        return empty
    cand_classes = classes[candidates]  # (M,)
    if iou_threshold == 0.0:  # every IoU is >= 0: the first box of each class suppresses the rest
        kept_positions = torch.nonzero(_first_of_each_class(cand_classes)).squeeze(1)
    else:
        kept_positions = _suppress(
            boxes[candidates].to(torch.float64), cand_classes, iou_threshold
        )  # ascending position = score order
    if max_detections is not None:
        kept_positions = kept_positions[:max_detections]
    return candidates[kept_positions]


def ranked_candidates(
    scores: torch.Tensor, score_threshold: float, max_candidates: int | None = None
) -> torch.Tensor:
    """Steps 1 and 2 of :func:`nms`: ``(M,)`` int64 indices of the scores (compared as
    float32) above ``score_threshold``, by decreasing score, ties by lower index, at most
    ``max_candidates`` of them (``None``: all)."""
    scores32 = scores.to(torch.float32)
    candidates = torch.nonzero(scores32 > score_threshold).squeeze(1)  # (M,) input indices
    if candidates.numel() == 0 or max_candidates == 0:
        return candidates[:0]
    order = torch.sort(scores32[candidates], descending=True, stable=True).indices
    if max_candidates is not None:
        order = order[:max_candidates]
    return candidates[order]


def _suppress(boxes: torch.Tensor, classes: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """The greedy per-class suppression of :func:`nms` on candidates already in rank order.

    Args:
        boxes: ``(M, 4)`` float64 xyxy, best first.
        classes: ``(M,)`` integer class ids.
        iou_threshold: in ``(0, 1]``.

    Returns:
        ``(K,)`` int64 positions of the boxes kept, ascending (best first).
    """
    num = boxes.shape[0]
    device = boxes.device
    # Unique pseudo-scores: rank 0 gets M, the last gets 1 (exact in float64).
    ranks = torch.arange(num, 0, -1, dtype=torch.float64, device=device)
    threshold = float(np.nextafter(iou_threshold, -np.inf))
    one_call_max = ONE_CALL_MAX_BOXES_CUDA if device.type == "cuda" else ONE_CALL_MAX_BOXES_CPU
    shifted = _class_separated(boxes, classes) if num <= one_call_max else None
    if shifted is not None:  # torchvision returns decreasing pseudo-score: ascending position
        return torchvision_nms(shifted, ranks, threshold)
    keep_mask = torch.zeros(num, dtype=torch.bool, device=device)
    for class_id in torch.unique(classes):  # the slow path: one kernel call per class
        members = torch.nonzero(classes == class_id).squeeze(1)  # (Mc,) positions
        keep_mask[members[torchvision_nms(boxes[members], ranks[members], threshold)]] = True
    return torch.nonzero(keep_mask).squeeze(1)


def _class_separated(boxes: torch.Tensor, classes: torch.Tensor) -> torch.Tensor | None:
    """``(M, 4)`` float64 boxes moved so that classes lie apart, or None if inexact.

    Class ``k`` (from the smallest id) moves by ``k * step`` with ``step`` the power of
    two just above ``span + 1``, ``span`` the largest minus the smallest coordinate: the
    boxes of class ``k`` lie in ``[low + k * step, low + span + k * step]``, more than 1
    below those of class ``k + 1``, whatever the signs. Every shift must be exact, so
    that same-class IoUs do not change; None when one would round.
    """
    span = float(boxes.max() - boxes.min())  # inf or nan when a coordinate is not finite
    if not math.isfinite(span):
        return None
    step = 2.0 ** math.frexp(span + 1.0)[1]  # a power of two > span + 1
    offsets = (classes - classes.min()).to(torch.float64) * step  # (M,), exact below 2**53
    shifted, exact = _exact_sum(boxes, offsets[:, None])  # (M, 4)
    if not bool(exact.all()):
        return None
    return shifted


def _exact_sum(a: torch.Tensor, b: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """``a + b`` and where it is exact (Knuth's TwoSum: the rounding error is zero)."""
    total = a + b
    b_part = total - a
    error = (a - (total - b_part)) + (b - b_part)
    return total, error == 0


def _first_of_each_class(classes: torch.Tensor) -> torch.Tensor:
    """``(M,)`` bool: True at the first position of each class id in ``classes``."""
    unique, inverse = torch.unique(classes, return_inverse=True)  # inverse: (M,) class index
    positions = torch.arange(classes.numel(), device=classes.device)  # (M,)
    first = torch.full((unique.numel(),), classes.numel(), device=classes.device)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")  # (classes,)
    keep_mask = torch.zeros(classes.numel(), dtype=torch.bool, device=classes.device)
    keep_mask[first] = True
    return keep_mask


@dataclass(frozen=True)
class Letterbox:
    """How an image was placed into a (square or rectangular) model input.

    For every point, in pixels: ``x_in = x * scale_x + pad_x`` and
    ``y_in = y * scale_y + pad_y``. The two scales differ only by the rounding of the
    resized image to whole pixels, which keeps the map exact for the pixels drawn.
    """

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    original_size: tuple[int, int]  # (height, width) of the original image
    input_size: tuple[int, int]  # (height, width) of the letterboxed image


def letterbox_params(
    original_size: tuple[int, int], input_size: tuple[int, int] | int
) -> Letterbox:
    """The letterbox map for an image of ``original_size = (h, w)`` into ``input_size``.

    The image is resized keeping its aspect ratio so that it fits, then centred; the
    padding is split evenly (the odd pixel goes to the bottom/right).
    """
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    h, w = original_size
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got (h, w) = {original_size}")
    ih, iw = input_size
    if ih <= 0 or iw <= 0:
        raise ValueError(f"input_size must be positive, got (h, w) = {input_size}")
    scale = min(ih / h, iw / w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    pad_x = (iw - new_w) // 2
    pad_y = (ih - new_h) // 2
    # The exact per-axis scale of the resized image; rounding makes them differ slightly.
    return Letterbox(new_w / w, new_h / h, float(pad_x), float(pad_y), (h, w), (ih, iw))


def minimal_input_size(original_size: tuple[int, int], size: int, multiple: int) -> tuple[int, int]:
    """The smallest ``(h, w)``, multiples of ``multiple``, that hold an image of
    ``original_size = (h, w)`` resized to fit a ``size × size`` square (its aspect ratio
    kept): the minimal-padding letterbox. A 640×480 image at size 320 and multiple 32
    gives ``(256, 320)`` (a square letterbox would be 320×320, 25 % more pixels).

    ``letterbox_params(original_size, minimal_input_size(...))`` resizes by the same
    factor as the ``size × size`` square would: the long side still becomes ``size``.

    Raises:
        ValueError: a size that is not positive, or ``size`` not a multiple of ``multiple``.
    """
    h, w = original_size
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got (h, w) = {original_size}")
    if multiple < 1 or size < 1 or size % multiple:
        raise ValueError(f"size {size} must be a positive multiple of {multiple}")
    scale = min(size / h, size / w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    return -(-new_h // multiple) * multiple, -(-new_w // multiple) * multiple


def letterbox_image(
    image: np.ndarray, input_size: tuple[int, int] | int, pad_value: int = LETTERBOX_PAD_VALUE
) -> tuple[np.ndarray, Letterbox]:
    """Resize ``image`` keeping its aspect ratio and pad it to ``input_size``.

    The resized size and padding are those of :func:`letterbox_params`. Shrinking uses
    ``cv2.INTER_AREA``, growing ``cv2.INTER_LINEAR``; the border is filled with
    ``pad_value`` in every channel.

    Args:
        image: ``(H, W, C)`` uint8, ``1 <= C <= 4``; not modified.
        input_size: ``(ih, iw)`` of the result, or one int for a square.
        pad_value: fill value of the border, ``0..255``.

    Returns:
        The ``(ih, iw, C)`` uint8 letterboxed image and its :class:`Letterbox` map.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3:
        shape = getattr(image, "shape", None)
        raise ValueError(f"image must be an (H, W, C) numpy array, got shape {shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    height, width, channels = image.shape
    if height == 0 or width == 0:
        raise ValueError(f"image must not be empty, got shape {image.shape}")
    if not 1 <= channels <= MAX_LETTERBOX_CHANNELS:
        raise ValueError(
            f"image must have 1 to {MAX_LETTERBOX_CHANNELS} channels, got shape {image.shape}"
        )
    if not 0 <= pad_value <= np.iinfo(np.uint8).max:
        raise ValueError(f"pad_value must be in [0, 255], got {pad_value}")
    lb = letterbox_params((height, width), input_size)
    in_h, in_w = lb.input_size
    new_w, new_h = round(lb.scale_x * width), round(lb.scale_y * height)
    if (new_w, new_h) == (width, height):
        resized = image.copy()
    else:
        shrink = new_w < width or new_h < height
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
        resized = resized.reshape(new_h, new_w, channels)  # cv2 drops a single channel axis
    top, left = int(lb.pad_y), int(lb.pad_x)
    bottom, right = in_h - new_h - top, in_w - new_w - left
    out = cv2.copyMakeBorder(
        resized, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad_value,) * channels
    )
    return out.reshape(in_h, in_w, channels), lb


def points_to_input(points: torch.Tensor, lb: Letterbox) -> torch.Tensor:
    """Map ``(..., 2)`` xy points from original pixels into letterboxed input pixels."""
    scale = points.new_tensor([lb.scale_x, lb.scale_y])
    return points * scale + points.new_tensor([lb.pad_x, lb.pad_y])


def points_to_original(points: torch.Tensor, lb: Letterbox) -> torch.Tensor:
    """Inverse of :func:`points_to_input`: input pixels back to original pixels."""
    scale = points.new_tensor([lb.scale_x, lb.scale_y])
    return (points - points.new_tensor([lb.pad_x, lb.pad_y])) / scale


def boxes_to_input(boxes: torch.Tensor, lb: Letterbox) -> torch.Tensor:
    """Map ``(N, 4)`` xyxy boxes from original pixels into letterboxed input pixels."""
    return points_to_input(boxes.reshape(-1, 2, 2), lb).reshape(boxes.shape)


def boxes_to_original(boxes: torch.Tensor, lb: Letterbox, clip: bool = True) -> torch.Tensor:
    """Inverse of :func:`boxes_to_input`; with ``clip`` the result is clipped to the image."""
    out = points_to_original(boxes.reshape(-1, 2, 2), lb).reshape(boxes.shape)
    return clip_boxes(out, lb.original_size) if clip else out
