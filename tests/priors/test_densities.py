"""Normalisation, exact partition functions, exact posteriors (docs/maths.md §7)."""

import math

import pytest
import torch

from priors import BernoulliPrior, RBMPrior
from priors.ais import exact_log_partition
from priors.spins import all_spin_states
from tests.priors.helpers import PRIORS, dense_precision, randomise, spin_distribution


def grid_integral(prior, dim: int, half_width: float, step: float) -> float:
    axis = torch.arange(-half_width, half_width + step / 2, step, dtype=torch.float64)
    points = torch.cartesian_prod(*([axis] * dim)).reshape(-1, dim)
    with torch.no_grad():
        density = torch.cat([prior.log_prob(chunk).exp() for chunk in points.split(200_000)])
    return density.sum().item() * step**dim


@pytest.mark.parametrize("name", list(PRIORS))
@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_density_integrates_to_one(name: str, dim: int, seed: int) -> None:
    prior = randomise(PRIORS[name](dim), scale=3.0, seed=seed).double().eval()
    # The widest direction of N(s, J̃⁻¹) has variance 1 / (Δ (1 − 0.99)) = 40 for Δ = 2.5.
    total = grid_integral(prior, dim, half_width=60.0 if dim == 2 else 80.0, step=0.08 if dim == 2 else 0.01)
    assert abs(total - 1) <= 1e-3


def test_rbm_couplings_are_strong_in_the_normalisation_test() -> None:
    prior = randomise(PRIORS["rbm"](2), scale=3.0).double().eval()
    assert prior.precision().weight.abs().item() == pytest.approx(0.99 * 2.5)


def test_the_coupling_cap_holds_when_the_couplings_start_at_zero() -> None:
    """Training starts from W = 0. Later couplings with σ_max(V) = 0.995 Δ, between the cap 0.99 Δ and
    Δ, still give a positive-definite J̃, so only the power iteration can enforce the cap: W must come
    out at σ_max = 0.99 Δ exactly (rank one, so one iteration finds it)."""
    prior = RBMPrior(12, n_visible=6).double().train()
    prior.precision()  # the first training call, at W = 0
    direction = torch.outer(torch.arange(1.0, 7.0), torch.linspace(-1, 1, 6)).double()
    with torch.no_grad():
        prior.coupling.raw_weight.copy_(0.995 * 2.5 * direction / torch.linalg.matrix_norm(direction, 2))
    sigma = torch.linalg.matrix_norm(prior.precision().weight, 2)
    assert sigma.item() == pytest.approx(0.99 * prior.coupling.delta.item(), rel=1e-12)  # Δ ≈ 2.5 in float32


@pytest.mark.parametrize(("dim", "n_visible"), [(1, 1), (5, 3), (8, 2), (9, 7), (12, 6)])
def test_exact_log_partition_equals_brute_force(dim: int, n_visible: int) -> None:
    prior = randomise(RBMPrior(dim, n_visible=n_visible, delta=3.0), scale=1.0).double().eval()
    states = all_spin_states(dim, prior.bias)
    weight = prior.precision().weight
    s_v, s_h = states[:, :n_visible], states[:, n_visible:]
    brute = torch.logsumexp(((s_v @ weight) * s_h).sum(1) + states @ prior.bias, 0)
    assert exact_log_partition(
        weight, prior.bias[:n_visible], prior.bias[n_visible:]
    ).item() == pytest.approx(brute.item(), abs=1e-10)
    assert prior.log_partition_spins(prior.precision()).item() == pytest.approx(brute.item(), abs=1e-10)


def test_bernoulli_log_partition_is_exact() -> None:
    prior = randomise(BernoulliPrior(7)).double()
    states, _ = spin_distribution(prior)
    brute = torch.logsumexp(states @ prior.bias, 0)
    assert prior.log_partition_spins(prior.precision()).item() == pytest.approx(brute.item(), abs=1e-10)


def test_one_spin_matches_the_mixture_in_math_md() -> None:
    """docs/maths.md §3 sanity check: N = 1, J = 0, p(z) = Σ_s e^{hs}/(2cosh h) N(z; s, 1/Δ)."""
    prior = BernoulliPrior(1, delta=1.7).double()
    with torch.no_grad():
        prior.bias.fill_(0.8)
    z = torch.linspace(-4, 4, 33, dtype=torch.float64)[:, None]
    h, delta = 0.8, 1.7
    expected = sum(
        math.exp(h * s)
        / (2 * math.cosh(h))
        * torch.exp(-0.5 * delta * (z - s) ** 2)
        * math.sqrt(delta / (2 * math.pi))
        for s in (1, -1)
    )
    assert torch.allclose(prior.log_prob(z).exp(), expected[:, 0], rtol=1e-12)


@pytest.mark.parametrize("name", ["bernoulli", "rbm"])
def test_posterior_equals_enumeration(name: str) -> None:
    prior = randomise(PRIORS[name](6), scale=1.0).double().eval()
    states, p_s = spin_distribution(prior)
    precision = dense_precision(prior)
    z = 1.5 * torch.randn(5, 6, dtype=torch.float64)
    diff = z[:, None, :] - states[None]
    log_joint = p_s.log()[None] - 0.5 * torch.einsum("bsi,ij,bsj->bs", diff, precision, diff)
    weights = torch.softmax(log_joint, dim=1)
    expected = weights @ (states > 0).double()
    assert torch.allclose(prior.posterior(z), expected, atol=1e-12)


@pytest.mark.parametrize("name", ["multicov", "bernoulli", "rbm"])
def test_log_prob_equals_dense_mixture(name: str) -> None:
    """log p(z) against Σ_s p(s) N(z; s, J̃⁻¹) (or N(μ, J̃⁻¹)) built from a dense J̃."""
    prior = randomise(PRIORS[name](5), scale=1.0).double().eval()
    precision = dense_precision(prior)
    z = torch.randn(4, 5, dtype=torch.float64)
    cov = torch.linalg.inv(precision)
    if name == "multicov":
        expected = torch.distributions.MultivariateNormal(prior.mean, cov).log_prob(z)
    else:
        states, p_s = spin_distribution(prior)
        comp = torch.distributions.MultivariateNormal(states, cov.expand(len(states), 5, 5))
        expected = torch.logsumexp(comp.log_prob(z[:, None]) + p_s.log(), dim=1)
    assert torch.allclose(prior.log_prob(z), expected, atol=1e-10)
