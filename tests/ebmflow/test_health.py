"""Training health: autocorrelation time and class coverage against exact answers, and the ChainHealth
and coverage measurements inside real Trainer runs."""

import logging
import math
from pathlib import Path

import pytest
import torch

from ebmflow.callbacks import ChainHealth, SampleQuality
from ebmflow.data import DigitsDataModule
from ebmflow.health import (
    class_coverage,
    class_shares,
    gap_beyond_noise,
    integrated_autocorrelation_time,
    moment_gap,
)
from priors import BlockGibbs, ParallelTempering, RBMPrior
from priors.samplers import RBM, Sampler
from tests.ebmflow.helpers import tiny_model, trainer


def ar1(phi: float, chains: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(chains, length, generator=g, dtype=torch.float64)
    x = torch.empty_like(noise)
    x[:, 0] = noise[:, 0] / math.sqrt(1 - phi**2)  # stationary start
    for t in range(1, length):
        x[:, t] = phi * x[:, t - 1] + noise[:, t]
    return x


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.8, 0.95])
def test_autocorrelation_time_of_ar1_is_one_plus_phi_over_one_minus_phi(
    phi: float, device: torch.device
) -> None:
    """200 chains of 4,000 steps: the estimate's standard error is ~2 % of τ, the tolerance 8 %."""
    exact = (1 + phi) / (1 - phi)
    series = ar1(phi, 200, 4000).to(device)
    assert integrated_autocorrelation_time(series) == pytest.approx(exact, rel=0.08)


def test_autocorrelation_time_of_a_drifting_chain_is_of_the_order_of_its_length() -> None:
    drifting = torch.arange(100.0).repeat(4, 1)  # never forgets its start
    assert integrated_autocorrelation_time(drifting) > 10
    assert integrated_autocorrelation_time(torch.ones(3, 50)) == 1.0


def test_class_coverage_exact_answers() -> None:
    data = torch.arange(10).repeat(100)  # ten equally common classes
    collapsed = class_coverage(torch.full((500,), 3), data, 10)
    assert collapsed == {"classes": 1.0, "max_share": 1.0, "kl": pytest.approx(math.log(10))}
    assert class_coverage(data, data, 10) == {"classes": 10.0, "max_share": 0.1, "kl": 0.0}
    samples = torch.tensor([0] * 50 + [1] * 49 + [2])  # class 2 holds 1 %: not covered at 2 %
    coverage = class_coverage(samples, data, 10)
    expected_kl = 0.5 * math.log(5) + 0.49 * math.log(4.9) + 0.01 * math.log(0.1)
    assert coverage == {"classes": 2.0, "max_share": 0.5, "kl": pytest.approx(expected_kl)}
    assert class_coverage(torch.tensor([1]), torch.tensor([0]), 2)["kl"] == math.inf


def test_class_shares_exact_answers() -> None:
    assert class_shares(torch.tensor([0, 0, 1, 3]), 5).tolist() == [0.5, 0.25, 0.0, 0.25, 0.0]
    assert class_shares(torch.tensor([[2, 2], [2, 2]]), 3).tolist() == [0.0, 0.0, 1.0]


def test_moment_gap_exact_answers() -> None:
    """W = 0 and h_h = atanh(1/2): every hidden mean is 1/2, so C_model = mean(s_v) · 1/2."""
    weight, bias_h = torch.zeros(2, 3), torch.full((3,), math.atanh(0.5))
    codes = torch.ones(1, 5)  # one image, every spin certain to be +1: C_data = ones(2, 3)
    # C_model = 0 from four terms ±½·ones(2, 3) (‖·‖² = 3/2 each): e² = (4 · 3/2 − 0) / (4 · 3) = 1/2,
    # relative to ‖C_data‖² = 6; one image gives no estimate of the codes' error (0)
    split = torch.tensor([[1.0, 1.0], [1.0, 1.0], [-1.0, -1.0], [-1.0, -1.0]])
    assert moment_gap(codes, split, weight, bias_h) == pytest.approx((1.0, math.sqrt(1 / 12)))
    assert moment_gap(codes, torch.ones(4, 2), weight, bias_h) == pytest.approx((0.5, 0.0))
    assert moment_gap(torch.ones(3, 5), torch.ones(4, 2), weight, torch.full((3,), 30.0)) == (0.0, 0.0)
    gap, noise = moment_gap(torch.zeros(3, 5), split, weight, bias_h)  # codes of no information: C_data = 0
    assert math.isnan(gap) and math.isinf(noise)  # reported, not raised


def test_gap_beyond_noise_exact_answers() -> None:
    assert gap_beyond_noise(0.5, 0.3) == pytest.approx(0.4)
    assert gap_beyond_noise(0.5, 0.0) == 0.5
    assert gap_beyond_noise(0.2, 0.3) == 0.0  # less than noise: nothing beyond it


@pytest.mark.parametrize(("images", "samples"), [(200, 8), (200, 64), (50, 16), (51, 15)])
def test_the_moment_gaps_noise_is_all_of_its_bias_when_the_rbm_matches_the_codes(
    images: int, samples: int
) -> None:
    """Codes made by an enumerable RBM (5 visible, 3 hidden units: images s_v drawn exactly, m_h =
    tanh(Wᵀs_v + h_h)) and samples of the same RBM: the true gap is exactly 0. Over 4,000 draws of both,
    gap² is far above 0 and gap² − noise² is not (within four standard errors): the noise, the codes'
    share included, is all of the gap's bias, which gap_beyond_noise takes away."""
    g = torch.Generator().manual_seed(0)
    weight = 0.8 * torch.randn(5, 3, generator=g, dtype=torch.float64)
    bias_v, bias_h = (0.5 * torch.randn(n, generator=g, dtype=torch.float64) for n in (5, 3))
    states = torch.cartesian_prod(*[torch.tensor([-1.0, 1.0], dtype=torch.float64)] * 5)
    p = torch.softmax(RBM(weight, bias_v, bias_h).neg_free_energy(states), 0)

    def draw(n: int) -> torch.Tensor:
        return states[torch.multinomial(p, n, replacement=True, generator=g)]

    gaps = []
    for _ in range(4000):
        s_v = draw(images)
        codes = torch.cat([s_v, torch.tanh(s_v @ weight + bias_h)], 1)
        gaps.append(moment_gap(codes, draw(samples), weight, bias_h))
    gap, noise = torch.tensor(gaps).T
    raw, debiased = gap**2, gap**2 - noise**2
    assert raw.mean() > 10 * raw.std() / math.sqrt(len(raw))
    assert abs(debiased.mean()) < 4 * debiased.std() / math.sqrt(len(debiased))


def test_chain_health_in_a_fit_measures_the_chains_it_leaves_untouched(
    tmp_path: Path, device: torch.device
) -> None:
    """The logged chain log p̃ is −F of the final persistent chains, the lag its difference from the
    fresh run; training is the same with and without the callback."""

    def fit(callbacks):
        torch.manual_seed(0)
        model = tiny_model()
        run = trainer(
            tmp_path,
            accelerator=device.type,
            max_epochs=1,
            limit_train_batches=4,
            limit_val_batches=2,
            callbacks=callbacks,
        )
        run.fit(model, DigitsDataModule(batch_size=64))
        return model, run

    health = ChainHealth(reference=BlockGibbs(steps=50), reference_samples=30, mixing_sweeps=20)
    model, run = fit([health])
    plain, _ = fit([])
    for a, b in zip(model.state_dict().values(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    m = {k: v.item() for k, v in run.callback_metrics.items() if k.startswith("health/")}
    prior = model.prior
    chains = prior.spin_model().neg_free_energy(prior.sampler.chains).mean().item()
    assert m["health/chain_logp"] == pytest.approx(chains, abs=1e-4)
    assert m["health/chain_lag"] == pytest.approx(m["health/chain_logp"] - m["health/fresh_logp"], abs=1e-4)
    assert m["health/data_gap"] == pytest.approx(m["health/data_logp"] - m["health/fresh_logp"], abs=1e-4)
    assert 0 < m["health/flip_rate"] < 1 and m["health/energy_iat"] > 0


def stuck_model(sampler, generation_sampler=None) -> object:
    """An RBM whose visible fields all point to +1, with its persistent chains parked at all −1."""
    model = tiny_model(RBMPrior(64, n_visible=52, sampler=sampler, generation_sampler=generation_sampler))
    with torch.no_grad():
        model.prior.bias[:52].fill_(2.0)
        model.prior.sampler.persistent_states().fill_(-1.0)
    return model


def validation_codes(model) -> torch.Tensor:
    """2 E[s | z] − 1 of the first validation batch (64 digits), as ChainHealth collects them."""
    data = DigitsDataModule(batch_size=64)
    data.setup("validate")
    return 2 * model.eval().encode(next(iter(data.val_dataloader()))[0]) - 1


@pytest.mark.parametrize(
    ("sample_start", "generation_sampler", "samples_read_chains"),
    [("fair_coins", None, False), ("persistent", None, True), ("persistent", BlockGibbs(2), False)],
    ids=["fair_coins", "persistent", "persistent_with_generation_sampler"],
)
def test_chain_health_warns_when_the_chains_have_lost_the_model(
    tmp_path: Path, caplog, sample_start: str, generation_sampler, samples_read_chains: bool
) -> None:
    """Validation's samples read the lagging chains only where the sampler that draws them (the
    generation sampler if there is one) continues copies of them."""
    model = stuck_model(BlockGibbs(3, 8, sample_start=sample_start), generation_sampler)
    health = ChainHealth(reference=BlockGibbs(steps=20), reference_samples=20, mixing_sweeps=10)
    run = trainer(tmp_path, limit_val_batches=1, callbacks=[health])
    with caplog.at_level(logging.WARNING, logger="ebmflow.callbacks"):
        run.validate(model, DigitsDataModule(batch_size=64))
    lag = run.callback_metrics["health/chain_lag"].item()
    assert lag == pytest.approx(-52 * 2 * 2, abs=4)  # 52 spins each 2·h_v = 4 nats below the mode
    assert "lag the model by" in caplog.text and "prior_lr" in caplog.text and "restart 0.2" in caplog.text
    # samples that continue the lagging chains read the chains, not the RBM (docs/results.md, round 15)
    assert ("describe the chains, not the RBM" in caplog.text) == samples_read_chains
    flagged = run.callback_metrics["health/samples_from_lagging_chains"].item()
    assert flagged == float(samples_read_chains)  # what `ebmflow report` marks
    # W = 0 and h_h = 0: C_model = 0, so the gap is ‖C_data‖ / ‖C_data‖ = 1, and the samples add no
    # noise: all of it is the standard error of the 64 codes' mean of v hᵀ
    assert run.callback_metrics["health/moment_gap"].item() == pytest.approx(1.0)
    v, h = validation_codes(model).split([52, 12], 1)
    terms = torch.einsum("ni,nj->nij", v, h)
    mean = terms.mean(0)
    standard_error = ((terms - mean).pow(2).sum() / (64 * 63)).sqrt()
    expected = (standard_error / mean.norm()).item()
    assert run.callback_metrics["health/moment_noise"].item() == pytest.approx(expected, rel=1e-4)
    assert "not caught up with the codes" in caplog.text


class NeverMoves(Sampler):
    """A reference too weak for the model: every draw is all visible spins −1."""

    def negative_phase(self, model: RBM) -> torch.Tensor:
        return self.sample(model, 8)

    def sample(self, model: RBM, n: int) -> torch.Tensor:
        return -torch.ones(n, model.weight.shape[0], dtype=model.weight.dtype)


def test_chain_health_warns_when_its_reference_has_not_reached_the_model(tmp_path: Path, caplog) -> None:
    """Chains at the mode (all visible +1, fields 2), the reference at −1: the chains lead by exactly
    52 spins · 2 · 2 nats, so it is the reference, not the chains, that has not reached equilibrium
    (and validation's samples, continuing those chains, are not flagged as read from lagging ones)."""
    model = stuck_model(BlockGibbs(3, 8, sample_start="persistent"))
    with torch.no_grad():
        model.prior.sampler.persistent_states().fill_(1.0)
    health = ChainHealth(reference=NeverMoves(), reference_samples=20, mixing_sweeps=10)
    run = trainer(tmp_path, limit_val_batches=1, callbacks=[health])
    with caplog.at_level(logging.WARNING, logger="ebmflow.callbacks"):
        run.validate(model, DigitsDataModule(batch_size=64))
    assert run.callback_metrics["health/chain_lag"].item() == pytest.approx(52 * 2 * 2)
    assert "reference has not reached the RBM's equilibrium" in caplog.text
    assert "lag the model by" not in caplog.text
    assert run.callback_metrics["health/samples_from_lagging_chains"].item() == 0.0


def test_the_moment_gap_is_the_rbms_equilibrium_against_the_codes_not_the_chains(tmp_path: Path) -> None:
    """Under PCD the chains' statistics are pulled towards the codes' whether or not the RBM's own
    equilibrium is, so the gap must come from the fresh samples. Here the equilibrium is exactly all
    visible spins +1 (fields of 20; the couplings add at most 0.12) while the chains are parked at −1;
    with h_h ≠ 0 the two give different statistics, and the logged gap is the equilibrium's."""
    model = stuck_model(BlockGibbs(3, 8))
    with torch.no_grad():
        model.prior.bias[:52].fill_(20.0)
        model.prior.bias[52:].fill_(0.5)
        model.prior.coupling.raw_weight.fill_(0.01)
    health = ChainHealth(reference=BlockGibbs(steps=5), reference_samples=20, mixing_sweeps=10)
    run = trainer(tmp_path, limit_val_batches=1, callbacks=[health])
    run.validate(model, DigitsDataModule(batch_size=64))
    codes = validation_codes(model)
    spins = model.prior.spin_model()
    equilibrium, noise = moment_gap(codes, torch.ones(20, 52), spins.weight, spins.bias_h)
    chains, _ = moment_gap(codes, -torch.ones(8, 52), spins.weight, spins.bias_h)
    assert abs(equilibrium - chains) > 0.1
    assert run.callback_metrics["health/moment_gap"].item() == pytest.approx(equilibrium, abs=1e-5)
    assert run.callback_metrics["health/moment_noise"].item() == pytest.approx(noise, abs=1e-5)


class Halves(Sampler):
    """A reference whose first half of the draws is all visible spins +1, the second all −1."""

    def negative_phase(self, model: RBM) -> torch.Tensor:
        return self.sample(model, 8)

    def sample(self, model: RBM, n: int) -> torch.Tensor:
        s = torch.ones(n, model.weight.shape[0], dtype=model.weight.dtype)
        s[n // 2 :] = -1
        return s


@pytest.mark.parametrize(("bias_h", "warns"), [(0.45, True), (0.7, False)])
def test_the_moment_gap_warns_on_what_lies_beyond_its_noise(
    tmp_path: Path, caplog, bias_h: float, warns: bool
) -> None:
    """W = 0: C_model is mean(s_v) tanh(h_h)ᵀ, so the Halves reference's two samples (all +1, all −1)
    give C_model = 0 (gap exactly 1) with a standard error of ‖1 tanh(h_h)ᵀ‖, beside the 64 codes'.
    At h_h = 0.45 the noise is 0.87: a gap within three times its noise (the old rule's silence) and
    within 0.2 of it, that lies 0.49 beyond it; at 0.7 the noise (1.24) exceeds the gap, which is then
    nothing but noise."""
    torch.manual_seed(0)  # the flow's initial weights, and so the codes
    model = stuck_model(BlockGibbs(3, 8))
    with torch.no_grad():
        model.prior.bias[:52].fill_(0.5)
        model.prior.bias[52:].fill_(bias_h)
        model.prior.coupling.raw_weight.zero_()
    health = ChainHealth(reference=Halves(), reference_samples=2, mixing_sweeps=10)
    run = trainer(tmp_path, limit_val_batches=1, callbacks=[health])
    with caplog.at_level(logging.WARNING, logger="ebmflow.callbacks"):
        run.validate(model, DigitsDataModule(batch_size=64))
    codes = validation_codes(model)
    spins = model.prior.spin_model()
    gap, noise = moment_gap(codes, Halves().sample(spins, 2), spins.weight, spins.bias_h)
    assert gap == pytest.approx(1.0) and (noise < gap < noise + 0.2) == warns
    assert run.callback_metrics["health/moment_gap"].item() == pytest.approx(gap, abs=1e-5)
    assert run.callback_metrics["health/moment_noise"].item() == pytest.approx(noise, abs=1e-5)
    assert ("not caught up with the codes" in caplog.text) == warns
    if warns:
        beyond, noise = 100 * gap_beyond_noise(gap, noise), 100 * noise
        said = f"by 100% ({beyond:.0f}% beyond its sampling noise of {noise:.0f}%: 2 reference samples, "
        said += "64 codes)"
        assert said in caplog.text


@pytest.mark.parametrize(("sigma", "capped"), [(1.5, False), (5.0, True)])
def test_chain_health_logs_how_close_the_couplings_are_to_the_smoothings_bound(
    tmp_path: Path, sigma: float, capped: bool
) -> None:
    """Rank-one couplings with σ_max = ``sigma``: below the cap 0.99 Δ they are W itself, above it W is
    capped at 0.99 Δ (J̃ ≻ 0 needs σ_max(W) < Δ = 2.5)."""
    model = stuck_model(BlockGibbs(3, 8))
    direction = torch.outer(torch.linspace(-1, 1, 52), torch.arange(1.0, 13.0))
    with torch.no_grad():
        model.prior.coupling.raw_weight.copy_(sigma * direction / torch.linalg.matrix_norm(direction, 2))
    model.prior.train().precision()  # one training call: the power iteration finds the rank-one σ_max
    health = ChainHealth(reference=BlockGibbs(steps=5), reference_samples=20, mixing_sweeps=10)
    run = trainer(tmp_path, limit_val_batches=1, callbacks=[health])
    run.validate(model, DigitsDataModule(batch_size=64))
    expected = 0.99 if capped else sigma / model.prior.coupling.delta.item()
    assert run.callback_metrics["health/coupling_bound"].item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("trained", [True, False])
def test_chain_health_reports_tempering_swap_rates(tmp_path: Path, caplog, trained: bool) -> None:
    """The training ladder's swap rates since the last validation, one per pair; where no swap was
    offered since then (``ebmflow validate`` of a checkpoint: no training step), none, and no warning
    that swaps are never accepted (it used to read 0/0 as 0 % at every pair)."""
    model = stuck_model(ParallelTempering(steps=2, chains=8, replicas=3, min_beta=0.001))
    if trained:
        model.train()
        model.prior.loss(torch.randn(2, 64))  # one negative phase: swaps are offered
    health = ChainHealth(reference=BlockGibbs(steps=20), reference_samples=20, mixing_sweeps=10)
    run = trainer(tmp_path, limit_val_batches=1, callbacks=[health])
    with caplog.at_level(logging.WARNING, logger="ebmflow.callbacks"):
        run.validate(model, DigitsDataModule(batch_size=64))
    rates = {k: v.item() for k, v in run.callback_metrics.items() if "swap_acceptance" in k}
    assert set(rates) == ({"health/swap_acceptance_0_1", "health/swap_acceptance_1_2"} if trained else set())
    assert all(0 <= r <= 1 for r in rates.values())
    for pair in ("0_1", "1_2"):
        low = trained and rates[f"health/swap_acceptance_{pair}"] < health.min_swap_acceptance
        assert (f"tempering swaps {pair} are accepted" in caplog.text) == low
    assert run.callback_metrics["health/beta_2"].item() == pytest.approx(0.001)


def test_the_reference_is_the_given_one_else_a_tempering_generation_sampler_else_the_default() -> None:
    ladder, given = ParallelTempering(steps=5, replicas=3), ParallelTempering(steps=7, replicas=4)
    tempering, gibbs, plain = (
        RBMPrior(64, n_visible=52, generation_sampler=generation)
        for generation in (ladder, BlockGibbs(5), None)
    )
    follows, own = ChainHealth(), ChainHealth(reference=given)
    assert follows.reference_for(tempering) is ladder
    assert follows.reference_for(gibbs) is follows.reference_for(plain) is follows.default_reference
    assert all(own.reference_for(prior) is given for prior in (tempering, gibbs, plain))


def test_the_default_reference_mixes_where_the_earlier_one_did_not() -> None:
    """A stand-in for round 11's Fashion-MNIST RBMs (N = 784, where the earlier default's worst pair
    accepted 0.3–0.6 % of swaps): 392 visible units each pulled by a field of 1 (W = 0). Its energy spread
    stalls 10 replicas × 200 sweeps under the reference's warning threshold; the default ladder, 20 × 500,
    swaps at several times it."""
    rbm = RBM(torch.zeros(392, 392), torch.ones(392), torch.zeros(392))
    health = ChainHealth()
    rates = {}
    for name, reference in {
        "default": health.default_reference,
        "earlier": ParallelTempering(200, replicas=10),
    }.items():
        torch.manual_seed(0)
        reference.sample(rbm, 20)
        rates[name] = reference.sample_acceptance.min().item()
    assert (
        rates["earlier"]
        < health.min_reference_acceptance
        < 3 * health.min_reference_acceptance
        < rates["default"]
    )


@pytest.mark.parametrize("given_to", ["chain_health", "generation_sampler"])
@pytest.mark.parametrize("energy", [False, True])
def test_chain_health_reports_its_references_swap_acceptance(
    tmp_path: Path, caplog, energy: bool, given_to: str
) -> None:
    """The reference's smallest swap rate: exactly 1 where the RBM has no energy (every state equally
    probable at every β); where the fields pull 52 spins to +1 by 2 each and the ladder jumps from β = 1
    to 0.001, a swap would cost about 100 nats, so none is accepted and the log says the fresh samples
    need not be the equilibrium. Without a reference of its own, ChainHealth reads the ladder the prior
    generates with (the default 20 × 500 one would swap here), and the warning says to refine that one,
    since validation's samples come from it."""
    ladder = ParallelTempering(steps=20, replicas=2, min_beta=0.001)
    generates = given_to == "generation_sampler"
    model = stuck_model(BlockGibbs(3, 8), generation_sampler=ladder if generates else None)
    with torch.no_grad():
        model.prior.coupling.raw_weight.zero_()
        if not energy:
            model.prior.bias.zero_()
    # the training sampler's threshold above 1 would flag any rate: the reference's own one decides
    health = ChainHealth(
        reference=None if generates else ladder,
        reference_samples=20,
        mixing_sweeps=10,
        min_swap_acceptance=1.5,
        min_reference_acceptance=0.5,
    )
    run = trainer(tmp_path, limit_val_batches=1, callbacks=[health])
    with caplog.at_level(logging.WARNING, logger="ebmflow.callbacks"):
        run.validate(model, DigitsDataModule(batch_size=64))
    assert run.callback_metrics["health/reference_swap_acceptance"].item() == (0.0 if energy else 1.0)
    assert ("the reference run's tempering swaps" in caplog.text) == energy
    advice = {
        "chain_health": "Give ChainHealth (init_args.reference) a finer ladder",
        "generation_sampler": "validation's val/fid, val/is and val/coverage_* (drawn on it), describe its "
        "samples, not necessarily the RBM's equilibrium. Give the prior's generation_sampler",
    }[given_to]
    assert (advice in caplog.text) == energy


def test_sample_quality_logs_class_coverage(tmp_path: Path) -> None:
    callback = SampleQuality(feature="digits", num_samples=100, batch_size=40)
    run = trainer(tmp_path, max_epochs=1, limit_train_batches=3, callbacks=[callback])
    run.fit(tiny_model(), DigitsDataModule(batch_size=64))
    classes = run.callback_metrics["val/coverage_classes"].item()
    share = run.callback_metrics["val/coverage_max_share"].item()
    assert classes in range(1, 11) and share * 100 == pytest.approx(round(share * 100))  # 100 samples
    assert share >= 1 / 10 and run.callback_metrics["val/coverage_kl"].item() >= 0
    data = callback._data_classes
    assert len(data) == 359 and len(data.unique()) == 10  # the digits test split, all ten classes
