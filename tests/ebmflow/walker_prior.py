"""A prior defined only in the tests, whose rank-local state has a name the application has never
heard of: the DDP test proves the application relies on the prior's declaration alone."""

from __future__ import annotations

import torch
from torch import Tensor

from priors import GaussianPrior


class WalkerPrior(GaussianPrior):
    """N(0, I) carrying ``walkers``: random walks that take a step at every training call."""

    def __init__(self, dim: int, walkers: int = 4) -> None:
        super().__init__(dim)
        self.register_buffer("walkers", torch.zeros(walkers, dim))

    def rank_local_state(self) -> dict[str, Tensor]:
        return {"walkers": self.walkers}

    def reset_rank_local_state(self) -> None:
        self.walkers.normal_()

    def _loss(self, z: Tensor) -> Tensor:
        if self.training and not torch.is_inference_mode_enabled():
            self.walkers.add_(0.1 * torch.randn_like(self.walkers))
        return super()._loss(z)
