"""Ground truth to training targets, and raw head output back to boxes.

The grid: an input of side ``S`` pixels gives, at each stride ``s`` (8, 16, 32), a grid
of ``S/s × S/s`` cells, and each cell has ``A`` anchors of that stride. Every anchor
predicts ``D = 5 + C + 2K`` raw values::

    (tx, ty, tw, th, objectness, class_0 … class_{C-1}, lx_0, ly_0, … lx_{K-1}, ly_{K-1})

Decoding (one formula, used by the loss, inference and the tests alike):

* centre  ``cx = (2·σ(tx) − 0.5 + gx) · s`` — the centre may sit anywhere from half a
  cell before to half a cell after its own cell, so a centre on a cell border is well
  inside the sigmoid's range (YOLOv5's form);
* size    ``w = anchor_w · exp(tw)`` — unbounded, so any box shape is reachable from
  its best anchor (YOLOv2/v3's form); ``tw`` is clamped to ``MAX_LOG_SCALE`` first;
* landmark ``x = (gx + 0.5) · s + lx · anchor_w`` (and ``y`` alike): an offset from the
  cell centre in units of the anchor's size;
* objectness and classes are independent sigmoids.

Target assignment, per image, done by :class:`TargetEncoder`:

* an object is assigned to the anchor, among *all* scales, whose shape has the highest
  IoU with its box (shapes compared as if centred together; on equal IoU the lower
  anchor index, i.e. the smaller stride, wins) and to the cell of that anchor's grid
  that contains its centre, ``g = floor(c / s)``. A centre on the last pixel row or
  column, or exactly on the image border, is clamped into the last cell;
* collisions: objects are placed in order of decreasing area (ties by input order). If
  an object's best slot (scale, cell, anchor) is taken, it falls back to its next-best
  anchor (again in the cell of that anchor's grid that contains its centre), and so on;
  an object that finds every candidate slot taken is dropped and counted in
  ``Targets.num_dropped``;
* extra positives (``LossConfig.positive_iou`` and ``LossConfig.neighbour_cells``; on
  by default, ``detector train --assign multi``; ``--assign best`` turns them off and
  keeps Darknet's one slot per object): once every object has its best slot, each placed
  object also takes, in the same order, every free slot among: its best anchor and every
  anchor (any scale) whose shape IoU with its box is above ``positive_iou``, each in the
  cell containing its centre and, with ``neighbour_cells``, in the horizontal and the
  vertical neighbour cell nearest to the centre (YOLOv5's rule: a centre in the left half
  of its cell also goes to the cell on the left, and so on; the decoding reaches half a
  cell past a cell, so those cells can predict it exactly). A slot that is already a
  positive keeps its object: extras never displace a best slot or an earlier extra;
* other anchors: an anchor that is not a positive, but whose shape IoU with an object
  is above ``ignore_threshold``, in the cell containing that object's centre, is
  *ignored* for objectness (neither pushed to 0 nor to 1); every other slot is a
  negative;
* boxes of zero width or height are skipped.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from detector.boxes import box_convert, wh_iou
from detector.config import Anchors, LossConfig, ModelConfig

# States of a (cell, anchor) slot in Targets.state.
NEGATIVE = 0  # objectness target 0
POSITIVE = 1  # an object is assigned: every loss term applies
IGNORED = -1  # objectness is "don't care"

MAX_LOG_SCALE = 6.0  # tw/th clamp before exp(): a box at most e^6 ≈ 400 anchors wide
PERFECT_LOGIT = 20.0  # |logit| used by targets_to_logits for "certain" probabilities

NO_ANCHOR = -1  # TargetEncoder internal: the anchor of an object that has no slot

# Offsets of the values inside the last dimension D (the box is [0, 4)).
OBJ = 4
CLS = 5  # classes occupy [5, 5 + C)


@dataclass
class Targets:
    """Training targets of one image (or a batch, with a leading ``B`` dimension).

    Attributes (per scale, lists ordered like the strides):
        target: ``(H, W, A, D)`` float32: ``cx, cy, w, h`` (input pixels), ``1`` at
            positives, one-hot class, then ``2K`` landmark ``x, y`` (input pixels);
            zero where the slot is not a positive.
        state: ``(H, W, A)`` int8, one of ``NEGATIVE``, ``POSITIVE``, ``IGNORED``.
        landmark_mask: ``(H, W, A, K)`` bool, True where a positive's landmark is
            labelled (visibility > 0).
        num_dropped: objects that lost every candidate slot to collisions.
    """

    target: list[torch.Tensor]
    state: list[torch.Tensor]
    landmark_mask: list[torch.Tensor]
    num_dropped: int = 0

    @staticmethod
    def stack(items: list[Targets]) -> Targets:
        """Batch per-image targets: every tensor gains a leading ``B`` dimension."""
        num_scales = len(items[0].target)
        return Targets(
            target=[torch.stack([t.target[i] for t in items]) for i in range(num_scales)],
            state=[torch.stack([t.state[i] for t in items]) for i in range(num_scales)],
            landmark_mask=[
                torch.stack([t.landmark_mask[i] for t in items]) for i in range(num_scales)
            ],
            num_dropped=sum(t.num_dropped for t in items),
        )

    def to(self, device: torch.device | str) -> Targets:
        return Targets(
            [t.to(device, non_blocking=True) for t in self.target],
            [s.to(device, non_blocking=True) for s in self.state],
            [m.to(device, non_blocking=True) for m in self.landmark_mask],
            self.num_dropped,
        )


def anchor_tensor(anchors: Anchors) -> torch.Tensor:
    """Anchors as a ``(S, A, 2)`` float32 tensor of ``(w, h)`` input pixels."""
    return torch.tensor(anchors, dtype=torch.float32)  # (S, A, 2)


class TargetEncoder:
    """Turns ground truth into per-scale targets (see the module docstring for rules).

    Args:
        anchors: per stride, ``A`` anchor ``(w, h)`` in input pixels.
        strides: output strides, e.g. ``(8, 16, 32)``.
        num_classes: ``C``.
        num_landmarks: ``K`` (0 for plain boxes).
        input_size: side of the square model input in pixels.
        ignore_threshold: shape IoU above which a non-positive anchor is ignored.
        positive_iou: shape IoU above which an anchor is an extra positive (``None``: the
            best anchor only).
        neighbour_cells: also make the two neighbour cells nearest to an object's centre
            positives, for each of its positive anchors.
    """

    def __init__(
        self,
        anchors: Anchors,
        strides: tuple[int, ...],
        num_classes: int,
        input_size: int,
        num_landmarks: int = 0,
        ignore_threshold: float = LossConfig.ignore_threshold,
        positive_iou: float | None = LossConfig.positive_iou,
        neighbour_cells: bool = LossConfig.neighbour_cells,
    ) -> None:
        if positive_iou is not None and not 0 <= positive_iou < 1:
            raise ValueError(f"positive_iou must be in [0, 1) or None, got {positive_iou}")
        self.positive_iou = positive_iou
        self.neighbour_cells = neighbour_cells
        self.anchors = anchor_tensor(anchors)  # (S, A, 2)
        self.strides = tuple(strides)
        self.num_classes = num_classes
        self.num_landmarks = num_landmarks
        self.input_size = input_size
        self.ignore_threshold = ignore_threshold
        self.grid_sizes = tuple(math.ceil(input_size / s) for s in self.strides)
        self.num_outputs = 5 + num_classes + 2 * num_landmarks
        # Every (scale, gy, gx, a) slot has one id: all scales' (H, W, A) grids flattened
        # and concatenated in stride order, P slots in all.
        num_scales, num_anchors = self.anchors.shape[:2]
        grid = torch.tensor(self.grid_sizes)  # (S,)
        self._slots_per_scale = tuple(g * g * num_anchors for g in self.grid_sizes)
        self._num_slots = sum(self._slots_per_scale)  # P
        self._first_slot = torch.tensor(  # (S,) id of each scale's slot (0, 0, 0)
            [sum(self._slots_per_scale[:s]) for s in range(num_scales)]
        )
        self._row_slots = grid * num_anchors  # (S,) slots in one row of cells
        self._num_anchors = num_anchors
        self._last_cell = grid - 1  # (S,)
        self._strides = torch.tensor(self.strides, dtype=torch.float64)  # (S,)
        flat_anchor = torch.arange(num_scales * num_anchors)  # (S*A,) = scale · A + a
        self._anchor_scale = flat_anchor // num_anchors  # (S*A,)
        self._anchor_in_scale = flat_anchor % num_anchors  # (S*A,)
        # Offsets from a centre's cell to its candidate cells, times the per-axis step
        # towards the nearer edge: the cell itself, the horizontal, the vertical neighbour.
        self._cell_offsets = torch.tensor([[0, 0], [1, 0], [0, 1]] if neighbour_cells else [[0, 0]])

    @classmethod
    def from_config(
        cls, config: ModelConfig, loss_config: LossConfig | None = None
    ) -> TargetEncoder:
        """The encoder of a model, with the assignment rules of ``loss_config``."""
        rules = loss_config or LossConfig()
        return cls(
            config.anchors,
            config.strides,
            config.num_classes,
            config.input_size,
            config.num_landmarks,
            rules.ignore_threshold,
            rules.positive_iou,
            rules.neighbour_cells,
        )

    def empty(self) -> Targets:
        """Targets of an image without objects: every slot negative."""
        num_anchors = self.anchors.shape[1]
        k = self.num_landmarks
        return Targets(
            target=[torch.zeros(g, g, num_anchors, self.num_outputs) for g in self.grid_sizes],
            state=[
                torch.full((g, g, num_anchors), NEGATIVE, dtype=torch.int8) for g in self.grid_sizes
            ],
            landmark_mask=[
                torch.zeros(g, g, num_anchors, k, dtype=torch.bool) for g in self.grid_sizes
            ],
        )

    def __call__(
        self,
        boxes: torch.Tensor,
        classes: torch.Tensor,
        landmarks: torch.Tensor | None = None,
    ) -> Targets:
        """Encode one image.

        Args:
            boxes: ``(N, 4)`` xyxy in input pixels.
            classes: ``(N,)`` int class ids in ``[0, C)``.
            landmarks: ``(N, K, 3)`` ``(x, y, visibility)`` in input pixels, or ``None``.

        Returns:
            :class:`Targets` for this image.
        """
        boxes, classes, landmarks = self._checked(boxes, classes, landmarks)
        wh = boxes[:, 2:] - boxes[:, :2]  # (N, 2)
        valid = (wh > 0).all(1)  # (N,)
        if not valid.any():
            return self.empty()
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # (N, 2)
        shape_iou = wh_iou(wh, self.anchors.reshape(-1, 2))  # (N, S*A)
        cells, inside = self._centre_cells(centres)  # (N, S, 2) each
        own_slots = self._slot_ids(cells)  # (N, S*A)

        # Larger objects choose first; the stable sort keeps input order on ties.
        order = torch.sort(-wh.prod(1), stable=True).indices  # (N,)
        order = order[valid[order]]  # (M,) the objects to place, in placing order
        slots, objects, placed_anchor = self._best_slots(shape_iou, own_slots, order)
        placed = order[placed_anchor[order] != NO_ANCHOR]  # (M',) in placing order
        if self.positive_iou is not None or self.neighbour_cells:
            # Each placed object claims its extra anchors in each of its nearest cells.
            anchors = self._extra_anchors(shape_iou, placed, placed_anchor)  # (M', S*A)
            near, exists = self._nearest_cells(cells[placed], inside[placed])  # (M', C, S, .)
            wanted = anchors[:, :, None] & exists[:, :, self._anchor_scale].transpose(1, 2)
            near_slots = self._slot_ids(near).transpose(1, 2)  # (M', S*A, C)
            extra_slots, extra_objects = self._claim_free_slots(near_slots, wanted, placed, slots)
            slots, objects = torch.cat((slots, extra_slots)), torch.cat((objects, extra_objects))
        # Anchors that fit an object well, in its cell, are ignored unless positives.
        ignored = own_slots[(shape_iou > self.ignore_threshold) & valid[:, None]]
        out = self._targets(slots, objects, ignored, centres, wh, classes, landmarks)
        out.num_dropped = len(order) - len(placed)
        return out

    def _checked(
        self, boxes: torch.Tensor, classes: torch.Tensor, landmarks: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The inputs as ``(N, 4)`` float32, ``(N,)`` int64 and ``(N, K, 3)`` float32 (or
        ``None``); ``ValueError`` when they do not fit together or a class id is out of range."""
        boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        classes = torch.as_tensor(classes, dtype=torch.int64).reshape(-1)
        if len(classes) != len(boxes):
            raise ValueError(f"{len(boxes)} boxes but {len(classes)} class ids")
        if len(classes) and (classes.min() < 0 or classes.max() >= self.num_classes):
            raise ValueError(
                f"class ids must be in [0, {self.num_classes}), got {classes.tolist()}"
            )
        k = self.num_landmarks
        if landmarks is not None:
            landmarks = torch.as_tensor(landmarks, dtype=torch.float32)
            if landmarks.shape != (len(boxes), k, 3):
                raise ValueError(
                    f"landmarks must have shape ({len(boxes)}, {k}, 3), got {tuple(landmarks.shape)}"
                )
        return boxes, classes, landmarks

    def _centre_cells(self, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cell holding each centre at every scale, ``g = floor(c / stride)`` in
        float64, clamped into the grid.

        Args:
            centres: ``(N, 2)`` xy in input pixels.

        Returns:
            ``(N, S, 2)`` int64 cells ``(gx, gy)``, and ``(N, S, 2)`` float64 positions of
            the centres inside them in cells (in ``[0, 1]`` unless clamped).
        """
        scaled = centres.double()[:, None, :] / self._strides[:, None]  # (N, S, 2)
        cells = torch.minimum(scaled.floor().clamp(min=0), self._last_cell[:, None]).long()
        return cells, scaled - cells

    def _slot_ids(self, cells: torch.Tensor) -> torch.Tensor:
        """Slot ids of every flat anchor ``scale · A + a`` in a cell of its scale.

        Args:
            cells: ``(..., S, 2)`` int64 ``(gx, gy)``, one cell per scale.

        Returns:
            ``(..., S*A)`` int64 ids of slot ``(scale, gy, gx, a)`` for each flat anchor.
        """
        first = self._first_slot + cells[..., 1] * self._row_slots
        first = first + cells[..., 0] * self._num_anchors  # (..., S) id of anchor 0's slot
        return first[..., self._anchor_scale] + self._anchor_in_scale  # (..., S*A)

    def _best_slots(
        self, shape_iou: torch.Tensor, own_slots: torch.Tensor, order: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Best slot: each object, in ``order``, takes the slot of its best-fitting anchor in
        the cell holding its centre; if that slot is taken, its next-best anchor's, and so
        on. Sequential: who loses a collision depends on who came first.

        Args:
            shape_iou: ``(N, S*A)`` shape IoU of each object with each flat anchor.
            own_slots: ``(N, S*A)`` slot id of each flat anchor in the object's cell.
            order: ``(M,)`` the objects to place, in placing order.

        Returns:
            ``(M',)`` int64 slot ids taken and ``(M',)`` their objects, in placing order;
            ``(N,)`` int64 the flat anchor each object was placed at, ``NO_ANCHOR`` for an
            object that found every slot taken (dropped) or was not placed.
        """
        # Anchors best first; the stable sort puts the lower index first on equal IoU.
        preference = torch.sort(-shape_iou, dim=1, stable=True).indices  # (N, S*A)
        candidates = own_slots.gather(1, preference).tolist()  # N lists of S*A slot ids
        preference = preference.tolist()
        placed_anchor = [NO_ANCHOR] * len(shape_iou)
        taken: dict[int, int] = {}  # slot id -> object
        for n in order.tolist():
            for anchor, slot in zip(preference[n], candidates[n], strict=True):
                if slot not in taken:
                    taken[slot] = n
                    placed_anchor[n] = anchor
                    break
        slots = torch.tensor(list(taken), dtype=torch.int64)
        objects = torch.tensor(list(taken.values()), dtype=torch.int64)
        return slots, objects, torch.tensor(placed_anchor)

    def _extra_anchors(
        self, shape_iou: torch.Tensor, placed: torch.Tensor, placed_anchor: torch.Tensor
    ) -> torch.Tensor:
        """Extra anchors: each placed object's own anchor and every anchor (any scale) whose
        shape IoU with its box is above ``positive_iou``.

        Args:
            shape_iou: ``(N, S*A)``.
            placed: ``(M',)`` the objects that have a best slot.
            placed_anchor: ``(N,)`` from :meth:`_best_slots`.

        Returns:
            ``(M', S*A)`` bool, rows in the order of ``placed``.
        """
        anchors = torch.zeros(len(placed), shape_iou.shape[1], dtype=torch.bool)  # (M', S*A)
        anchors[torch.arange(len(placed)), placed_anchor[placed]] = True
        if self.positive_iou is not None:
            anchors |= shape_iou[placed] > self.positive_iou
        return anchors

    def _nearest_cells(
        self, cells: torch.Tensor, inside: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each centre's candidate cells: its own, then (with ``neighbour_cells``) the
        horizontal and the vertical neighbour on the side of the nearer cell edge, where
        the grid has one (a centre exactly halfway across has no neighbour on that axis).

        Args:
            cells, inside: ``(N, S, 2)`` from :meth:`_centre_cells`.

        Returns:
            ``(N, C, S, 2)`` int64 cells ``(gx, gy)`` (``C`` = 3, or 1 without
            ``neighbour_cells``) and ``(N, C, S)`` bool: whether each cell is a candidate.
        """
        lower = (inside < 0.5) & (cells > 0)  # (N, S, 2)
        upper = (inside > 0.5) & (cells < self._last_cell[:, None])  # (N, S, 2)
        step = upper.long() - lower.long()  # (N, S, 2) in {-1, 0, 1}
        offsets = step[:, None] * self._cell_offsets[None, :, None, :]  # (N, C, S, 2)
        exists = offsets.any(-1)  # (N, C, S)
        exists[:, 0] = True  # the centre's own cell
        return cells[:, None] + offsets, exists

    def _claim_free_slots(
        self, slots: torch.Tensor, wanted: torch.Tensor, claimant: torch.Tensor, taken: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Extra positives: every wanted slot that no best slot holds goes to its first claim.

        Args:
            slots: ``(M', S*A, C)`` int64 slot ids, in claiming order when flattened
                (object in placing order, flat anchor, cell).
            wanted: ``(M', S*A, C)`` bool: which of them are claimed.
            claimant: ``(M',)`` the object of each row.
            taken: ``(B,)`` int64 the best slots, which keep their objects.

        Returns:
            ``(U,)`` int64 distinct slot ids and ``(U,)`` their objects.
        """
        objects = claimant[:, None, None].expand_as(slots)[wanted]  # (Q,) row-major: in order
        slots = slots[wanted]  # (Q,)
        is_taken = torch.zeros(self._num_slots, dtype=torch.bool)  # (P,)
        is_taken[taken] = True
        free = ~is_taken[slots]  # (Q,)
        slots, objects = slots[free], objects[free]  # (Q',)
        unique_slots, which = torch.unique(slots, return_inverse=True)  # (U,), (Q',)
        first_claim = torch.full(unique_slots.shape, len(slots)).scatter_reduce(
            0, which, torch.arange(len(slots)), "amin"
        )  # (U,) index of each slot's first claim
        return unique_slots, objects[first_claim]

    def _targets(
        self,
        slots: torch.Tensor,
        objects: torch.Tensor,
        ignored: torch.Tensor,
        centres: torch.Tensor,
        wh: torch.Tensor,
        classes: torch.Tensor,
        landmarks: torch.Tensor | None,
    ) -> Targets:
        """The per-scale targets of an assignment: each assigned slot is a positive with
        its object's box, class and landmarks; an ignored slot that is not a positive is
        ``IGNORED``; every other slot is a negative.

        Args:
            slots: ``(Q,)`` int64 distinct slot ids of the positives; objects: ``(Q,)``.
            ignored: ``(I,)`` int64 slot ids, repeats allowed.
            centres, wh: ``(N, 2)`` input pixels; classes: ``(N,)``;
            landmarks: ``(N, K, 3)`` or ``None`` (no landmark targets, mask all False).
        """
        n, k = len(centres), self.num_landmarks
        has_landmarks = landmarks is not None and k > 0
        rows = torch.cat(  # (N, D) each object's target values
            (
                centres,
                wh,
                torch.ones(n, 1),
                F.one_hot(classes, self.num_classes).float(),
                landmarks[:, :, :2].reshape(n, 2 * k) if has_landmarks else torch.zeros(n, 2 * k),
            ),
            1,
        )
        visible = landmarks[:, :, 2] > 0 if has_landmarks else torch.zeros(n, k, dtype=torch.bool)
        target = torch.zeros(self._num_slots, self.num_outputs)  # (P, D)
        target[slots] = rows[objects]
        state = torch.full((self._num_slots,), NEGATIVE, dtype=torch.int8)  # (P,)
        state[ignored] = IGNORED
        state[slots] = POSITIVE
        landmark_mask = torch.zeros(self._num_slots, k, dtype=torch.bool)  # (P, K)
        landmark_mask[slots] = visible[objects]
        # Per-scale views: (P, ...) → S × (H, W, A, ...).
        shapes = [(g, g, self._num_anchors) for g in self.grid_sizes]
        split = self._slots_per_scale
        return Targets(
            target=[t.view(*s, -1) for t, s in zip(target.split(split), shapes, strict=True)],
            state=[t.view(s) for t, s in zip(state.split(split), shapes, strict=True)],
            landmark_mask=[
                t.view(*s, k) for t, s in zip(landmark_mask.split(split), shapes, strict=True)
            ],
        )


@dataclass
class Decoded:
    """Decoded predictions of a batch, all scales concatenated (``P`` = Σ H·W·A).

    Attributes:
        boxes: ``(B, P, 4)`` xyxy in input pixels.
        objectness: ``(B, P)`` probabilities.
        class_probs: ``(B, P, C)`` independent per-class probabilities.
        landmarks: ``(B, P, K, 2)`` xy in input pixels (``K`` may be 0).
    """

    boxes: torch.Tensor
    objectness: torch.Tensor
    class_probs: torch.Tensor
    landmarks: torch.Tensor

    def take(self, indices: list[int]) -> Decoded:
        """The predictions of the images at ``indices`` (a new batch of len(indices))."""
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.boxes.device)
        return Decoded(
            self.boxes[idx], self.objectness[idx], self.class_probs[idx], self.landmarks[idx]
        )


@functools.lru_cache(maxsize=64)
def grid_cells(height: int, width: int, device: torch.device) -> torch.Tensor:
    """``(H, W, 1, 2)`` float tensor of cell indices ``(gx, gy)`` (cached per shape and
    device: treat it as read-only). Made outside inference mode, so that a tensor first
    made for inference still serves training."""
    with torch.inference_mode(False):
        gy, gx = torch.meshgrid(
            torch.arange(height, device=device, dtype=torch.float32),
            torch.arange(width, device=device, dtype=torch.float32),
            indexing="ij",
        )
        return torch.stack((gx, gy), -1)[:, :, None, :]


def decode_scale(
    raw: torch.Tensor, anchors: torch.Tensor, stride: int, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode one scale of raw head output.

    Args:
        raw: ``(B, H, W, A, D)`` raw values.
        anchors: ``(A, 2)`` anchor ``(w, h)`` in input pixels.
        stride: this scale's stride in pixels.
        num_classes: ``C``.

    Returns:
        ``cxcywh`` boxes ``(B, H, W, A, 4)``, objectness logits ``(B, H, W, A)``,
        class logits ``(B, H, W, A, C)``, landmarks ``(B, H, W, A, K, 2)`` in input pixels.
    """
    raw = raw.float()
    height, width = raw.shape[1:3]
    cells = grid_cells(height, width, raw.device)  # (H, W, 1, 2)
    anchors = anchors.to(raw.device, torch.float32)  # (A, 2)
    xy = (raw[..., 0:2].sigmoid() * 2 - 0.5 + cells) * stride  # (B, H, W, A, 2)
    wh = anchors * raw[..., 2:4].clamp(max=MAX_LOG_SCALE).exp()  # (B, H, W, A, 2)
    lm_raw = raw[..., CLS + num_classes :]
    lm = lm_raw.reshape(*lm_raw.shape[:-1], -1, 2)  # (B, H, W, A, K, 2)
    lm = (cells[..., None, :] + 0.5) * stride + lm * anchors[:, None, :]
    return torch.cat((xy, wh), -1), raw[..., OBJ], raw[..., CLS : CLS + num_classes], lm


def decode(outputs: list[torch.Tensor], config: ModelConfig) -> Decoded:
    """Decode the raw head output of every scale into boxes and probabilities.

    Args:
        outputs: per stride, ``(B, H, W, A, D)`` raw values (the model's forward output).
        config: the model's configuration (anchors, strides, classes).

    Returns:
        :class:`Decoded` with every scale's predictions concatenated.
    """
    anchors = anchor_tensor(config.anchors)
    boxes, obj, cls, lms = [], [], [], []
    for i, raw in enumerate(outputs):
        cxcywh, obj_logit, cls_logit, lm = decode_scale(
            raw, anchors[i], config.strides[i], config.num_classes
        )
        batch = raw.shape[0]
        boxes.append(box_convert(cxcywh, "cxcywh", "xyxy").reshape(batch, -1, 4))
        obj.append(obj_logit.sigmoid().reshape(batch, -1))
        cls.append(cls_logit.sigmoid().reshape(batch, -1, config.num_classes))
        lms.append(lm.reshape(batch, obj[-1].shape[1], config.num_landmarks, 2))
    return Decoded(torch.cat(boxes, 1), torch.cat(obj, 1), torch.cat(cls, 1), torch.cat(lms, 1))


def decode_candidates(
    outputs: list[torch.Tensor], config: ModelConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What inference needs of :func:`decode`, in fewer operations: per anchor of every
    cell, its xyxy box, its best class and score = objectness × that class's probability,
    and its landmarks. The best class is that of the largest class logit (the sigmoid is
    monotonic, so it is the most probable class; of equal logits, the first). Its box and
    landmark formulas are :func:`decode_scale`'s, written out for the hot path (through
    ``decode_scale`` and ``box_convert`` it measured about 1.4x the time);
    ``tests/test_fuse.py`` holds the two equal.

    Returns:
        boxes ``(B, P, 4)`` xyxy, scores ``(B, P)``, class ids ``(B, P)`` int64 and
        landmarks ``(B, P, K, 2)``, in input pixels, every scale concatenated.
    """
    anchors = anchor_tensor(config.anchors)
    c = config.num_classes
    boxes, scores, class_ids, landmarks = [], [], [], []
    for i, raw in enumerate(outputs):
        raw = raw.float()
        batch, height, width, num_anchors = raw.shape[:4]
        cells = grid_cells(height, width, raw.device)  # (H, W, 1, 2)
        anc = anchors[i].to(raw.device)  # (A, 2)
        stride = config.strides[i]
        xy = (raw[..., 0:2].sigmoid() * 2 - 0.5 + cells) * stride  # (B, H, W, A, 2)
        half = anc * raw[..., 2:4].clamp(max=MAX_LOG_SCALE).exp() / 2  # (B, H, W, A, 2)
        boxes.append(torch.cat((xy - half, xy + half), -1).reshape(batch, -1, 4))
        best_logit, best_class = raw[..., CLS : CLS + c].max(-1)  # (B, H, W, A) each
        scores.append((raw[..., OBJ].sigmoid() * best_logit.sigmoid()).reshape(batch, -1))
        class_ids.append(best_class.reshape(batch, -1))
        lm = raw[..., CLS + c :].reshape(batch, height, width, num_anchors, -1, 2)
        lm = (cells[..., None, :] + 0.5) * stride + lm * anc[:, None, :]
        landmarks.append(lm.reshape(batch, height * width * num_anchors, -1, 2))
    return (
        torch.cat(boxes, 1),
        torch.cat(scores, 1),
        torch.cat(class_ids, 1),
        torch.cat(landmarks, 1),
    )


def targets_to_logits(targets: Targets, config: ModelConfig) -> list[torch.Tensor]:
    """The "perfect" raw output that :func:`decode` turns back into ``targets``.

    Positives get the exact inverse of the decoding formulas and confident objectness
    and class logits (``±PERFECT_LOGIT``); every other slot gets objectness
    ``−PERFECT_LOGIT``. Works on per-image ``(H, W, A, D)`` or batched targets; returns
    the batched ``(B, H, W, A, D)`` form.
    """
    anchors = anchor_tensor(config.anchors)
    c = config.num_classes
    logits = []
    for i, (target, state) in enumerate(zip(targets.target, targets.state, strict=True)):
        if target.dim() == 4:
            target, state = target[None], state[None]
        stride = config.strides[i]
        height, width = target.shape[1:3]
        cells = grid_cells(height, width, target.device)  # (H, W, 1, 2)
        anc = anchors[i].to(target.device)  # (A, 2)
        pos = (state == POSITIVE)[..., None]  # (B, H, W, A, 1)
        offset = target[..., 0:2] / stride - cells  # in (-0.5, 1.5) at positives
        sig = ((offset + 0.5) / 2).clamp(1e-6, 1 - 1e-6)
        t_xy = torch.log(sig / (1 - sig))
        t_wh = torch.log(target[..., 2:4].clamp(min=1e-9) / anc)
        obj = torch.where(pos[..., 0], PERFECT_LOGIT, -PERFECT_LOGIT)[..., None]
        cls = (target[..., CLS : CLS + c] * 2 - 1) * PERFECT_LOGIT
        lm = target[..., CLS + c :].reshape(*target.shape[:-1], -1, 2)
        t_lm = (lm - (cells[..., None, :] + 0.5) * stride) / anc[:, None, :]
        t_lm = t_lm.reshape(*target.shape[:-1], -1)
        raw = torch.cat((t_xy, t_wh, obj, cls, t_lm), -1)  # (B, H, W, A, D)
        background = torch.zeros_like(raw)
        background[..., OBJ : CLS + c] = -PERFECT_LOGIT
        logits.append(torch.where(pos, raw, background))
    return logits
