"""The precision matrix J̃ = ΔI + [[0, W], [Wᵀ, 0]] of the smoothed RBM and of MultiCov (docs/maths.md §3),
in factored form, and the module that parametrises it so it is positive definite by construction.

Everything goes through the Schur complement S = ΔI − WᵀW/Δ (n_h × n_h), never an N × N
factorisation:

    log det J̃ = n_v log Δ + log det S
    z ~ N(0, J̃⁻¹):  z_h = L_S⁻ᵀ ε_h,  z_v = ε_v / √Δ − W z_h / Δ      (S = L_S L_Sᵀ)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CouplingMatrix", "NotPositiveDefiniteError", "SmoothedPrecision", "visible_units"]


DELTA_FLOOR = 1e-3


class NotPositiveDefiniteError(RuntimeError):
    """Raised when ΔI − WᵀW/Δ has no Cholesky factor, i.e. Δ ≤ σ_max(W)."""


@dataclass(frozen=True)
class SmoothedPrecision:
    """J̃ = ΔI + [[0, W], [Wᵀ, 0]] with W: (n_v, n_h) and the Cholesky factor of its Schur complement."""

    delta: Tensor
    weight: Tensor
    schur_cholesky: Tensor

    @classmethod
    def factor(cls, delta: Tensor, weight: Tensor) -> SmoothedPrecision:
        eye = torch.eye(weight.shape[1], dtype=weight.dtype, device=weight.device)
        schur = delta * eye - weight.T @ weight / delta
        chol, info = torch.linalg.cholesky_ex(schur)
        if int(info) != 0:
            raise NotPositiveDefiniteError(
                "J̃ = ΔI + J is not positive definite (Δ must exceed the largest singular value of W)"
            )
        return cls(delta, weight, chol)

    @property
    def n_visible(self) -> int:
        return self.weight.shape[0]

    def matvec(self, z: Tensor) -> Tensor:
        """z: (batch, N) -> J̃z: (batch, N)."""
        z_v, z_h = z[:, : self.n_visible], z[:, self.n_visible :]
        w = self.weight.to(z.dtype)
        return torch.cat([self.delta * z_v + z_h @ w.T, self.delta * z_h + z_v @ w], dim=1)

    def logdet(self) -> Tensor:
        """log det J̃ (scalar)."""
        return self.n_visible * torch.log(self.delta) + 2 * self.schur_cholesky.diagonal().log().sum()

    def noise(self, eps: Tensor) -> Tensor:
        """eps: (batch, N) standard normal -> (batch, N) with covariance J̃⁻¹."""
        eps_v, eps_h = eps[:, : self.n_visible], eps[:, self.n_visible :]
        z_h = torch.linalg.solve_triangular(self.schur_cholesky.T, eps_h.T, upper=True).T
        z_v = eps_v / self.delta.sqrt() - z_h @ self.weight.T / self.delta
        return torch.cat([z_v, z_h], dim=1)


class CouplingMatrix(nn.Module):
    """Parametrises W (n_v × n_h) and Δ so that J̃ is positive definite for every parameter value.

    W = V · min(1, ρΔ / σ_max(V)) with ρ = ``max_ratio`` < 1, so σ_max(W) ≤ ρΔ < Δ (docs/maths.md §3: J̃ ≻ 0
    exactly when Δ > σ_max(W)). σ_max(V) = uᵀVv comes from one power iteration per training call on
    persistent vectors u, v (as torch's spectral_norm); power iteration under-estimates σ_max, so the
    Cholesky factorisation of the Schur complement certifies the result and, when it fails, u and v
    are replaced by the exact top singular vectors.

    Args:
        n_visible, n_hidden: block sizes.
        delta: Δ, the smoothing precision (initial value when learned).
        learn_delta: learn Δ too, as softplus(raw) + 10⁻³ (the paper kept Δ fixed).
        max_ratio: ρ, the largest allowed σ_max(W) / Δ.
    """

    def __init__(
        self, n_visible: int, n_hidden: int, delta: float, learn_delta: bool = False, max_ratio: float = 0.99
    ) -> None:
        super().__init__()
        if not (math.isfinite(delta) and delta > DELTA_FLOOR):
            raise ValueError(f"delta (Δ) must be a finite number above {DELTA_FLOOR}, got {delta!r}")
        if not 0 < max_ratio < 1:
            raise ValueError(f"max_ratio must lie in (0, 1), got {max_ratio!r}")
        self.max_ratio = max_ratio
        self.raw_weight = nn.Parameter(torch.zeros(n_visible, n_hidden))
        # Δ = softplus(raw) + floor: positive for every value of the raw parameter.
        raw_delta = torch.tensor(delta - DELTA_FLOOR).expm1().log()
        if learn_delta:
            self.raw_delta = nn.Parameter(raw_delta)
        else:
            self.register_buffer("raw_delta", raw_delta)
        self.register_buffer("_u", F.normalize(torch.randn(n_visible), dim=0))
        self.register_buffer("_v", F.normalize(torch.randn(n_hidden), dim=0))

    @property
    def delta(self) -> Tensor:
        return F.softplus(self.raw_delta) + DELTA_FLOOR

    def _power_iteration(self) -> None:
        with torch.no_grad():
            v = F.normalize(self.raw_weight.T @ self._u, dim=0, eps=1e-12)
            u = F.normalize(self.raw_weight @ v, dim=0, eps=1e-12)
            # W = 0 (its initial value) maps u to 0, and 0 would stay 0: keep the old vectors then
            live = u.abs().sum() > 0
            self._u.copy_(torch.where(live, u, self._u))
            self._v.copy_(torch.where(live, v, self._v))

    def _scaled(self, sigma: Tensor) -> Tensor:
        cap = self.max_ratio * self.delta
        return self.raw_weight * (cap / sigma.clamp_min(cap))

    def forward(self) -> SmoothedPrecision:
        if self.training and not torch.is_inference_mode_enabled():
            self._power_iteration()
        try:
            return SmoothedPrecision.factor(self.delta, self._scaled(self._u @ self.raw_weight @ self._v))
        except NotPositiveDefiniteError:
            # The power-iteration estimate is a lower bound and fell short (the weights moved faster
            # than one iteration a step follows): take the exact top singular vectors, and restart the
            # power iteration from them when training.
            with torch.no_grad():
                left, _, right = torch.linalg.svd(self.raw_weight, full_matrices=False)
                u, v = left[:, 0], right[0]
                if self.training and not torch.is_inference_mode_enabled():
                    self._u.copy_(u)
                    self._v.copy_(v)
            return SmoothedPrecision.factor(self.delta, self._scaled(u @ self.raw_weight @ v))


def visible_units(dim: int, n_visible: int | None) -> int:
    """n_v for an N-unit model: ⌈N/2⌉ by default, otherwise checked to lie in [1, N]."""
    if n_visible is None:
        return (dim + 1) // 2
    if not 1 <= n_visible <= dim:
        raise ValueError(f"n_visible must lie in [1, dim={dim}], got {n_visible}")
    return n_visible
