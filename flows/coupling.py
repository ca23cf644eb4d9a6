"""Coupling layers: half of the input, chosen by a checkerboard or a channel split, conditions an
elementwise transform of the other half (Dinh et al. 2017; Ho et al. 2019)."""

from __future__ import annotations

import torch
from torch import Tensor

from flows.base import Bijection
from flows.nets import ConditionerNet
from flows.transform import ElementwiseTransform

__all__ = ["Coupling"]

SPLITS = ("checkerboard", "channel")


class Coupling(Bijection):
    """A coupling on (batch, C, H, W) tensors.

    ``split="checkerboard"``: pixels with ``(i + j) % 2 == parity`` condition the others (all channels).
    ``split="channel"``: channels ``[:C/2]`` condition ``[C/2:]`` (swapped when ``parity == 1``).
    ``context`` (batch, context_channels, H, W), when given, is concatenated to the conditioner input.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        split: str,
        parity: int,
        transform: ElementwiseTransform,
        filters: int,
        blocks: int,
        dropout: float = 0.0,
        attention: bool = False,
        heads: int = 4,
        context_channels: int = 0,
    ) -> None:
        super().__init__()
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        channels, height, width = in_shape
        if split == "channel" and channels < 2:
            raise ValueError(f"a channel split needs at least 2 channels, got in_shape={in_shape}")
        self.split = split
        self.parity = parity
        self.transform = transform
        if split == "checkerboard":
            ij = torch.arange(height)[:, None] + torch.arange(width)[None, :]
            self.register_buffer("mask", ((ij % 2) == parity).float()[None, None], persistent=False)
            cond_channels, out_channels = channels, channels
        else:
            self.cut = channels // 2
            cond_channels, out_channels = self.cut, channels - self.cut
            if parity == 1:
                cond_channels, out_channels = out_channels, cond_channels
        self.net = ConditionerNet(
            cond_channels + context_channels,
            out_channels * transform.params_per_element,
            filters,
            blocks,
            dropout=dropout,
            attention=attention,
            heads=heads,
        )

    def _params(self, cond: Tensor, context: Tensor | None) -> Tensor:
        if context is not None:
            cond = torch.cat([cond, context.to(cond.dtype)], dim=1)
        params = self.net(cond)
        b, _, h, w = params.shape
        return params.reshape(b, -1, self.transform.params_per_element, h, w)

    def _halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        first, second = x[:, : self.cut], x[:, self.cut :]
        return (first, second) if self.parity == 0 else (second, first)

    def _join(self, cond: Tensor, out: Tensor) -> Tensor:
        return torch.cat([cond, out] if self.parity == 0 else [out, cond], dim=1)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.split == "checkerboard":
            mask = self.mask.to(x.dtype)
            y, ld = self.transform(x, self._params(x * mask, context))
            y = torch.where(mask.bool(), x, y)
            return y, (ld * (1 - mask)).flatten(1).sum(1)
        cond, x2 = self._halves(x)
        y2, ld = self.transform(x2, self._params(cond, context))
        return self._join(cond, y2), ld.flatten(1).sum(1)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        if self.split == "checkerboard":
            mask = self.mask.to(y.dtype)
            x = self.transform.inverse(y, self._params(y * mask, context))
            return torch.where(mask.bool(), y, x)
        cond, y2 = self._halves(y)
        return self._join(cond, self.transform.inverse(y2, self._params(cond, context)))
