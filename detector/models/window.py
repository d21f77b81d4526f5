"""The sliding-window classifier (OverFeat): a W×W crop classifier written as convolutions.

The network is valid 3×3 convolutions (no padding) and 2×2 max-pools, then the "fully
connected" layers as convolutions: the first one's kernel covers the whole k×k map left
from a W×W input, the others are 1×1. On a W×W crop it outputs one vector; on a larger
image the same weights emit one vector per window, windows ``stride`` pixels apart, and
each equals what the crop at that place would give (BatchNorm in eval mode).

``forward`` takes ``(B, 3, H, W)`` float RGB in [0, 1] (a ``grayscale`` model first takes
its luma) and always returns the raw output
``(B, C + 1 + 4, H', W')``: channels ``[0, C + 1)`` are class logits (index 0 is the
background), ``[C + 1, C + 5)`` the box regression of :func:`encode_window_box`.

Pyramid levels, window geometry and the raw output → candidate boxes in original image
pixels live in :mod:`detector.window_pyramid`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

BACKGROUND = 0  # index of the background logit; class id c has logit c + 1
NUM_BOX_VALUES = 4  # (tx, ty, tw, th) per window, see encode_window_box
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma of R, G, B (OpenCV's RGB2GRAY)
# decode_window_boxes clamps tw, th here: a box at most 1000/16 times the window's side
# (torchvision's BoxCoder bound), so a wild regression cannot overflow exp.
MAX_LOG_SCALE = math.log(1000.0 / 16)


@dataclass(frozen=True)
class WindowConfig:
    """Everything needed to build a sliding-window classifier and to read its output."""

    num_classes: int  # C: object classes (the background is extra, logit 0)
    window: int = 32  # W: side of the square window in network-input pixels
    stage_widths: tuple[int, ...] = (16, 32)  # channels per stage: valid 3×3 convs, 2×2 pool
    convs_per_stage: int = 2  # valid 3×3 conv-BN-SiLU blocks before each pool
    fc_widths: tuple[int, ...] = (64,)  # "fully connected" widths: k×k conv first, then 1×1
    class_names: tuple[str, ...] = ()  # optional, len == num_classes when given
    # As a detector (the "sliding-window" model kind): the side of the square letterboxed
    # input, and the image pyramid run over it (detector.window_pyramid.pyramid_levels).
    input_size: int = 320  # network-input pixels, >= window
    min_size: float = 0.0  # smallest object side to find, input pixels; 0 = the window
    scale_step: float = 2 ** (1 / 4)  # object-size ratio between neighbouring levels, > 1
    # Read the RGB input as luminance (LUMA_WEIGHTS, a fixed first step; the first
    # convolution then has one input channel): for classes that grey crops show.
    grayscale: bool = False
    # Whether a detection's box is its window's regression (OverFeat) or the window itself:
    # False for a model trained on whole crops only, whose regressor had no target.
    regress_boxes: bool = True
    # Letterbox grey around every pyramid level, in network pixels on each side, so that
    # windows reach past the image's edge as the training crops of objects near it do
    # (detector.window_pyramid.pad_level). 0: windows stay inside the image (files before).
    border: int = 0

    def __post_init__(self) -> None:
        if self.input_size < self.window:
            raise ValueError(
                f"input_size {self.input_size} is smaller than the window {self.window}"
            )
        if self.min_size < 0:
            raise ValueError(f"min_size must be >= 0 (0: the window), got {self.min_size}")
        if not self.scale_step > 1:
            raise ValueError(f"scale_step must be > 1, got {self.scale_step}")
        if self.border < 0:
            raise ValueError(f"border must be >= 0 pixels, got {self.border}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if not self.stage_widths or min(self.stage_widths) < 1:
            raise ValueError(
                f"stage_widths must be one or more positive ints, got {self.stage_widths}"
            )
        if self.convs_per_stage < 1:
            raise ValueError(f"convs_per_stage must be >= 1, got {self.convs_per_stage}")
        if not self.fc_widths or min(self.fc_widths) < 1:
            raise ValueError(f"fc_widths must be one or more positive ints, got {self.fc_widths}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        margin = self._conv_margin
        if self.window <= margin or (self.window - margin) % self.stride != 0:
            valid = ", ".join(str(margin + k * self.stride) for k in range(1, 5))
            raise ValueError(
                f"window {self.window} does not fit the network ({len(self.stage_widths)} "
                f"stages of {self.convs_per_stage} valid 3x3 convs and a 2x2 pool): expected "
                f"{margin} + a positive multiple of {self.stride}, e.g. {valid}"
            )

    @property
    def _conv_margin(self) -> int:
        """Pixels the valid convolutions eat, in input pixels: 2 per conv at each stage's
        resolution, ``2 * convs * (1 + 2 + … + stride / 2)``."""
        return 2 * self.convs_per_stage * (self.stride - 1)

    @property
    def stride(self) -> int:
        """Input pixels between neighbouring windows: 2 per stage's pool."""
        return 2 ** len(self.stage_widths)

    @property
    def input_multiple(self) -> int:
        """Letterboxed inputs are padded to multiples of this (the window stride)."""
        return self.stride

    @property
    def fc_kernel(self) -> int:
        """k: side of the map a W×W input leaves, the first FC convolution's kernel."""
        return (self.window - self._conv_margin) // self.stride

    @property
    def num_outputs(self) -> int:
        """C + 1 + 4: values per window (class logits with background, box regression)."""
        return self.num_classes + 1 + NUM_BOX_VALUES

    @property
    def names(self) -> tuple[str, ...]:
        """Class names; ``"0"``, ``"1"``, … when none were given."""
        return self.class_names or tuple(str(i) for i in range(self.num_classes))

    @property
    def smallest_object(self) -> float:
        """The smallest object side the pyramid looks for, in input pixels."""
        return self.min_size or float(self.window)

    # A window model has no landmarks; these mirror ModelConfig's for shared code.
    @property
    def num_landmarks(self) -> int:
        return 0

    @property
    def landmark_names(self) -> tuple[str, ...]:
        return ()

    @property
    def skeleton(self) -> tuple[tuple[int, int], ...]:
        return ()

    def output_size(self, input_size: tuple[int, int]) -> tuple[int, int]:
        """``(H', W')`` of the output for an ``(H, W)`` input, both >= ``window``.

        ``H' = (H - window) // stride + 1`` (same for W): the windows that fit wholly; the
        last ``(H - window) % stride`` rows (columns) of pixels belong to no further window.
        """
        h, w = input_size
        if min(h, w) < self.window:
            raise ValueError(
                f"input size (h, w) = {input_size} is smaller than the window {self.window}"
            )
        return (h - self.window) // self.stride + 1, (w - self.window) // self.stride + 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> WindowConfig:
        """Inverse of :meth:`to_dict` (JSON lists become tuples)."""
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown window config keys: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def _valid_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """3×3 convolution without padding (no bias) → BatchNorm → SiLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=0, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.SiLU(inplace=True),
    )


class WindowClassifier(nn.Module):
    """A W×W crop classifier whose fully connected layers are convolutions."""

    def __init__(self, config: WindowConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        channels = 1 if config.grayscale else 3
        # (1, 3, 1, 1) luma weights; not in the state dict (fixed by the config)
        luma = torch.tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)
        self.register_buffer("luma", luma, persistent=False)
        for width in config.stage_widths:
            for _ in range(config.convs_per_stage):
                layers.append(_valid_conv(channels, width))
                channels = width
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        fc: list[nn.Module] = []
        kernel = config.fc_kernel  # the first FC layer sees the whole remaining map
        for width in config.fc_widths:
            fc += [nn.Conv2d(channels, width, kernel), nn.SiLU(inplace=True)]
            channels, kernel = width, 1
        self.fully_connected = nn.Sequential(*fc)
        self.head = nn.Conv2d(channels, config.num_outputs, 1)

    @property
    def stride(self) -> int:
        return self.config.stride

    @property
    def window(self) -> int:
        return self.config.window

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Raw output for every window of the images.

        Args:
            images: ``(B, 3, H, W)`` float, RGB in [0, 1]; ``H, W >= window``, any size.

        Returns:
            ``(B, C + 5, H', W')`` with ``(H', W') = config.output_size((H, W))``; position
            ``(i, j)`` is the window with top-left corner ``(j * stride, i * stride)``.
        """
        if self.config.grayscale:
            images = (images * self.luma).sum(1, keepdim=True)  # (B, 1, H, W)
        x = self.features(images)  # (B, c, ~H/stride, ~W/stride)
        return self.head(self.fully_connected(x))  # (B, C + 5, H', W')


def encode_window_box(boxes: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """The regression target of each box relative to its window (OverFeat's regressor).

    With the window's centre ``(wx, wy)`` and size ``(ww, wh)`` and the box's centre
    ``(cx, cy)`` and size ``(w, h)``::

        tx = (cx - wx) / ww,  ty = (cy - wy) / wh,  tw = log(w / ww),  th = log(h / wh)

    so a box equal to its window encodes to zeros. Inverse: :func:`decode_window_boxes`.

    Args:
        boxes: ``(N, 4)`` float xyxy, positive width and height.
        windows: ``(N, 4)`` float xyxy in the same pixels (any units, as long as shared).

    Returns:
        ``(N, 4)`` ``(tx, ty, tw, th)``.
    """
    if boxes.shape != windows.shape or boxes.shape[-1:] != (4,):
        raise ValueError(
            f"boxes and windows must both be (N, 4), got {tuple(boxes.shape)} and {tuple(windows.shape)}"
        )
    size = boxes[:, 2:] - boxes[:, :2]  # (N, 2) w, h
    if bool((size <= 0).any()):
        raise ValueError("boxes must have positive width and height")
    window_size = windows[:, 2:] - windows[:, :2]  # (N, 2)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    window_centre = (windows[:, :2] + windows[:, 2:]) / 2
    return torch.cat(((centre - window_centre) / window_size, torch.log(size / window_size)), 1)


def decode_window_boxes(deltas: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """Boxes from regression values: the inverse of :func:`encode_window_box`.

    ``tw, th`` are clamped at ``MAX_LOG_SCALE`` first (beyond the range any encoded box
    reaches in practice).

    Args:
        deltas: ``(..., 4)`` ``(tx, ty, tw, th)``.
        windows: ``(..., 4)`` xyxy, broadcastable to ``deltas``.

    Returns:
        ``(..., 4)`` xyxy boxes in the windows' pixels.
    """
    window_size = windows[..., 2:] - windows[..., :2]  # (..., 2)
    window_centre = (windows[..., :2] + windows[..., 2:]) / 2
    centre = window_centre + deltas[..., :2] * window_size
    half = window_size * torch.exp(deltas[..., 2:].clamp(max=MAX_LOG_SCALE)) / 2
    return torch.cat((centre - half, centre + half), -1)
