"""The elementwise transform a coupling layer applies, given parameters from its conditioner."""

from __future__ import annotations

import abc

from torch import Tensor, nn

__all__ = ["ElementwiseTransform"]


class ElementwiseTransform(nn.Module, abc.ABC):
    """A monotone map of each element, parametrised by ``params_per_element`` numbers per element.

    ``params`` has shape (batch, C, params_per_element, H, W) for x of shape (batch, C, H, W).
    """

    params_per_element: int

    @abc.abstractmethod
    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """x, params -> (y, elementwise log|dy/dx|), both shaped like x."""

    @abc.abstractmethod
    def inverse(self, y: Tensor, params: Tensor) -> Tensor:
        """The exact inverse of ``forward`` for the same ``params``."""
