"""What every ebmflow callback shares: running every N epochs (never in the sanity check, and in
``fast_dev_run`` only when asked) and drawing from a fixed seed without moving the training stream."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L
import torch

__all__ = ["EveryNEpochs", "fixed_noise"]


class EveryNEpochs(L.Callback):
    """Base class: ``_due(trainer)`` is True on epochs 0, N, 2N, … outside the sanity check."""

    def __init__(self, every_n_epochs: int, in_fast_dev_run: bool) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.in_fast_dev_run = in_fast_dev_run

    def _due(self, trainer: L.Trainer) -> bool:
        if trainer.sanity_checking or (trainer.fast_dev_run and not self.in_fast_dev_run):
            return False
        return trainer.current_epoch % self.every_n_epochs == 0


@contextmanager
def fixed_noise(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Draw from a fixed seed without moving the training random streams (the CPU's and, for a CUDA
    ``device``, that device's)."""
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
