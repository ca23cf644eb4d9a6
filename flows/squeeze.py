"""Space-to-depth reshaping (RealNVP's squeeze) as a volume-preserving bijection."""

from __future__ import annotations

from torch import Tensor

from flows.base import Bijection

__all__ = ["Squeeze"]


def _squeeze(x: Tensor) -> Tensor:
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)


def _unsqueeze(x: Tensor) -> Tensor:
    b, c, h, w = x.shape
    x = x.reshape(b, c // 4, 2, 2, h, w)
    return x.permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, h * 2, w * 2)


class Squeeze(Bijection):
    """(batch, C, H, W) -> (batch, 4C, H/2, W/2); each 2x2 patch becomes four channels."""

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return _squeeze(x), x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        return _unsqueeze(y)
