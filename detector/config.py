"""Configuration dataclasses of models and training: model sizes, the model config
written into each checkpoint, the loss, augmentation and training settings.

The CLI and YAML files only fill these in. The settings of a detection request live in
:mod:`detector.settings`, the server's in :mod:`server.config`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

# Anchors are (width, height) in input pixels, one tuple per output stride.
Anchors = tuple[tuple[tuple[float, float], ...], ...]

# A generic 9-anchor set for a 320-pixel input (three per stride 8/16/32); the trainer
# replaces it with k-means anchors fitted to the training boxes.
DEFAULT_ANCHORS: Anchors = (
    ((10.0, 13.0), (16.0, 30.0), (33.0, 23.0)),
    ((30.0, 61.0), (62.0, 45.0), (59.0, 119.0)),
    ((116.0, 90.0), (156.0, 198.0), (373.0, 326.0)),
)
DEFAULT_STRIDES: tuple[int, ...] = (8, 16, 32)
LETTERBOX_PAD_VALUE = 114  # grey of letterbox padding (YOLO-family), used by detector.boxes
DEFAULT_MIN_BOX_SIZE = 2.0  # see AugmentConfig.min_box_size
DEFAULT_MIN_AREA_RATIO = 0.1  # see AugmentConfig.min_area_ratio
UINT8_MAX = 255


@dataclass(frozen=True)
class SizeSpec:
    """Widths and depths of one named model size."""

    widths: tuple[int, int, int, int, int]  # channels: stem, stride 4, 8, 16, 32
    depths: tuple[int, int, int, int]  # residual blocks at strides 4, 8, 16, 32
    neck_depth: int  # residual blocks in each neck merge block


MODEL_SIZES: dict[str, SizeSpec] = {
    # Trains on 2 CPU cores; the shipped digits model.
    "tiny": SizeSpec(widths=(16, 32, 64, 128, 256), depths=(1, 1, 1, 1), neck_depth=1),
    # A GPU size: about 4x the channels' cost of tiny, deeper at strides 8 and 16.
    "small": SizeSpec(widths=(32, 64, 128, 256, 512), depths=(1, 2, 3, 1), neck_depth=1),
    "medium": SizeSpec(widths=(48, 96, 192, 384, 768), depths=(2, 4, 6, 2), neck_depth=2),
}

HEADS = ("coupled", "decoupled", "cls-branch")  # ModelConfig.head


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build a grid detector and to decode its output."""

    num_classes: int  # C: number of object classes
    size: str = "tiny"  # a key of MODEL_SIZES
    input_size: int = 320  # side of the square letterboxed input, multiple of 32
    anchors: Anchors = DEFAULT_ANCHORS  # per stride, A (w, h) in input pixels
    strides: tuple[int, ...] = DEFAULT_STRIDES  # output strides, one per scale
    num_landmarks: int = 0  # K: keypoints per object (0 for plain boxes)
    class_names: tuple[str, ...] = ()  # optional, len == num_classes when given
    landmark_names: tuple[str, ...] = ()  # optional, len == num_landmarks when given
    flip_idx: tuple[int, ...] = ()  # landmark permutation for a horizontal flip
    # Pairs (i, j) of landmark indices in [0, K) joined by a line when detections are drawn.
    skeleton: tuple[tuple[int, int], ...] = ()
    # The output layers on the neck: "coupled" = one 1×1 conv per stride for every value;
    # "decoupled" = per stride a 3×3 conv branch for the classes and another for box,
    # objectness and landmarks, each before its own 1×1 conv (YOLOX/YOLOv8's split);
    # "cls-branch" = the class branch only (box, objectness, landmarks: one 1×1 conv).
    # "coupled" here because model files written before this field have that head; new
    # training runs default to "decoupled" (TrainOptions.head).
    head: str = "coupled"
    head_depth: int = 1  # 3×3 conv blocks in each branch of a decoupled head
    # Channels of a decoupled head's branches; 0: max(64, neck width / 2).
    head_width: int = 0

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; expected one of {HEADS}")
        if self.head_depth < 1:
            raise ValueError(f"head_depth must be >= 1, got {self.head_depth}")
        if self.head_width < 0:
            raise ValueError(f"head_width must be >= 0, got {self.head_width}")
        if self.head == "coupled" and self.head_depth != 1:
            raise ValueError(
                f"head_depth applies to the decoupled head only, got {self.head_depth}"
            )
        if self.size not in MODEL_SIZES:
            raise ValueError(
                f"unknown model size {self.size!r}; expected one of {list(MODEL_SIZES)}"
            )
        if self.input_size <= 0 or self.input_size % max(self.strides) != 0:
            raise ValueError(
                f"input_size must be a positive multiple of {max(self.strides)}, got {self.input_size}"
            )
        if len(self.anchors) != len(self.strides):
            raise ValueError(
                f"need one anchor set per stride: {len(self.anchors)} sets for {len(self.strides)} strides"
            )
        if len({len(a) for a in self.anchors}) != 1:
            raise ValueError("every stride must have the same number of anchors")
        if self.num_landmarks < 0:
            raise ValueError(f"num_landmarks must be >= 0, got {self.num_landmarks}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        if self.landmark_names and len(self.landmark_names) != self.num_landmarks:
            raise ValueError(
                f"{len(self.landmark_names)} landmark names for {self.num_landmarks} landmarks"
            )
        if self.flip_idx and sorted(self.flip_idx) != list(range(self.num_landmarks)):
            raise ValueError(f"flip_idx must be a permutation of 0..{self.num_landmarks - 1}")
        for pair in self.skeleton:
            if len(pair) != 2 or not all(0 <= i < self.num_landmarks for i in pair):
                raise ValueError(
                    f"skeleton pair {pair} must be two landmark indices in [0, {self.num_landmarks})"
                )

    @property
    def input_multiple(self) -> int:
        """Input sides must be multiples of this (the largest stride)."""
        return max(self.strides)

    @property
    def num_anchors(self) -> int:
        """A: anchors per cell (the same at every scale)."""
        return len(self.anchors[0])

    @property
    def num_outputs(self) -> int:
        """D = 5 + C + 2K: values each anchor predicts."""
        return 5 + self.num_classes + 2 * self.num_landmarks

    @property
    def names(self) -> tuple[str, ...]:
        """Class names; ``"0"``, ``"1"``, … when none were given."""
        return self.class_names or tuple(str(i) for i in range(self.num_classes))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """Inverse of :meth:`to_dict` (JSON lists become tuples)."""

        def tup(x):
            return tuple(tup(v) for v in x) if isinstance(x, list | tuple) else x

        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**{k: tup(v) for k, v in data.items()})


@dataclass(frozen=True)
class LossConfig:
    """Gains and rules of the training loss."""

    box_gain: float = 0.05  # weight of the (1 - CIoU) box term
    obj_gain: float = 1.0  # weight of the objectness BCE term
    cls_gain: float = 0.5  # weight of the class BCE term
    landmark_gain: float = 0.5  # weight of the landmark term (K > 0)
    # Landmark error per coordinate, in anchor units from the cell centre: "l1", or
    # "smooth-l1" (beta 1, the shipped faces model's first 20 epochs; its gradient fades
    # below one anchor unit, several pixels, and kept the points coarse: weights/README.md).
    landmark_loss: str = "l1"
    scale_balance: tuple[float, ...] = (4.0, 1.0, 0.4)  # objectness weight per stride
    ignore_threshold: float = 0.5  # non-best anchors with shape IoU above: objectness ignored
    # Extra positives per object (see detector.encoding): anchors with shape IoU above
    # positive_iou (None: the best anchor only), and the two nearest neighbour cells.
    positive_iou: float | None = 0.4
    neighbour_cells: bool = True
    iou_objectness: bool = True  # objectness target of positives = IoU(pred, gt), not 1

    def __post_init__(self) -> None:
        if self.landmark_loss not in LANDMARK_LOSSES:
            raise ValueError(
                f"landmark_loss must be one of {', '.join(LANDMARK_LOSSES)}, "
                f"got {self.landmark_loss!r}"
            )


# LossConfig.landmark_loss's choices (`detector train --landmark-loss`).
LANDMARK_LOSSES = ("l1", "smooth-l1")


# Named target-assignment rules (`detector train --assign`): LossConfig fields of each.
# "multi" is the default: fine-tuning the digits model with it lifted validation AP
# from the 0.62 where "best" had levelled off (weights/README.md).
ASSIGN_RULES: dict[str, dict] = {
    "best": {"positive_iou": None, "neighbour_cells": False},  # Darknet: one slot per object
    "multi": {  # YOLOv5-like, about 10 slots per object: LossConfig's defaults
        "positive_iou": LossConfig.positive_iou,
        "neighbour_cells": LossConfig.neighbour_cells,
    },
}


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run."""

    epochs: int = 50
    # Batch 8 with AdamW at lr 0.003 and a decoupled head: the recipe measured best in
    # bench/README.md ("Recipe ablation"); SGD wants about lr 0.01.
    batch_size: int = 8
    optimizer: str = "adamw"  # "adamw" or "sgd" (Nesterov)
    lr: float = 0.003  # peak learning rate after warm-up
    momentum: float = 0.937  # SGD momentum, AdamW beta1
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    final_lr_ratio: float = 0.05  # cosine decays to lr * final_lr_ratio
    ema_decay: float = 0.999
    patience: int = 20  # epochs without val improvement before early stop (0 = never)
    close_mosaic: int = 0  # the last N epochs train without mosaic (whole images, as at inference)
    workers: int = 2
    seed: int = 0
    amp: bool = True  # only takes effect on CUDA
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        if not 0 <= self.close_mosaic <= self.epochs:
            raise ValueError(f"close_mosaic must be in [0, epochs], got {self.close_mosaic}")


MODEL_KINDS_TRAINED = (
    "grid",
    "sliding-window",
)  # `detector train --kind`; grid with keypoints is "landmark"


@dataclass(frozen=True)
class WindowTrainConfig:
    """Settings of a sliding-window run (``detector train --kind sliding-window``): the
    classifier's shape and pyramid, its crops, loss and hard-negative mining
    (:mod:`detector.data.window_crops`, :mod:`detector.window_loss`,
    :mod:`detector.hard_negatives`)."""

    window: int = 32  # W: the crop side in input pixels (see WindowConfig for valid sides)
    # Smallest object side to find, input pixels: None = the 2nd percentile of the training
    # boxes' longer sides, at least window / 2; 0 = the window.
    min_size: float | None = None
    stage_widths: tuple[int, ...] | None = None  # conv stage channels; None: WindowConfig's
    fc_widths: tuple[int, ...] | None = None  # "fully connected" widths; None: WindowConfig's
    grayscale: bool = False  # the model reads its input as luminance (WindowConfig.grayscale)
    # Grey border around each pyramid level, network pixels (WindowConfig.border); None:
    # a quarter of the window, which a positive of an object at the image's edge reaches.
    border: int | None = None
    negatives_per_positive: int = 3  # random negative crops per positive crop
    box_gain: float = 1.0  # weight of the smooth-L1 box term (class cross-entropy weighs 1)
    hard_negative_rounds: int = 1  # rounds of hard-negative mining (0: none)
    # 1-based epochs after which to mine; () = the rounds spread over the second half.
    hard_negative_epochs: tuple[int, ...] = ()
    hard_negative_score: float = 0.5  # a false positive scores at least this
    hard_negatives_per_image: int = 10  # the highest-scoring false positives kept per image

    def __post_init__(self) -> None:
        if self.min_size is not None and self.min_size < 0:
            raise ValueError(f"min_size must be >= 0 (0: the window), got {self.min_size}")
        if self.border is not None and self.border < 0:
            raise ValueError(f"border must be >= 0 pixels, got {self.border}")
        if self.negatives_per_positive < 0:
            raise ValueError(
                f"negatives_per_positive must be >= 0, got {self.negatives_per_positive}"
            )
        if self.hard_negative_rounds < 0:
            raise ValueError(f"hard_negative_rounds must be >= 0, got {self.hard_negative_rounds}")
        if any(e < 1 for e in self.hard_negative_epochs):
            raise ValueError(f"hard_negative_epochs are 1-based, got {self.hard_negative_epochs}")
        if not 0 <= self.hard_negative_score <= 1:
            raise ValueError(
                f"hard_negative_score must be in [0, 1], got {self.hard_negative_score}"
            )


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the training augmentations (Ultralytics-like defaults)."""

    mosaic: float = 1.0  # probability of a 4-image mosaic instead of one letterboxed image
    scale: float = 0.5  # zoom gain drawn from [1 - scale, 1 + scale]; in [0, 1)
    translate: float = 0.1  # shift of the image centre, fraction of the output side; in [0, 0.5]
    degrees: float = 0.0  # rotation drawn from [-degrees, degrees]; 0 means no rotation
    fliplr: float = 0.5  # probability of a horizontal flip
    hsv_h: float = 0.015  # hue shift drawn from [-hsv_h, hsv_h] turns of the colour wheel
    hsv_s: float = 0.7  # saturation gain drawn from [1 - hsv_s, 1 + hsv_s]
    hsv_v: float = 0.4  # value (brightness) gain drawn from [1 - hsv_v, 1 + hsv_v]
    min_box_size: float = DEFAULT_MIN_BOX_SIZE  # boxes narrower or shorter (output px) dropped
    min_area_ratio: float = DEFAULT_MIN_AREA_RATIO  # boxes cut to less of their area dropped
    pad_value: int = LETTERBOX_PAD_VALUE  # grey level of padding and of areas no image covers

    def __post_init__(self) -> None:
        ranges = {
            "scale": (0.0, 1.0),
            "mosaic": (0.0, 1.0),
            "translate": (0.0, 0.5),
            "degrees": (0.0, 180.0),
            "fliplr": (0.0, 1.0),
            "hsv_h": (0.0, 0.5),
            "hsv_s": (0.0, 1.0),
            "hsv_v": (0.0, 1.0),
            "min_box_size": (0.0, math.inf),
            "min_area_ratio": (0.0, 1.0),
            "pad_value": (0, UINT8_MAX),
        }
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"AugmentConfig.{name} must be in [{low}, {high}], got {value}")
        if self.scale >= 1:
            raise ValueError(f"AugmentConfig.scale must be below 1, got {self.scale}")
