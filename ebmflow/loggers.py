"""Weights & Biases logging that never prompts: offline unless an API key is configured."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger

__all__ = ["WandbLogger", "wandb_api_key_configured"]


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
