"""The grid detector: a CSP backbone, a PAN neck joining strides 8/16/32, 1×1 heads.

``forward`` takes a ``(B, 3, H, W)`` float batch (RGB, values in [0, 1]) and always
returns the raw head output: one ``(B, H/s, W/s, A, 5 + C + 2K)`` tensor per stride
``s``. Decoding, loss and NMS are separate callables (``detector.encoding``,
``detector.loss``, ``detector.postprocess``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from detector.config import MODEL_SIZES, ModelConfig
from detector.encoding import CLS, OBJ
from detector.models.layers import SPPF, ConvBlock, CSPBlock

# Prior for the initial objectness bias: about this many objects per 640×640 image.
OBJECTS_PER_IMAGE_PRIOR = 8
PRIOR_IMAGE_SIDE = 640
DECOUPLED_MIN_WIDTH = 64  # channels of a decoupled head's branches: max(this, neck width / 2)


class Backbone(nn.Module):
    """Stem at stride 2, then four downsampling CSP stages (strides 4, 8, 16, 32)."""

    def __init__(self, widths: tuple[int, ...], depths: tuple[int, ...]):
        super().__init__()
        self.stem = ConvBlock(3, widths[0], 3, 2)
        stages = []
        for i, depth in enumerate(depths):
            stages.append(
                nn.Sequential(
                    ConvBlock(widths[i], widths[i + 1], 3, 2),
                    CSPBlock(widths[i + 1], widths[i + 1], depth),
                )
            )
        self.stages = nn.ModuleList(stages)
        self.sppf = SPPF(widths[-1], widths[-1])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        c3, c4, c5 = features[1], features[2], self.sppf(features[3])
        return c3, c4, c5  # strides 8, 16, 32


class Neck(nn.Module):
    """Path aggregation: top-down (32 → 16 → 8) then bottom-up (8 → 16 → 32)."""

    def __init__(self, widths: tuple[int, int, int], depth: int):
        super().__init__()
        w3, w4, w5 = widths
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.reduce5 = ConvBlock(w5, w4, 1)
        self.top_down4 = CSPBlock(w4 + w4, w4, depth)
        self.reduce4 = ConvBlock(w4, w3, 1)
        self.top_down3 = CSPBlock(w3 + w3, w3, depth)
        self.down3 = ConvBlock(w3, w3, 3, 2)
        self.bottom_up4 = CSPBlock(w3 + w3, w4, depth)
        self.down4 = ConvBlock(w4, w4, 3, 2)
        self.bottom_up5 = CSPBlock(w4 + w4, w5, depth)

    def forward(self, c3, c4, c5):
        r5 = self.reduce5(c5)  # (B, w4, H/32, W/32)
        p4 = self.top_down4(torch.cat((self.up(r5), c4), 1))  # (B, w4, H/16, W/16)
        r4 = self.reduce4(p4)  # (B, w3, H/16, W/16)
        p3 = self.top_down3(torch.cat((self.up(r4), c3), 1))  # (B, w3, H/8, W/8)
        n4 = self.bottom_up4(torch.cat((self.down3(p3), r4), 1))  # (B, w4, H/16, W/16)
        n5 = self.bottom_up5(torch.cat((self.down4(n4), r5), 1))  # (B, w5, H/32, W/32)
        return p3, n4, n5


class YOLODetector(nn.Module):
    """A YOLO-style grid detector built from a :class:`ModelConfig`."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if len(config.strides) != 3 or tuple(config.strides) != (8, 16, 32):
            raise ValueError(
                f"the network has outputs at strides (8, 16, 32), got {config.strides}"
            )
        self.config = config
        spec = MODEL_SIZES[config.size]
        self.backbone = Backbone(spec.widths, spec.depths)
        neck_widths = spec.widths[2:5]
        self.neck = Neck(neck_widths, spec.neck_depth)
        head = CoupledHead if config.head == "coupled" else DecoupledHead
        self.heads = nn.ModuleList(head(w, config) for w in neck_widths)
        for h, stride in zip(self.heads, config.strides, strict=True):
            h.init_biases(stride)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Raw head output.

        Args:
            images: ``(B, 3, H, W)`` float, RGB in [0, 1]; H and W multiples of 32.

        Returns:
            Per stride (8, 16, 32): ``(B, H/s, W/s, A, D)`` raw values, D = 5 + C + 2K.
        """
        features = self.neck(*self.backbone(images))
        out = []
        for head, feature in zip(self.heads, features, strict=True):
            y = head(feature)  # (B, A, D, h, w)
            out.append(y.permute(0, 3, 4, 1, 2))  # (B, h, w, A, D)
        return out


def _prior_biases(bias: torch.Tensor, stride: int, num_classes: int, obj: int, cls: int) -> None:
    """Start objectness near the expected density of objects and classes near 1/C, so
    the first steps are not spent unlearning a 0.5 prior everywhere. ``bias`` is
    ``(A, D')``; ``obj`` and ``cls`` are the columns of objectness and of the first class
    in it (``None``: not in this layer)."""
    with torch.no_grad():
        if obj is not None:
            bias[:, obj] = math.log(OBJECTS_PER_IMAGE_PRIOR / (PRIOR_IMAGE_SIDE / stride) ** 2)
        if cls is not None:
            bias[:, cls : cls + num_classes] = math.log(0.6 / max(num_classes - 0.99, 0.01))


class CoupledHead(nn.Conv2d):
    """One 1×1 convolution predicts every value of every anchor (a plain ``Conv2d``, so
    its weights keep the names ``heads.N.weight`` and ``heads.N.bias``)."""

    def __init__(self, channels: int, config: ModelConfig):
        self.a, self.d, self.c = config.num_anchors, config.num_outputs, config.num_classes
        super().__init__(channels, self.a * self.d, 1)

    def init_biases(self, stride: int) -> None:
        _prior_biases(self.bias.view(self.a, self.d), stride, self.c, OBJ, CLS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)  # (B, A*D, h, w)
        return y.view(y.shape[0], self.a, self.d, *y.shape[2:])  # (B, A, D, h, w)


class DecoupledHead(nn.Module):
    """Two branches, each ``head_depth`` 3×3 conv blocks and a 1×1 conv: one for the C
    class logits, one for the box, objectness and landmark values (YOLOX/YOLOv8's split:
    the classes get features of their own instead of sharing one linear layer with the
    box)."""

    def __init__(self, channels: int, config: ModelConfig):
        super().__init__()
        self.a, self.c = config.num_anchors, config.num_classes
        self.other = config.num_outputs - self.c  # 5 + 2K
        hidden = config.head_width or max(DECOUPLED_MIN_WIDTH, channels // 2)
        self.cls_branch = self._branch(channels, hidden, config.head_depth, self.a * self.c)
        box_depth = 0 if config.head == "cls-branch" else config.head_depth
        self.box_branch = self._branch(channels, hidden, box_depth, self.a * self.other)

    @staticmethod
    def _branch(channels: int, hidden: int, depth: int, outputs: int) -> nn.Sequential:
        """``depth`` 3×3 conv blocks, then a 1×1 convolution to the raw outputs."""
        blocks = [ConvBlock(channels if i == 0 else hidden, hidden, 3) for i in range(depth)]
        return nn.Sequential(*blocks, nn.Conv2d(hidden if depth else channels, outputs, 1))

    def init_biases(self, stride: int) -> None:
        _prior_biases(self.cls_branch[-1].bias.view(self.a, self.c), stride, self.c, None, 0)
        _prior_biases(self.box_branch[-1].bias.view(self.a, self.other), stride, 0, OBJ, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls = self.cls_branch(x)
        box = self.box_branch(x)
        b, _, h, w = x.shape
        cls = cls.view(b, self.a, self.c, h, w)
        box = box.view(b, self.a, self.other, h, w)
        # D = (box 4, objectness 1, classes C, landmarks 2K)
        return torch.cat((box[:, :, :CLS], cls, box[:, :, CLS:]), 2)  # (B, A, D, h, w)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_size: int) -> int:
    """Floating-point operations of one forward at batch 1 (a multiply-add counts 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, input_size, input_size, device=device))
    model.train(was_training)
    return int(counter.get_total_flops())
