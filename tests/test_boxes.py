"""Box geometry: formats, IoU, clipping, letterbox maps and per-class NMS."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torchvision.ops

import detector.boxes
from detector.boxes import (
    BOX_FORMATS,
    box_area,
    box_convert,
    box_iou,
    boxes_to_input,
    boxes_to_original,
    clip_boxes,
    letterbox_image,
    letterbox_params,
    nms,
    points_to_input,
    points_to_original,
    wh_iou,
)


def random_boxes(n: int, generator: torch.Generator, dtype=torch.float32, span=100.0):
    """``(n, 4)`` valid xyxy boxes with corners in ``[0, span]`` and sides in ``[1, span/2]``."""
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * span
    wh = 1 + torch.rand(n, 2, generator=generator, dtype=torch.float64) * (span / 2 - 1)
    return torch.cat([xy, xy + wh], dim=1).to(dtype)


# ---------------------------------------------------------------- IoU, area, formats


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_iou_matches_torchvision(dtype):
    g = torch.Generator().manual_seed(0)
    a, b = random_boxes(37, g, dtype), random_boxes(23, g, dtype)
    ours = box_iou(a, b)
    assert ours.dtype == dtype and ours.shape == (37, 23)
    torch.testing.assert_close(ours, torchvision.ops.box_iou(a, b))


def test_box_iou_hand_cases():
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],
            [10.0, 0.0, 20.0, 10.0],  # touches box 0 on an edge
            [2.0, 2.0, 4.0, 4.0],  # nested in box 0, area 4 of 100
            [0.0, 0.0, 10.0, 10.0],  # identical to box 0
            [5.0, 5.0, 5.0, 5.0],  # zero area
        ]
    )
    iou = box_iou(boxes, boxes)
    assert iou[0, 1] == 0.0
    assert iou[0, 2] == pytest.approx(0.04)
    assert iou[0, 3] == 1.0
    assert iou[0, 4] == 0.0
    assert iou[4, 4] == 0.0  # two zero-area boxes: 0, not NaN
    assert not torch.isnan(iou).any()
    torch.testing.assert_close(iou, iou.T)


def test_box_iou_empty():
    iou = box_iou(torch.zeros(0, 4), torch.zeros(3, 4))
    assert iou.shape == (0, 3) and iou.dtype == torch.float32


def test_box_area_matches_torchvision():
    g = torch.Generator().manual_seed(1)
    boxes = random_boxes(50, g)
    torch.testing.assert_close(box_area(boxes), torchvision.ops.box_area(boxes))
    assert box_area(torch.tensor([[3.0, 3.0, 1.0, 5.0]])).item() == 0.0  # inverted: 0


@pytest.mark.parametrize("in_fmt,out_fmt", list(itertools.product(BOX_FORMATS, BOX_FORMATS)))
def test_box_convert_matches_torchvision_and_round_trips(in_fmt, out_fmt):
    g = torch.Generator().manual_seed(2)
    boxes = box_convert(random_boxes(40, g, torch.float64), "xyxy", in_fmt)
    before = boxes.clone()
    converted = box_convert(boxes, in_fmt, out_fmt)
    torch.testing.assert_close(converted, torchvision.ops.box_convert(boxes, in_fmt, out_fmt))
    torch.testing.assert_close(box_convert(converted, out_fmt, in_fmt), boxes)
    assert torch.equal(boxes, before)


def test_box_convert_errors():
    with pytest.raises(ValueError, match="unknown box format"):
        box_convert(torch.zeros(1, 4), "xyxy", "yxyx")
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        box_convert(torch.zeros(1, 3), "xyxy", "xywh")


def test_wh_iou_hand_cases():
    wh1 = torch.tensor([[10.0, 10.0], [10.0, 20.0], [0.0, 0.0]])
    wh2 = torch.tensor([[10.0, 10.0], [5.0, 5.0], [20.0, 10.0]])
    iou = wh_iou(wh1, wh2)
    expected = torch.tensor(
        [
            [1.0, 0.25, 100 / 200],
            [100 / 200, 25 / 200, 100 / 300],
            [0.0, 0.0, 0.0],
        ]
    )
    torch.testing.assert_close(iou, expected)


def test_wh_iou_equals_iou_of_centred_boxes():
    g = torch.Generator().manual_seed(3)
    wh1 = 1 + torch.rand(8, 2, generator=g) * 50
    wh2 = 1 + torch.rand(5, 2, generator=g) * 50
    centred = lambda wh: torch.cat([-wh / 2, wh / 2], dim=1)  # noqa: E731
    torch.testing.assert_close(wh_iou(wh1, wh2), box_iou(centred(wh1), centred(wh2)))


def test_clip_boxes():
    boxes = torch.tensor([[-5.0, -1.0, 50.0, 20.0], [1.0, 2.0, 3.0, 4.0]])
    before = boxes.clone()
    clipped = clip_boxes(boxes, (10, 30))  # (height, width)
    torch.testing.assert_close(clipped, torch.tensor([[0.0, 0.0, 30.0, 10.0], [1, 2, 3, 4.0]]))
    assert torch.equal(boxes, before)


# ---------------------------------------------------------------- letterbox

# (original (h, w), input size): landscape, portrait, square, upscale, downscale, odd sizes.
LETTERBOX_CASES = [
    ((480, 640), 320),
    ((640, 480), 320),
    ((300, 300), 320),
    ((60, 90), 320),
    ((1000, 777), 256),
    ((123, 457), (160, 224)),
]


@pytest.mark.parametrize("original,input_size", LETTERBOX_CASES)
def test_letterbox_box_and_point_round_trip(original, input_size):
    lb = letterbox_params(original, input_size)
    h, w = original
    g = torch.Generator().manual_seed(4)
    boxes = random_boxes(30, g, torch.float64, span=min(h, w) / 2)
    torch.testing.assert_close(boxes_to_original(boxes_to_input(boxes, lb), lb), boxes)
    points = torch.rand(7, 3, 2, generator=g, dtype=torch.float64) * torch.tensor([w, h])
    torch.testing.assert_close(points_to_original(points_to_input(points, lb), lb), points)
    # The whole original image maps inside the input, touching it on at least one axis.
    full = boxes_to_input(torch.tensor([[0.0, 0.0, w, h]], dtype=torch.float64), lb)[0]
    ih, iw = lb.input_size
    assert full[0] >= 0 and full[1] >= 0 and full[2] <= iw + 1e-9 and full[3] <= ih + 1e-9
    assert full[2] - full[0] == pytest.approx(iw) or full[3] - full[1] == pytest.approx(ih)


@pytest.mark.parametrize("original,input_size", LETTERBOX_CASES)
def test_letterbox_image_places_drawn_rectangle(original, input_size):
    h, w = original
    image = np.zeros((h, w, 3), dtype=np.uint8)
    x1, y1, x2, y2 = w // 4, h // 3, w // 4 + max(8, w // 3), h // 3 + max(8, h // 3)
    image[y1:y2, x1:x2] = 255  # covers pixel edges [x1, x2) x [y1, y2)
    before = image.copy()
    out, lb = letterbox_image(image, input_size)
    assert np.array_equal(image, before)
    assert out.dtype == np.uint8 and out.shape == (*lb.input_size, 3)
    assert lb == letterbox_params(original, input_size)

    rect = boxes_to_input(torch.tensor([[x1, y1, x2, y2]], dtype=torch.float64), lb)[0].numpy()
    ys, xs = np.nonzero(out[..., 0] > 127)
    found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)
    np.testing.assert_allclose(found, rect, atol=1.0)

    # Padding is the pad value; the resized image area is not.
    pad_x, pad_y = int(lb.pad_x), int(lb.pad_y)
    if pad_x:
        assert (out[:, :pad_x] == 114).all()
    if pad_y:
        assert (out[:pad_y] == 114).all()
    assert (out[pad_y, pad_x] == 0).all()


def test_letterbox_image_single_channel_and_pad_value():
    image = np.full((10, 20, 1), 7, dtype=np.uint8)
    out, lb = letterbox_image(image, 40, pad_value=0)
    assert out.shape == (40, 40, 1)
    assert (out[int(lb.pad_y) : int(lb.pad_y) + 20] == 7).all()
    assert (out[: int(lb.pad_y)] == 0).all()


@pytest.mark.parametrize(
    "image,match",
    [
        (np.zeros((10, 10), dtype=np.uint8), r"\(H, W, C\)"),
        (np.zeros((10, 10, 3), dtype=np.float32), "uint8"),
        (np.zeros((0, 10, 3), dtype=np.uint8), "empty"),
        (np.zeros((10, 10, 5), dtype=np.uint8), "channels"),
    ],
)
def test_letterbox_image_errors(image, match):
    with pytest.raises(ValueError, match=match):
        letterbox_image(image, 32)


def test_letterbox_params_errors():
    with pytest.raises(ValueError, match="image size"):
        letterbox_params((0, 10), 32)
    with pytest.raises(ValueError, match="input_size"):
        letterbox_params((10, 10), (0, 32))


# ---------------------------------------------------------------- NMS


def reference_nms(
    boxes, scores, classes, iou_threshold, score_threshold=0.0, max_det=None, max_cand=None
):
    """The algorithm itself, slowly: float32 scores, float64 IoU, ties by lower index."""
    scores = scores.float().tolist()
    classes = classes.tolist()
    iou = box_iou(boxes.double(), boxes.double())  # (N, N)
    suppress = (iou >= iou_threshold).tolist()
    remaining = [i for i in range(len(scores)) if scores[i] > score_threshold]
    remaining.sort(key=lambda i: (-scores[i], i))
    remaining = remaining if max_cand is None else remaining[:max_cand]
    kept = []
    while remaining:
        best = remaining.pop(0)
        kept.append(best)
        remaining = [j for j in remaining if classes[j] != classes[best] or not suppress[best][j]]
    return kept if max_det is None else kept[:max_det]


def random_nms_case(g: torch.Generator):
    n = int(torch.randint(0, 60, (1,), generator=g))
    boxes = random_boxes(n, g, span=60.0)
    if torch.rand(1, generator=g) < 0.3:
        boxes = boxes - 30.0  # negative coordinates: classes must still stay apart
    scores = torch.rand(n, generator=g)
    if torch.rand(1, generator=g) < 0.5:
        scores = torch.round(scores * 4) / 4  # few distinct values: many ties
    num_classes = int(torch.randint(1, 5, (1,), generator=g))
    classes = torch.randint(0, num_classes, (n,), generator=g)
    iou_threshold = float(torch.rand(1, generator=g))
    score_threshold = float(torch.rand(1, generator=g)) * 0.5
    max_det = None if torch.rand(1, generator=g) < 0.5 else int(torch.randint(0, 20, (1,)))
    max_cand = None if torch.rand(1, generator=g) < 0.5 else int(torch.randint(0, 40, (1,)))
    return boxes, scores, classes, iou_threshold, score_threshold, max_det, max_cand


def test_nms_matches_reference_on_random_cases():
    g = torch.Generator().manual_seed(5)
    for case in range(200):
        boxes, scores, classes, iou_t, score_t, max_det, max_cand = random_nms_case(g)
        inputs = (boxes.clone(), scores.clone(), classes.clone())
        kept = nms(boxes, scores, classes, iou_t, score_t, max_det, max_cand)
        expected = reference_nms(boxes, scores, classes, iou_t, score_t, max_det, max_cand)
        assert kept.dtype == torch.int64
        assert kept.tolist() == expected, f"case {case}"
        for before, after in zip(inputs, (boxes, scores, classes), strict=True):
            assert torch.equal(before, after)


@pytest.mark.parametrize(
    "boxes,threshold",
    [
        # Equal 3x1 boxes offset by 1: intersection 2, union 4 -> IoU exactly 0.5.
        ([[0.0, 0.0, 3.0, 1.0], [1.0, 0.0, 4.0, 1.0]], 0.5),
        # Equal 2x1 boxes offset by 1: intersection 1, union 3 -> float32(1/3).
        ([[10.0, 5.0, 12.0, 6.0], [11.0, 5.0, 13.0, 6.0]], 1 / 3),
    ],
)
def test_nms_iou_equal_to_threshold_suppresses(boxes, threshold):
    boxes = torch.tensor(boxes)
    scores = torch.tensor([0.9, 0.8])
    assert box_iou(boxes, boxes)[0, 1] == torch.tensor(threshold, dtype=torch.float32)
    for class_id in (0, 7):
        classes = torch.tensor([class_id, class_id])
        assert nms(boxes, scores, classes, threshold).tolist() == [0]
        assert nms(boxes, scores, classes, threshold + 1e-6).tolist() == [0, 1]
    assert nms(boxes, scores, torch.tensor([0, 1]), threshold).tolist() == [0, 1]


def test_nms_classes_stay_apart_with_negative_coordinates():
    # torchvision.ops.batched_nms's offset trick keeps only [0] here: with every
    # coordinate negative its class offset (max coordinate + 1) is not positive.
    boxes = torch.tensor([[-1000.0, -1000.0, -10.0, -10.0]] * 2)
    kept = nms(boxes, torch.tensor([0.9, 0.8]), torch.tensor([0, 1]), 0.5)
    assert kept.tolist() == [0, 1]


def count_kernel_calls(monkeypatch) -> list[int]:
    """Count ``torchvision.ops.nms`` calls made by ``detector.boxes.nms``."""
    calls = []
    kernel = detector.boxes.torchvision_nms

    def counted(*args):
        calls.append(1)
        return kernel(*args)

    monkeypatch.setattr(detector.boxes, "torchvision_nms", counted)
    return calls


def test_nms_all_classes_in_one_kernel_call(monkeypatch):
    calls = count_kernel_calls(monkeypatch)
    g = torch.Generator().manual_seed(11)
    boxes = random_boxes(200, g, span=50.0) - 25.0
    scores = torch.rand(200, generator=g)
    classes = torch.randint(0, 80, (200,), generator=g)
    kept = nms(boxes, scores, classes, 0.3)
    assert len(calls) == 1
    assert kept.tolist() == reference_nms(boxes, scores, classes, 0.3)


def test_nms_classes_stay_apart_with_huge_coordinates(monkeypatch):
    # Coordinates near 1e7 (float32 spacing 1) and 80 classes: torchvision's float32
    # offset would reach 8e8, where float32 spacing is 64 and 10-pixel boxes collapse.
    calls = count_kernel_calls(monkeypatch)
    base = torch.tensor([[1.0e7, -1.0e7, 1.0e7 + 10, -1.0e7 + 10]])
    shift = torch.tensor([[3.0, 0.0, 3.0, 0.0]])
    boxes = torch.cat([base, base + shift, base, base + 2 * shift] * 20)  # (80, 4)
    scores = torch.linspace(1.0, 0.2, 80)
    classes = torch.arange(80) // 4 * 4 + torch.tensor([0, 0, 1, 1]).repeat(20)
    kept = nms(boxes, scores, classes, 0.5)
    # IoU(base, base + 3) = 70/130 >= 0.5 and IoU(base, base + 6) = 40/160 < 0.5.
    assert kept.tolist() == reference_nms(boxes, scores, classes, 0.5)
    assert len(kept) == 60 and len(calls) == 1
    kept = nms(boxes.double() * 1e20, scores, classes, 0.5)
    assert kept.tolist() == reference_nms(boxes.double() * 1e20, scores, classes, 0.5)


def test_nms_shift_that_would_round_takes_the_per_class_path(monkeypatch):
    # A tiny box next to a far one: shifting by -1e9 would round the tiny box's corners
    # away in float64, so each class gets its own kernel call on unshifted boxes.
    calls = count_kernel_calls(monkeypatch)
    boxes = torch.tensor(
        [
            [1e-8, 1e-8, 3e-8, 2e-8],
            [2e-8, 1e-8, 4e-8, 2e-8],  # IoU 1/3 with the first
            [-1e9, -1e9, -1e9 + 5, -1e9 + 5],
            [1e-8, 1e-8, 3e-8, 2e-8],
        ],
        dtype=torch.float64,
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    classes = torch.tensor([0, 0, 0, 1])
    assert nms(boxes, scores, classes, 0.3).tolist() == [0, 2, 3]
    assert nms(boxes, scores, classes, 0.4).tolist() == [0, 1, 2, 3]
    assert len(calls) == 2 * 2  # two classes, two calls


def test_nms_one_call_and_per_class_calls_agree(monkeypatch):
    g = torch.Generator().manual_seed(13)
    cases = [random_clustered_case(g) for _ in range(30)]
    one_call = [nms(b, s, c, t).tolist() for b, s, c, t in cases]
    calls = count_kernel_calls(monkeypatch)
    monkeypatch.setattr(detector.boxes, "ONE_CALL_MAX_BOXES_CPU", 0)
    per_class = [nms(b, s, c, t).tolist() for b, s, c, t in cases]
    assert per_class == one_call
    assert len(calls) > len(cases)


def test_nms_zero_threshold_keeps_the_best_box_of_each_class():
    boxes = torch.tensor([[0.0, 0, 1, 1], [5.0, 5, 6, 6], [0.0, 0, 1, 1], [9.0, 9, 9, 9]])
    scores = torch.tensor([0.5, 0.9, 0.7, 0.8])
    classes = torch.tensor([3, 3, 8, 3])
    assert nms(boxes, scores, classes, 0.0).tolist() == [1, 2]
    assert nms(boxes, scores, classes, 0.0).tolist() == reference_nms(boxes, scores, classes, 0.0)


def random_clustered_case(g: torch.Generator):
    """Many overlapping boxes of a few objects, at a random scale and offset."""
    n = int(torch.randint(1, 400, (1,), generator=g))
    centres = torch.rand(8, 2, generator=g, dtype=torch.float64) * 100
    sizes = 5 + torch.rand(8, 2, generator=g, dtype=torch.float64) * 30
    pick = torch.randint(0, 8, (n,), generator=g)
    jitter = 1 + 0.3 * torch.randn(n, 4, generator=g, dtype=torch.float64)
    cxcywh = torch.cat((centres[pick], sizes[pick]), 1) * jitter.abs()
    scale = 10.0 ** float(torch.randint(-3, 7, (1,), generator=g))
    offset = float(torch.randn(1, generator=g, dtype=torch.float64)) * scale * 100
    dtype = (torch.float32, torch.float64, torch.float16)[int(torch.randint(0, 3, (1,)))]
    if dtype == torch.float16:
        scale, offset = 1.0, 0.0  # stay in half's range
    boxes = (box_convert(cxcywh, "cxcywh", "xyxy") * scale + offset).to(dtype)
    scores = torch.rand(n, generator=g)
    if torch.rand(1, generator=g) < 0.5:
        scores = torch.round(scores * 8) / 8  # ties
    first_class = int(torch.randint(0, 1000, (1,), generator=g))
    classes = first_class + torch.randint(0, 6, (n,), generator=g)
    iou_threshold = float(torch.rand(1, generator=g))
    if torch.rand(1, generator=g) < 0.1:
        iou_threshold = float(torch.randint(0, 2, (1,), generator=g))  # 0 or 1
    return boxes, scores, classes, iou_threshold


def test_nms_matches_reference_on_clustered_boxes_at_any_scale():
    g = torch.Generator().manual_seed(12)
    for case in range(150):
        boxes, scores, classes, iou_t = random_clustered_case(g)
        kept = nms(boxes, scores, classes, iou_t, score_threshold=0.05)
        expected = reference_nms(boxes, scores, classes, iou_t, score_threshold=0.05)
        assert kept.tolist() == expected, f"case {case}"


def test_nms_ties_keep_lower_index():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3)
    assert nms(
        boxes, torch.tensor([0.5, 0.5, 0.5]), torch.zeros(3, dtype=torch.long), 0.5
    ).tolist() == [0]
    kept = nms(boxes, torch.tensor([0.5, 0.7, 0.7]), torch.tensor([0, 1, 2]), 0.5)
    assert kept.tolist() == [1, 2, 0]


def test_nms_score_threshold_and_max_detections():
    boxes = torch.tensor([[0.0, 0, 1, 1], [10.0, 0, 11, 1], [20.0, 0, 21, 1], [30.0, 0, 31, 1]])
    scores = torch.tensor([0.3, 0.9, 0.5, 0.6])
    classes = torch.zeros(4, dtype=torch.long)
    assert nms(boxes, scores, classes, 0.5, score_threshold=0.5).tolist() == [1, 3]
    assert nms(boxes, scores, classes, 0.5, max_detections=2).tolist() == [1, 3]
    assert nms(boxes, scores, classes, 0.5, max_detections=0).tolist() == []


def test_nms_half_inputs():
    g = torch.Generator().manual_seed(6)
    boxes = random_boxes(40, g, span=60.0).half()
    scores = torch.rand(40, generator=g).half()
    classes = torch.randint(0, 3, (40,), generator=g)
    kept = nms(boxes, scores, classes, 0.45, 0.1)
    assert kept.tolist() == reference_nms(boxes, scores, classes, 0.45, 0.1)
    assert boxes.dtype == torch.float16


@pytest.mark.parametrize("score_threshold", [0.0, 0.99])
def test_nms_empty_results_are_typed(score_threshold):
    if score_threshold:
        boxes, scores = torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([0.5])
    else:
        boxes, scores = torch.zeros(0, 4), torch.zeros(0)
    classes = torch.zeros(len(scores), dtype=torch.long)
    kept = nms(boxes, scores, classes, 0.5, score_threshold)
    assert kept.shape == (0,) and kept.dtype == torch.int64 and kept.device == boxes.device


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"iou_threshold": 1.5}, "iou_threshold"),
        ({"iou_threshold": 0.5, "score_threshold": -0.1}, "score_threshold"),
        ({"iou_threshold": 0.5, "max_detections": -1}, "max_detections"),
        ({"iou_threshold": 0.5, "max_candidates": -1}, "max_candidates"),
    ],
)
def test_nms_argument_errors(kwargs, match):
    boxes, scores, classes = torch.zeros(2, 4), torch.zeros(2), torch.zeros(2)
    with pytest.raises(ValueError, match=match):
        nms(boxes, scores, classes, **kwargs)


def test_nms_shape_errors():
    with pytest.raises(ValueError, match=r"boxes must have shape \(N, 4\)"):
        nms(torch.zeros(2, 5), torch.zeros(2), torch.zeros(2), 0.5)
    with pytest.raises(ValueError, match="scores must have shape"):
        nms(torch.zeros(2, 4), torch.zeros(3), torch.zeros(2), 0.5)
    with pytest.raises(ValueError, match="classes must have shape"):
        nms(torch.zeros(2, 4), torch.zeros(2), torch.zeros(2, 1), 0.5)


def test_torchvision_batched_nms_runs_against_reference():
    """The environment requirement: torchvision.ops imports and its compiled NMS runs.

    torchvision drops ``IoU > threshold`` (strictly); random boxes with non-negative
    coordinates never hit the threshold exactly, so it agrees with the reference.
    """
    g = torch.Generator().manual_seed(7)
    boxes = random_boxes(80, g, span=60.0)
    scores = torch.rand(80, generator=g)  # distinct: no ties
    classes = torch.randint(0, 3, (80,), generator=g)
    kept = torchvision.ops.batched_nms(boxes, scores, classes, 0.5)
    assert kept.tolist() == reference_nms(boxes, scores, classes, 0.5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nms_on_cuda_matches_reference():
    g = torch.Generator().manual_seed(8)
    for _ in range(20):
        boxes, scores, classes, iou_t, score_t, max_det, max_cand = random_nms_case(g)
        args = (iou_t, score_t, max_det, max_cand)
        kept = nms(boxes.cuda(), scores.cuda(), classes.cuda(), *args)
        assert kept.device.type == "cuda" and kept.dtype == torch.int64
        assert kept.cpu().tolist() == reference_nms(boxes, scores, classes, *args)
    empty = nms(
        torch.zeros(0, 4, device="cuda"),
        torch.zeros(0, device="cuda"),
        torch.zeros(0, device="cuda"),
        0.5,
    )
    assert empty.device.type == "cuda" and empty.dtype == torch.int64 and empty.numel() == 0
