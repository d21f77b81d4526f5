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
        outputs = config.num_anchors * config.num_outputs
        self.heads = nn.ModuleList(nn.Conv2d(w, outputs, 1) for w in neck_widths)
        self._init_head_biases()

    def _init_head_biases(self) -> None:
        """Start objectness near the expected density of objects and classes near 1/C,
        so the first steps are not spent unlearning a 0.5 prior everywhere."""
        c = self.config
        for head, stride in zip(self.heads, c.strides, strict=True):
            bias = head.bias.detach().view(c.num_anchors, c.num_outputs)  # (A, D)
            cells = (PRIOR_IMAGE_SIDE / stride) ** 2
            bias[:, OBJ] = math.log(OBJECTS_PER_IMAGE_PRIOR / cells)
            bias[:, CLS : CLS + c.num_classes] = math.log(0.6 / max(c.num_classes - 0.99, 0.01))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Raw head output.

        Args:
            images: ``(B, 3, H, W)`` float, RGB in [0, 1]; H and W multiples of 32.

        Returns:
            Per stride (8, 16, 32): ``(B, H/s, W/s, A, D)`` raw values, D = 5 + C + 2K.
        """
        features = self.neck(*self.backbone(images))
        a, d = self.config.num_anchors, self.config.num_outputs
        out = []
        for head, feature in zip(self.heads, features, strict=True):
            y = head(feature)  # (B, A*D, h, w)
            b, _, h, w = y.shape
            out.append(y.view(b, a, d, h, w).permute(0, 3, 4, 1, 2))  # (B, h, w, A, D)
        return out


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
