"""The network, its loss and the decoding agree: the model overfits one image."""

import numpy as np
import pytest
import torch

from detector.boxes import box_iou
from detector.config import ASSIGN_RULES, LossConfig, ModelConfig
from detector.encoding import TargetEncoder, Targets
from detector.kinds import grid_candidates
from detector.loss import DetectionLoss
from detector.models.yolo import YOLODetector, count_flops, count_parameters
from detector.postprocess import select_detections

SIZE = 128
ANCHORS = (
    ((8.0, 10.0), (14.0, 12.0), (12.0, 20.0)),
    ((24.0, 20.0), (20.0, 36.0), (36.0, 30.0)),
    ((48.0, 40.0), (40.0, 70.0), (80.0, 64.0)),
)


def scene():
    """A 128×128 image with 3 filled shapes of 3 classes, and their boxes."""
    image = np.full((SIZE, SIZE, 3), 40, np.uint8)
    boxes = torch.tensor(
        [[10.0, 12.0, 40.0, 50.0], [60.0, 20.0, 110.0, 60.0], [30.0, 80.0, 52.0, 96.0]]
    )
    colours = [(255, 60, 60), (60, 255, 60), (60, 60, 255)]
    for (x1, y1, x2, y2), colour in zip(boxes.int().tolist(), colours, strict=True):
        image[y1:y2, x1:x2] = colour
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    return tensor, boxes, torch.tensor([0, 1, 2])


@pytest.mark.parametrize("num_landmarks", [0, 2])
def test_forward_shapes(num_landmarks):
    config = ModelConfig(
        num_classes=3, input_size=SIZE, anchors=ANCHORS, num_landmarks=num_landmarks
    )
    model = YOLODetector(config).eval()
    out = model(torch.rand(2, 3, SIZE, SIZE))
    assert [tuple(o.shape) for o in out] == [
        (2, SIZE // s, SIZE // s, 3, 5 + 3 + 2 * num_landmarks) for s in (8, 16, 32)
    ]


def test_sizes_grow_and_report():
    params, flops = [], []
    for size in ("tiny", "small"):
        model = YOLODetector(ModelConfig(num_classes=10, size=size, input_size=SIZE))
        params.append(count_parameters(model))
        flops.append(count_flops(model, SIZE))
    assert params[0] < params[1] and flops[0] < flops[1]
    assert all(f > 0 for f in flops)


@pytest.mark.parametrize("assign", sorted(ASSIGN_RULES))
def test_overfits_one_image(assign):
    """Loss falls by > 90 % and decode + NMS recover the 3 boxes with IoU > 0.7, with
    one positive per object and with several."""
    torch.manual_seed(0)
    config = ModelConfig(num_classes=3, input_size=SIZE, anchors=ANCHORS)
    model = YOLODetector(config)
    loss_config = LossConfig(**ASSIGN_RULES[assign])
    criterion = DetectionLoss(config, loss_config)
    image, boxes, classes = scene()
    targets = TargetEncoder.from_config(config, loss_config)(boxes, classes)
    batch = Targets.stack([targets])
    steps = 300
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, 3e-3, total_steps=steps, pct_start=0.1
    )
    losses = []
    for _ in range(steps):
        loss, _ = criterion(model(image), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])
    # BatchNorm stays in training mode: with one image, the batch statistics are what the
    # weights were fitted to (running averages over a 4×4 map differ by the unbiased
    # variance's 16/15); this test is about encoding, loss and decoding agreeing.
    with torch.no_grad():
        dets = select_detections(
            grid_candidates(model(image), config, (SIZE, SIZE)), 0.3, 0.45, 300
        )[0]
    assert len(dets.boxes) == 3, dets
    iou = box_iou(dets.boxes, boxes)
    best, which = iou.max(0)
    assert (best > 0.7).all(), iou
    assert torch.equal(dets.class_ids[which], classes)
