"""Discovery of prior plugins registered under the ``ebmflow.priors`` entry-point group.

A third-party package ships a prior by declaring, in its ``pyproject.toml``::

    [project.entry-points."ebmflow.priors"]
    MyPrior = "my_package.module:MyPrior"

Importing the class is what lets LightningCLI resolve ``--model.prior=MyPrior`` by its short name.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from priors.base import Prior

__all__ = ["GROUP", "discover_priors"]

GROUP = "ebmflow.priors"


def discover_priors() -> dict[str, type[Prior]]:
    """Import every prior registered under ``ebmflow.priors``; returns {entry-point name: class}.

    Raises TypeError naming the entry point when one does not point at a Prior subclass.
    """
    found: dict[str, type[Prior]] = {}
    for ep in entry_points(group=GROUP):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, Prior)):
            raise TypeError(
                f"entry point {ep.name} = {ep.value} in group {GROUP} is not a priors.Prior subclass"
            )
        found[ep.name] = cls
    return found
