"""Loggers for runs that are resumed and tested in the directory they trained in: a CSV logger that
appends instead of deleting, and Weights & Biases logging that never prompts (offline unless an API key
is configured)."""

from __future__ import annotations

import csv
import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter as _LightningExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

__all__ = ["CSVLogger", "WandbLogger", "wandb_api_key_configured"]


class _AppendingWriter(_LightningExperimentWriter):
    """Lightning's writer deletes an existing metrics.csv when it opens the directory. This one keeps
    it and continues it, with the existing header, so new columns rewrite the file with every old row."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
                self.metrics_keys = sorted(csv.DictReader(handle).fieldnames or [])


class CSVLogger(_LightningCSVLogger):
    """Lightning's CSVLogger, except that a run directory's metrics.csv is continued, not replaced.

    With a fixed ``version`` (the configs in conf/ log straight into the run directory), Lightning's
    logger deletes the training log when ``ebmflow test`` or a resumed ``ebmflow fit`` opens the same
    directory. This one appends: the test metrics join the training curves, and a resumed run continues
    its log. Rows logged after the last checkpoint of an interrupted run stay in the file; readers that
    key by epoch (``ebmflow report``) take the latest value.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def wandb_api_key_configured() -> bool:
    """True when WANDB_API_KEY is set or ~/.netrc holds credentials for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        hosts = netrc.netrc(path).hosts
    except (FileNotFoundError, netrc.NetrcParseError, PermissionError):
        return False
    return any("wandb" in host for host in hosts)


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger with ``offline`` decided for you: online only when an API key is
    configured, so a run never stops at a login prompt. Offline runs are kept under ``save_dir``;
    upload them later with ``wandb sync <save_dir>/wandb/offline-run-*``.

    Use ``group`` for an ablation (the four priors of one experiment), ``tags`` and ``job_type`` to
    filter, exactly as in ``wandb.init``.
    """

    def __init__(self, offline: bool | None = None, **kwargs) -> None:
        if offline is None:
            offline = not wandb_api_key_configured()
        kwargs.setdefault("save_dir", "runs")
        super().__init__(offline=offline, **kwargs)
