"""Small operations on Ising spins s ∈ {−1, +1} shared by the discrete priors."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["all_spin_states", "log_2cosh", "sample_spins"]


def log_2cosh(x: Tensor) -> Tensor:
    """log(2 cosh x), elementwise, without overflow: |x| + log(1 + e^{−2|x|})."""
    a = x.abs()
    return a + F.softplus(-2 * a)


def sample_spins(field: Tensor) -> Tensor:
    """Independent spins with p(s = +1) = σ(2 · field) (docs/maths.md §3, corrected), same shape as field."""
    return torch.where(torch.rand_like(field) < torch.sigmoid(2 * field), 1.0, -1.0).to(field.dtype)


def all_spin_states(n: int, like: Tensor) -> Tensor:
    """All 2^n configurations of n spins: (2^n, n), in ``like``'s dtype and device."""
    codes = torch.arange(2**n, device=like.device)[:, None]
    bits = (codes >> torch.arange(n, device=like.device)) & 1
    return (2 * bits - 1).to(like.dtype)


LOG_2PI = math.log(2 * math.pi)
