"""The MixLogCDF inverse against a long bisection in float64, on hard mixtures."""

import pytest
import torch

from flows.logistic import mixture_logit_cdf, mixture_logit_cdf_inverse

K = 16


def hard_mixture(n: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Peaked components (scales down to e^-7), far-apart means, dominant and negligible weights,
    and targets deep in both tails. Shapes (n, 1, K, 1, 1) / (n, 1, 1, 1)."""
    g = torch.Generator().manual_seed(1)
    log_pi = torch.log_softmax(4 * torch.randn(n, 1, K, 1, 1, generator=g, dtype=torch.float64), dim=2)
    mu = 5 * torch.randn(n, 1, K, 1, 1, generator=g, dtype=torch.float64)
    log_s = torch.empty(n, 1, K, 1, 1, dtype=torch.float64).uniform_(-7, 2, generator=g)
    t = torch.cat([torch.linspace(-40, 40, n - 20, dtype=torch.float64), torch.full((20,), 0.0)])
    t = t.reshape(n, 1, 1, 1)
    return tuple(v.to(dtype) for v in (t, log_pi, mu, log_s))


def reference_root(t, log_pi, mu, log_s):
    x, _ = mixture_logit_cdf_inverse(
        t.double(), log_pi.double(), mu.double(), log_s.double(), newton=False, max_iters=200, tol=0.0
    )
    return x


def test_bracket_and_bisection_reference_solve_the_equation() -> None:
    t, log_pi, mu, log_s = hard_mixture(400, torch.float64)
    x = reference_root(t, log_pi, mu, log_s)
    value, log_slope = mixture_logit_cdf(x.unsqueeze(2), log_pi, mu, log_s)
    # residual small relative to the slope: |x - root| <= |g| / g'
    assert ((value - t).abs() * torch.exp(-log_slope)).max() < 1e-9


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_newton_inverse_matches_long_bisection(dtype: torch.dtype, tol: float) -> None:
    t, log_pi, mu, log_s = hard_mixture(400, dtype)
    expected = reference_root(t, log_pi, mu, log_s)
    x, evaluations = mixture_logit_cdf_inverse(t, log_pi, mu, log_s)
    assert x.dtype == dtype
    assert ((x.double() - expected).abs() <= tol * (1 + expected.abs())).all()
    assert evaluations <= 28


def test_newton_needs_fewer_evaluations_than_bisection() -> None:
    t, log_pi, mu, log_s = hard_mixture(4000, torch.float64)
    _, newton = mixture_logit_cdf_inverse(t, log_pi, mu, log_s, tol=1e-10, check_every=1)
    _, bisection = mixture_logit_cdf_inverse(t, log_pi, mu, log_s, newton=False, tol=1e-10, check_every=1)
    # the worst of 4000 adversarial elements sets the count; typical coupling values: see bench/
    assert 1.5 * newton <= bisection
