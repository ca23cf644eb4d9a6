"""``ebmflow predict``: per-image bits/dim (the uniform-dequantization bound) and, for discrete priors,
the exact posterior p(s_i = +1 | z) and the most likely code, for every image of the data module's
``predict_split``, written to one .npz file."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from ebmflow.rundir import atomic_write, refuse_existing, unused_name

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
        self.written: Path | None = None

    def _path(self, trainer: L.Trainer) -> Path:
        rank = f".rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        if self.out is None:  # never over an earlier one, whichever rank wrote it
            return unused_name(trainer.log_dir, f"predictions{rank}", ".npz")
        out = Path(self.out)
        return out.with_name(f"{out.stem}{rank}{out.suffix}")

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.out is not None:
            refuse_existing([self._path(trainer)], "PredictionWriter's out")

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module, predictions, batch_indices) -> None:
        batches = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        arrays = {key: torch.cat([b[key] for b in batches]).cpu().numpy() for key in batches[0]}
        path = self._path(trainer)
        atomic_write(path, lambda handle: np.savez_compressed(handle, **arrays))
        self.written = path
        print(f"wrote {path}: {len(arrays['bpd'])} images ({', '.join(sorted(arrays))})")
