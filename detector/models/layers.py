"""Building blocks: conv-BN-activation, residual bottleneck, CSP stage, SPPF."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ConvBlock(nn.Module):
    """``k×k`` convolution (no bias) → BatchNorm → SiLU; "same" padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False)
        self.bn: nn.Module | None = nn.BatchNorm2d(out_channels, eps=1e-3, momentum=0.03)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:  # None once folded into conv (detector.models.fuse)
            x = self.bn(x)
        return F.silu(x, inplace=True)  # a function, not a module: no module call per block


class Bottleneck(nn.Module):
    """Residual block: 1×1 conv then 3×3 conv, added to the input."""

    def __init__(self, channels: int):
        super().__init__()
        self.reduce = ConvBlock(channels, channels, 1)
        self.conv = ConvBlock(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(self.reduce(x))


class CSPBlock(nn.Module):
    """Cross-stage-partial block: half the channels go through ``depth`` residual blocks,
    the other half skip them; a 1×1 convolution fuses both."""

    def __init__(self, in_channels: int, out_channels: int, depth: int):
        super().__init__()
        hidden = out_channels // 2
        self.main = ConvBlock(in_channels, hidden, 1)
        self.skip = ConvBlock(in_channels, hidden, 1)
        self.blocks = nn.Sequential(*(Bottleneck(hidden) for _ in range(depth)))
        self.fuse = ConvBlock(2 * hidden, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat((self.blocks(self.main(x)), self.skip(x)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): three chained 5×5 max-pools, concatenated."""

    def __init__(self, in_channels: int, out_channels: int, pool: int = 5):
        super().__init__()
        hidden = in_channels // 2
        self.reduce = ConvBlock(in_channels, hidden, 1)
        self.pool = nn.MaxPool2d(pool, stride=1, padding=pool // 2)
        self.fuse = ConvBlock(hidden * 4, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        p1 = self.pool(x)
        p2 = self.pool(p1)
        return self.fuse(torch.cat((x, p1, p2, self.pool(p2)), 1))
