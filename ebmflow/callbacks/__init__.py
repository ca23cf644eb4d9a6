"""Callbacks that measure what the paper claims: a fresh log Z for the reported likelihood, sample
quality (FID, IS), samples (and the Fig. 3 grid) to look at, and how much class information the
discrete codes carry.

Each is configured like any Lightning callback (``--trainer.callbacks+=ebmflow.callbacks.SampleGrids``),
works under DDP (the work runs on rank 0; log Z is broadcast) and does nothing in ``fast_dev_run``
unless ``in_fast_dev_run`` is set.

``PriorAveraging`` evaluates the model with the prior's parameters averaged over recent updates.

One module per concern (partition, quality, grids, codes, chains, averaging); each is imported when its
callback is first named, so a run pays only for the libraries (torchmetrics, scikit-learn…) it uses.
"""

from __future__ import annotations

import importlib

__all__ = [
    "ChainHealth",
    "CodeNMI",
    "LogPartitionEstimate",
    "PriorAveraging",
    "SampleGrids",
    "SampleQuality",
    "build_quality_metrics",
]

_HOME = {
    "ChainHealth": "chains",
    "CodeNMI": "codes",
    "LogPartitionEstimate": "partition",
    "PriorAveraging": "averaging",
    "SampleGrids": "grids",
    "SampleQuality": "quality",
    "build_quality_metrics": "quality",
}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f"ebmflow.callbacks.{_HOME[name]}"), name)
    raise AttributeError(f"module 'ebmflow.callbacks' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
