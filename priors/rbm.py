"""RBM-Flow's prior: a Gaussian-smoothed restricted Boltzmann machine (docs/maths.md §3–§5)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from priors.ais import ais_log_partition, exact_log_partition
from priors.base import PartitionMethod
from priors.centering import centered_gradient
from priors.precision import CouplingMatrix, SmoothedPrecision, visible_units
from priors.samplers import RBM, BlockGibbs, Sampler
from priors.smoothed import SmoothedSpinPrior
from priors.spins import log_2cosh, sample_spins

__all__ = ["RBMPrior"]


class RBMPrior(SmoothedSpinPrior):
    """Smoothed RBM: spins split into n_v visible and n_h hidden units, J = [[0, W], [Wᵀ, 0]].

    Training (``loss``) uses persistent contrastive divergence (Tieleman 2008): in training mode each
    call asks ``sampler`` for its negative phase (persistent chains, kept in the sampler's buffers and
    saved in checkpoints). The model term of the loss is Rao-Blackwellised: the hidden units are
    summed out, which has the same expectation as docs/maths.md §4's s_vᵀW s_h + hᵀs and a lower variance.
    The loss's value is −mean log p(z) with the latest log Z_s estimate; its gradient is the PCD
    estimate. ``sample`` draws spins from ``generation_sampler`` (by default the training sampler's
    ``sample``: from fair coins, or, with its ``sample_start: persistent``, from copies of the persistent
    chains).

    ``log_prob`` normalises with log Z_s computed exactly when the smaller layer has at most
    ``exact_max_units`` units (then ``log_partition_is_exact`` is True); otherwise with the latest
    ``estimate_log_partition`` result (AIS).

    Args:
        dim: N, the number of spins (the flow's C·H·W).
        delta: Δ, the smoothing precision (paper: 2.5); J̃ is positive definite for every W by
            construction (σ_max(W) ≤ max_ratio · Δ).
        n_visible: visible units n_v (default ⌈N/2⌉).
        sampler: the training negative phase (default: ``BlockGibbs()``, 200 sweeps of 20 chains as
            in the paper); any ``priors.samplers.Sampler``.
        generation_sampler: draws the spins of ``sample`` (default: ``sampler``); it must start from
            fair coins, as its own chains never advance.
        learn_delta: learn Δ as well (the paper found this unstable).
        max_ratio: the largest allowed σ_max(W) / Δ.
        exact_max_units: enumerate Z_s exactly up to this many units in the smaller layer.
        ais_steps, ais_chains: the default AIS schedule (linear in β) of ``estimate_log_partition``.
        centering: learn by the centered gradient (``priors.centering``, docs/maths.md §4) with offsets
            that follow the codes' mean spins, a moving average at this rate per training call (the
            first call sets them); None (the default): the plain gradient.
    """

    def __init__(
        self,
        dim: int,
        delta: float = 2.5,
        n_visible: int | None = None,
        sampler: Sampler | None = None,
        generation_sampler: Sampler | None = None,
        learn_delta: bool = False,
        max_ratio: float = 0.99,
        exact_max_units: int = 20,
        ais_steps: int = 1000,
        ais_chains: int = 100,
        centering: float | None = None,
    ) -> None:
        super().__init__(dim)
        n_visible = visible_units(dim, n_visible)
        self.n_visible = n_visible
        self.exact_max_units = exact_max_units
        self.ais_steps = ais_steps
        self.ais_chains = ais_chains
        self.coupling = CouplingMatrix(n_visible, dim - n_visible, delta, learn_delta, max_ratio)
        self.sampler = sampler if sampler is not None else BlockGibbs()
        self.generation_sampler = generation_sampler
        for chosen in (self.sampler, self.generation_sampler):
            if chosen is not None and not isinstance(chosen, Sampler):
                raise TypeError(f"samplers must be priors.samplers.Sampler, got {type(chosen).__name__}")
        if generation_sampler is not None and generation_sampler.sample_start == "persistent":
            raise ValueError(
                "generation_sampler has sample_start: persistent, but only the training sampler's chains "
                "advance (a generation sampler's stay at their random start): set sample_start on "
                "the sampler and leave generation_sampler unset"
            )
        self.sampler.bind(n_visible, dim - n_visible)
        if generation_sampler is not None:
            # Drawn aside: a generation-only setting must not shift the random stream that training draws
            # from next (the flow's initial weights among it, when the flow is built after the prior).
            with torch.random.fork_rng(devices=[]):
                generation_sampler.bind(n_visible, dim - n_visible)
        # With W = 0 and h = 0, Z_s = 2^N exactly: the first estimate before any training.
        self.register_buffer("log_z_estimate", torch.tensor(dim * math.log(2)))
        self.register_buffer("log_z_stderr", torch.tensor(0.0))
        self.set_centering(centering)
        self.register_load_state_dict_pre_hook(_offsets_as_configured)

    def set_centering(self, rate: float | None) -> None:
        """Learn by the centered gradient from now on, with offsets set by the next training call and then
        following the codes' mean spins at ``rate``; None: the plain gradient. The offsets are a buffer
        (``offsets``) and so are saved in checkpoints; they change how the prior learns, never the model."""
        if rate is not None and not 0 < rate <= 1:
            raise ValueError(f"centering is the offsets' moving-average rate, in (0, 1], got {rate!r}")
        self.centering = rate
        if rate is None and "offsets" in dict(self.named_buffers(recurse=False)):
            del self.offsets
        elif rate is not None:
            nan = torch.full_like(self.bias, math.nan, requires_grad=False)
            self.register_buffer("offsets", nan)

    @property
    def log_partition_is_exact(self) -> bool:
        return min(self.n_visible, self.dim - self.n_visible) <= self.exact_max_units

    def precision(self) -> SmoothedPrecision:
        return self.coupling()

    def _biases(self) -> tuple[Tensor, Tensor]:
        return self.bias[: self.n_visible], self.bias[self.n_visible :]

    def spin_model(self, precision: SmoothedPrecision | None = None) -> RBM:
        """The current spin model (W, h_v, h_h), detached: what samplers and diagnostics see."""
        weight = (precision or self.precision()).weight.detach()
        bias_v, bias_h = (b.detach() for b in self._biases())
        return RBM(weight, bias_v, bias_h)

    def rank_local_state(self) -> dict[str, Tensor]:
        return {f"sampler.{name}": buffer for name, buffer in self.sampler.named_buffers()}

    def reset_rank_local_state(self) -> None:
        self.sampler.reset()

    def configuration_state(self) -> tuple[str, ...]:
        return ("generation_sampler",)  # it starts from fair coins and never trains: nothing to save

    def log_partition_spins(self, precision: SmoothedPrecision) -> Tensor:
        # The same W as the energy's: building the precision again would repeat the factorisation
        # and, in training, advance the power iteration between the two.
        if self.log_partition_is_exact:
            return exact_log_partition(precision.weight, *self._biases())
        return self.log_z_estimate

    def _loss(self, z: Tensor) -> Tensor:
        precision = self.precision()
        # Persistent chains advance only in training; a sampler without them draws afresh.
        advance = self.training and not torch.is_inference_mode_enabled()
        s_v = None if advance else self.sampler.persistent_states()
        if s_v is None:
            with torch.no_grad():
                s_v = self.sampler.negative_phase(self.spin_model(precision)).clone()
        bias = self.bias
        if self.centering is not None:
            if advance:
                self._follow_codes(z, precision)
            # unset offsets (a loss outside training before any training call) centre nothing
            weight, bias = centered_gradient(precision.weight, bias, self.offsets.nan_to_num(0.0))
            # the same J̃ again, factorised from the W whose gradient is centered
            precision = SmoothedPrecision.factor(precision.delta, weight)
        bias_v, bias_h = bias[: self.n_visible], bias[self.n_visible :]
        s_v = s_v.to(z.dtype)
        model_term = (s_v @ bias_v + log_2cosh(s_v @ precision.weight + bias_h).sum(1)).mean()
        # log Z_s's value is the latest estimate, its gradient the chains' E[∂ log p̃] (docs/maths.md §4).
        log_partition_spins = model_term + (self.log_z_estimate - model_term).detach()
        return self.energy(z, precision, bias).mean() + self.log_partition(precision, log_partition_spins)

    @torch.no_grad()
    def _follow_codes(self, z: Tensor, precision: SmoothedPrecision) -> None:
        """Move the offsets towards the batch's mean spins E[s | z] = tanh(J̃z + h) (the first call sets
        them), averaged over every rank so that all ranks take the same update."""
        means = torch.tanh(precision.matvec(z) + self.bias).mean(0).to(self.offsets.dtype)
        if torch.distributed.is_initialized() and (world := torch.distributed.get_world_size()) > 1:
            torch.distributed.all_reduce(means)
            means /= world
        first = self.offsets.isnan()
        self.offsets.copy_(torch.where(first, means, self.offsets.lerp(means, self.centering)))

    def sample_visible(self, n: int) -> Tensor:
        """n visible states from the generation sampler: (n, n_v)."""
        sampler = self.generation_sampler or self.sampler
        with torch.no_grad():
            return sampler.sample(self.spin_model(), n)

    def _sample_discrete(self, n: int) -> Tensor:
        with torch.no_grad():
            model = self.spin_model()
            s_v = self.sample_visible(n).to(model.weight.dtype)
            s_h = sample_spins(s_v @ model.weight + model.bias_h)
            return torch.cat([s_v, s_h], dim=1)

    def set_log_partition(self, value: Tensor, stderr: Tensor) -> None:
        self.log_z_estimate.copy_(value)
        self.log_z_stderr.copy_(stderr)

    def _estimate_log_partition(
        self, method: PartitionMethod, steps: int | None, chains: int | None
    ) -> tuple[Tensor, Tensor]:
        weight = self.precision().weight
        if method == "exact" or (method == "auto" and self.log_partition_is_exact):
            value, stderr = exact_log_partition(weight, *self._biases()), weight.new_zeros(())
        else:
            steps = steps or self.ais_steps
            betas = torch.linspace(0, 1, steps + 1, dtype=weight.dtype, device=weight.device)
            value, stderr = ais_log_partition(weight, *self._biases(), betas, chains or self.ais_chains)
        self.set_log_partition(value, stderr)
        return value, stderr


def _offsets_as_configured(prior: RBMPrior, state_dict: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: the offsets steer learning only, so a checkpoint loads whether or not it
    was centered. Without centering its offsets are ignored; with centering, a checkpoint that has none
    leaves this prior's as they are (a new prior's are unset until its first training call)."""
    key = f"{prefix}offsets"
    if prior.centering is None:
        state_dict.pop(key, None)
    elif key not in state_dict:
        state_dict[key] = prior.offsets.clone()
