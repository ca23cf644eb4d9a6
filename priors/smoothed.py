"""Gaussian smoothing of a Boltzmann machine (Zhang et al. 2012; Hartnett & Mohseni 2020), the
base density shared by RBM-Flow and D-Flow (docs/maths.md §3):

    p(z | s) = N(z; s, J̃⁻¹)
    log p(z) = −E(z) − log Z_z,   E(z) = ½ zᵀJ̃z − Σ_i log 2cosh(h̃_i),   h̃ = J̃z + h
    log Z_z  = log Z_s + (N/2) log 2π − ½ log det J̃ + NΔ/2

The paper's eq. (10) prints the first two terms of log p(z) with the opposite sign; this is the
corrected form (it integrates to one).
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor, nn

from priors.base import DiscretePrior
from priors.precision import SmoothedPrecision
from priors.spins import LOG_2PI, log_2cosh

__all__ = ["SmoothedSpinPrior"]


class SmoothedSpinPrior(DiscretePrior):
    """Σ_s p(s) N(z; s, J̃⁻¹) for p(s) ∝ exp(½ sᵀJs + hᵀs). Subclasses give J̃ and the spin model.

    ``temperature`` in ``sample`` and ``sample_given`` scales the smoothing noise only:
    z = s + T · L⁻ᵀ ε; the spins are always drawn at temperature one.
    """

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.bias = nn.Parameter(torch.zeros(dim))

    @abc.abstractmethod
    def precision(self) -> SmoothedPrecision:
        """The current J̃ in factored form."""

    @abc.abstractmethod
    def log_partition_spins(self, precision: SmoothedPrecision) -> Tensor:
        """log Z_s of the spin model whose couplings ``precision`` holds: exact (and differentiable)
        or the latest estimate."""

    def energy(self, z: Tensor, precision: SmoothedPrecision, bias: Tensor | None = None) -> Tensor:
        """z: (batch, N) -> E(z): (batch,), with the field h = ``bias`` (default: the prior's own)."""
        jz = precision.matvec(z)
        return 0.5 * (z * jz).sum(1) - log_2cosh(jz + (self.bias if bias is None else bias)).sum(1)

    def log_partition(
        self, precision: SmoothedPrecision, log_partition_spins: Tensor | None = None
    ) -> Tensor:
        """log Z_z, the normaliser of exp(−E(z)), from log Z_s (by default ``log_partition_spins``; the RBM's
        loss passes a stand-in whose value is the latest estimate and whose gradient is PCD's)."""
        if log_partition_spins is None:
            log_partition_spins = self.log_partition_spins(precision)
        n = self.dim
        return log_partition_spins + 0.5 * n * LOG_2PI - 0.5 * precision.logdet() + 0.5 * n * precision.delta

    def _log_prob(self, z: Tensor) -> Tensor:
        precision = self.precision()
        return -self.energy(z, precision) - self.log_partition(precision)

    def _posterior(self, z: Tensor) -> Tensor:
        return torch.sigmoid(2 * (self.precision().matvec(z) + self.bias))

    def _sample_given(self, s: Tensor, temperature: float) -> Tensor:
        return s + temperature * self.precision().noise(torch.randn_like(s))

    def _sample(self, n: int, temperature: float) -> Tensor:
        with torch.no_grad():
            return self._sample_given(self._sample_discrete(n), temperature)
