"""AIS estimates of the RBM's log Z during training (the likelihood the paper's Fig. 1 plots)."""

from __future__ import annotations

import time

import lightning as L
import torch

from ebmflow.callbacks.base import EveryNEpochs, fixed_noise
from priors import DiscretePrior

__all__ = ["LogPartitionEstimate"]


class LogPartitionEstimate(EveryNEpochs):
    """AIS estimate of log Z_s before validation, for priors whose log Z is not exact, so the
    validation bits/dim use a current normaliser, and the test split's bits/dim with that estimate
    (the per-epoch likelihood of the paper's Fig. 1). Logs ``ais/log_z_s``, ``ais/stderr``,
    ``ais/seconds`` (the AIS cost) and ``ais/test_bpd`` (uniform dequantization, noise from ``seed``).

    Args:
        steps: AIS temperatures (linear in β).
        chains: AIS chains.
        test_batches: test batches for ``ais/test_bpd``; None for the whole split, 0 to skip it.
        seed: seed of the dequantization noise (the training random stream is left untouched).
        every_n_epochs: run on epochs 0, N, 2N, ...
        in_fast_dev_run: also run under ``fast_dev_run``.
    """

    def __init__(
        self,
        steps: int = 1000,
        chains: int = 100,
        test_batches: int | None = None,
        seed: int = 0,
        every_n_epochs: int = 1,
        in_fast_dev_run: bool = False,
    ) -> None:
        super().__init__(every_n_epochs, in_fast_dev_run)
        if test_batches is not None and test_batches < 0:
            raise ValueError(f"test_batches must be None (all), 0 (skip) or positive, got {test_batches}")
        self.steps, self.chains, self.test_batches, self.seed = steps, chains, test_batches, seed

    def test_bits_per_dim(self, trainer: L.Trainer, pl_module: L.LightningModule) -> torch.Tensor:
        """Mean uniform-dequantization bits/dim over the first ``test_batches`` test batches."""
        trainer.datamodule.setup("test")
        total, count = torch.zeros((), dtype=torch.float64, device=pl_module.device), 0
        with fixed_noise(self.seed, pl_module.device):
            for index, (images, _) in enumerate(trainer.datamodule.test_dataloader()):
                if index == self.test_batches:
                    break
                log_p = pl_module.log_likelihood(images.to(pl_module.device), pl_module.uniform)
                total += pl_module.bits_per_dim(log_p).sum()
                count += len(images)
        return total / count

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        prior = pl_module.prior
        if not self._due(trainer) or not isinstance(prior, DiscretePrior) or prior.log_partition_is_exact:
            return
        metrics: dict[str, float] = {}
        if trainer.is_global_zero:
            start = time.perf_counter()
            value, stderr = prior.estimate_log_partition(method="ais", steps=self.steps, chains=self.chains)
            metrics = {"ais/log_z_s": value.item(), "ais/stderr": stderr.item()}
            metrics["ais/seconds"] = time.perf_counter() - start
            if self.test_batches != 0:
                metrics["ais/test_bpd"] = self.test_bits_per_dim(trainer, pl_module).item()
        metrics = trainer.strategy.broadcast(metrics, src=0)  # every rank uses rank 0's estimate
        prior.set_log_partition(torch.tensor(metrics["ais/log_z_s"]), torch.tensor(metrics["ais/stderr"]))
        pl_module.log_dict(metrics)
