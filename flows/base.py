"""The bijection contract and the composition of bijections.

Every layer of the flow maps ``x -> (y, logdet)`` with ``logdet`` of shape ``(batch,)`` holding
``log|det ∂y/∂x|`` per example, and has an exact inverse. An optional ``context`` tensor conditions
the map (the variational dequantizer uses it to see the image).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable

import torch
from torch import Tensor, nn

__all__ = ["Bijection", "Compose"]


class Bijection(nn.Module, abc.ABC):
    """An invertible map with a tractable log-determinant."""

    @abc.abstractmethod
    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x: (batch, ...) -> (y: (batch, ...), logdet: (batch,))."""

    @abc.abstractmethod
    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        """y: (batch, ...) -> x: (batch, ...), the exact inverse of ``forward``."""


class Compose(Bijection):
    """Bijections applied in order; log-determinants add up."""

    def __init__(self, layers: Iterable[Bijection]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for layer in self.layers:
            x, ld = layer(x, context)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        for layer in reversed(self.layers):
            y = layer.inverse(y, context)
        return y
