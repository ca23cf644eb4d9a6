"""Samples against the exact density for dim ≤ 3: moments and a KS test per coordinate against the
exact marginal CDF (a mixture of normal CDFs over all spin states). Fixed seed; tolerances are
stated as multiples of the Monte Carlo standard error, and KS at the 0.1 % critical value."""

import math

import pytest
import torch

from priors import DiscretePrior, GaussianPrior, MultiCovPrior
from tests.priors.helpers import PRIORS, dense_precision, randomise, spin_distribution

N = 20_000
KS_CRITICAL = 1.95 / math.sqrt(N)  # Kolmogorov distribution, α = 0.001


def exact_mixture(prior, temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(component means (S, dim), weights (S,), shared component covariance (dim, dim))."""
    dim = prior.dim
    if isinstance(prior, GaussianPrior):
        return (
            torch.zeros(1, dim, dtype=torch.float64),
            torch.ones(1, dtype=torch.float64),
            temperature**2 * torch.eye(dim, dtype=torch.float64),
        )
    cov = temperature**2 * torch.linalg.inv(dense_precision(prior))
    if isinstance(prior, MultiCovPrior):
        return prior.mean.detach()[None], torch.ones(1, dtype=torch.float64), cov
    states, p_s = spin_distribution(prior)
    return states, p_s.detach(), cov


def normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


@pytest.mark.parametrize("name", list(PRIORS))
@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_samples_match_the_exact_density(name: str, dim: int, temperature: float) -> None:
    torch.manual_seed(1)
    prior = randomise(PRIORS[name](dim), scale=1.0).double().eval()
    means, weights, cov = exact_mixture(prior, temperature)
    z = prior.sample(N, temperature=temperature)

    mean = weights @ means
    centred = means - mean
    exact_cov = cov + (weights[:, None] * centred).T @ centred
    sample_mean = z.mean(0)
    sample_cov = torch.cov(z.T).reshape(dim, dim)
    var = exact_cov.diagonal()
    assert ((sample_mean - mean).abs() <= 5 * (var / N).sqrt()).all()
    cov_se = ((var[:, None] * var[None, :] + exact_cov**2) / N).sqrt()
    assert ((sample_cov - exact_cov).abs() <= 6 * cov_se).all()

    for i in range(dim):
        x = z[:, i].sort().values
        std = cov[i, i].sqrt()
        cdf = (weights * normal_cdf((x[:, None] - means[None, :, i]) / std)).sum(1)
        grid = torch.arange(1, N + 1, dtype=torch.float64) / N
        ks = torch.maximum((grid - cdf).abs(), (grid - 1 / N - cdf).abs()).max().item()
        assert ks <= KS_CRITICAL, (i, ks)


@pytest.mark.parametrize("name", ["bernoulli", "rbm"])
def test_sample_given_has_mean_s_and_covariance_inverse_precision(name: str) -> None:
    prior = randomise(PRIORS[name](3), scale=1.0).double().eval()
    assert isinstance(prior, DiscretePrior)
    s = torch.tensor([[1.0, -1.0, 1.0]], dtype=torch.float64).expand(N, -1)
    z = prior.sample_given(s)
    cov = torch.linalg.inv(dense_precision(prior))
    var = cov.diagonal()
    assert ((z.mean(0) - s[0]).abs() <= 5 * (var / N).sqrt()).all()
    cov_se = ((var[:, None] * var[None, :] + cov**2) / N).sqrt()
    assert ((torch.cov(z.T) - cov).abs() <= 6 * cov_se).all()
    z_cold = prior.sample_given(s, temperature=0.1)
    assert ((torch.cov(z_cold.T) - 0.01 * cov).abs() <= 6 * 0.01 * cov_se).all()
