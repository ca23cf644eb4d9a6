"""Logit preprocessing of data in (0, 1) (RealNVP, Dinh et al. 2017), with its exact log-determinant."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from flows.base import Bijection

__all__ = ["Logit", "log_sigmoid_derivative"]


class Logit(Bijection):
    """``y -> logit(α + (1 − 2α) y)`` elementwise; docs/maths.md §1.

    ``α`` keeps the logit finite at the ends of (0, 1); the log-determinant is computed from the same
    ``p = α + (1 − 2α) y`` the forward pass uses: ``Σ log(1 − 2α) − log p − log(1 − p)``.
    """

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        if not 0.0 <= alpha < 0.5:
            raise ValueError(f"Logit alpha must lie in [0, 0.5), got {alpha}")
        self.alpha = alpha

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        p = self.alpha + (1 - 2 * self.alpha) * x
        log_p, log_1mp = torch.log(p), torch.log1p(-p)
        logdet = math.log1p(-2 * self.alpha) - log_p - log_1mp
        return log_p - log_1mp, logdet.flatten(1).sum(1)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        return (torch.sigmoid(y) - self.alpha) / (1 - 2 * self.alpha)


def log_sigmoid_derivative(x: Tensor) -> Tensor:
    """log σ'(x) = log σ(x) + log σ(−x), elementwise and stable at both tails."""
    return F.logsigmoid(x) + F.logsigmoid(-x)
