"""Invertible 1x1 convolution with an LU-parametrised weight (Glow, Kingma & Dhariwal 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flows.base import Bijection

__all__ = ["InvertibleConv1x1"]


class InvertibleConv1x1(Bijection):
    """Channel mixing ``y = W x`` at every pixel, ``W = P L (U + diag(sign · exp(log_s)))``.

    P is a fixed permutation, L unit lower-triangular, U strictly upper-triangular; the
    log-determinant is ``H · W · Σ log_s`` and needs no factorisation.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels, dtype=torch.float64))
        p, lower, upper = torch.linalg.lu(q)
        diag = upper.diagonal()
        self.register_buffer("perm", p.float())
        self.register_buffer("sign", diag.sign().float())
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower.float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_s = nn.Parameter(diag.abs().log().float())

    def weight(self) -> Tensor:
        eye = torch.eye(self.lower.shape[0], dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign * self.log_s.exp())
        return self.perm @ lower @ upper

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        with torch.autocast(x.device.type, enabled=False):  # the data path stays in x's precision
            y = F.conv2d(x, self.weight().to(x.dtype)[:, :, None, None])
        logdet = self.log_s.sum().to(x.dtype) * (x.shape[2] * x.shape[3])
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        with torch.autocast(y.device.type, enabled=False):
            w_inv = torch.linalg.inv(self.weight().to(torch.float64)).to(y.dtype)
            return F.conv2d(y, w_inv[:, :, None, None])
