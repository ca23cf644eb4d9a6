"""The mixture-of-logistics CDF coupling transform of Flow++ (Ho et al. 2019) and its fast inverse.

Forward (docs/maths.md §2), per element with K mixture components:

    c  = Σ_k π_k σ((x − μ_k) e^{−s_k})
    y  = logit(c) · e^{a} + b
    log|dy/dx| = log Σ_k π_k logistic_pdf(x; μ_k, e^{s_k}) − log c − log(1 − c) + a

``log c`` and ``log(1 − c)`` are each computed by a log-sum-exp, so ``logit(c)`` stays exact where c
rounds to 0 or 1 and the log-determinant is that of the map actually computed.

The inverse solves ``logit(c(x)) = t`` per element. Since ``min_k z_k ≤ logit(c) ≤ max_k z_k`` with
``z_k = (x − μ_k) e^{−s_k}``, the points ``min_k / max_k (μ_k + t e^{s_k})`` bracket the root exactly;
a Newton step on ``logit(c)`` (nearly linear in both tails) is taken while it stays inside the
bracket and keeps halving the residual, and a bisection step otherwise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flows.transform import ElementwiseTransform

__all__ = ["MixLogCDF", "mixture_logit_cdf", "mixture_logit_cdf_inverse"]

_MIN_LOG_SCALE = -7.0


def _log_sigmoid(z: Tensor) -> Tensor:
    """log σ(z) = min(z, 0) − log(1 + e^{−|z|}); same value as F.logsigmoid to rounding, but built
    from exp and log, which are vectorised on CPU (log1p is not: F.logsigmoid is ~5x slower here)."""
    return z.clamp_max(0) - torch.log(1 + torch.exp(-z.abs()))


def mixture_logit_cdf(x: Tensor, log_pi: Tensor, mu: Tensor, log_s: Tensor) -> tuple[Tensor, Tensor]:
    """``logit(c(x))`` and ``log d logit(c(x))/dx`` for a mixture of K logistics.

    x: (B, C, 1, H, W); log_pi, mu, log_s: (B, C, K, H, W) -> two tensors of shape (B, C, H, W).
    """
    z = (x - mu) * torch.exp(-log_s)
    log_sig = _log_sigmoid(z)
    log_sig_neg = log_sig - z
    log_c = torch.logsumexp(log_pi + log_sig, dim=2)
    log_1mc = torch.logsumexp(log_pi + log_sig_neg, dim=2)
    log_pdf = torch.logsumexp(log_pi - log_s + log_sig + log_sig_neg, dim=2)
    return log_c - log_1mc, log_pdf - log_c - log_1mc


@torch.no_grad()
def mixture_logit_cdf_inverse(
    t: Tensor,
    log_pi: Tensor,
    mu: Tensor,
    log_s: Tensor,
    *,
    newton: bool = True,
    tol: float | None = None,
    max_iters: int = 100,
    check_every: int = 2,
) -> tuple[Tensor, int]:
    """Solve ``logit(c(x)) = t`` elementwise. t: (B, C, H, W) -> (x: (B, C, H, W), evaluations).

    Safeguarded Newton (``newton=True``) or plain bisection inside the exact bracket. Convergence
    (every step below ``tol · (1 + |x|)``; ``tol`` defaults to 1e-6 in float32 and 1e-10 in float64)
    is checked on the host only every ``check_every`` iterations.
    """
    if tol is None:
        tol = 1e-10 if t.dtype == torch.float64 else 1e-6
    ends = mu + t.unsqueeze(2) * log_s.exp()
    lo, hi = ends.amin(dim=2), ends.amax(dim=2)
    x = (lo + hi) / 2
    last_residual = torch.full_like(x, float("inf"))
    evaluations = 0
    for it in range(1, max_iters + 1):
        g, log_dg = mixture_logit_cdf(x.unsqueeze(2), log_pi, mu, log_s)
        evaluations += 1
        g = g - t
        lo = torch.where(g < 0, x, lo)
        hi = torch.where(g > 0, x, hi)
        x_new = (lo + hi) / 2
        if newton:
            # Take the Newton step when it lands inside the bracket and either the residual here is at
            # most half the residual where the last Newton step was taken (any residual right after a
            # bisection) or the step is below tolerance; otherwise bisect. At most every other
            # iteration is a Newton step that fails to halve the residual, so the worst case is twice
            # bisection's count.
            step = x - g * torch.exp(-log_dg)
            residual = g.abs()
            converged = (step - x).abs() <= tol * (1 + x.abs())
            take = (step >= lo) & (step <= hi) & ((residual <= 0.5 * last_residual) | converged)
            x_new = torch.where(take, step, x_new)
            last_residual = torch.where(take, residual, float("inf"))
        delta = (x_new - x).abs()
        x = x_new
        if it % check_every == 0 and bool((delta <= tol * (1 + x.abs())).all()):
            break
    return x, evaluations


class MixLogCDF(ElementwiseTransform):
    """Flow++'s mixture-of-logistics CDF transform with K components (``3K + 2`` params per element)."""

    def __init__(self, components: int) -> None:
        super().__init__()
        self.components = components
        self.params_per_element = 3 * components + 2

    def _unpack(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        k = self.components
        log_pi = torch.log_softmax(params[:, :, :k], dim=2)
        mu = params[:, :, k : 2 * k]
        log_s = params[:, :, 2 * k : 3 * k].clamp_min(_MIN_LOG_SCALE)
        a = torch.tanh(params[:, :, 3 * k])
        b = params[:, :, 3 * k + 1]
        return log_pi, mu, log_s, a, b

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        log_pi, mu, log_s, a, b = self._unpack(params.to(x.dtype))
        u, log_du = mixture_logit_cdf(x.unsqueeze(2), log_pi, mu, log_s)
        return u * a.exp() + b, log_du + a

    def inverse(self, y: Tensor, params: Tensor) -> Tensor:
        log_pi, mu, log_s, a, b = self._unpack(params.to(y.dtype))
        x, _ = mixture_logit_cdf_inverse((y - b) * torch.exp(-a), log_pi, mu, log_s)
        return x
