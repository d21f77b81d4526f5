"""Target encoding and decoding: encode → perfect logits → decode gives the ground truth."""

import pytest
import torch
from torchvision.ops import box_iou

from detector.config import ASSIGN_RULES, LossConfig, ModelConfig
from detector.encoding import (
    IGNORED,
    NEGATIVE,
    POSITIVE,
    TargetEncoder,
    decode,
    targets_to_logits,
)

ANCHORS = (
    ((10.0, 13.0), (16.0, 30.0), (33.0, 23.0)),
    ((30.0, 61.0), (62.0, 45.0), (59.0, 119.0)),
    ((116.0, 90.0), (156.0, 198.0), (373.0, 326.0)),
)


def make(num_landmarks=0, num_classes=4, size=320, **rules):
    """A model config and its encoder; one positive per object unless ``rules`` say more."""
    config = ModelConfig(
        num_classes=num_classes, input_size=size, anchors=ANCHORS, num_landmarks=num_landmarks
    )
    loss_config = LossConfig(**{**ASSIGN_RULES["best"], **rules})
    return config, TargetEncoder.from_config(config, loss_config)


def positive_slots(targets):
    """Every positive as ``(scale, gy, gx, anchor)``, sorted."""
    return sorted(
        (scale, *pos)
        for scale, state in enumerate(targets.state)
        for pos in torch.nonzero(state == POSITIVE).tolist()
    )


def positives(targets, config):
    """Decoded boxes, classes and landmarks of every positive slot."""
    decoded = decode(targets_to_logits(targets, config), config)
    keep = decoded.objectness[0] > 0.5
    return (
        decoded.boxes[0, keep],
        decoded.class_probs[0, keep].argmax(-1),
        decoded.landmarks[0, keep],
        decoded.objectness[0],
    )


def match(decoded_boxes, boxes):
    """For each ground-truth box, the max abs error of its closest decoded box."""
    err = (decoded_boxes[None, :, :] - boxes[:, None, :]).abs().amax(-1)  # (N, M)
    return err.min(1)


def random_boxes(gen, n, size=320):
    xy = torch.rand(n, 2, generator=gen) * (size - 20)
    wh = 4 + torch.rand(n, 2, generator=gen) * 150
    return torch.cat((xy, (xy + wh).clamp(max=size)), 1)


def random_scenes(seed, num_landmarks, count=20):
    """``count`` random images: 1–7 boxes, classes of 4, visible landmarks (or None)."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(count):
        n = int(torch.randint(1, 8, (1,), generator=gen))
        boxes = random_boxes(gen, n)
        classes = torch.randint(0, 4, (n,), generator=gen)
        lms = None
        if num_landmarks:
            lms = torch.rand(n, num_landmarks, 3, generator=gen) * 320
            lms[..., 2] = 2.0
        yield boxes, classes, lms


@pytest.mark.parametrize("num_landmarks", [0, 5])
def test_round_trip_random(num_landmarks):
    config, encoder = make(num_landmarks)
    for boxes, classes, lms in random_scenes(0, num_landmarks):
        n = len(boxes)
        targets = encoder(boxes, classes, lms)
        assert sum(int((s == POSITIVE).sum()) for s in targets.state) == n - targets.num_dropped
        got_boxes, got_classes, got_lms, _ = positives(targets, config)
        assert len(got_boxes) == n
        err, idx = match(got_boxes, boxes)
        assert err.max() <= 1e-3
        assert torch.equal(got_classes[idx], classes)
        if num_landmarks:
            assert (got_lms[idx] - lms[..., :2]).abs().max() <= 1e-3


def test_empty_image():
    config, encoder = make()
    targets = encoder(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    for target, state in zip(targets.target, targets.state, strict=True):
        assert (state == NEGATIVE).all()
        assert (target == 0).all()
    decoded = decode(targets_to_logits(targets, config), config)
    assert (decoded.objectness < 1e-6).all()


def test_zero_size_boxes_are_skipped():
    config, encoder = make()
    boxes = torch.tensor([[10.0, 10, 10, 40], [50, 50, 90, 50], [100, 100, 140, 150]])
    targets = encoder(boxes, torch.tensor([0, 1, 2]))
    assert sum(int((s == POSITIVE).sum()) for s in targets.state) == 1


@pytest.mark.parametrize(
    "centre",
    [(0.0, 0.0), (319.999, 319.999), (320.0, 320.0), (8.0, 16.0), (32.0, 32.0), (7.9999, 8.0001)],
)
def test_cell_borders_and_corners(centre):
    """A centre on a cell border belongs to the cell it starts; the far border is clamped."""
    config, encoder = make()
    cx, cy = centre
    box = torch.tensor([[cx - 5.0, cy - 6.5, cx + 5.0, cy + 6.5]])  # shape of anchor 0
    targets = encoder(box, torch.tensor([1]))
    pos = torch.nonzero(targets.state[0] == POSITIVE)
    assert pos.tolist() == [[min(int(cy // 8), 39), min(int(cx // 8), 39), 0]]
    got, cls, _, _ = positives(targets, config)
    assert (got - box).abs().max() <= 1e-3
    assert cls.tolist() == [1]


def test_best_anchor_across_scales():
    config, encoder = make()
    box = torch.tensor([[100.0, 100.0, 162.0, 145.0]])  # exactly anchor (62, 45) of stride 16
    targets = encoder(box, torch.tensor([0]))
    assert (targets.state[1] == POSITIVE).sum() == 1
    assert torch.nonzero(targets.state[1] == POSITIVE)[0, 2] == 1
    assert (targets.state[0] == POSITIVE).sum() == 0 and (targets.state[2] == POSITIVE).sum() == 0


def test_collision_falls_back_to_next_best_anchor():
    """Two same-shape objects in one cell: the larger keeps the best anchor, the other
    takes its next-best anchor; a third identical one takes the next, and so on."""
    config, encoder = make()
    big = torch.tensor([[100.0, 100.0, 110.5, 113.5]])
    small = torch.tensor([[100.5, 100.5, 110.5, 113.0]])
    boxes = torch.cat((small, big))
    targets = encoder(boxes, torch.tensor([0, 1]))
    assert targets.num_dropped == 0
    got, cls, _, _ = positives(targets, config)
    err, idx = match(got, boxes)
    assert err.max() <= 1e-3
    # The big box (class 1) is in anchor 0 of stride 8; the small one moved elsewhere.
    state0 = targets.state[0]
    pos = torch.nonzero(state0 == POSITIVE).tolist()
    assert sorted(pos) == [[13, 13, 0], [13, 13, 1]]
    assert targets.target[0][13, 13, 0, 5 + 1] == 1.0


def test_collision_drops_when_no_slot_left():
    config, encoder = make()
    # 9 anchors in all, so the 10th identical object in one spot has nowhere to go.
    boxes = torch.tensor([[100.0, 100.0, 110.0, 113.0]]).repeat(10, 1)
    targets = encoder(boxes, torch.zeros(10, dtype=torch.long))
    assert targets.num_dropped == 1
    assert sum(int((s == POSITIVE).sum()) for s in targets.state) == 9


def test_ignore_other_good_anchors():
    config, encoder = make()
    # (30, 40): close to anchors (33, 23) and (30, 61) but best at one of them only.
    box = torch.tensor([[100.0, 100.0, 130.0, 140.0]])
    targets = encoder(box, torch.tensor([0]))
    states = torch.cat([s.flatten() for s in targets.state])
    assert (states == POSITIVE).sum() == 1
    assert (states == IGNORED).sum() >= 1


def test_landmark_visibility_mask():
    config, encoder = make(num_landmarks=5)
    lms = torch.rand(1, 5, 3) * 100 + 100
    lms[0, :, 2] = torch.tensor([2.0, 0.0, 1.0, 2.0, 0.0])
    targets = encoder(torch.tensor([[100.0, 100.0, 200.0, 200.0]]), torch.tensor([0]), lms)
    masks = [m[(s == POSITIVE)] for m, s in zip(targets.landmark_mask, targets.state, strict=True)]
    mask = torch.cat(masks)
    assert mask.tolist() == [[True, False, True, True, False]]


def test_bad_input():
    _, encoder = make()
    with pytest.raises(ValueError, match="class ids"):
        encoder(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([7]))
    with pytest.raises(ValueError, match="boxes but"):
        encoder(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([0, 1]))


@pytest.mark.parametrize(
    ("inside", "neighbours"),
    [
        ((0.25, 0.75), [(-1, 0), (0, 1)]),  # left half, bottom half: left and lower cells
        ((0.75, 0.25), [(1, 0), (0, -1)]),
        ((0.5, 0.1), [(0, -1)]),  # exactly halfway across: no horizontal neighbour
    ],
)
def test_neighbour_cells_nearest_to_the_centre(inside, neighbours):
    """With neighbour_cells, the cells on the side of the nearer edges also predict the
    object, and every one of them decodes to exactly its box (the decoding reaches half
    a cell past its own cell)."""
    config, encoder = make(neighbour_cells=True)
    gx, gy = 12, 20
    cx, cy = (gx + inside[0]) * 8, (gy + inside[1]) * 8
    box = torch.tensor([[cx - 5.0, cy - 6.5, cx + 5.0, cy + 6.5]])  # shape of anchor 0, stride 8
    targets = encoder(box, torch.tensor([2]))
    expected = [(0, gy, gx, 0)] + [(0, gy + dy, gx + dx, 0) for dx, dy in neighbours]
    assert positive_slots(targets) == sorted(expected)
    got, cls, _, _ = positives(targets, config)
    assert len(got) == len(expected)
    assert (got - box).abs().max() <= 1e-3
    assert cls.tolist() == [2] * len(expected)


@pytest.mark.parametrize("corner", [(1.0, 1.0), (318.0, 318.0)])
def test_neighbour_cells_stay_inside_the_grid(corner):
    config, encoder = make(neighbour_cells=True)
    cx, cy = corner
    box = torch.tensor([[cx - 1.0, cy - 1.0, cx + 1.0, cy + 1.0]])
    targets = encoder(box, torch.tensor([0]))
    # The centre is near the grid's corner: the cells beyond do not exist.
    assert len(positive_slots(targets)) == 1


def test_positive_iou_adds_every_anchor_that_fits():
    """positive_iou: each anchor (any scale) whose shape IoU with the box is above it is a
    positive in the cell that holds the centre; the others are not."""
    config, encoder = make(positive_iou=0.3)
    box = torch.tensor([[100.0, 100.0, 130.0, 140.0]])
    targets = encoder(box, torch.tensor([3]))
    # Reference shape IoU: anchors and box centred on one point, through torchvision.
    anchors = torch.tensor(ANCHORS).reshape(-1, 2)
    centred = torch.cat((-anchors / 2, anchors / 2), 1)
    shape_iou = box_iou(torch.tensor([[-15.0, -20.0, 15.0, 20.0]]), centred)[0]
    expected = []
    for flat in torch.nonzero(shape_iou > 0.3).flatten().tolist():
        scale, a = divmod(flat, 3)
        stride = config.strides[scale]
        expected.append((scale, int(120 // stride), int(115 // stride), a))
    assert len(expected) >= 2  # the case tests something beyond the best anchor
    assert positive_slots(targets) == sorted(expected)
    got, cls, _, _ = positives(targets, config)
    assert (got - box).abs().max() <= 1e-3
    assert (cls == 3).all()


def test_extra_positives_never_take_a_best_slot():
    """Object A's neighbour cell is object B's best slot: B keeps it, although A is
    larger and places its extras first."""
    config, encoder = make(neighbour_cells=True, positive_iou=0.3)
    a_box = torch.tensor([[90.0, 93.5, 100.5, 107.0]])  # centre (95.25, 100.25): cell (11, 12)
    b_box = torch.tensor([[82.0, 94.0, 92.0, 107.0]])  # centre (87, 100.5): cell (10, 12)
    targets = encoder(torch.cat((a_box, b_box)), torch.tensor([0, 1]))
    # Both boxes are closest to anchor 0 of stride 8; A is the larger one.
    assert targets.state[0][12, 11, 0] == POSITIVE and targets.state[0][12, 10, 0] == POSITIVE
    assert targets.target[0][12, 11, 0, 5 + 0] == 1.0  # A's best
    assert targets.target[0][12, 10, 0, 5 + 1] == 1.0  # B's best, also A's left neighbour
    assert targets.target[0][12, 10, 0, 5 + 0] == 0.0
    got, _, _, _ = positives(targets, config)
    err, _ = match(got, torch.cat((a_box, b_box)))
    assert err.max() <= 1e-3


@pytest.mark.parametrize("num_landmarks", [0, 5])
def test_multi_rule_round_trip_random(num_landmarks):
    """The named 'multi' rule: every positive decodes to exactly one object's box, class
    and landmarks; each object has at least the positive the 'best' rule gives it."""
    config, encoder = make(num_landmarks, **ASSIGN_RULES["multi"])
    _, best_encoder = make(num_landmarks)
    for boxes, classes, lms in random_scenes(1, num_landmarks):
        n = len(boxes)
        targets = encoder(boxes, classes, lms)
        best = best_encoder(boxes, classes, lms)
        assert set(positive_slots(best)) <= set(positive_slots(targets))
        assert targets.num_dropped == best.num_dropped
        got_boxes, got_classes, got_lms, _ = positives(targets, config)
        assert len(got_boxes) == len(positive_slots(targets)) > n - targets.num_dropped
        err = (got_boxes[:, None] - boxes[None]).abs().amax(-1)  # (P, N)
        owner = err.argmin(1)
        assert err.min(1).values.max() <= 1e-3
        assert torch.equal(got_classes, classes[owner])
        if num_landmarks:
            assert (got_lms - lms[owner, :, :2]).abs().max() <= 1e-3


def test_positive_iou_out_of_range():
    with pytest.raises(ValueError, match="positive_iou"):
        make(positive_iou=1.5)
