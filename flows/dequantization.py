"""Dequantization: turning 8-bit images into continuous data y = (x + u) / 256 with noise u ∈ (0, 1)
drawn from q(u | x), together with log q(u | x) (docs/maths.md §1)."""

from __future__ import annotations

import abc
import math

import torch
from torch import Tensor, nn

from flows.affine import Affine
from flows.base import Compose
from flows.coupling import Coupling
from flows.layout import to_channels_last
from flows.logit import log_sigmoid_derivative
from flows.nets import ConditionerNet

__all__ = ["Dequantizer", "UniformDequantizer", "VariationalDequantizer"]


def _check_images(x: Tensor) -> None:
    if x.dtype != torch.uint8:
        raise TypeError(f"dequantizers take uint8 images in 0..255, got dtype {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"dequantizers take (batch, C, H, W) images, got shape {tuple(x.shape)}")


class Dequantizer(nn.Module, abc.ABC):
    """uint8 images (batch, C, H, W) -> (y in (0, 1) of the same shape, log q(u | x): (batch,)).

    Noise is drawn in (C, H, W) order whatever the layout; with ``channels_last`` (set by
    ``flows.use_channels_last``) the output is channels-last, so the same draws give the same y."""

    channels_last = False

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _check_images(x)
        return self._dequantize(x.float())

    @abc.abstractmethod
    def _dequantize(self, x: Tensor) -> tuple[Tensor, Tensor]: ...


class UniformDequantizer(Dequantizer):
    """u ~ U[0, 1), log q = 0."""

    def _dequantize(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = (x + torch.rand_like(x, memory_format=torch.contiguous_format)) / 256  # same draws in any layout
        return to_channels_last(y, self.channels_last), x.new_zeros(x.shape[0])


class VariationalDequantizer(Dequantizer):
    """Flow++'s learned dequantization, as simplified in the RBM-Flow paper (Appendix A):
    ε ~ N(0, I) → ``steps`` affine checkerboard couplings conditioned on the image → sigmoid → u.

    ``noise_flow`` is a :class:`~flows.base.Bijection` with the context features of the image as its
    ``context``; ``log q(u | x) = log N(ε) − log|det ∂u/∂ε|``.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        filters: int = 32,
        blocks: int = 2,
        steps: int = 4,
        context_channels: int = 16,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        channels = in_shape[0]
        self.context = ConditionerNet(channels, context_channels, filters, blocks, dropout=dropout)
        self.noise_flow = Compose(
            Coupling(
                in_shape,
                "checkerboard",
                step % 2,
                Affine(),
                filters,
                blocks,
                dropout=dropout,
                context_channels=context_channels,
            )
            for step in range(steps)
        )

    def _dequantize(self, x: Tensor) -> tuple[Tensor, Tensor]:
        context = self.context(x / 127.5 - 1)
        noise = torch.randn_like(x, memory_format=torch.contiguous_format)  # same draws in any layout
        eps = to_channels_last(noise, self.channels_last)
        v, logdet = self.noise_flow(eps, context)
        u = torch.sigmoid(v)
        log_normal = -0.5 * (eps.square() + math.log(2 * math.pi)).flatten(1).sum(1)
        log_q = log_normal - logdet - log_sigmoid_derivative(v).flatten(1).sum(1)
        return (x + u) / 256, log_q
