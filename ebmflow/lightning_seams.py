"""The two places where ebmflow depends on something Lightning does not make public. Each is kept here
and nowhere else, and tests/ebmflow/test_lightning_seams.py fails loudly when a Lightning release
changes what it relies on (pyproject bounds Lightning to the major version these were written for).

1. ``LightningCLI._parse_ckpt_path`` reads a checkpoint's hyperparameters and lets them override the
   command line (``--model.importance_samples 2`` was silently replaced by the checkpoint's 16). No
   public hook disables that, so ``IgnoreCheckpointHyperparameters`` overrides the method: it only checks
   the file (the user's config and flags describe the model; an architecture mismatch then fails in
   one line, see ``ebmflow.checkpoints.check_compatible``).
2. A checkpoint saved after validation at the last batch of an epoch (what ``ModelCheckpoint`` writes
   when validation ends an epoch) resumes wrongly in Lightning 2.x: the next epoch runs no batches and
   the one after it is trained instead, with its own data order. ``mark_last_batch_unfinished`` rewrites
   that checkpoint's loop progress, as it is loaded, into the state Lightning restores correctly: saved
   between two epochs.
"""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from ebmflow.checkpoints import read_checkpoint

__all__ = ["IgnoreCheckpointHyperparameters", "mark_last_batch_unfinished"]

SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")  # names Lightning resolves itself


class IgnoreCheckpointHyperparameters(LightningCLI):
    """LightningCLI whose checkpoint hyperparameters never override the config and flags."""

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path is not None and path not in SPECIAL_CKPT_PATHS:
            read_checkpoint(path)


def mark_last_batch_unfinished(checkpoint: dict) -> None:
    """Called by ``EBMFlow.on_load_checkpoint``, before Lightning restores its loops from ``checkpoint``:
    a checkpoint saved at the last batch of an epoch (after that batch's validation, or at its end)
    becomes one saved between epochs (that epoch's end hooks are not run again on resume)."""
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    batches = loop.get("epoch_loop.batch_progress")
    epochs = loop.get("epoch_progress")
    if not batches or not epochs or not batches.get("is_last_batch"):
        return
    if epochs["current"]["processed"] == epochs["current"]["started"]:
        return  # saved after the epoch ended: Lightning resumes that correctly
    for progress in (epochs["total"], epochs["current"]):
        progress.update(processed=progress["started"], completed=progress["started"])
    batches["total"]["completed"] = batches["total"]["processed"]
    batches["current"] = {key: 0 for key in batches["current"]}
    batches["is_last_batch"] = False
    state = loop.get("epoch_loop.state_dict", {})
    if "_batches_that_stepped" in state:
        state["_batches_that_stepped"] = checkpoint["global_step"]
