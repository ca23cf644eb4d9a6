"""The standard normal prior of Gaussian-Flow (docs/maths.md §6)."""

from __future__ import annotations

import torch
from torch import Tensor

from priors.base import Prior
from priors.spins import LOG_2PI

__all__ = ["GaussianPrior"]


class GaussianPrior(Prior):
    """N(0, I) on R^dim; no parameters."""

    def _log_prob(self, z: Tensor) -> Tensor:
        return -0.5 * (z.square().sum(1) + self.dim * LOG_2PI)

    def _sample(self, n: int, temperature: float) -> Tensor:
        return temperature * torch.randn(n, self.dim, dtype=self._anchor.dtype, device=self._anchor.device)
