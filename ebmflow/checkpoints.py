"""Reading checkpoints safely: ``weights_only=True`` and a clear error for a missing, corrupted or
foreign file."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ebmflow.module import EBMFlow

__all__ = ["CheckpointError", "check_compatible", "read_checkpoint"]


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


def check_compatible(checkpoint: dict, model: EBMFlow, path: str | Path) -> None:
    """Raise CheckpointError, in one line, when the checkpoint's weights do not fit ``model`` (another
    prior, other filters…): the user's config must describe the architecture the checkpoint was trained
    with. Rank-local state saved by several DDP ranks is compared without its leading rank axis; the
    prior's configuration submodules (``Prior.configuration_state``) are not compared."""
    configuration = tuple(f"prior.{name}." for name in model.prior.configuration_state())
    saved = {
        key: value for key, value in checkpoint["state_dict"].items() if not key.startswith(configuration)
    }
    rank_local = set(checkpoint.get("ebmflow_rank_local", []))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    differing = [
        f"{key} {tuple(value.shape)} in the checkpoint, {tuple(expected[key].shape)} here"
        for key, value in saved.items()
        if key in expected
        and tuple(value.shape[1:] if key in rank_local else value.shape) != tuple(expected[key].shape)
    ]
    if not (missing or unexpected or differing):
        return
    problems = []
    if differing:
        problems.append(f"{len(differing)} tensors differ in shape (first: {differing[0]})")
    if missing:
        problems.append(f"{len(missing)} missing (first: {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} not in this model (first: {unexpected[0]})")
    raise CheckpointError(
        f"{path} was trained with another architecture: {'; '.join(problems)}. Pass the --config it was "
        "trained with (its run directory's config.yaml)."
    )
