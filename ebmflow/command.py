"""The ``ebmflow`` console command. ``ebmflow report`` only reads run directories, so it starts without
loading Lightning, torch or the models; every other subcommand goes to the Lightning CLI
(ebmflow/cli.py). ``--debug`` (or EBMFLOW_DEBUG=1) shows the traceback of an expected error."""

from __future__ import annotations

import os
import sys

__all__ = ["main"]


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else list(args)
    debug = "--debug" in argv or os.environ.get("EBMFLOW_DEBUG", "") not in ("", "0")
    argv = [arg for arg in argv if arg != "--debug"]
    if argv[:1] == ["report"]:
        from ebmflow import report

        report.main(argv[1:])
        return
    from ebmflow.cli import run

    if args is None:
        sys.argv[1:] = argv  # LightningCLI reads sys.argv itself
    run(None if args is None else argv, debug)
