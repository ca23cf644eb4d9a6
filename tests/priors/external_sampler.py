"""A test-only external sampler: it receives the RBM's parameters as NumPy arrays and answers with spins
drawn by NumPy, as a hardware sampler (a quantum annealer behind an API) would. It proves that the
sampler contract needs no PyTorch Gibbs loop and no persistent state: exact draws by enumerating the
visible layer (n_v ≤ 16)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from priors.samplers import RBM, Sampler


class EnumerationSampler(Sampler):
    """Exact independent draws of s_v; ``chains`` of them for each negative phase."""

    def __init__(self, chains: int = 64) -> None:
        super().__init__()
        self.chains = chains

    def negative_phase(self, model: RBM) -> Tensor:
        return self.sample(model, self.chains)

    def sample(self, model: RBM, n: int) -> Tensor:
        weight = model.weight.cpu().double().numpy()
        bias_v, bias_h = model.bias_v.cpu().double().numpy(), model.bias_h.cpu().double().numpy()
        n_v = weight.shape[0]
        if n_v > 16:
            raise ValueError(f"EnumerationSampler enumerates 2^n_v states; n_v={n_v} is too many")
        codes = np.arange(2**n_v)[:, None]
        states = 2.0 * ((codes >> np.arange(n_v)) & 1) - 1
        field = states @ weight + bias_h
        log_p = states @ bias_v + (np.abs(field) + np.log1p(np.exp(-2 * np.abs(field)))).sum(1)
        p = np.exp(log_p - log_p.max())
        rng = np.random.default_rng(int(torch.randint(2**62, ())))  # follows torch's seed
        drawn = states[rng.choice(len(states), size=n, p=p / p.sum())]
        return torch.as_tensor(drawn, dtype=model.weight.dtype, device=model.weight.device)
