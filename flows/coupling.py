"""Coupling layers: half of the input, chosen by a checkerboard or a channel split, conditions an
elementwise transform of the other half (Dinh et al. 2017; Ho et al. 2019)."""

from __future__ import annotations

import torch
from torch import Tensor

from flows.base import Bijection
from flows.layout import to_channels_last
from flows.nets import ConditionerNet
from flows.transform import ElementwiseTransform

__all__ = ["Coupling"]

SPLITS = ("checkerboard", "channel")


class Coupling(Bijection):
    """A coupling on (batch, C, H, W) tensors: one half of the input conditions an elementwise
    transform of the other half.

    ``split="checkerboard"``: the pixels with ``i + j`` even and those with ``i + j`` odd, each
    gathered into a (batch, C, H, W/2) tensor, so the conditioner works on the half it sees and
    nothing is computed for the half it does not (Flow++'s checkerboard split).
    ``split="channel"``: channels ``[:C/2]`` and ``[C/2:]``.
    ``parity`` 0 lets the first half condition the second, 1 the reverse.
    ``context`` (batch, context_channels, H, W), when given, is split like the input and its matching
    half concatenated to the conditioner input.

    ``channels_last`` (set by ``flows.use_channels_last``): the halves are gathered and joined in
    (batch, H, W, C) order, so a channels-last input stays channels-last end to end.
    """

    channels_last = False

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
        if parity not in (0, 1):
            raise ValueError(f"parity must be 0 or 1, got {parity!r}")
        channels, height, width = in_shape
        if split == "channel" and channels < 2:
            raise ValueError(f"a channel split needs at least 2 channels, got in_shape={in_shape}")
        if split == "checkerboard" and width % 2:
            raise ValueError(f"a checkerboard split needs an even width, got in_shape={in_shape}")
        self.split = split
        self.parity = parity
        self.transform = transform
        if split == "checkerboard":
            cond_channels = out_channels = channels
            self.register_buffer("even_rows", (torch.arange(height) % 2 == 0)[:, None], persistent=False)
        else:
            cond_channels, out_channels = channels // 2, channels - channels // 2
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

    def _halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.split == "checkerboard" and self.channels_last:
            # in (b, h, w, c) order, where x's memory already is: the halves come out NHWC too
            b, c, h, w = x.shape
            pairs = x.permute(0, 2, 3, 1).reshape(b, h, w // 2, 2, c)
            even = self.even_rows[:, :, None]  # (h, 1, 1) against (b, h, w/2, c)
            first = torch.where(even, pairs[..., 0, :], pairs[..., 1, :]).permute(0, 3, 1, 2)
            second = torch.where(even, pairs[..., 1, :], pairs[..., 0, :]).permute(0, 3, 1, 2)
        elif self.split == "checkerboard":
            b, c, h, w = x.shape
            pairs = x.reshape(b, c, h, w // 2, 2)
            first = torch.where(self.even_rows, pairs[..., 0], pairs[..., 1])
            second = torch.where(self.even_rows, pairs[..., 1], pairs[..., 0])
        else:
            cut = x.shape[1] // 2
            first, second = x[:, :cut], x[:, cut:]
            if self.channels_last:  # a channel slice of NHWC is strided: give the conditioner NHWC
                first = first.contiguous(memory_format=torch.channels_last)
                second = second.contiguous(memory_format=torch.channels_last)
        return (first, second) if self.parity == 0 else (second, first)

    def _join(self, cond: Tensor, out: Tensor) -> Tensor:
        first, second = (cond, out) if self.parity == 0 else (out, cond)
        if self.split == "checkerboard" and self.channels_last:
            b, c, h, half = first.shape
            first, second = first.permute(0, 2, 3, 1), second.permute(0, 2, 3, 1)  # (b, h, w/2, c)
            even = self.even_rows[:, :, None]
            left, right = torch.where(even, first, second), torch.where(even, second, first)
            return torch.stack([left, right], dim=3).reshape(b, h, 2 * half, c).permute(0, 3, 1, 2)
        if self.split == "checkerboard":
            b, c, h, half = first.shape
            left = torch.where(self.even_rows, first, second)
            right = torch.where(self.even_rows, second, first)
            return torch.stack([left, right], dim=-1).reshape(b, c, h, 2 * half)
        if self.channels_last:  # cat in (b, h, w, c) order: the result is NHWC whatever the inputs' layouts
            nhwc = torch.cat([first.permute(0, 2, 3, 1), second.permute(0, 2, 3, 1)], dim=3)
            return nhwc.permute(0, 3, 1, 2)
        return torch.cat([first, second], dim=1)

    def _params(self, cond: Tensor, context: Tensor | None) -> Tensor:
        if context is not None:
            cond = torch.cat([cond, self._halves(context.to(cond.dtype))[0]], dim=1)
        params = self.net(to_channels_last(cond, self.channels_last))
        b, _, h, w = params.shape
        if self.channels_last:  # a view, no copy: (b, h, w, C·P) -> (b, C, P, h, w)
            return (
                params.permute(0, 2, 3, 1)
                .reshape(b, h, w, -1, self.transform.params_per_element)
                .permute(0, 3, 4, 1, 2)
            )
        return params.reshape(b, -1, self.transform.params_per_element, h, w)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        cond, x2 = self._halves(x)
        y2, ld = self.transform(x2, self._params(cond, context))
        return self._join(cond, y2), ld.flatten(1).sum(1)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        cond, y2 = self._halves(y)
        return self._join(cond, self.transform.inverse(y2, self._params(cond, context)))
