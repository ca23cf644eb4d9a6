"""The partition function Z_s of an RBM over ±1 spins (docs/maths.md §5): exact enumeration over the
smaller layer, and annealed importance sampling (Neal 2001; Salakhutdinov & Murray 2008) with the
hidden units summed out."""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor
from tqdm import tqdm

from priors.spins import all_spin_states, log_2cosh, sample_spins

__all__ = ["ais_log_partition", "exact_log_partition"]


def exact_log_partition(weight: Tensor, bias_v: Tensor, bias_h: Tensor, chunk: int = 4096) -> Tensor:
    """log Σ_s exp(s_vᵀ W s_h + hᵀ s), summing the smaller layer out analytically:
    Z = Σ_{s_h} exp(h_hᵀ s_h) Π_i 2cosh((W s_h + h_v)_i). Differentiable; cost 2^min(n_v, n_h)."""
    if weight.shape[0] < weight.shape[1]:
        weight, bias_v, bias_h = weight.T, bias_h, bias_v
    states = all_spin_states(weight.shape[1], weight)
    terms = [s @ bias_h + log_2cosh(s @ weight.T + bias_v).sum(1) for s in states.split(chunk)]
    return torch.logsumexp(torch.cat(terms), dim=0)


def _log_unnormalised(s_v: Tensor, beta: float, weight: Tensor, bias_v: Tensor, bias_h: Tensor) -> Tensor:
    """log p*_β(s_v) with base fields a₀ = h_v: h_vᵀs_v + Σ_j log 2cosh(β (Wᵀs_v + h_h)_j)."""
    return s_v @ bias_v + log_2cosh(beta * (s_v @ weight + bias_h)).sum(1)


def ais_log_partition(
    weight: Tensor,
    bias_v: Tensor,
    bias_h: Tensor,
    betas: Tensor,
    chains: int,
) -> tuple[Tensor, Tensor]:
    """AIS estimate of log Z_s and its standard error (delta method over chains).

    The base distribution is p_0(s_v) ∝ exp(h_vᵀs_v) · 2^{n_h} (a₀ = h_v), sampled exactly; each
    temperature β_k adds a log-weight increment and then one block-Gibbs sweep of the β_k-tempered RBM
    p*_β(s_v, s_h) = exp(h_vᵀs_v + β(s_vᵀW s_h + h_hᵀs_h)).

    Args:
        weight, bias_v, bias_h: the RBM, W of shape (n_v, n_h).
        betas: increasing temperatures from 0 to 1, shape (K + 1,).
        chains: number of independent AIS runs.
    """
    if betas[0] != 0 or betas[-1] != 1 or not bool((betas[1:] >= betas[:-1]).all()):
        raise ValueError("betas must increase from 0 to 1")
    n_v, n_h = weight.shape
    s_v = sample_spins(bias_v.expand(chains, n_v))
    log_w = weight.new_zeros(chains)
    log_z0 = n_h * math.log(2) + log_2cosh(bias_v).sum()
    beta_values = betas.tolist()
    steps = tqdm(  # shown on a terminal only (disable=None), gone when done
        itertools.pairwise(beta_values),
        total=len(beta_values) - 1,
        desc="AIS",
        unit="β",
        leave=False,
        disable=None,
    )
    for prev, beta in steps:
        log_w += _log_unnormalised(s_v, beta, weight, bias_v, bias_h)
        log_w -= _log_unnormalised(s_v, prev, weight, bias_v, bias_h)
        s_h = sample_spins(beta * (s_v @ weight + bias_h))
        s_v = sample_spins(bias_v + beta * (s_h @ weight.T))
    log_mean_w = torch.logsumexp(log_w, 0) - math.log(chains)
    w = torch.exp(log_w - log_w.max())
    stderr = w.std(correction=1) / (w.mean() * math.sqrt(chains))
    return log_z0 + log_mean_w, stderr
