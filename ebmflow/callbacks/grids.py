"""Sample grids (and the paper's Fig. 3 grid) after validation, to W&B or PNG files."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from torchvision.utils import make_grid

from ebmflow.callbacks.base import EveryNEpochs, fixed_noise
from ebmflow.rundir import atomic_save_image, unused_name
from priors import DiscretePrior

__all__ = ["SampleGrids"]


class SampleGrids(EveryNEpochs):
    """A grid of samples and, for discrete priors, the paper's Fig. 3 grid (each column one discrete s)
    after validation: W&B images when a logger is W&B (beside a CSV log too), otherwise PNG files in
    ``<log_dir>/samples`` named by the training step (``samples_step=000500.png``; ``ebmflow validate``
    names them by its checkpoint's step, and a second grid of one step adds ``-2``, ``-3``…: no grid
    replaces another). The noise is the same every time (fixed seed, the training random stream is left
    untouched), so successive grids show the model changing, not the draw.
    """

    def __init__(
        self,
        num_samples: int = 64,
        columns: int = 8,
        temperature: float = 1.0,
        seed: int = 0,
        every_n_epochs: int = 1,
        in_fast_dev_run: bool = False,
    ) -> None:
        super().__init__(every_n_epochs, in_fast_dev_run)
        self.num_samples, self.columns, self.temperature, self.seed = num_samples, columns, temperature, seed

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._due(trainer):
            return
        wandb = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        # trainer.log_dir broadcasts under DDP: every rank asks, rank 0 alone draws and writes.
        folder = None if wandb else Path(trainer.log_dir or trainer.default_root_dir) / "samples"
        if not trainer.is_global_zero:
            return
        with fixed_noise(self.seed, pl_module.device):
            grids = {"samples": pl_module.sample(self.num_samples, self.temperature)}
            if isinstance(pl_module.prior, DiscretePrior):
                rows = max(self.num_samples // self.columns, 1)
                columns = pl_module.sample_columns(self.columns, rows, self.temperature)
                grids["discrete_columns"] = columns.flatten(0, 1)
        step = pl_module.trained_steps  # outside fit (validate from a checkpoint): the checkpoint's
        for name, images in grids.items():
            grid = make_grid(images.float().cpu() / 255, nrow=self.columns)
            for logger in wandb:
                logger.log_image(key=name, images=[grid], step=step)
            if not wandb:
                path = unused_name(folder, f"{name}_step={step:06d}", ".png")
                atomic_save_image(grid, path)
