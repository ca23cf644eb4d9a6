"""How much class information the discrete codes carry: ``val/code_nmi``."""

from __future__ import annotations

import lightning as L
import torch

from ebmflow.callbacks.base import EveryNEpochs
from ebmflow.health import code_nmi
from priors import DiscretePrior

__all__ = ["CodeNMI"]


class CodeNMI(EveryNEpochs):
    """NMI between the validation labels and the discrete codes of a discrete prior (``val/code_nmi``).

    Args:
        max_examples: encode at most this many validation images.
        every_n_epochs, in_fast_dev_run: as for the other callbacks.
    """

    def __init__(
        self, max_examples: int = 2000, every_n_epochs: int = 1, in_fast_dev_run: bool = False
    ) -> None:
        super().__init__(every_n_epochs, in_fast_dev_run)
        self.max_examples = max_examples

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._probabilities, self._labels = [], []

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if not self._due(trainer) or not isinstance(pl_module.prior, DiscretePrior):
            return
        if sum(len(p) for p in self._probabilities) < self.max_examples:
            self._probabilities.append(pl_module.encode(batch[0]))  # on the device: NCCL gathers those
            self._labels.append(batch[1])

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._probabilities:
            return
        gathered = trainer.strategy.all_gather(torch.cat(self._probabilities))
        probabilities = gathered.reshape(-1, pl_module.prior.dim).cpu()
        labels = trainer.strategy.all_gather(torch.cat(self._labels)).reshape(-1).cpu()
        nmi = code_nmi(probabilities.numpy(), labels.numpy()) if trainer.is_global_zero else 0.0
        pl_module.log("val/code_nmi", float(trainer.strategy.broadcast(nmi, src=0)))
