"""Whether PCD's persistent chains follow the RBM: chain lag, mixing, tempering swap rates."""

from __future__ import annotations

import logging

import lightning as L
import torch

from ebmflow.callbacks.base import EveryNEpochs, fixed_noise
from ebmflow.health import gap_beyond_noise, integrated_autocorrelation_time, moment_gap
from priors import RBMPrior
from priors.samplers import ParallelTempering, Sampler, gibbs

__all__ = ["ChainHealth"]

log = logging.getLogger(__name__)
SLOW_MIXING = 10  # warn when the energy's autocorrelation time exceeds a tenth of the recorded sweeps
SAMPLES_FROM_LAGGING_CHAINS = (
    " The samples of this validation continue copies of these chains (the sampler's sample_start: "
    "persistent), so val/fid, val/is and val/coverage_* describe the chains, not the RBM "
    "(docs/results.md, round 15): read them where health/chain_lag is near 0, or check this "
    "checkpoint with python scripts/compare_samplers.py RUN_DIR --tempering REPLICAS SWEEPS."
)


class ChainHealth(EveryNEpochs):
    """Whether PCD's persistent chains follow the RBM (docs/maths.md §8), after every validation:

    - ``health/chain_logp``, ``health/fresh_logp``, ``health/data_logp``: mean −F(s_v) (log p̃ with the
      hidden units summed out) of the persistent chains, of fresh samples from a long independent run
      (``reference_for``, from fair coins), and of the data's codes (visible part of argmax p(s|z) of the
      validation images);
    - ``health/chain_lag`` = chains − fresh, the number to watch (near 0 when healthy; strongly negative
      when the model's modes have run away from the chains), and ``health/data_gap`` = data − fresh;
    - ``health/samples_from_lagging_chains``: 1 where this validation's samples continue copies of
      chains that lag beyond the warning's threshold (the sampler's ``sample_start: persistent``), else
      0 (under DDP, the share of ranks whose samples do): its val/fid, val/is and val/coverage_* then
      describe the chains, not the RBM (docs/results.md, round 15), and ``ebmflow report`` marks them;
    - ``health/moment_gap`` (and ``health/moment_noise``): how far the RBM's coupling statistics, from
      the fresh samples, are from those of the validation images' codes (``ebmflow.health.moment_gap``):
      near the noise when the RBM has caught up with the codes, well above it when the RBM learns too
      slowly to follow the flow (its samples then do not look like the data's, however well it mixes).
      Not from the persistent chains: PCD pulls their statistics towards the codes' even when the RBM's
      own equilibrium has run away from both;
    - ``health/coupling_bound`` = σ_max(W) / Δ: how close the couplings are to the smoothing's bound
      (J̃ ≻ 0 needs it below 1, and W is capped at ``max_ratio``: there the cap, not the data, limits the
      couplings);
    - ``health/flip_rate`` (fraction of visible spins that flip per block-Gibbs sweep) and
      ``health/energy_iat`` (integrated autocorrelation time of −F along ``mixing_sweeps`` sweeps from
      the chains, in sweeps), and the sampler's own figures (``health/swap_acceptance_k_k+1`` for
      parallel tempering, over the training steps since ChainHealth last ran; a pair offered no swap
      since then, as in ``ebmflow validate``, has none);
    - ``health/reference_swap_acceptance``, where the reference is parallel tempering: its smallest swap
      acceptance between neighbouring replicas in this validation's run. Near 0 the ladder does not mix,
      so the fresh samples (and the lag and moment gap measured against them) need not be the RBM's
      equilibrium: docs/results.md, round 10b, found a 10-replica ladder passing an RBM whose
      equilibrium, on 20 replicas, had collapsed. Where validation's samples come from a tempering
      ``generation_sampler``, that ladder is the reference: its own draw on it says whether the ladder
      validation's samples come from mixes.

    A warning in the log says what to change when the chains lag by more than ``lag_tolerance`` nats
    (and three standard errors; where validation's samples continue the chains, it adds that they then
    describe the chains, not the RBM), when they lead by as much (the reference then has not reached the
    model's equilibrium, and the lag and the moment gap are measured against its samples), when the
    moment gap exceeds ``max_moment_gap`` beyond its noise (``ebmflow.health.gap_beyond_noise``; a gap
    required to exceed three times its noise let a far run pass unwarned, docs/results.md, round 11),
    when the chains barely mix, or when a tempering swap rate is under ``min_swap_acceptance`` (the
    training sampler's) or ``min_reference_acceptance`` (the reference's).
    The training random stream and the chains are left untouched. Under DDP each rank measures its own
    chains and the values are averaged.

    Args:
        reference: the long independent run. Default: the prior's ``generation_sampler`` where it is
            parallel tempering (so ``health/reference_swap_acceptance`` says whether the ladder of
            validation's samples mixes, and one setting changes both; it is then also the lag's and the
            moment gap's reference, so give it at least the default's sweeps), else
            ``default_reference``, parallel tempering, 500 sweeps of 20 replicas from fair coins,
            geometric β down to 0.1: on docs/results.md round 11's Fashion-MNIST RBMs its worst swap
            acceptance was 0.08–0.10, where 200 sweeps of 10 replicas gave 0.003–0.006, and it drew the
            same samples as 1,500 sweeps.
        reference_samples: independent chains of that run.
        mixing_sweeps: sweeps recorded for the flip rate and autocorrelation time.
        max_examples: validation images whose codes are scored.
        lag_tolerance: chain lag (nats of log p̃) beyond which the log warns.
        max_moment_gap: moment gap, beyond its noise, above which the log warns.
        min_swap_acceptance: the training sampler's tempering swap rate under which the log warns.
        min_reference_acceptance: the reference's smallest swap rate under which the log warns (its
            ladders at 0.08–0.10 had converged in rounds 10b and 11).
        seed, every_n_epochs, in_fast_dev_run: as for the other callbacks.
    """

    def __init__(
        self,
        reference: Sampler | None = None,
        reference_samples: int = 100,
        mixing_sweeps: int = 200,
        max_examples: int = 1000,
        lag_tolerance: float = 5.0,
        max_moment_gap: float = 0.2,
        min_swap_acceptance: float = 0.1,
        min_reference_acceptance: float = 0.05,
        seed: int = 0,
        every_n_epochs: int = 1,
        in_fast_dev_run: bool = False,
    ) -> None:
        super().__init__(every_n_epochs, in_fast_dev_run)
        if mixing_sweeps < 4:
            raise ValueError(
                f"mixing_sweeps must be >= 4 to estimate an autocorrelation, got {mixing_sweeps}"
            )
        self.reference = reference
        # Block Gibbs from fair coins does not reach a trained RBM's modes even in 1,000 sweeps (README,
        # Fashion-MNIST): tempering does, so it is the reference the chains are compared with.
        self.default_reference = ParallelTempering(steps=500, replicas=20)
        self.reference_samples = reference_samples
        self.mixing_sweeps, self.max_examples = mixing_sweeps, max_examples
        self.lag_tolerance, self.min_swap_acceptance, self.seed = lag_tolerance, min_swap_acceptance, seed
        self.max_moment_gap, self.min_reference_acceptance = max_moment_gap, min_reference_acceptance
        self._codes: list[torch.Tensor] = []

    def reference_for(self, prior: RBMPrior) -> Sampler:
        """The run this validation compares the chains with: ``reference`` where given, else the prior's
        ``generation_sampler`` where it is parallel tempering (validation's samples come from that
        ladder, so its swap acceptance says whether they mixed), else ``default_reference``."""
        if self.reference is not None:
            return self.reference
        if isinstance(prior.generation_sampler, ParallelTempering):
            return prior.generation_sampler
        return self.default_reference

    def _applies(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        return self._due(trainer) and isinstance(pl_module.prior, RBMPrior)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._codes = []

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if self._applies(trainer, pl_module) and sum(map(len, self._codes)) < self.max_examples:
            self._codes.append(2 * pl_module.encode(batch[0]) - 1)  # E[s | z]

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._applies(trainer, pl_module):
            return
        prior: RBMPrior = pl_module.prior
        model = prior.spin_model()
        with torch.no_grad(), fixed_noise(self.seed + trainer.global_rank, pl_module.device):
            reference = self.reference_for(prior).to(model.weight.device)
            fresh = reference.sample(model, self.reference_samples)
            chains = prior.sampler.persistent_states()
            start = chains if chains is not None else fresh
            flips, trace = self._mixing(model, start.to(model.weight.dtype))
        fresh_logp = model.neg_free_energy(fresh)
        metrics = {"health/fresh_logp": fresh_logp.mean(), "health/flip_rate": flips}
        if isinstance(reference, ParallelTempering):
            worst = reference.sample_acceptance.min()
            metrics["health/reference_swap_acceptance"] = worst
            if worst < self.min_reference_acceptance:
                generates = reference is prior.generation_sampler
                log.warning(
                    "RBM health: the reference run's tempering swaps were accepted %.1f%% of the time at "
                    "their worst pair at step %d: its ladder does not mix, so health/fresh_logp, chain_lag "
                    "and moment_gap%s describe its samples, not necessarily the RBM's equilibrium. Give %s "
                    "a finer ladder (priors.ParallelTempering with more replicas, and steps to match) and "
                    "check with python scripts/compare_samplers.py RUN_DIR --tempering REPLICAS SWEEPS "
                    "that tripling the sweeps changes nothing.",
                    100 * float(worst),
                    pl_module.trained_steps,
                    ", and validation's val/fid, val/is and val/coverage_* (drawn on it)," * generates,
                    "the prior's generation_sampler (ChainHealth's reference follows it)"
                    if generates
                    else "ChainHealth (init_args.reference)",
                )
        metrics["health/coupling_bound"] = (
            torch.linalg.matrix_norm(model.weight, 2) / prior.coupling.delta.detach()
        )
        metrics["health/energy_iat"] = torch.tensor(integrated_autocorrelation_time(trace.T))
        if chains is not None:
            chain_logp = model.neg_free_energy(chains)
            lag = chain_logp.mean() - fresh_logp.mean()
            metrics |= {"health/chain_logp": chain_logp.mean(), "health/chain_lag": lag}
            stderr = (chain_logp.var() / len(chain_logp) + fresh_logp.var() / len(fresh_logp)).sqrt()
            lagging = bool(lag < -max(self.lag_tolerance, 3 * float(stderr)))
            # the sampler that draws validation's samples (as RBMPrior.sample_visible picks it)
            samples_continue_chains = (prior.generation_sampler or prior.sampler).sample_start == "persistent"
            metrics["health/samples_from_lagging_chains"] = torch.tensor(
                float(lagging and samples_continue_chains)
            )
            if lagging:
                log.warning(
                    "RBM health: the persistent chains lag the model by %.1f nats of log p̃ (± %.1f) at step "
                    "%d: the RBM moves faster than its chains follow, and its samples will collapse onto few "
                    "classes. Lower the prior's learning rate (--model.prior_lr, or --model.prior_optimizer "
                    "torch.optim.SGD), redraw stranded chains (--model.prior.init_args.sampler.init_args."
                    "restart 0.2 with priors.BlockGibbs), or mix better: more chains or sweeps, or "
                    "--model.prior.sampler priors.ParallelTempering.%s",
                    -float(lag),
                    float(stderr),
                    pl_module.trained_steps,
                    SAMPLES_FROM_LAGGING_CHAINS if samples_continue_chains else "",
                )
            elif lag > max(self.lag_tolerance, 3 * float(stderr)):
                log.warning(
                    "RBM health: the persistent chains sit %.1f nats of log p̃ (± %.1f) above the reference "
                    "run's fresh samples at step %d: the reference has not reached the RBM's equilibrium, so "
                    "health/chain_lag and health/moment_gap describe its samples, not the model's. Give "
                    "%s more sweeps or replicas (priors.ParallelTempering) or check with python "
                    "scripts/compare_samplers.py RUN_DIR.",
                    float(lag),
                    float(stderr),
                    pl_module.trained_steps,
                    "the prior's generation_sampler (ChainHealth's reference follows it; validation's "
                    "samples come from it too)"
                    if reference is prior.generation_sampler
                    else "ChainHealth's reference (init_args.reference)",
                )
        if self._codes:
            codes = torch.cat(self._codes).to(model.weight.dtype)
            most_likely = torch.where(codes[:, : prior.n_visible] > 0, 1.0, -1.0)
            data_logp = model.neg_free_energy(most_likely).mean()
            metrics |= {"health/data_logp": data_logp, "health/data_gap": data_logp - fresh_logp.mean()}
            gap, noise = moment_gap(codes, fresh.to(model.weight.dtype), model.weight, model.bias_h)
            metrics |= {"health/moment_gap": torch.tensor(gap), "health/moment_noise": torch.tensor(noise)}
            if (beyond := gap_beyond_noise(gap, noise)) > self.max_moment_gap:
                log.warning(
                    "RBM health: the RBM's coupling statistics differ from the data codes' by %.0f%% "
                    "(%.0f%% beyond its sampling noise of %.0f%%: %d reference samples, %d codes) at step "
                    "%d: the RBM has not caught up with the codes the flow gives it, and its samples will "
                    "not look like the data's however well its chains mix (validation's short runs may "
                    "still look good: "
                    "docs/results.md, round 11). Let the prior learn faster (--model.prior_optimizer's lr: "
                    "the objective is in bits/dim, so an SGD rate acts on nats divided by dims·ln 2), "
                    "keeping health/chain_lag small. A gap there from the first validations on was set by "
                    "the flow's initial weights in docs/results.md (round 6), where a faster prior "
                    "narrowed it without closing it: compare another --seed_everything.",
                    100 * gap,
                    100 * beyond,
                    100 * noise,
                    len(fresh),
                    len(codes),
                    pl_module.trained_steps,
                )
        if metrics["health/energy_iat"] * SLOW_MIXING > self.mixing_sweeps:
            log.warning(
                "RBM health: the chains' energy stays correlated over %.0f of %d sweeps: the sampler barely "
                "mixes. Use more sweeps per step or --model.prior.sampler priors.ParallelTempering.",
                float(metrics["health/energy_iat"]),
                self.mixing_sweeps,
            )
        for name, value in prior.sampler.statistics().items():
            metrics[f"health/{name}"] = value
            if name.startswith("swap_acceptance") and value < self.min_swap_acceptance:
                log.warning(
                    "RBM health: tempering swaps %s are accepted %.1f%% of the time: add replicas, raise "
                    "min_beta, or set adaptive: true.",
                    name.removeprefix("swap_acceptance_"),
                    100 * float(value),
                )
        pl_module.log_dict(
            {k: torch.as_tensor(v, dtype=torch.float32) for k, v in metrics.items()}, sync_dist=True
        )

    def _mixing(self, model, start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Block Gibbs from a copy of ``start``: mean fraction of visible spins flipped per sweep and the
        trace of −F, (sweeps, chains)."""
        s_v, flipped, trace = start.clone(), [], []
        for _ in range(self.mixing_sweeps):
            new = gibbs(model, s_v, 1)
            flipped.append((new != s_v).float().mean())
            trace.append(model.neg_free_energy(new))
            s_v = new
        return torch.stack(flipped).mean(), torch.stack(trace)
