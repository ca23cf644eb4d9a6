"""ebmflow: Flow++ with energy-based base distributions (RBM-Flow, D-Flow), as a Lightning application."""

__all__ = ["EBMFlow"]


def __getattr__(name: str):
    # ``ebmflow.EBMFlow`` without importing Lightning for ``ebmflow report`` (which needs none of it)
    if name == "EBMFlow":
        from ebmflow.module import EBMFlow

        return EBMFlow
    raise AttributeError(f"module 'ebmflow' has no attribute {name!r}")
