"""Samplers of an RBM's spins: the plugin through which the training negative phase (PCD) and
generation draw from p(s) (docs/maths.md §4, §8).

The contract (``Sampler``) speaks only of the spin model's parameters and of visible states, so a
sampler need not be a PyTorch Gibbs loop: a hardware sampler (the paper's §5 expects quantum
annealers) implements ``negative_phase`` and ``sample`` by handing W, h_v, h_h to its device. Any
persistent state lives in buffers, so it is saved in checkpoints, restored on resume and kept
rank-local under DDP (``ebmflow.EBMFlow`` gathers every sampler buffer per rank).

Shipped: ``BlockGibbs`` (block-Gibbs sweeps, the paper's PCD) and ``ParallelTempering`` (replicas on an
inverse-temperature ladder, block Gibbs within each, swaps between neighbours).
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from priors.spins import log_2cosh, sample_spins

__all__ = ["RBM", "BlockGibbs", "ParallelTempering", "Sampler"]

PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}
Precision = Literal["float32", "bfloat16"]
SampleStart = Literal["fair_coins", "persistent"]


@dataclass(frozen=True)
class RBM:
    """The spin model p(s_v, s_h) ∝ exp(s_vᵀW s_h + h_vᵀs_v + h_hᵀs_h), W: (n_v, n_h), detached."""

    weight: Tensor
    bias_v: Tensor
    bias_h: Tensor

    @property
    def n_visible(self) -> int:
        return self.weight.shape[0]

    def neg_free_energy(self, s_v: Tensor, beta: float | Tensor = 1.0) -> Tensor:
        """−F_β(s_v) = β h_vᵀs_v + Σ_j log 2cosh(β (Wᵀs_v + h_h)_j) (docs/maths.md §8);
        s_v: (..., n_v) -> (...). log p(s_v) = −F(s_v) − log Z_s at β = 1. ``beta`` broadcasts against
        the leading dimensions."""
        beta = _leading(beta, self.weight)
        s = s_v.to(self.weight.dtype)
        return beta.squeeze(-1) * (s @ self.bias_v) + log_2cosh(beta * (s @ self.weight + self.bias_h)).sum(
            -1
        )

    def random_visible(self, *shape: int) -> Tensor:
        """Independent fair ±1 visible spins of shape (*shape, n_v) (the β = 0 distribution)."""
        return sample_spins(self.bias_v.new_zeros(*shape, self.n_visible))


def _leading(beta: float | Tensor, like: Tensor) -> Tensor:
    """β in ``like``'s dtype and device: a scalar, or one value per replica shaped (R, 1, 1) to broadcast
    over (R, chains, units). A number is filled in on the device, not copied from the host: on a GPU
    such a copy waits for all queued work, which would stall every sweep."""
    beta = beta.to(like) if isinstance(beta, Tensor) else like.new_full((), beta)
    return beta.reshape(-1, 1, 1) if beta.dim() else beta


class Sampler(nn.Module, abc.ABC):
    """Draws visible states s_v of an RBM (hidden units follow exactly from p(s_h | s_v)).

    A prior calls ``bind`` once with its layer sizes (allocate persistent state there, in buffers),
    ``negative_phase`` once per training step, and ``sample`` to generate. Samplers never receive
    tensors that require gradients and never see a flow.

    ``sample_start`` says where ``sample`` starts: "fair_coins" (independent of any persistent state)
    or "persistent" (copies of the persistent chains, continued; the chains themselves never change).
    Only the training sampler's chains advance, so a prior refuses a generation sampler that starts
    from its own.
    """

    sample_start: SampleStart = "fair_coins"

    def bind(self, n_visible: int, n_hidden: int) -> None:
        """Allocate persistent state for an RBM of this size."""

    def reset(self) -> None:
        """Redraw persistent state from the current random stream (a new DDP rank does this)."""

    @abc.abstractmethod
    def negative_phase(self, model: RBM) -> Tensor:
        """-> (m, n_v) visible states whose average statistics estimate the model term of the PCD
        gradient (docs/maths.md §4). A persistent sampler advances its chains here."""

    @abc.abstractmethod
    def sample(self, model: RBM, n: int) -> Tensor:
        """-> (n, n_v) visible states drawn from p(s_v), leaving any persistent state as it was; from
        fair coins, or from copies of the persistent chains where ``sample_start`` is "persistent"."""

    def persistent_states(self) -> Tensor | None:
        """The visible states of the persistent β = 1 chains, or None for a sampler without them."""
        return None

    def statistics(self) -> dict[str, Tensor]:
        """Sampler-specific health figures since the last call (e.g. swap acceptance per pair)."""
        return {}


class BlockGibbs(Sampler):
    """Block-Gibbs sweeps s_h | s_v, s_v | s_h (docs/maths.md §4): PCD's persistent chains when training,
    ``steps`` sweeps from independent fair spins (or from copies of the chains) when sampling.

    Args:
        steps: sweeps per training step (paper: 200), also the burn-in of ``sample``.
        chains: persistent chains.
        precision: "float32", or "bfloat16" to run the sweeps' matrix products with W rounded to bf16
            (relative error ≤ 2⁻⁸ per coupling; spins are exact, fields are summed in float32): faster
            sweeps on hardware with bf16 units, at the price of sampling from that slightly rounded RBM.
        restart: the probability that a chain is redrawn from fair spins before a training step's
            sweeps (0: PCD; 1: every negative phase starts from fair spins, as ``sample`` does). Frees
            chains left in states the model has since made improbable, where they can stay for many
            sweeps when the RBM learns fast.
        sample_start: where ``sample``'s sweeps start: "fair_coins", or "persistent": the k-th draw
            continues a copy of chain k mod ``chains``. Block Gibbs rarely crosses between a trained RBM's
            modes, so draws from fair coins land in the modes nearest to them, not in the model's
            proportions; continued chains keep the proportions the chains hold, which are the model's only
            where they have mixed (not with ``restart``, whose chains are young).
    """

    def __init__(
        self,
        steps: int = 200,
        chains: int = 20,
        precision: Precision = "float32",
        restart: float = 0.0,
        sample_start: SampleStart = "fair_coins",
    ) -> None:
        super().__init__()
        if steps < 1 or chains < 1:
            raise ValueError(f"steps and chains must be >= 1, got steps={steps}, chains={chains}")
        if not 0 <= restart <= 1:
            raise ValueError(f"restart is a probability in [0, 1], got {restart!r}")
        self.steps, self.num_chains, self.restart = steps, chains, restart
        self.sample_start = _check_start(sample_start)
        self.dtype = _precision(precision)
        self.register_buffer("chains", torch.zeros(chains, 0))

    def bind(self, n_visible: int, n_hidden: int) -> None:
        self.chains = sample_spins(self.chains.new_zeros(self.num_chains, n_visible))

    def reset(self) -> None:
        self.chains.copy_(sample_spins(torch.zeros_like(self.chains)))

    def negative_phase(self, model: RBM) -> Tensor:
        if self.restart:
            redraw = torch.rand(self.num_chains, 1, device=self.chains.device) < self.restart
            self.chains.copy_(torch.where(redraw, model.random_visible(self.num_chains), self.chains))
        self.chains.copy_(gibbs(model, self.chains, self.steps, dtype=self.dtype))
        return self.chains

    def sample(self, model: RBM, n: int) -> Tensor:
        start = _sample_start(self.chains, model, n, self.sample_start)
        return gibbs(model, start, self.steps, dtype=self.dtype)

    def persistent_states(self) -> Tensor:
        return self.chains


def gibbs(
    model: RBM, s_v: Tensor, steps: int, beta: float | Tensor = 1.0, dtype: torch.dtype = torch.float32
) -> Tensor:
    """``steps`` block-Gibbs sweeps at inverse temperature β from visible states s_v: (..., n_v)."""
    field = _hidden_field(model, s_v, dtype)
    for _ in range(steps):
        s_v = _sweep(model, field, beta, dtype)
        field = _hidden_field(model, s_v, dtype)
    return s_v


def _hidden_field(model: RBM, s_v: Tensor, dtype: torch.dtype) -> Tensor:
    """Wᵀs_v + h_h, the products in ``dtype`` (±1 spins are exact in bf16), the sum in float32."""
    return (s_v.to(dtype) @ model.weight.to(dtype)).to(model.weight.dtype) + model.bias_h


def _sweep(model: RBM, hidden_field: Tensor, beta: float | Tensor, dtype: torch.dtype) -> Tensor:
    """s_h ~ p_β(s_h | s_v) from its field, then s_v ~ p_β(s_v | s_h) (docs/maths.md §8): new visible
    states."""
    beta = _leading(beta, hidden_field)
    s_h = sample_spins(beta * hidden_field)
    visible_field = (s_h.to(dtype) @ model.weight.T.to(dtype)).to(model.weight.dtype) + model.bias_v
    return sample_spins(beta * visible_field)


class ParallelTempering(Sampler):
    """Replicas on an inverse-temperature ladder 1 = β_1 > … > β_R (docs/maths.md §8): each sweep advances
    every replica by block Gibbs at its own β, then offers swaps of visible states between neighbours
    (even pairs on even sweeps, odd pairs on odd ones). The β = 1 replicas are the PCD chains.

    Args:
        steps: sweeps per training step, also the burn-in of ``sample``.
        chains: chains per replica (the number of PCD chains).
        replicas: R, the number of temperatures (β = 1 included).
        min_beta: β_R, the hottest replica (0 allowed with ``spacing: linear``: fair coins, exact).
        spacing: "geometric" (β_k = min_beta^((k−1)/(R−1))) or "linear".
        adaptive: after every training step, widen the gaps whose swaps are accepted more often than
            average and narrow the others (in log β), keeping β_1 = 1 and β_R = min_beta.
        adapt_rate: the step size of that adaptation.
        precision: the matrix products' precision, as for ``BlockGibbs``.
        sample_steps: the sweeps of ``sample`` (default: ``steps``). The ladder adapts only in training,
            so generation on the adapted ladder goes through the training sampler: give it the sweeps
            it needs from fair coins here rather than a second, unadapted, ``ParallelTempering``.
        sample_start: where ``sample``'s ladder starts: "fair_coins" (every replica), or "persistent":
            draw k continues a copy of every replica's chain k mod ``chains``, so ``sample`` reads the
            equilibrium the training ladder has reached in a few sweeps instead of reaching it anew;
            that is the RBM's only while the chains keep up with it (docs/results.md, round 15).

    After ``sample``, ``sample_acceptance`` holds that call's swap acceptance for each neighbouring pair
    (β_1, β_2) … (β_{R−1}, β_R); a pair near 0 is where the ladder stops mixing (add replicas there).
    """

    def __init__(
        self,
        steps: int = 20,
        chains: int = 20,
        replicas: int = 10,
        min_beta: float = 0.1,
        spacing: Literal["geometric", "linear"] = "geometric",
        adaptive: bool = False,
        adapt_rate: float = 0.1,
        precision: Precision = "float32",
        sample_steps: int | None = None,
        sample_start: SampleStart = "fair_coins",
    ) -> None:
        super().__init__()
        if steps < 1 or chains < 1 or replicas < 2 or (sample_steps is not None and sample_steps < 1):
            raise ValueError(
                "steps, chains and sample_steps must be >= 1 and replicas >= 2, got "
                f"steps={steps}, chains={chains}, sample_steps={sample_steps}, replicas={replicas}"
            )
        if spacing not in ("geometric", "linear"):
            raise ValueError(f'spacing must be "geometric" or "linear", got {spacing!r}')
        if not (0 <= min_beta < 1 and (min_beta > 0 or spacing == "linear")):
            raise ValueError(f"min_beta must lie in [0, 1) ((0, 1) when geometric), got {min_beta!r}")
        if adaptive and min_beta == 0:
            raise ValueError("adaptive spacing works in log β: give min_beta > 0")
        self.steps, self.num_chains, self.adaptive, self.adapt_rate = steps, chains, adaptive, adapt_rate
        self.sample_steps = steps if sample_steps is None else sample_steps
        self.sample_start = _check_start(sample_start)
        self.dtype = _precision(precision)
        if spacing == "geometric":
            betas = torch.logspace(0, math.log10(min_beta), replicas, dtype=torch.float64)
        else:
            betas = torch.linspace(1, min_beta, replicas, dtype=torch.float64)
        self.register_buffer("betas", betas.float())
        self.register_buffer("states", torch.zeros(replicas, chains, 0))
        self.register_buffer("swaps_accepted", torch.zeros(replicas - 1))
        self.register_buffer("swaps_offered", torch.zeros(replicas - 1))
        self.register_buffer("sweeps_done", torch.zeros((), dtype=torch.long))
        self.sample_acceptance: Tensor | None = None

    def bind(self, n_visible: int, n_hidden: int) -> None:
        self.states = sample_spins(self.states.new_zeros(len(self.betas), self.num_chains, n_visible))

    def reset(self) -> None:
        self.states.copy_(sample_spins(torch.zeros_like(self.states)))

    def negative_phase(self, model: RBM) -> Tensor:
        accepted, offered = torch.zeros_like(self.swaps_accepted), torch.zeros_like(self.swaps_offered)
        states = self._run(model, self.states, self.steps, int(self.sweeps_done), accepted, offered)
        self.states.copy_(states)
        self.sweeps_done += self.steps
        self.swaps_accepted += accepted
        self.swaps_offered += offered
        if self.adaptive:
            self._adapt(accepted / offered.clamp_min(1))
        return self.states[0]

    def sample(self, model: RBM, n: int) -> Tensor:
        accepted, offered = torch.zeros_like(self.swaps_accepted), torch.zeros_like(self.swaps_offered)
        start = _sample_start(self.states, model, n, self.sample_start)
        states = self._run(model, start, self.sample_steps, 0, accepted, offered)
        self.sample_acceptance = accepted / offered.clamp_min(1)
        return states[0]

    def persistent_states(self) -> Tensor:
        return self.states[0]

    def statistics(self) -> dict[str, Tensor]:
        """Swap acceptance of each neighbouring pair (k, k+1) offered swaps since the last call (none
        when no training step ran since, as in ``ebmflow validate``: 0 of 0 is no rate), and the ladder."""
        rates = self.swaps_accepted / self.swaps_offered.clamp_min(1)
        offered = self.swaps_offered > 0
        stats = {f"swap_acceptance_{k}_{k + 1}": rate for k, rate in enumerate(rates) if offered[k]}
        stats |= {f"beta_{k}": beta for k, beta in enumerate(self.betas)}
        self.swaps_accepted.zero_()
        self.swaps_offered.zero_()
        return stats

    def _run(
        self, model: RBM, states: Tensor, sweeps: int, first_sweep: int, accepted: Tensor, offered: Tensor
    ) -> Tensor:
        """``sweeps`` PT sweeps of states: (R, C, n_v); counts swaps per pair into accepted/offered."""
        betas = self.betas.to(model.weight.dtype)
        field = _hidden_field(model, states, self.dtype)
        for sweep in range(first_sweep, first_sweep + sweeps):
            states = _sweep(model, field, betas, self.dtype)
            field = _hidden_field(model, states, self.dtype)
            states, field = self._swap(model, states, field, betas, sweep % 2, accepted, offered)
        return states

    def _swap(
        self, model: RBM, states: Tensor, field: Tensor, betas: Tensor, parity: int, accepted, offered
    ) -> tuple[Tensor, Tensor]:
        """Metropolis swaps of visible states between replicas (k, k+1), k ≡ parity (mod 2)
        (docs/maths.md §8)."""
        low = torch.arange(parity, len(betas) - 1, 2, device=states.device)
        if len(low) == 0:
            return states, field
        high = low + 1

        def log_p(beta: Tensor, index: Tensor) -> Tensor:  # −F_β of the replicas at ``index``: (pairs, C)
            s, f = states[index].to(field.dtype), field[index]
            return beta[:, None] * (s @ model.bias_v) + log_2cosh(beta[:, None, None] * f).sum(-1)

        b_low, b_high = betas[low], betas[high]
        log_ratio = log_p(b_low, high) + log_p(b_high, low) - log_p(b_low, low) - log_p(b_high, high)
        swap = torch.rand_like(log_ratio).log() < log_ratio  # (pairs, C)
        accepted[low] += swap.float().mean(1)
        offered[low] += 1
        order = torch.arange(len(betas), device=states.device)[:, None].expand(-1, states.shape[1]).clone()
        order[low] = torch.where(swap, high[:, None], low[:, None])
        order[high] = torch.where(swap, low[:, None], high[:, None])
        index = order[..., None]
        return states.gather(0, index.expand_as(states)), field.gather(0, index.expand_as(field))

    def _adapt(self, acceptance: Tensor) -> None:
        """Move the inner β so that the log-β gaps grow where swaps succeed more than on average."""
        gaps = -torch.diff(self.betas.double().log())  # positive, sum = −log min_beta
        gaps = gaps * torch.exp(self.adapt_rate * (acceptance.double() - acceptance.double().mean()))
        gaps = gaps * (-self.betas[-1].double().log() / gaps.sum())
        log_betas = torch.cat([gaps.new_zeros(1), -gaps.cumsum(0)])
        betas = log_betas.exp().float()
        betas[-1] = self.betas[-1]
        self.betas.copy_(betas)


def _sample_start(states: Tensor, model: RBM, n: int, start: SampleStart) -> Tensor:
    """Where ``sample`` starts n chains beside persistent ``states`` (..., C, n_v): fair coins of the same
    leading shape, or copies of ``states``, the k-th from chain k mod C."""
    if start == "fair_coins":
        return model.random_visible(*states.shape[:-2], n)
    index = torch.arange(n, device=states.device) % states.shape[-2]
    return states.index_select(-2, index)


def _check_start(name: str) -> SampleStart:
    if name not in ("fair_coins", "persistent"):
        raise ValueError(f'sample_start must be "fair_coins" or "persistent", got {name!r}')
    return name


def _precision(name: str) -> torch.dtype:
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {name!r}")
    return PRECISIONS[name]
