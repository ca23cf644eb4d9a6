"""Several optimisers that act as one, so the prior can learn by its own rule (RBM practice: plain SGD,
often with momentum) while Lightning's automatic optimisation, gradient clipping, learning-rate
schedulers and checkpoints see a single ``torch.optim.Optimizer`` (Lightning steps several optimisers
only under manual optimisation, where each step would also count as a global step)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.optim import Optimizer

__all__ = ["CombinedOptimizer"]


class CombinedOptimizer(Optimizer):
    """Steps each of ``optimizers`` once per ``step``; their parameter groups are this optimiser's
    (the same dictionaries, so a scheduler or clipping acts on all of them), and their states are
    saved and restored side by side."""

    def __init__(self, optimizers: Sequence[Optimizer]) -> None:
        if not optimizers or not all(isinstance(o, Optimizer) for o in optimizers):
            raise TypeError("CombinedOptimizer takes a non-empty sequence of torch optimisers")
        self.optimizers = list(optimizers)
        params = [p for o in self.optimizers for group in o.param_groups for p in group["params"]]
        if len({id(p) for p in params}) != len(params):
            raise ValueError("a parameter belongs to two of the combined optimisers")
        super().__init__(params, {})
        self._share_children()

    def _share_children(self) -> None:
        """Expose the children's groups and states (loading a state replaces theirs: share them anew)."""
        self.param_groups = [group for o in self.optimizers for group in o.param_groups]
        self.state = _States(self.optimizers)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Evaluates ``closure`` (forward and backward) once, then steps every optimiser."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for optimizer in self.optimizers:
            optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("optimizers")
        if saved is None or len(saved) != len(self.optimizers):
            raise ValueError(
                f"the checkpoint's optimiser state holds {len(saved) if saved else 'no'} combined "
                f"optimisers, this run has {len(self.optimizers)}: resume with the same "
                "--model.prior_optimizer setting"
            )
        for optimizer, state in zip(self.optimizers, saved, strict=True):
            optimizer.load_state_dict(state)
        self._share_children()

    def __repr__(self) -> str:
        inner = ", ".join(type(o).__name__ for o in self.optimizers)
        return f"CombinedOptimizer({inner})"


class _States(Mapping):
    """The children's per-parameter states as one read-only mapping. Looking a parameter up never
    creates an entry (a ChainMap over their defaultdicts would add every other child's parameters to the
    first child's state, which then cannot be saved)."""

    def __init__(self, optimizers: Sequence[Optimizer]) -> None:
        self.optimizers = optimizers

    def __getitem__(self, parameter: object) -> Any:
        for optimizer in self.optimizers:
            if parameter in optimizer.state:
                return optimizer.state[parameter]
        raise KeyError(parameter)

    def __iter__(self) -> Iterator[object]:
        for optimizer in self.optimizers:
            yield from optimizer.state

    def __len__(self) -> int:
        return sum(len(optimizer.state) for optimizer in self.optimizers)
