"""Activation normalisation (Glow, Kingma & Dhariwal 2018) with data-dependent initialisation.

The "initialised" flag is a buffer, so it travels with ``state_dict`` and a resumed run does not
re-initialise the scale and shift from its first batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from flows.base import Bijection

__all__ = ["ActNorm"]


class ActNorm(Bijection):
    """Per-channel affine map ``y = (x + loc) * exp(log_scale)`` on (batch, C, H, W) tensors.

    On its first forward pass in training mode the parameters are set so that the batch has zero mean
    and unit variance per channel (the moments are averaged over ranks in a process group).
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.loc = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        moments = torch.stack([x.mean(dim=(0, 2, 3)), x.square().mean(dim=(0, 2, 3))])
        if dist.is_available() and dist.is_initialized():
            # Under data parallelism every rank must start from the same parameters.
            dist.all_reduce(moments)
            moments /= dist.get_world_size()
        mean = moments[0].reshape(1, -1, 1, 1)
        std = (moments[1].reshape(1, -1, 1, 1) - mean.square()).clamp_min(0).sqrt()
        self.loc.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + self.eps))
        self.initialized.fill_(True)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.training and not self.initialized:
            self._initialize(x)
        y = (x + self.loc) * self.log_scale.exp()
        logdet = self.log_scale.sum() * (x.shape[2] * x.shape[3])
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        return y * torch.exp(-self.log_scale) - self.loc
