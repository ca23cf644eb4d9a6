"""AIS against exact log Z, the PCD gradient against the exact gradient, and positive definiteness
under adversarial updates (docs/maths.md §4, §5, §7)."""

import pytest
import torch

from priors import BlockGibbs, MultiCovPrior, RBMPrior
from tests.priors.helpers import dense_precision


def strong_rbm(seed: int) -> RBMPrior:
    """N = 40 with n_h = 12 and strong couplings: σ_max(W) at its cap 0.99 Δ = 3.96."""
    torch.manual_seed(seed)
    prior = RBMPrior(40, n_visible=28, delta=4.0).double()
    with torch.no_grad():
        prior.coupling.raw_weight.copy_(0.6 * torch.randn(28, 12))
        prior.bias.copy_(0.5 * torch.randn(40))
    return prior.eval()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ais_matches_exact_log_partition(seed: int) -> None:
    prior = strong_rbm(seed)
    assert prior.precision().weight.abs().max() > 0.4
    exact, zero = prior.estimate_log_partition(method="exact")
    assert zero.item() == 0
    estimate, stderr = prior.estimate_log_partition(method="ais", steps=2000, chains=400)
    assert prior.log_z_estimate.item() == estimate.item()
    error = abs(estimate.item() - exact.item())
    assert error <= 3 * stderr.item() and error <= 0.1, (estimate.item(), exact.item(), stderr.item())


def test_log_prob_uses_latest_estimate_when_not_enumerable() -> None:
    prior = RBMPrior(8, exact_max_units=2).double().eval()
    assert not prior.log_partition_is_exact
    z = torch.randn(3, 8, dtype=torch.float64)
    before = prior.log_prob(z)
    prior.set_log_partition(prior.log_z_estimate + 1.5, torch.tensor(0.2))
    assert torch.allclose(prior.log_prob(z), before - 1.5) and prior.log_z_stderr.item() == pytest.approx(0.2)
    with pytest.raises(ValueError, match="method must be one of"):
        prior.estimate_log_partition(method="enumerate")


def pcd_gradients(prior: RBMPrior, z: torch.Tensor) -> dict[str, torch.Tensor]:
    prior.zero_grad()
    z = z.clone().requires_grad_(True)
    prior.loss(z).backward()
    return {"W": prior.coupling.raw_weight.grad.clone(), "h": prior.bias.grad.clone(), "z": z.grad}


def test_pcd_gradient_matches_exact_gradient() -> None:
    """The exact gradient of −mean log p(z) uses the exact, differentiable log Z_s; the PCD loss uses
    chains. Ten independent sets of 4000 chains give the Monte Carlo error of their mean."""
    torch.manual_seed(0)
    dim, n_v = 8, 4
    prior = RBMPrior(dim, n_visible=n_v, delta=3.0, sampler=BlockGibbs(100, 4000)).double()
    with torch.no_grad():
        prior.coupling.raw_weight.copy_(0.8 * torch.randn(n_v, dim - n_v))
        prior.bias.copy_(0.5 * torch.randn(dim))
    prior.train()
    prior.coupling()  # settle the power iteration so W does not move between the two gradients
    for _ in range(30):
        prior.coupling()
    prior.coupling.eval()
    assert prior.coupling().weight.equal(prior.coupling.raw_weight)  # below the cap: W = V

    z = torch.randn(16, dim, dtype=torch.float64)
    zz = z.clone().requires_grad_(True)
    prior.zero_grad()
    (-prior.log_prob(zz).mean()).backward()
    exact = {"W": prior.coupling.raw_weight.grad.clone(), "h": prior.bias.grad.clone(), "z": zz.grad}

    runs = [pcd_gradients(prior, z) for _ in range(10)]
    for key in ("W", "h"):
        stack = torch.stack([r[key] for r in runs])
        mean, stderr = stack.mean(0), stack.std(0) / 10**0.5
        assert ((mean - exact[key]).abs() <= 4 * stderr + 1e-3).all(), key
        assert stderr.max() < 0.05  # the comparison is sharp enough to catch a wrong sign or factor
    assert torch.allclose(runs[0]["z"], exact["z"], atol=1e-12)


def test_chains_advance_only_in_training() -> None:
    prior = RBMPrior(6, sampler=BlockGibbs(3, 64))
    with torch.no_grad():
        prior.coupling.raw_weight.fill_(0.5)
    before = prior.sampler.chains.clone()
    prior.eval()
    prior.loss(torch.randn(2, 6))
    assert torch.equal(prior.sampler.chains, before)
    with torch.inference_mode():
        prior.train()
        prior.loss(torch.randn(2, 6))
    assert torch.equal(prior.sampler.chains, before)
    prior.loss(torch.randn(2, 6))
    assert not torch.equal(prior.sampler.chains, before)


@pytest.mark.parametrize(
    "make",
    [
        lambda: RBMPrior(10, delta=2.5, sampler=BlockGibbs(5, 8)),
        lambda: RBMPrior(10, delta=1.0, sampler=BlockGibbs(5, 8), learn_delta=True),
        lambda: MultiCovPrior(10, delta=2.5),
        lambda: MultiCovPrior(10, delta=2.5, n_visible=3, learn_delta=True),
    ],
)
def test_positive_definite_under_adversarial_sgd(make) -> None:
    """Plain SGD with huge steps on random linear losses drives the raw parameters (Δ included) to
    values in the hundreds, of either sign; J̃ must stay positive definite at every one."""
    prior = make().double().train()
    optimiser = torch.optim.SGD(prior.parameters(), lr=50.0)
    for step in range(100):
        optimiser.zero_grad()
        z = 3 * torch.randn(8, 10, dtype=torch.float64)
        sum((torch.randn_like(p) * p).sum() for p in prior.parameters()).backward()
        optimiser.step()
        eigenvalues = torch.linalg.eigvalsh(dense_precision(prior))
        assert eigenvalues.min() > 0, step
        assert torch.isfinite(prior.log_prob(z)).all() and torch.isfinite(prior.loss(z))
    assert max(p.abs().max() for p in prior.parameters()) > 100


def test_rbm_loss_value_is_the_nll_with_the_latest_estimate() -> None:
    prior = RBMPrior(8, n_visible=4, sampler=BlockGibbs(5, 32)).double()
    with torch.no_grad():
        prior.coupling.raw_weight.normal_(0, 0.5)
        prior.bias.normal_(0, 0.5)
    prior.coupling.eval()  # freeze the power iteration so both calls see the same W
    prior.estimate_log_partition(method="exact")
    z = torch.randn(6, 8, dtype=torch.float64)
    assert prior.loss(z).item() == pytest.approx(-prior.log_prob(z).mean().item(), abs=1e-10)
