"""The vectorised TargetEncoder against a slow reference: the documented assignment rules
written as plain loops over objects, anchors and cells, one slot at a time."""

import math

import pytest
import torch

from detector.boxes import wh_iou
from detector.config import ASSIGN_RULES, LossConfig, ModelConfig
from detector.encoding import CLS, IGNORED, NEGATIVE, OBJ, POSITIVE, TargetEncoder

ANCHORS = (
    ((10.0, 13.0), (16.0, 30.0), (33.0, 23.0)),
    ((30.0, 61.0), (62.0, 45.0), (59.0, 119.0)),
    ((116.0, 90.0), (156.0, 198.0), (373.0, 326.0)),
)
RULES = {
    "best": ASSIGN_RULES["best"],
    "multi": ASSIGN_RULES["multi"],
    "neighbours only": {**ASSIGN_RULES["best"], "neighbour_cells": True},
    "positive_iou only": {**ASSIGN_RULES["best"], "positive_iou": 0.3},
}


def reference_encode(enc: TargetEncoder, boxes, classes, landmarks):
    """The module docstring's rules, one slot at a time (slow; for comparison only)."""
    out = enc.empty()
    wh = boxes[:, 2:] - boxes[:, :2]
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    valid = (wh > 0).all(1)
    num_anchors = enc.anchors.shape[1]
    shape_iou = wh_iou(wh, enc.anchors.reshape(-1, 2))

    def cells(n, scale):  # the centre's cell, then the nearest neighbours if enabled
        g, stride = enc.grid_sizes[scale], enc.strides[scale]
        fx, fy = (float(v) / stride for v in centres[n])
        gx, gy = min(max(math.floor(fx), 0), g - 1), min(max(math.floor(fy), 0), g - 1)
        found = [(gx, gy)]
        if enc.neighbour_cells:
            if fx - gx < 0.5 and gx > 0:
                found.append((gx - 1, gy))
            elif fx - gx > 0.5 and gx < g - 1:
                found.append((gx + 1, gy))
            if fy - gy < 0.5 and gy > 0:
                found.append((gx, gy - 1))
            elif fy - gy > 0.5 and gy < g - 1:
                found.append((gx, gy + 1))
        return found

    def place(scale, gx, gy, a, n):
        t = out.target[scale][gy, gx, a]
        t[0:2], t[2:4], t[OBJ] = centres[n], wh[n], 1.0
        t[CLS + int(classes[n])] = 1.0
        out.state[scale][gy, gx, a] = POSITIVE
        if landmarks is not None and enc.num_landmarks:
            t[CLS + enc.num_classes :] = landmarks[n, :, :2].reshape(-1)
            out.landmark_mask[scale][gy, gx, a] = landmarks[n, :, 2] > 0

    order = [n for n in torch.sort(-wh.prod(1), stable=True).indices.tolist() if valid[n]]
    best = {}
    for n in order:
        for flat in torch.sort(-shape_iou[n], stable=True).indices.tolist():
            scale, a = divmod(flat, num_anchors)
            gx, gy = cells(n, scale)[0]
            if out.state[scale][gy, gx, a] != POSITIVE:
                place(scale, gx, gy, a, n)
                best[n] = flat
                break
        else:
            out.num_dropped += 1
    if enc.positive_iou is not None or enc.neighbour_cells:
        for n in (n for n in order if n in best):
            flats = {best[n]}
            if enc.positive_iou is not None:
                flats |= set(torch.nonzero(shape_iou[n] > enc.positive_iou).flatten().tolist())
            for flat in sorted(flats):
                scale, a = divmod(flat, num_anchors)
                for gx, gy in cells(n, scale):
                    if out.state[scale][gy, gx, a] != POSITIVE:
                        place(scale, gx, gy, a, n)
    for n in (n for n in range(len(boxes)) if valid[n]):
        for flat in torch.nonzero(shape_iou[n] > enc.ignore_threshold).flatten().tolist():
            scale, a = divmod(flat, num_anchors)
            gx, gy = cells(n, scale)[0]
            if out.state[scale][gy, gx, a] == NEGATIVE:
                out.state[scale][gy, gx, a] = IGNORED
    return out


def scenes(seed: int, num_landmarks: int, size: int, count: int = 40):
    """Random images; every other one crowded into a small area (collisions, drops,
    extras competing for slots); some zero-size boxes and centres on cell borders."""
    gen = torch.Generator().manual_seed(seed)
    for i in range(count):
        n = int(torch.randint(0, 25, (1,), generator=gen))
        if i % 2:
            xy = size / 3 + torch.rand(n, 2, generator=gen) * 12
            wh = 5 + torch.rand(n, 2, generator=gen) * 10
        else:
            xy = torch.rand(n, 2, generator=gen) * size
            wh = torch.rand(n, 2, generator=gen) * size / 2
            wh[torch.rand(n, generator=gen) < 0.1, 0] = 0
        boxes = torch.cat((xy, (xy + wh).clamp(max=size)), 1)
        whole = torch.rand(n, generator=gen) < 0.2
        boxes[whole] = boxes[whole].round()
        classes = torch.randint(0, 4, (n,), generator=gen)
        landmarks = None
        if num_landmarks and i % 5:
            landmarks = torch.rand(n, num_landmarks, 3, generator=gen) * size
            landmarks[..., 2] = torch.randint(0, 3, (n, num_landmarks), generator=gen).float()
        yield boxes, classes, landmarks


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize(("num_landmarks", "size"), [(0, 320), (5, 96)])
def test_encoder_equals_the_slow_reference(rule: str, num_landmarks: int, size: int) -> None:
    config = ModelConfig(
        num_classes=4, input_size=size, anchors=ANCHORS, num_landmarks=num_landmarks
    )
    encoder = TargetEncoder.from_config(config, LossConfig(**RULES[rule]))
    dropped = 0
    for boxes, classes, landmarks in scenes(len(rule), num_landmarks, size):
        got = encoder(boxes, classes, landmarks)
        expected = reference_encode(encoder, boxes, classes, landmarks)
        assert got.num_dropped == expected.num_dropped
        dropped += got.num_dropped
        for kind in ("target", "state", "landmark_mask"):
            for scale, (a, b) in enumerate(
                zip(getattr(got, kind), getattr(expected, kind), strict=True)
            ):
                assert a.dtype == b.dtype and torch.equal(a, b), (kind, scale)
    assert dropped > 0  # the crowded scenes do exercise the collision rule
