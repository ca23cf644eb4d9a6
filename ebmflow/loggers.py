"""Loggers for runs that are resumed and tested in the directory they trained in: a CSV logger that
appends instead of deleting, and Weights & Biases logging that never prompts (offline unless an API key
is configured)."""

from __future__ import annotations

import csv
import io
import math
import netrc
import os
from argparse import Namespace
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.loggers import Logger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_only

from ebmflow.rundir import atomic_write

__all__ = ["CSVLogger", "WandbLogger", "wandb_api_key_configured"]


class CSVLogger(Logger):
    """Metrics in ``<save_dir>/metrics.csv``, continued (never replaced) by every later command.

    ``ebmflow test`` and a resumed ``ebmflow fit`` in the run directory add their rows to the training
    log. A fit resumed from a checkpoint at step S moves the rows the interrupted run logged after S
    (superseded by the resumed run) to ``metrics.replaced.csv``, so curves and ``ebmflow report`` read
    each step once. The file is rewritten atomically at every flush, so a kill leaves it whole.
    ``hparams.yaml`` is written by the directory's first command only (the training run); later
    commands' settings are in their own ``config.<command>.yaml``.

    Args:
        save_dir: the run directory (the ``ebmflow`` command fills it from ``--trainer.default_root_dir``
            when it is not given).
        flush_logs_every_n_steps: rows kept in memory between writes.
    """

    def __init__(self, save_dir: str | None = None, flush_logs_every_n_steps: int = 100) -> None:
        super().__init__()
        self._save_dir = save_dir
        self.flush_logs_every_n_steps = flush_logs_every_n_steps
        self.rows: list[dict[str, Any]] | None = None  # loaded at first use
        self.unsaved = 0
        self.hparams: dict[str, Any] = {}
        self.writes_hparams = False

    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str | None:
        return self._save_dir

    @property
    def log_dir(self) -> str | None:
        return self._save_dir

    @property
    def metrics_file(self) -> Path:
        if self._save_dir is None:
            raise ValueError(
                "CSVLogger has no save_dir: give --trainer.logger.init_args.save_dir (or "
                "--trainer.default_root_dir through the ebmflow command)"
            )
        return Path(self._save_dir) / "metrics.csv"

    def _load(self) -> list[dict[str, Any]]:
        if self.rows is None:
            self.writes_hparams = not (self.metrics_file.parent / "hparams.yaml").exists()
            self.rows = read_rows(self.metrics_file) if self.metrics_file.is_file() else []
        return self.rows

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        rows = self._load()
        rows.append({"step": step, **{key: _plain(value) for key, value in metrics.items()}})
        self.unsaved += 1
        if self.unsaved >= self.flush_logs_every_n_steps:
            self.save()

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        self._load()
        self.hparams.update(vars(params) if isinstance(params, Namespace) else params)
        if self.writes_hparams:
            text = yaml.safe_dump(_yaml_safe(self.hparams), sort_keys=False)
            atomic_write(
                self.metrics_file.parent / "hparams.yaml", lambda handle: handle.write(text.encode())
            )

    @rank_zero_only
    def resume_at(self, step: int) -> None:
        """A fit resumed from a checkpoint at global step ``step``: rows of training and validation
        logged at or after it belong to the interrupted run; move them to metrics.replaced.csv."""
        rows = self._load()
        stale = [row for row in rows if _is_stale(row, step)]
        if not stale:
            return
        replaced = self.metrics_file.with_name("metrics.replaced.csv")
        earlier = read_rows(replaced) if replaced.is_file() else []
        write_rows(replaced, earlier + stale)
        self.rows = [row for row in rows if not _is_stale(row, step)]
        self.save()

    @rank_zero_only
    def save(self) -> None:
        if self.rows is not None:
            write_rows(self.metrics_file, self.rows)
            self.unsaved = 0

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()


def _is_stale(row: dict[str, Any], step: int) -> bool:
    logged = row.get("step")
    try:
        late = logged not in (None, "") and int(float(logged)) >= step
    except ValueError:
        return False
    return late and not any(key.startswith("test/") and row[key] not in (None, "") for key in row)


def read_rows(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """All rows under one header (the union of their keys, step first), atomically."""
    keys = sorted({key for row in rows for key in row if key != "step"})
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["step", *keys], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda handle: handle.write(text.getvalue().encode()))


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _yaml_safe(value: Any) -> Any:
    """Hyperparameters as YAML can hold them (other objects by their repr)."""
    if isinstance(value, dict):
        return {str(key): _yaml_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_yaml_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


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

    Args:
        save_dir: the run directory (the ``ebmflow`` command fills it from ``--trainer.default_root_dir``
            when it is not given; ``runs`` otherwise). Lightning writes checkpoints to
            ``<save_dir>/<project>/<run id>/checkpoints``.
        offline: ``None`` decides by whether an API key is configured.
        kwargs: Lightning's WandbLogger's (``project``, ``name``, ``group``, …).
    """

    def __init__(self, save_dir: str | None = None, offline: bool | None = None, **kwargs) -> None:
        # save_dir is named here, not left to **kwargs: the command sees its None default and fills it
        # (Lightning's own default, ".", would put the run in the working directory)
        if offline is None:
            offline = not wandb_api_key_configured()
        super().__init__(save_dir="runs" if save_dir is None else save_dir, offline=offline, **kwargs)
