"""Exact reference computations for small priors: dense J̃, p(s) by enumeration."""

from collections.abc import Callable

import torch
from torch import Tensor

from priors import (
    BernoulliPrior,
    BlockGibbs,
    GaussianPrior,
    MultiCovPrior,
    ParallelTempering,
    Prior,
    RBMPrior,
)
from priors.spins import all_spin_states

PRIORS: dict[str, Callable[[int], Prior]] = {
    "gaussian": lambda dim: GaussianPrior(dim),
    "multicov": lambda dim: MultiCovPrior(dim, delta=2.5),
    "bernoulli": lambda dim: BernoulliPrior(dim, delta=1.0),
    "rbm": lambda dim: RBMPrior(dim, delta=2.5, sampler=BlockGibbs(50, 16)),
    "rbm-bf16-gibbs": lambda dim: RBMPrior(dim, delta=2.5, sampler=BlockGibbs(50, 16, "bfloat16")),
    "rbm-tempering": lambda dim: RBMPrior(
        dim, delta=2.5, sampler=ParallelTempering(10, 16, replicas=4, min_beta=0.2, adaptive=True)
    ),
    "rbm-learned-delta": lambda dim: RBMPrior(dim, delta=1.5, sampler=BlockGibbs(50, 16), learn_delta=True),
    "rbm-centered": lambda dim: RBMPrior(dim, delta=2.5, sampler=BlockGibbs(50, 16), centering=0.1),
}


def randomise(prior: Prior, scale: float = 3.0, seed: int = 0) -> Prior:
    """Large random parameters: for the RBM and MultiCov the raw weights exceed the spectral cap, so
    the couplings sit at σ_max(W) = 0.99 Δ, far from independence. A learned Δ moves by ±0.3."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in prior.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if name.endswith("raw_delta"):
                p.add_(0.3 * noise)
            else:
                p.copy_(scale * noise)
    return prior


def dense_precision(prior: Prior) -> Tensor:
    """J̃ as a dense N × N matrix."""
    if isinstance(prior, BernoulliPrior):
        return prior.delta * torch.eye(prior.dim, dtype=prior.delta.dtype)
    p = prior.coupling()
    n_v = p.weight.shape[0]
    j = p.delta * torch.eye(prior.dim, dtype=p.weight.dtype)
    j[:n_v, n_v:] += p.weight
    j[n_v:, :n_v] += p.weight.T
    return j


def spin_distribution(prior: Prior) -> tuple[Tensor, Tensor]:
    """(all 2^N spin states, their probabilities p(s) ∝ exp(½ sᵀJs + hᵀs)) by brute force."""
    j = dense_precision(prior)
    j = j - torch.diag(j.diagonal())
    states = all_spin_states(prior.dim, j)
    logits = 0.5 * ((states @ j) * states).sum(1) + states @ prior.bias
    return states, torch.softmax(logits, 0)
