"""Reading checkpoints safely: ``weights_only=True`` and a clear error for a missing, corrupted or
foreign file."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

__all__ = ["CheckpointError", "read_checkpoint"]


class CheckpointError(ValueError):
    """The file is not a usable ebmflow checkpoint."""


def read_checkpoint(path: str | Path) -> dict:
    """Load a Lightning checkpoint with ``weights_only=True``; raises CheckpointError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (look under the run's checkpoints/ folder)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError) as error:
        raise CheckpointError(
            f"{path} is not a readable checkpoint (corrupted, truncated, or not saved by torch): {error}"
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint: it has no 'state_dict'")
    if not any(key.startswith("flow.") for key in checkpoint["state_dict"]):
        raise CheckpointError(f"{path} was not saved by ebmflow: its state_dict has no 'flow.' weights")
    return checkpoint
