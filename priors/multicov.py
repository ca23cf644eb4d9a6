"""MultiCov-Flow's prior: a multivariate normal with the smoothed RBM's precision (docs/maths.md §6)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from priors.base import Prior
from priors.precision import CouplingMatrix, visible_units
from priors.spins import LOG_2PI

__all__ = ["MultiCovPrior"]


class MultiCovPrior(Prior):
    """N(z; μ, J̃⁻¹), J̃ = ΔI + [[0, W], [Wᵀ, 0]] positive definite by construction.

    Args:
        dim: N.
        delta: Δ (paper: 2.5).
        n_visible: size of the first block (default ⌈N/2⌉).
        learn_delta: learn Δ as well.
    """

    def __init__(
        self, dim: int, delta: float = 2.5, n_visible: int | None = None, learn_delta: bool = False
    ) -> None:
        super().__init__(dim)
        n_visible = visible_units(dim, n_visible)
        self.coupling = CouplingMatrix(n_visible, dim - n_visible, delta, learn_delta=learn_delta)
        self.mean = nn.Parameter(torch.zeros(dim))

    def _log_prob(self, z: Tensor) -> Tensor:
        precision = self.coupling()
        d = z - self.mean
        return 0.5 * (precision.logdet() - (d * precision.matvec(d)).sum(1) - self.dim * LOG_2PI)

    def _sample(self, n: int, temperature: float) -> Tensor:
        with torch.no_grad():
            precision = self.coupling()
            eps = torch.randn(n, self.dim, dtype=self.mean.dtype, device=self.mean.device)
            return self.mean + temperature * precision.noise(eps)
