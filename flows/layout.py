"""Memory layout: run a flow in channels-last (NHWC) order end to end, the layout oneDNN's bf16
convolutions and GPU tensor cores want."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["to_channels_last", "use_channels_last"]


def use_channels_last(module: nn.Module, on: bool = True) -> nn.Module:
    """Convert ``module``'s 4-d weights to channels-last (or back) and switch every layer that reshapes
    (couplings' checkerboard gather/scatter and channel split, squeeze) to work in (batch, H, W, C)
    order, so a channels-last input stays channels-last through the whole flow. Numbers do not change.
    Returns ``module``."""
    for layer in module.modules():
        if hasattr(type(layer), "channels_last"):
            layer.channels_last = on
    return module.to(memory_format=torch.channels_last if on else torch.contiguous_format)


def to_channels_last(x: Tensor, on: bool = True) -> Tensor:
    """x in channels-last layout with NHWC strides (``on`` False: x as it is).
    ``x.contiguous(memory_format=torch.channels_last)`` keeps a one-channel NCHW tensor as it is (it
    counts as both), and convolutions then choose NCHW."""
    if not on or (
        x.is_contiguous(memory_format=torch.channels_last)
        and ((x.shape[1] > 1 and not x.is_contiguous()) or x.stride(1) == 1)
    ):
        return x
    return torch.empty_like(x, memory_format=torch.channels_last).copy_(x)
