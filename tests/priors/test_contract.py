"""The shared contract test: every prior, same checks."""

import io

import pytest
import torch

from priors import BernoulliPrior, DiscretePrior, MultiCovPrior, Prior, RBMPrior
from tests.priors.helpers import PRIORS, randomise

DIM = 6


@pytest.fixture(params=list(PRIORS))
def name(request) -> str:
    return request.param


@pytest.fixture
def prior(name: str) -> Prior:
    return randomise(PRIORS[name](DIM), scale=0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_and_dtypes(prior: Prior, dtype: torch.dtype, device: torch.device) -> None:
    prior = prior.to(device, dtype)
    z = torch.randn(5, DIM, dtype=dtype, device=device)
    assert prior.dim == DIM
    log_p = prior.log_prob(z)
    assert log_p.shape == (5,) and log_p.dtype == dtype
    assert prior.loss(z).shape == () and prior.loss(z).dtype == dtype
    samples = prior.sample(7, temperature=0.7)
    assert samples.shape == (7, DIM) and samples.dtype == dtype
    assert torch.isfinite(samples).all() and torch.isfinite(log_p).all()
    assert samples.device.type == log_p.device.type == device.type
    if isinstance(prior, DiscretePrior):
        s = prior.sample_discrete(4)
        assert s.shape == (4, DIM) and s.dtype == dtype
        assert ((s == 1) | (s == -1)).all()
        assert prior.sample_given(s).shape == (4, DIM)
        post = prior.posterior(z)
        assert post.shape == (5, DIM) and ((post >= 0) & (post <= 1)).all()
        value, stderr = prior.estimate_log_partition()
        assert value.shape == () and stderr.shape == () and torch.isfinite(value)


def test_every_parameter_gets_a_gradient(prior: Prior) -> None:
    prior.train()
    z = torch.randn(8, DIM, requires_grad=True)
    prior.loss(z).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    for name, p in prior.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_state_dict_round_trip(name: str, prior: Prior) -> None:
    prior.train()
    prior.loss(torch.randn(4, DIM))  # advances PCD chains and power iteration
    buffer = io.BytesIO()
    torch.save(prior.state_dict(), buffer)
    buffer.seek(0)
    fresh = PRIORS[name](DIM)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    for (name, a), b in zip(prior.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    prior.eval(), fresh.eval()
    z = torch.randn(4, DIM)
    assert torch.equal(prior.log_prob(z), fresh.log_prob(z))


def test_bad_inputs_fail_with_clear_messages(prior: Prior) -> None:
    with pytest.raises(ValueError, match=r"shape \(batch, 6\)"):
        prior.log_prob(torch.randn(3, DIM + 1))
    with pytest.raises(TypeError, match="floating-point"):
        prior.loss(torch.ones(3, DIM, dtype=torch.long))
    with pytest.raises(ValueError, match="is on meta"):
        prior.log_prob(torch.randn(3, DIM, device="meta"))
    with pytest.raises(ValueError, match=r"NaN or infinite values \(2 of 3 rows\)"):
        prior.log_prob(torch.tensor([[float("nan")] * DIM, [0.0] * DIM, [float("inf")] * DIM]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        prior.loss(torch.full((3, DIM), float("nan")))
    prior.check_finite = False  # opted out: the caller checks its own result
    assert torch.isnan(prior.log_prob(torch.full((2, DIM), float("nan")))).all()
    with pytest.raises(ValueError, match="positive integer"):
        prior.sample(0)
    with pytest.raises(ValueError, match="temperature"):
        prior.sample(2, temperature=0.0)
    if isinstance(prior, DiscretePrior):
        with pytest.raises(ValueError, match="spins"):
            prior.sample_given(torch.zeros(2, DIM))


@pytest.mark.parametrize("cls", [MultiCovPrior, BernoulliPrior, RBMPrior])
@pytest.mark.parametrize("delta", [0.0, -1.0, float("inf"), float("nan")])
def test_a_delta_that_is_not_positive_and_finite_is_refused(cls: type, delta: float) -> None:
    with pytest.raises(ValueError, match=r"delta \(Δ\) must be a finite number above"):
        cls(4, delta=delta)


def test_autocast_does_not_reach_the_prior(prior: Prior) -> None:
    prior.eval()
    z = torch.randn(5, DIM)
    expected = prior.log_prob(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(prior.log_prob(z), expected)
        assert prior.sample(3).dtype == torch.float32
