"""Affine elementwise transform (RealNVP), used by the variational dequantizer's couplings."""

from __future__ import annotations

import torch
from torch import Tensor

from flows.transform import ElementwiseTransform

__all__ = ["Affine"]


class Affine(ElementwiseTransform):
    """``y = x · exp(a) + b`` with ``a = tanh(raw)`` bounded for stability."""

    params_per_element = 2

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        log_scale, shift = torch.tanh(params[:, :, 0]), params[:, :, 1]
        return x * log_scale.exp() + shift, log_scale

    def inverse(self, y: Tensor, params: Tensor) -> Tensor:
        log_scale, shift = torch.tanh(params[:, :, 0]), params[:, :, 1]
        return (y - shift) * torch.exp(-log_scale)
