"""The network, its loss and the decoding agree: the model overfits one image."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from detector.boxes import box_iou
from detector.config import ASSIGN_RULES, HEADS, LossConfig, ModelConfig
from detector.encoding import CLS, OBJ, TargetEncoder, Targets
from detector.kinds import grid_candidates
from detector.loss import DetectionLoss
from detector.models.layers import ConvBlock
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


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("num_landmarks", [0, 2])
def test_forward_shapes(num_landmarks, head):
    config = ModelConfig(
        num_classes=3, input_size=SIZE, anchors=ANCHORS, num_landmarks=num_landmarks, head=head
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


@pytest.mark.parametrize("num_landmarks", [0, 2])
def test_decoupled_head_puts_each_value_where_the_decoding_reads_it(num_landmarks):
    """The class logits come from the class branch only, box, objectness and landmarks
    from the other branch only; the initial biases are the same priors as the coupled
    head's."""
    torch.manual_seed(0)
    c = 3
    config = ModelConfig(
        num_classes=c, input_size=SIZE, anchors=ANCHORS, num_landmarks=num_landmarks
    )
    coupled = YOLODetector(config).eval()
    decoupled = YOLODetector(replace(config, head="decoupled")).eval()
    features = [torch.randn(2, h.box_branch[0].conv.in_channels, 4, 4) for h in decoupled.heads]
    base = [head(f) for head, f in zip(decoupled.heads, features, strict=True)]
    for head in decoupled.heads:  # silence the class branch: only class logits change
        torch.nn.init.zeros_(head.cls_branch[-1].weight)
    silenced = [head(f) for head, f in zip(decoupled.heads, features, strict=True)]
    heads = zip(base, silenced, decoupled.heads, coupled.heads, strict=True)
    for before, after, head, coupled_head in heads:  # (B, A, D, h, w)
        changed = (before != after).transpose(1, 2).flatten(2).any(-1).any(0)  # (D,)
        assert changed.nonzero().flatten().tolist() == list(range(CLS, CLS + c))
        coupled_bias = coupled_head.bias.view(config.num_anchors, config.num_outputs)
        # with zero weights every class logit is its bias: the coupled head's prior
        classes = after[:, :, CLS : CLS + c]  # (B, A, C, h, w)
        prior = coupled_bias[:, CLS : CLS + c, None, None].expand_as(classes)
        assert torch.equal(classes, prior)
        other_bias = head.box_branch[-1].bias.view(config.num_anchors, -1)
        assert torch.equal(other_bias[:, OBJ], coupled_bias[:, OBJ])


def test_unknown_head_is_refused():
    with pytest.raises(ValueError, match="head"):
        ModelConfig(num_classes=3, head="split")
    with pytest.raises(ValueError, match="head_depth"):
        ModelConfig(num_classes=3, head="coupled", head_depth=2)
    with pytest.raises(ValueError, match="head_depth"):
        ModelConfig(num_classes=3, head="decoupled", head_depth=0)


def test_decoupled_head_depth_adds_conv_blocks_and_keeps_the_output():
    image = torch.rand(1, 3, SIZE, SIZE)
    shapes, params = [], []
    for depth in (1, 2):
        config = ModelConfig(num_classes=3, input_size=SIZE, head="decoupled", head_depth=depth)
        model = YOLODetector(config).eval()
        blocks = [sum(isinstance(m, ConvBlock) for m in h.cls_branch) for h in model.heads]
        assert blocks == [depth] * len(config.strides)
        shapes.append([tuple(o.shape) for o in model(image)])
        params.append(count_parameters(model))
    assert shapes[0] == shapes[1] and params[0] < params[1]


def test_head_width_and_the_class_only_branch():
    """``head_width`` sets the branches' channels; ``cls-branch`` gives only the classes a
    3x3 branch (box, objectness and landmarks stay one 1x1 conv); same output shapes."""
    image = torch.rand(1, 3, SIZE, SIZE)
    reference = [o.shape for o in YOLODetector(ModelConfig(num_classes=3, input_size=SIZE))(image)]
    for head, width in (("decoupled", 16), ("cls-branch", 0), ("cls-branch", 24)):
        config = ModelConfig(num_classes=3, input_size=SIZE, head=head, head_width=width)
        model = YOLODetector(config).eval()
        for h in model.heads:
            if width:
                assert h.cls_branch[0].conv.out_channels == width
            box_blocks = sum(isinstance(m, ConvBlock) for m in h.box_branch)
            assert box_blocks == (0 if head == "cls-branch" else 1)
        assert [o.shape for o in model(image)] == reference
    with pytest.raises(ValueError, match="head_width"):
        ModelConfig(num_classes=3, head_width=-1)


@pytest.mark.parametrize(
    ("assign", "head"),
    [*((rule, "coupled") for rule in sorted(ASSIGN_RULES)), ("multi", "decoupled")],
)
def test_overfits_one_image(assign, head):
    """Loss falls by > 90 % and decode + NMS recover the 3 boxes with IoU > 0.7, with
    one positive per object and with several, and with either head."""
    torch.manual_seed(0)
    config = ModelConfig(num_classes=3, input_size=SIZE, anchors=ANCHORS, head=head)
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
