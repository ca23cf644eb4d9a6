"""Space-to-depth reshaping (RealNVP's squeeze) as a volume-preserving bijection."""

from __future__ import annotations

from torch import Tensor

from flows.base import Bijection

__all__ = ["Squeeze"]


def _squeeze(x: Tensor, nhwc: bool) -> Tensor:
    """Output channel 4k + 2i + j holds input channel k at row offset i, column offset j."""
    b, c, h, w = x.shape
    if nhwc:  # the same channel order, built in (b, h, w, c): the result stays NHWC
        x = x.permute(0, 2, 3, 1).reshape(b, h // 2, 2, w // 2, 2, c)
        return x.permute(0, 1, 3, 5, 2, 4).reshape(b, h // 2, w // 2, c * 4).permute(0, 3, 1, 2)
    x = x.reshape(b, c, h // 2, 2, w // 2, 2)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)


def _unsqueeze(x: Tensor, nhwc: bool) -> Tensor:
    b, c, h, w = x.shape
    if nhwc:
        x = x.permute(0, 2, 3, 1).reshape(b, h, w, c // 4, 2, 2)
        return x.permute(0, 1, 4, 2, 5, 3).reshape(b, h * 2, w * 2, c // 4).permute(0, 3, 1, 2)
    x = x.reshape(b, c // 4, 2, 2, h, w)
    return x.permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, h * 2, w * 2)


class Squeeze(Bijection):
    """(batch, C, H, W) -> (batch, 4C, H/2, W/2); each 2x2 patch becomes four channels. With
    ``channels_last`` (flows.use_channels_last) it works in (batch, H, W, C) order and keeps that layout."""

    channels_last = False

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return _squeeze(x, self.channels_last), x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        return _unsqueeze(y, self.channels_last)
