"""Every sampler against the exact distribution of an enumerable RBM (chi-square at a fixed seed), for
both its independent draws (generation) and its persistent negative phase; parallel tempering against
block Gibbs on a strongly bimodal RBM at the same number of matrix products."""

from collections.abc import Callable

import pytest
import torch
from scipy.stats import chi2

from priors import BlockGibbs, ParallelTempering, RBMPrior, Sampler
from priors.samplers import RBM
from priors.spins import all_spin_states
from tests.priors.external_sampler import EnumerationSampler

N_V, N_H = 6, 5  # N = 11: p(s_v) by enumeration
CHAINS = 4000
ALPHA = 1e-3

SAMPLERS: dict[str, Callable[[], Sampler]] = {
    "gibbs": lambda: BlockGibbs(steps=30, chains=CHAINS),
    "gibbs-bf16": lambda: BlockGibbs(steps=30, chains=CHAINS, precision="bfloat16"),
    "gibbs-restart": lambda: BlockGibbs(steps=30, chains=CHAINS, restart=0.3),
    "tempering": lambda: ParallelTempering(steps=15, chains=CHAINS, replicas=4, min_beta=0.3),
    "tempering-linear-to-zero": lambda: ParallelTempering(
        steps=15, chains=CHAINS, replicas=5, min_beta=0.0, spacing="linear"
    ),
    "tempering-adaptive": lambda: ParallelTempering(
        steps=15, chains=CHAINS, replicas=4, min_beta=0.2, adaptive=True, adapt_rate=0.5
    ),
    "external": lambda: EnumerationSampler(chains=CHAINS),
    # sample continues copies of the chains (here their fair start: 5 copies of each of 4,000 chains)
    "gibbs-persistent-start": lambda: BlockGibbs(steps=30, chains=CHAINS, sample_start="persistent"),
    "tempering-persistent-start": lambda: ParallelTempering(
        steps=15, chains=CHAINS, replicas=4, min_beta=0.3, sample_start="persistent"
    ),
}


def enumerable_rbm(seed: int = 0, device: torch.device | str = "cpu") -> RBM:
    """Couplings strong enough to correlate the spins, on a 1/16 grid so bf16 products are exact."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.round(16 * 0.6 * torch.randn(N_V, N_H, generator=g)) / 16
    bias_v = torch.round(16 * 0.3 * torch.randn(N_V, generator=g)) / 16
    bias_h = torch.round(16 * 0.3 * torch.randn(N_H, generator=g)) / 16
    return RBM(weight.to(device), bias_v.to(device), bias_h.to(device))


def exact_visible_distribution(model: RBM) -> tuple[torch.Tensor, torch.Tensor]:
    states = all_spin_states(model.n_visible, model.weight)
    return states, torch.softmax(model.neg_free_energy(states).double(), 0)


def chi_square_passes(draws: torch.Tensor, model: RBM) -> tuple[float, float]:
    """(statistic, critical value at ALPHA); bins whose expected count is under 5 are pooled."""
    states, p = exact_visible_distribution(model)
    states, p, draws = states.cpu(), p.cpu(), draws.cpu()
    codes = ((draws > 0).long() << torch.arange(model.n_visible)).sum(1)
    observed = torch.bincount(codes, minlength=len(states)).double()
    expected = p * len(draws)
    small = expected < 5
    observed = torch.cat([observed[~small], observed[small].sum()[None]])
    expected = torch.cat([expected[~small], expected[small].sum()[None]])
    keep = expected > 0
    statistic = (((observed - expected) ** 2)[keep] / expected[keep]).sum().item()
    return statistic, chi2.ppf(1 - ALPHA, int(keep.sum()) - 1)


def test_the_model_is_far_from_independent() -> None:
    """The test RBM is no easy target: its exact p(s_v) is far from the product of its marginals."""
    states, p = exact_visible_distribution(enumerable_rbm())
    marginal = (p[:, None] * (states > 0)).sum(0)
    product = torch.where(states > 0, marginal, 1 - marginal).prod(1)
    assert 0.5 * (p - product).abs().sum() > 0.1


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_independent_draws_match_the_exact_distribution(name: str, device: torch.device) -> None:
    torch.manual_seed(0)
    sampler, model = SAMPLERS[name](), enumerable_rbm(device=device)
    sampler.bind(N_V, N_H)
    sampler.to(device)
    draws = sampler.sample(model, 20_000)
    assert draws.shape == (20_000, N_V) and draws.device.type == device.type
    assert set(draws.unique().tolist()) <= {-1.0, 1.0}
    statistic, critical = chi_square_passes(draws, model)
    assert statistic < critical, (statistic, critical)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_negative_phase_matches_the_exact_distribution(name: str, device: torch.device) -> None:
    """Persistent chains after a few calls (burn-in) sample p(s_v); the calls move them."""
    torch.manual_seed(1)
    sampler, model = SAMPLERS[name](), enumerable_rbm(device=device)
    sampler.bind(N_V, N_H)
    sampler.to(device)
    first = sampler.negative_phase(model).clone()
    for _ in range(3):
        draws = sampler.negative_phase(model)
    assert draws.shape == (CHAINS, N_V) and draws.device.type == device.type
    assert not torch.equal(first, draws)
    statistic, critical = chi_square_passes(draws, model)
    assert statistic < critical, (statistic, critical)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_block_gibbs_on_a_gpu_never_waits_for_it() -> None:
    """The sweeps are queued without a host synchronisation (a sweep's ~20 small kernels are cheap only
    when the host runs ahead of the GPU): PyTorch raises on any synchronising call in this mode."""
    sampler, model = BlockGibbs(steps=5, chains=8, restart=0.5), enumerable_rbm(device="cuda")
    sampler.bind(N_V, N_H)
    sampler.to("cuda")
    sampler.negative_phase(model)  # CUDA's and cuBLAS's warm-up on a first call may synchronise
    torch.cuda.set_sync_debug_mode("error")
    try:
        sampler.negative_phase(model)
        sampler.sample(model, 16)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_a_wrong_distribution_fails_the_chi_square() -> None:
    """The check has power: draws from a model with the couplings halved are rejected."""
    torch.manual_seed(0)
    model = enumerable_rbm()
    weaker = RBM(model.weight / 2, model.bias_v, model.bias_h)
    draws = EnumerationSampler().sample(weaker, 20_000)
    statistic, critical = chi_square_passes(draws, model)
    assert statistic > 3 * critical


def bimodal_rbm() -> tuple[RBM, float]:
    """A ferromagnetic RBM: all couplings 0.5, a small visible field. Two modes, s_v all +1 or all −1,
    separated by a barrier block Gibbs essentially never crosses (≥ 6 of 12 visible spins must flip
    together against fields of ±2). Returns the model and the exact probability that Σ s_v > 0."""
    n_v, n_h = 12, 4
    model = RBM(torch.full((n_v, n_h), 0.5), torch.full((n_v,), 0.1), torch.zeros(n_h))
    states, p = exact_visible_distribution(model)
    return model, p[states.sum(1) > 0].sum().item()


def test_tempering_visits_both_modes_in_proportion_where_gibbs_does_not() -> None:
    torch.manual_seed(0)
    model, p_plus = bimodal_rbm()
    assert 0.85 < p_plus < 0.95  # the field makes one mode ~10x likelier than the other
    chains, replicas, sweeps = 400, 8, 100
    tempering = ParallelTempering(steps=sweeps, chains=chains, replicas=replicas, min_beta=0.05)
    gibbs = BlockGibbs(steps=replicas * sweeps, chains=chains)  # the same number of matrix products
    for sampler in (tempering, gibbs):
        sampler.bind(12, 4)
        sampler.reset()
    plus = {}
    for name, sampler in {"tempering": tempering, "gibbs": gibbs}.items():
        sampler.negative_phase(model)  # burn-in
        visits = [(sampler.negative_phase(model).sum(1) > 0).double().mean() for _ in range(5)]
        plus[name] = torch.stack(visits).mean().item()
    se = (p_plus * (1 - p_plus) / chains) ** 0.5
    assert abs(plus["tempering"] - p_plus) < 5 * se, plus
    # Gibbs keeps the split of its random start (about half and half), far from the exact 0.9.
    assert abs(plus["gibbs"] - p_plus) > 20 * se, plus
    statistics = tempering.statistics()
    acceptance = [v.item() for k, v in statistics.items() if k.startswith("swap_acceptance")]
    assert len(acceptance) == replicas - 1 and min(acceptance) > 0.05


def test_sampling_reports_each_pairs_swap_acceptance_and_leaves_training_statistics_alone() -> None:
    """Without energy every swap is accepted (exactly 1); across the bimodal RBM's barrier the cold
    pairs accept fewer. ``sample`` reports its own rates and leaves the training counters at zero."""
    torch.manual_seed(0)
    tempering = ParallelTempering(steps=20, chains=4, replicas=6, min_beta=0.05)
    tempering.bind(12, 4)
    assert tempering.sample_acceptance is None
    flat = RBM(torch.zeros(12, 4), torch.zeros(12), torch.zeros(4))
    tempering.sample(flat, 50)
    assert torch.equal(tempering.sample_acceptance, torch.ones(5))
    model, _ = bimodal_rbm()
    tempering.sample(model, 200)
    assert tempering.sample_acceptance.shape == (5,) and tempering.sample_acceptance[0] < 0.9
    assert tempering.swaps_offered.sum() == 0


def test_tempering_statistics_name_only_the_pairs_offered_swaps() -> None:
    """A sweep offers swaps to the pairs of one parity only: after one sweep of three replicas, pair
    (0, 1) alone has a rate (exactly 1 without energy); pair (1, 2) was offered none, so it has no rate
    rather than 0 of 0, and after the call none has one."""
    tempering = ParallelTempering(steps=1, chains=4, replicas=3)
    tempering.bind(12, 4)
    flat = RBM(torch.zeros(12, 4), torch.zeros(12), torch.zeros(4))
    tempering.negative_phase(flat)
    rates = {k: v.item() for k, v in tempering.statistics().items() if k.startswith("swap_acceptance")}
    assert rates == {"swap_acceptance_0_1": 1.0}
    assert not any(k.startswith("swap_acceptance") for k in tempering.statistics())


def test_adaptive_ladder_keeps_its_ends_and_evens_out_acceptance() -> None:
    torch.manual_seed(0)
    model, _ = bimodal_rbm()
    sampler = ParallelTempering(
        steps=20, chains=200, replicas=6, min_beta=0.02, adaptive=True, adapt_rate=0.5
    )
    sampler.bind(12, 4)
    sampler.negative_phase(model)
    before = sampler.statistics()
    spread_before = _spread(before)
    for _ in range(40):
        sampler.negative_phase(model)
    sampler.statistics()
    for _ in range(5):
        sampler.negative_phase(model)
    after = sampler.statistics()
    assert sampler.betas[0] == 1 and sampler.betas[-1] == pytest.approx(0.02)
    assert bool((torch.diff(sampler.betas) < 0).all())
    assert _spread(after) < 0.5 * spread_before, (before, after)


def test_tempering_samples_with_its_own_sweeps_on_the_adapted_ladder() -> None:
    torch.manual_seed(0)
    model, _ = bimodal_rbm()
    trained = ParallelTempering(steps=2, chains=50, replicas=5, min_beta=0.05, adaptive=True, sample_steps=9)
    trained.bind(12, 4)
    for _ in range(10):
        trained.negative_phase(model)  # the ladder moves away from its geometric start
    reference = ParallelTempering(steps=9, chains=50, replicas=5, min_beta=0.05)
    assert not torch.equal(reference.betas, trained.betas)
    reference.betas.copy_(trained.betas)
    torch.manual_seed(1)
    drawn = trained.sample(model, 30)
    torch.manual_seed(1)
    assert torch.equal(drawn, reference.sample(model, 30))  # 9 sweeps on the same ladder, not 2
    two_sweeps = ParallelTempering(steps=2, chains=50, replicas=5, min_beta=0.05)
    two_sweeps.betas.copy_(trained.betas)
    torch.manual_seed(1)
    assert not torch.equal(drawn, two_sweeps.sample(model, 30))  # what ignoring sample_steps would give


def _spread(statistics: dict[str, torch.Tensor]) -> float:
    rates = torch.stack([v for k, v in statistics.items() if k.startswith("swap_acceptance")])
    return (rates.max() - rates.min()).item()


def test_restarted_chains_start_from_fair_coins() -> None:
    """restart = 1: a negative phase forgets the chains it was given (each starts from fair coins);
    restart = 0 (PCD) continues them; in between, a chain is redrawn with that probability."""
    model = enumerable_rbm()

    def negative_phase(restart: float, start: float) -> torch.Tensor:
        sampler = BlockGibbs(steps=2, chains=50, restart=restart)
        sampler.bind(N_V, N_H)
        sampler.chains.fill_(start)
        torch.manual_seed(0)
        return sampler.negative_phase(model)

    assert torch.equal(negative_phase(1.0, 1.0), negative_phase(1.0, -1.0))
    assert not torch.equal(negative_phase(0.0, 1.0), negative_phase(0.0, -1.0))
    # A ferromagnet with couplings of 20: a chain at all −1 stays there (fields of −100 and less), a chain
    # redrawn from coins falls into all +1 or all −1 with probability 1/2 each (by symmetry; n_h is odd, so
    # the visible field is never 0). So the share of chains leaving all −1 is restart / 2; with 20,000
    # chains its standard error is at most 0.0035, the tolerance 0.01.
    ferromagnet = RBM(torch.full((N_V, N_H), 20.0), torch.zeros(N_V), torch.zeros(N_H))
    for restart in (0.0, 0.25, 1.0):
        sampler = BlockGibbs(steps=1, chains=20_000, restart=restart)
        sampler.bind(N_V, N_H)
        sampler.chains.fill_(-1.0)
        torch.manual_seed(0)
        draws = sampler.negative_phase(ferromagnet)
        assert set(draws.sum(1).unique().tolist()) <= {-N_V, N_V}
        assert (draws[:, 0] > 0).float().mean().item() == pytest.approx(restart / 2, abs=0.01)


PERSISTENT_START: dict[str, Callable[[str], Sampler]] = {
    "gibbs": lambda start: BlockGibbs(steps=3, chains=5, sample_start=start),
    # a cold ladder: β ≥ 0.9 everywhere, so a replica started from coins would fall into either mode
    "tempering": lambda start: ParallelTempering(
        steps=3, chains=5, replicas=3, min_beta=0.9, sample_start=start
    ),
}


@pytest.mark.parametrize("name", list(PERSISTENT_START))
def test_sampling_from_persistent_chains_continues_copies_and_leaves_the_chains_alone(name: str) -> None:
    """On a ferromagnet with couplings of 20 no chain ever leaves all +1 or all −1 (fields of ±100 and
    more), so the k-th draw must sit exactly where chain k mod 5 sits, in every replica of the ladder;
    from fair coins, draws fall into either mode."""
    ferromagnet = RBM(torch.full((N_V, N_H), 20.0), torch.zeros(N_V), torch.zeros(N_H))
    signs = torch.tensor([1.0, -1.0, -1.0, 1.0, -1.0])  # chain k is all signs[k]
    draws = {}
    for start in ("persistent", "fair_coins"):
        sampler = PERSISTENT_START[name](start)
        sampler.bind(N_V, N_H)
        chains = sampler.chains if name == "gibbs" else sampler.states
        chains.copy_(signs[:, None].expand_as(chains))
        before = {key: value.clone() for key, value in sampler.state_dict().items()}
        torch.manual_seed(0)
        draws[start] = sampler.sample(ferromagnet, 12)
        after = sampler.state_dict()
        assert all(torch.equal(value, after[key]) for key, value in before.items())
    assert torch.equal(draws["persistent"], signs[torch.arange(12) % 5, None].expand(12, N_V))
    assert set(draws["fair_coins"].sum(1).tolist()) == {-N_V, N_V}
    assert not torch.equal(draws["fair_coins"], draws["persistent"])


def test_a_generation_sampler_cannot_start_from_its_own_chains() -> None:
    """Its chains never advance: it would sample from their random start, not from the model."""
    with pytest.raises(ValueError, match="leave generation_sampler unset"):
        RBMPrior(12, generation_sampler=BlockGibbs(4, 2, sample_start="persistent"))
    prior = RBMPrior(12, sampler=BlockGibbs(4, 2, sample_start="persistent"))  # the training sampler may
    assert prior.sample(3).shape == (3, 12)


def test_a_generation_sampler_leaves_the_training_random_stream_alone() -> None:
    """Choosing how to generate must not change training: with or without a generation sampler, building
    the prior leaves torch's random stream in the same state, with the same training chains (round 15
    found a config without one starting the flow from other initial weights)."""
    built = []
    for generation in (lambda: None, lambda: BlockGibbs(4, 7)):
        torch.manual_seed(0)
        prior = RBMPrior(12, sampler=ParallelTempering(2, 3, replicas=2), generation_sampler=generation())
        built.append((torch.get_rng_state(), prior.sampler.states.clone()))
    (stream, chains), (stream_with, chains_with) = built
    assert torch.equal(stream, stream_with) and torch.equal(chains, chains_with)


def test_samplers_state_round_trips_through_the_prior_state_dict() -> None:
    torch.manual_seed(0)

    def make():
        return RBMPrior(12, sampler=ParallelTempering(3, 5, replicas=3), generation_sampler=BlockGibbs(4, 2))

    prior = make().train()
    prior.loss(torch.randn(4, 12))
    local = prior.rank_local_state()
    assert set(local) >= {"sampler.states", "sampler.betas"}
    # the generation sampler is configuration (from fair coins, never trained): neither saved nor rank-local
    assert not any(key.startswith("generation_sampler.") for key in [*local, *prior.state_dict()])
    copy = make()
    copy.load_state_dict(prior.state_dict())
    assert torch.equal(copy.sampler.states, prior.sampler.states)
    copy.reset_rank_local_state()
    assert not torch.equal(copy.sampler.states, prior.sampler.states)


@pytest.mark.parametrize("assign", [False, True])
def test_a_generation_sampler_that_is_the_training_sampler_loads_the_trained_chains(assign: bool) -> None:
    """One module under both names: loading restores its chains from the checkpoint (its entries under
    "sampler"), and the configured generation sampler's substitute must not put the old ones back."""
    torch.manual_seed(0)

    def make() -> RBMPrior:
        sampler = BlockGibbs(3, 4)
        return RBMPrior(12, sampler=sampler, generation_sampler=sampler)

    trained = make().train()
    trained.loss(torch.randn(4, 12))
    copy = make()
    copy.load_state_dict(trained.state_dict(), assign=assign)
    assert (
        torch.equal(copy.sampler.chains, trained.sampler.chains) and copy.generation_sampler is copy.sampler
    )


def test_bad_sampler_arguments_fail_clearly() -> None:
    with pytest.raises(ValueError, match="steps and chains"):
        BlockGibbs(steps=0)
    with pytest.raises(ValueError, match="precision"):
        BlockGibbs(precision="float16")
    with pytest.raises(ValueError, match="restart"):
        BlockGibbs(restart=1.5)
    with pytest.raises(ValueError, match="min_beta"):
        ParallelTempering(min_beta=0.0)  # geometric spacing cannot reach 0
    with pytest.raises(ValueError, match="replicas"):
        ParallelTempering(replicas=1)
    with pytest.raises(ValueError, match="sample_steps=0"):
        ParallelTempering(sample_steps=0)
    for sampler in (BlockGibbs, ParallelTempering):
        with pytest.raises(ValueError, match='sample_start must be "fair_coins" or "persistent"'):
            sampler(sample_start="chains")
    with pytest.raises(TypeError, match="Sampler"):
        RBMPrior(8, sampler=torch.nn.Linear(2, 2))
