"""The ``ebmflow`` console script. The LightningCLI application is built in a later issue; until then
the script states what exists."""

from __future__ import annotations

import argparse

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="ebmflow",
        description=(
            "Invertible flows with energy-based priors (RBM-Flow, D-Flow). The training CLI "
            "(fit/test/sample/encode) is not built yet; `make demo` fits a small flow on the bundled digits."
        ),
    )
    parser.parse_args(argv)
    parser.print_help()
