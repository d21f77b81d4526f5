"""Fold BatchNorm into the convolution before it, for inference.

In eval mode BatchNorm is an affine map per channel, ``y = (x - mean) / sqrt(var + eps)
* weight + bias``; folded into the preceding convolution's weights and bias it costs
nothing at run time (one pass over memory less per layer). The result computes the same
function up to float rounding; it can no longer be trained.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d that directly follows a Conv2d into it, in place.

    Two places count as "directly follows": a module with ``conv`` and ``bn`` children
    (:class:`~detector.models.layers.ConvBlock`, whose forward applies them in that
    order; its ``bn`` becomes None) and consecutive children of an ``nn.Sequential``
    (which runs in order; the BatchNorm becomes ``nn.Identity``). The model must be in
    eval mode.

    Returns:
        ``model``, for chaining.

    Raises:
        ValueError: the model is in training mode (BatchNorm would still change).
    """
    if model.training:
        raise ValueError("fuse_conv_bn needs a model in eval mode")
    for module in model.modules():
        conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            module.conv = fuse_conv_bn_eval(conv, bn)
            module.bn = None  # ConvBlock skips it
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for first, second in zip(names, names[1:], strict=False):
                conv, bn = module._modules[first], module._modules[second]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    module._modules[first] = fuse_conv_bn_eval(conv, bn)
                    module._modules[second] = nn.Identity()
    return model
