"""The prior plugin contract: a base density over z ∈ R^N for the flow (DESIGN.md, "Contracts").

Public methods validate their inputs once and call a private method that computes; subclasses
implement the private methods only.
"""

from __future__ import annotations

import abc
from typing import Literal, get_args

import torch
from torch import Tensor, nn

__all__ = ["DiscretePrior", "PartitionMethod", "Prior"]

PartitionMethod = Literal["auto", "exact", "ais"]
PARTITION_METHODS = get_args(PartitionMethod)


class Prior(nn.Module, abc.ABC):
    """A normalised density over vectors z ∈ R^dim.

    Constructor arguments of subclasses are plain values (ints, floats, strings, bools) so that
    LightningCLI can build any prior from YAML.

    ``log_prob`` and ``loss`` refuse NaN or infinite z with a clear error; set ``check_finite = False``
    on an instance to skip that check (one reduction per call) where the caller checks its own result,
    as ``ebmflow.EBMFlow`` does.
    """

    check_finite: bool = True

    def __init__(self, dim: int) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer (the flow's C·H·W), got {dim!r}")
        self.dim = dim
        # Gives parameter-free priors a device and dtype that follow ``.to(...)``.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)
        self.register_state_dict_post_hook(_leave_out_configuration)
        self.register_load_state_dict_pre_hook(_keep_configuration)

    @property
    def log_partition_is_exact(self) -> bool:
        """Whether ``log_prob`` uses an exact normaliser (False: the latest estimate)."""
        return True

    def log_prob(self, z: Tensor) -> Tensor:
        """z: (batch, dim) -> (batch,) normalised log density."""
        self._check_z(z)
        self._check_finite(z)
        with _exact_precision(z):
            return self._log_prob(z)

    def loss(self, z: Tensor) -> Tensor:
        """z: (batch, dim) -> scalar whose gradient is (an unbiased estimate of) the gradient of
        −mean log p(z) with respect to z and the prior's parameters (docs/maths.md §4)."""
        self._check_z(z)
        self._check_finite(z)
        with _exact_precision(z):
            return self._loss(z)

    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        """-> (n, dim) samples on the prior's device, in its dtype."""
        _check_count(n)
        _check_temperature(temperature)
        with _exact_precision(self._anchor):
            return self._sample(n, temperature)

    def rank_local_state(self) -> dict[str, Tensor]:
        """Buffers (by state-dict name under the prior) that must differ between DDP ranks, such as
        persistent sampler chains: the application keeps them out of DDP's buffer broadcast, redraws
        them per rank (``reset_rank_local_state``) and saves every rank's copy in checkpoints."""
        return {}

    def reset_rank_local_state(self) -> None:
        """Redraw the rank-local buffers from the current random stream."""

    def configuration_state(self) -> tuple[str, ...]:
        """Names of the prior's child modules that are configuration, not state (a generation sampler: a
        tool the command chooses). Their buffers are left out of ``state_dict`` and a checkpoint's
        entries under them (an older one's) are ignored on load, so a checkpoint loads whatever such
        submodules the command configures."""
        return ()

    @abc.abstractmethod
    def _log_prob(self, z: Tensor) -> Tensor: ...

    def _loss(self, z: Tensor) -> Tensor:
        return -self._log_prob(z).mean()

    @abc.abstractmethod
    def _sample(self, n: int, temperature: float) -> Tensor: ...

    def _check_finite(self, z: Tensor) -> None:
        if self.check_finite and not bool(z.isfinite().all()):
            rows = int((~z.isfinite().all(1)).sum())
            raise ValueError(
                f"z holds NaN or infinite values ({rows} of {len(z)} rows): the flow's output has diverged "
                f"or its input was not finite; {type(self).__name__} has no density there"
            )

    def _check_z(self, z: Tensor, name: str = "z") -> None:
        if not isinstance(z, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
        if not z.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {z.dtype}")
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} has dim={self.dim}; {name} must have shape (batch, {self.dim}), "
                f"got {tuple(z.shape)} (flatten images to (batch, C·H·W), or set the prior's dim)"
            )
        if z.device != self._anchor.device:
            raise ValueError(
                f"{name} is on {z.device} but {type(self).__name__} is on {self._anchor.device}; "
                "move the prior with .to(device)"
            )


class DiscretePrior(Prior):
    """A prior with discrete latent spins s ∈ {−1, +1}^dim and an exact posterior p(s | z)."""

    def sample_discrete(self, n: int) -> Tensor:
        """-> (n, dim) spins in {−1, +1} drawn from p(s)."""
        _check_count(n)
        with _exact_precision(self._anchor):
            return self._sample_discrete(n)

    def sample_given(self, s: Tensor, temperature: float = 1.0) -> Tensor:
        """s: (n, dim) spins -> (n, dim) draws of z ~ p(z | s)."""
        self._check_z(s, "s")
        if not bool(((s == 1) | (s == -1)).all()):
            raise ValueError("s must hold spins: every entry -1 or +1")
        _check_temperature(temperature)
        with _exact_precision(s):
            return self._sample_given(s, temperature)

    def posterior(self, z: Tensor) -> Tensor:
        """z: (batch, dim) -> (batch, dim) exact p(s_i = +1 | z)."""
        self._check_z(z)
        with _exact_precision(z):
            return self._posterior(z)

    def estimate_log_partition(
        self, method: PartitionMethod = "auto", steps: int | None = None, chains: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Estimate log Z_s of p(s); returns (value, standard error) and keeps the value for log_prob.

        Args:
            method: "auto" (exact where the prior can enumerate or has a closed form, else AIS),
                "exact" or "ais".
            steps, chains: the AIS schedule (None: the prior's defaults); ignored when exact.
        """
        if method not in PARTITION_METHODS:
            raise ValueError(f"method must be one of {PARTITION_METHODS}, got {method!r}")
        with torch.no_grad(), _exact_precision(self._anchor):
            return self._estimate_log_partition(method, steps, chains)

    def set_log_partition(self, value: Tensor, stderr: Tensor) -> None:
        """Use this estimate of log Z_s (with its standard error) in ``log_prob`` from now on, e.g. one
        computed on another rank. Priors whose log Z is exact ignore it."""

    @abc.abstractmethod
    def _sample_discrete(self, n: int) -> Tensor: ...

    @abc.abstractmethod
    def _sample_given(self, s: Tensor, temperature: float) -> Tensor: ...

    @abc.abstractmethod
    def _posterior(self, z: Tensor) -> Tensor: ...

    @abc.abstractmethod
    def _estimate_log_partition(
        self, method: PartitionMethod, steps: int | None, chains: int | None
    ) -> tuple[Tensor, Tensor]: ...


def _exact_precision(like: Tensor) -> torch.autocast:
    """Densities, gradients and samplers run in the input's precision even inside a mixed-precision
    (autocast) region."""
    return torch.autocast(like.device.type, enabled=False)


def _check_count(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of samples must be a positive integer, got {n!r}")


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}")


def _leave_out_configuration(prior: Prior, state_dict: dict, prefix: str, *args) -> None:
    """state_dict post-hook: no entries under the configuration submodules (``configuration_state``)."""
    for name in prior.configuration_state():
        for key in [key for key in state_dict if key.startswith(f"{prefix}{name}.")]:
            del state_dict[key]


def _keep_configuration(prior: Prior, state_dict: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: whatever a checkpoint holds under the configuration submodules (an
    older one's buffers, or another sampler's), they keep the state the command configured; one that is
    also another child (the training sampler itself) loads that child's entries."""
    _leave_out_configuration(prior, state_dict, prefix)
    for name in prior.configuration_state():
        module = getattr(prior, name, None)
        if not isinstance(module, nn.Module):
            continue
        children = prior.named_modules(remove_duplicate=False)  # named_children lists a shared one once
        owners = [
            other
            for other, child in children
            if child is module and other not in ("", name) and "." not in other
        ]
        if owners:
            source = f"{prefix}{owners[0]}."
            state = {
                key.removeprefix(source): value for key, value in state_dict.items() if key.startswith(source)
            }
        else:
            state = module.state_dict()
        state_dict.update({f"{prefix}{name}.{key}": value for key, value in state.items()})
