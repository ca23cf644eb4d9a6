"""D-Flow's prior: independent smoothed spins (J = 0), docs/maths.md §3 and §6.

p(z) = Π_i [σ(2h_i) N(z_i; +1, 1/Δ) + σ(−2h_i) N(z_i; −1, 1/Δ)], with exact log Z and exact samples.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from priors.base import PartitionMethod
from priors.precision import SmoothedPrecision
from priors.smoothed import SmoothedSpinPrior
from priors.spins import log_2cosh, sample_spins

__all__ = ["BernoulliPrior"]


class BernoulliPrior(SmoothedSpinPrior):
    """D-Flow (paper: Δ = 1). p(s_i = +1) = σ(2h_i) (the paper's "p(s = −1) = Sigmoid(h)" corrected).

    Args:
        dim: N, the number of spins (the flow's C·H·W).
        delta: Δ, the precision of the Gaussian smoothing.
    """

    def __init__(self, dim: int, delta: float = 1.0) -> None:
        super().__init__(dim)
        if not (math.isfinite(delta) and delta > 0):
            raise ValueError(f"delta (Δ) must be a finite number above 0, got {delta!r}")
        self.register_buffer("delta", torch.tensor(float(delta)))

    def precision(self) -> SmoothedPrecision:
        return SmoothedPrecision.factor(self.delta, self.delta.new_zeros(self.dim, 0))

    def log_partition_spins(self, precision: SmoothedPrecision) -> Tensor:
        return log_2cosh(self.bias).sum()

    def _sample_discrete(self, n: int) -> Tensor:
        return sample_spins(self.bias.detach().expand(n, -1))

    def _estimate_log_partition(
        self, method: PartitionMethod, steps: int | None, chains: int | None
    ) -> tuple[Tensor, Tensor]:
        return self.log_partition_spins(self.precision()), self.bias.new_zeros(())  # always exact
