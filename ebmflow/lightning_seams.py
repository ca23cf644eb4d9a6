"""The one place where ebmflow depends on something Lightning does not make public, kept here and
nowhere else; tests/ebmflow/test_rundir.py fails loudly when a Lightning release changes it (pyproject
bounds Lightning to the major version this was written for).

``LightningCLI._parse_ckpt_path`` reads a checkpoint's hyperparameters and lets them override the
command line (``--model.importance_samples 2`` was silently replaced by the checkpoint's 16). No public
hook disables that, so ``IgnoreCheckpointHyperparameters`` overrides the method: it only checks the file
(the user's config and flags describe the model; an architecture mismatch then fails in one line, see
``ebmflow.checkpoints.check_compatible``).
"""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from ebmflow.checkpoints import read_checkpoint

__all__ = ["SPECIAL_CKPT_PATHS", "IgnoreCheckpointHyperparameters"]

SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")  # names Lightning resolves itself


class IgnoreCheckpointHyperparameters(LightningCLI):
    """LightningCLI whose checkpoint hyperparameters never override the config and flags."""

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path is not None and path not in SPECIAL_CKPT_PATHS:
            read_checkpoint(path)
