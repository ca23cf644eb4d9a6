"""``ebmflow predict``: per-image bits/dim (the uniform-dequantization bound) and, for discrete priors,
the exact posterior p(s_i = +1 | z) and the most likely code, for every image of the data module's
``predict_split``, written to one .npz file."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from ebmflow.rundir import atomic_write, refuse_existing

__all__ = ["PredictionWriter"]


class PredictionWriter(BasePredictionWriter):
    """Writes ``predictions.npz`` (arrays: bpd, labels and, for discrete priors, probabilities and
    codes) when prediction ends; ``ebmflow predict`` adds one writing into the run directory.

    Args:
        out: the file (None: ``<run directory>/predictions.npz``, or ``predictions-2.npz``… so that an
            earlier one is never replaced; an ``out`` that exists is refused before predicting). Under
            DDP each rank writes its own, ``predictions.rank0.npz``….
    """

    def __init__(self, out: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.out = out
        self.stem: str | None = None
        self.written: Path | None = None

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Name the files before predicting, one name for all ranks: rank 0 takes the first name free
        for every rank and tells the others; an ``out`` that exists (for any rank) is refused."""
        world = trainer.world_size
        if self.out is not None:
            self.stem = str(Path(self.out).with_suffix(""))
            refuse_existing([self._path(rank, world) for rank in range(world)], "PredictionWriter's out")
            return
        folder = Path(trainer.log_dir)  # a collective under DDP: every rank asks
        stem, n = str(folder / "predictions"), 1
        if trainer.is_global_zero:
            while any(self._path(rank, world, stem).exists() for rank in range(world)):
                n += 1
                stem = str(folder / f"predictions-{n}")
        self.stem = trainer.strategy.broadcast(stem, src=0)

    def _path(self, rank: int, world_size: int, stem: str | None = None) -> Path:
        stem = self.stem if stem is None else stem
        return Path(f"{stem}.rank{rank}.npz" if world_size > 1 else f"{stem}.npz")

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module, predictions, batch_indices) -> None:
        batches = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        arrays = {key: torch.cat([b[key] for b in batches]).cpu().numpy() for key in batches[0]}
        path = self._path(trainer.global_rank, trainer.world_size)
        atomic_write(path, lambda handle: np.savez_compressed(handle, **arrays))
        self.written = path
        print(f"wrote {path}: {len(arrays['bpd'])} images ({', '.join(sorted(arrays))})")
