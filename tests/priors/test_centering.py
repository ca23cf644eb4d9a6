"""The centered gradient (priors/centering.py, docs/maths.md §4) against the centered parametrisation
differentiated by autograd, and RBMPrior's offsets."""

import pytest
import torch

from priors import BlockGibbs, RBMPrior
from priors.centering import centered_gradient


def objective(weight: torch.Tensor, bias: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Any smooth function of (W, h): here the mean log p̃ of spins s plus a curvature term."""
    n_v = weight.shape[0]
    s_v, s_h = s[:, :n_v], s[:, n_v:]
    log_p = ((s_v @ weight) * s_h).sum(1) + s @ bias
    return log_p.mean() + (weight**2).sum() * bias.sum()


def test_centered_gradient_is_a_step_in_the_centered_parameters_mapped_back() -> None:
    """The plain parameters as a function of the centered ones, h_v = b_v − W μ_h and h_h = b_h − Wᵀ μ_v:
    autograd's gradient in (W, b), mapped back as the parameters are, is the transformed gradient."""
    torch.manual_seed(0)
    n_v, n_h = 5, 3
    weight, bias = torch.randn(n_v, n_h, dtype=torch.float64), torch.randn(n_v + n_h, dtype=torch.float64)
    offsets = torch.empty(n_v + n_h, dtype=torch.float64).uniform_(-0.9, 0.9)
    s = torch.randint(0, 2, (7, n_v + n_h), dtype=torch.float64) * 2 - 1
    mu_v, mu_h = offsets[:n_v], offsets[n_v:]

    centered_w = weight.clone().requires_grad_(True)
    centered_b = (bias + torch.cat([weight @ mu_h, weight.T @ mu_v])).requires_grad_(True)
    plain_bias = centered_b - torch.cat([centered_w @ mu_h, centered_w.T @ mu_v])
    assert torch.allclose(plain_bias, bias)  # the same model
    objective(centered_w, plain_bias, s).backward()
    step_w = centered_w.grad
    step_h = centered_b.grad - torch.cat([step_w @ mu_h, step_w.T @ mu_v])

    w, h = weight.clone().requires_grad_(True), bias.clone().requires_grad_(True)
    w_out, h_out = centered_gradient(w, h, offsets)
    assert torch.equal(w_out, weight) and torch.equal(h_out, bias)
    objective(w_out, h_out, s).backward()
    assert torch.allclose(w.grad, step_w, atol=1e-12) and torch.allclose(h.grad, step_h, atol=1e-12)

    plain_w, plain_h = weight.clone().requires_grad_(True), bias.clone().requires_grad_(True)
    objective(plain_w, plain_h, s).backward()
    assert not torch.allclose(w.grad, plain_w.grad)  # it is not the plain gradient
    zero_w, zero_h = weight.clone().requires_grad_(True), bias.clone().requires_grad_(True)
    objective(*centered_gradient(zero_w, zero_h, torch.zeros_like(offsets)), s).backward()
    assert torch.equal(zero_w.grad, plain_w.grad) and torch.equal(zero_h.grad, plain_h.grad)


def test_centered_gradient_refuses_offsets_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="n_v \\+ n_h = 5"):
        centered_gradient(torch.zeros(3, 2), torch.zeros(5), torch.zeros(4))


def rbm(centering: float | None) -> RBMPrior:
    torch.manual_seed(1)
    prior = RBMPrior(8, n_visible=5, delta=3.0, sampler=BlockGibbs(5, 16), centering=centering).double()
    with torch.no_grad():
        prior.coupling.raw_weight.copy_(0.5 * torch.randn(5, 3, dtype=torch.float64))
        prior.bias.copy_(0.5 * torch.randn(8, dtype=torch.float64))
    return prior


def gradients(prior: RBMPrior, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(2)  # the same negative phase for both priors
    prior.zero_grad()
    z = z.clone().requires_grad_(True)
    loss = prior.loss(z)
    loss.backward()
    return loss.detach(), z.grad, prior.coupling.raw_weight.grad, prior.bias.grad


def test_centering_changes_the_prior_update_only() -> None:
    """Same loss and the same gradient for the flow (z); the prior's gradient is the plain one
    transformed with the offsets that the call set: the batch's mean spins E[s | z] = tanh(J̃z + h)."""
    z = torch.randn(32, 8, dtype=torch.float64) + 0.8
    plain, centered = rbm(None), rbm(0.1)
    assert "offsets" not in plain.state_dict() and torch.isnan(centered.offsets).all()
    loss, grad_z, grad_w, grad_h = gradients(plain, z)
    c_loss, c_grad_z, c_grad_w, c_grad_h = gradients(centered, z)
    means = torch.tanh(plain.precision().matvec(z) + plain.bias).mean(0).detach()
    assert torch.allclose(centered.offsets, means)
    assert torch.allclose(c_loss, loss) and torch.allclose(c_grad_z, grad_z)

    weight = plain.precision().weight.detach().requires_grad_(True)
    bias = plain.bias.detach().clone().requires_grad_(True)
    w_out, h_out = centered_gradient(weight, bias, means)
    (grad_w * w_out).sum().add((grad_h * h_out).sum()).backward()  # transforms (grad_w, grad_h)
    assert torch.allclose(c_grad_w, weight.grad) and torch.allclose(c_grad_h, bias.grad)
    assert (c_grad_h - grad_h).abs().max() > 1e-3


def test_before_any_training_call_the_offsets_centre_nothing() -> None:
    """A loss differentiated outside training before the offsets were ever set: the plain gradient."""
    z = torch.randn(8, 8, dtype=torch.float64)
    plain, centered = rbm(None).eval(), rbm(0.1).eval()
    _, *plain_grads = gradients(plain, z)
    _, *centered_grads = gradients(centered, z)
    for a, b in zip(plain_grads, centered_grads, strict=True):
        assert torch.isfinite(b).all() and torch.allclose(a, b)
    assert torch.isnan(centered.offsets).all()


def test_offsets_follow_the_codes_in_training_only() -> None:
    prior = rbm(0.25)
    first, second = torch.randn(16, 8, dtype=torch.float64), torch.randn(16, 8, dtype=torch.float64) - 1
    prior.train()
    prior.loss(first)
    start = prior.offsets.clone()
    with torch.no_grad():
        target = torch.tanh(prior.precision().matvec(second) + prior.bias).mean(0)
    prior.loss(second)
    assert torch.allclose(prior.offsets, 0.75 * start + 0.25 * target)
    after = prior.offsets.clone()
    prior.eval()
    prior.loss(second)
    assert torch.equal(prior.offsets, after)


def test_centering_can_be_set_on_and_off() -> None:
    prior = rbm(None)
    prior.set_centering(0.5)
    assert prior.centering == 0.5 and prior.offsets.dtype == torch.float64
    assert torch.isnan(prior.state_dict()["offsets"]).all()
    prior.train().loss(torch.randn(4, 8, dtype=torch.float64))
    prior.set_centering(0.25)  # set again: the offsets start afresh at the next training call
    assert prior.centering == 0.25 and torch.isnan(prior.offsets).all()
    prior.set_centering(None)
    assert prior.centering is None and "offsets" not in prior.state_dict()
    for rate in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="centering is the offsets' moving-average rate"):
            RBMPrior(4, centering=rate)


def test_a_checkpoint_loads_whether_or_not_it_was_centered() -> None:
    """The offsets steer learning only: a plain prior ignores a centered one's, a centered prior keeps its
    own (unset) where the state has none, and the model is the one saved either way."""
    centered, plain = rbm(0.1).train(), rbm(None).train()
    z = torch.randn(16, 8, dtype=torch.float64)
    centered.loss(z), plain.loss(z)
    into_plain = rbm(None)
    into_plain.load_state_dict(centered.state_dict())
    assert "offsets" not in into_plain.state_dict()
    into_centered = rbm(0.1)
    into_centered.load_state_dict(plain.state_dict())
    assert torch.isnan(into_centered.offsets).all()
    for source, loaded in ((centered, into_plain), (plain, into_centered)):
        source.eval(), loaded.eval()
        assert torch.equal(source.log_prob(z), loaded.log_prob(z))


def _two_ranks(rank: int, init_file: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        prior = rbm(0.1).train()
        z = torch.randn(16, 8, generator=torch.Generator().manual_seed(rank), dtype=torch.float64)
        with torch.no_grad():
            means = torch.tanh(prior.precision().matvec(z) + prior.bias).mean(0)
        prior.loss(z)
        torch.save({"means": means, "offsets": prior.offsets.clone()}, f"{out}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


def test_under_ddp_every_rank_takes_the_offsets_of_all_ranks_codes(tmp_path) -> None:
    """Two gloo ranks with different codes end with the same offsets, the mean of both batches' means:
    with rank-local offsets the ranks' updates, and so their parameters, would drift apart."""
    out = str(tmp_path / "rank")
    torch.multiprocessing.spawn(_two_ranks, args=(str(tmp_path / "init"), out), nprocs=2)
    first, second = (torch.load(f"{out}.{rank}", weights_only=True) for rank in (0, 1))
    assert not torch.allclose(first["means"], second["means"])
    assert torch.equal(first["offsets"], second["offsets"])
    assert torch.allclose(first["offsets"], (first["means"] + second["means"]) / 2)
