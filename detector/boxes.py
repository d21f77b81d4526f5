"""Box geometry: formats, areas, IoU, per-class NMS and the letterbox map.

Every function here is pure and works on tensors. The one internal box format is
``xyxy`` in pixels, ``(x1, y1, x2, y2)`` with ``x1 <= x2`` and ``y1 <= y2``; other
formats are converted at the edges with :func:`box_convert`.

Empty input is a normal case: it returns a typed empty tensor on the input's device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import batched_nms

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")


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
) -> torch.Tensor:
    """Greedy non-maximum suppression, independently per class.

    Boxes with ``score <= score_threshold`` are dropped first. Then, per class: keep the
    highest-scoring box, drop every remaining box of that class whose IoU with it is
    ``>= iou_threshold``... wait, torchvision drops ``> iou_threshold``; see below.
    Boxes of different classes never suppress each other.

    Args:
        boxes: ``(N, 4)`` xyxy.
        scores: ``(N,)``.
        classes: ``(N,)`` integer class ids.
        iou_threshold: suppression threshold in ``[0, 1]``.
        score_threshold: boxes at or below this score are discarded.
        max_detections: keep at most this many (the highest scores) after NMS.

    Returns:
        ``(K,)`` int64 indices into the input, sorted by decreasing score, on the
        input's device. Never modifies the inputs.
    """
    raise NotImplementedError


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
    scale = min(ih / h, iw / w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    pad_x = (iw - new_w) // 2
    pad_y = (ih - new_h) // 2
    # The exact per-axis scale of the resized image; rounding makes them differ slightly.
    return Letterbox(new_w / w, new_h / h, float(pad_x), float(pad_y), (h, w), (ih, iw))


def letterbox_image(
    image: np.ndarray, input_size: tuple[int, int] | int, pad_value: int = 114
) -> tuple[np.ndarray, Letterbox]:
    """Resize ``image`` (H, W, C uint8) keeping aspect ratio and pad it to ``input_size``.

    Returns:
        The ``(ih, iw, C)`` uint8 letterboxed image and its :class:`Letterbox` map.
    """
    raise NotImplementedError


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
