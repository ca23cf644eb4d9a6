"""The prior evaluated with its parameters averaged over recent updates: ``PriorAveraging``."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn

__all__ = ["LIVE_PRIOR_KEY", "PriorAveraging"]

LIVE_PRIOR_KEY = "ebmflow_live_prior"  # a checkpoint's live (trained-on) prior parameters


class PriorAveraging(L.Callback):
    """An exponential moving average of the prior's parameters (Polyak averaging, as RBM practice uses
    for sampling), and the model evaluated with it.

    During ``fit`` the average follows every training batch, a ← decay · a + (1 − decay) · θ, starting
    from the parameters training starts with. Each validation (and a test or predict run in the fit's
    process) runs with the average in place of the live parameters (bits/dim, samples, FID, the health
    diagnostics, log Z), which are put back before training goes on. Checkpoints hold the average in
    their ``state_dict``, so ``ebmflow test``, ``sample``, ``predict`` and anything else that loads a
    checkpoint evaluates the averaged prior; the live parameters travel beside it
    (``ebmflow_live_prior``), and a fit resumed with this callback trains on from them (weights-only
    checkpoints, for which Lightning calls no callback, are refused at the start). The flow and every
    buffer (the PCD chains among them) are not averaged. The log Z estimate a validation leaves is the
    average's, so ``train/objective`` (whose log Z is only a label: its gradient comes from the chains)
    shifts by the difference until the next one.

    Why (docs/results.md, rounds 9 and 10): with the flow frozen, an RBM trained on by PCD at round 4b's
    rate kept moving its samples' class mix between evaluations at two of three seeds (FID 2.3–2.5x
    apart), while the same trajectories averaged over about 100 updates did not; in training, the averaged
    readout stayed within 1.37x between validations at all four seeds tried.

    Args:
        decay: the weight the average keeps at each step (0.99: about the last 100 updates).
    """

    def __init__(self, decay: float = 0.99) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"decay must lie in (0, 1), got {decay!r} (0.99 averages about 100 updates)")
        self.decay = decay
        self.average: dict[str, Tensor] | None = None
        self._live: dict[str, Tensor] | None = None  # held while an evaluation runs on the average

    def start(self, prior: nn.Module) -> None:
        """Begin the average at ``prior``'s parameters (or, restored from a checkpoint, go on with it on
        their device)."""
        parameters = dict(prior.named_parameters())
        if self.average is None:
            self.average = {name: p.detach().clone() for name, p in parameters.items()}
        else:
            self.average = {name: a.to(parameters[name].device) for name, a in self.average.items()}

    @torch.no_grad()
    def update(self, prior: nn.Module) -> None:
        """One step of the average towards ``prior``'s parameters."""
        for name, p in prior.named_parameters():
            self.average[name].lerp_(p, 1 - self.decay)

    @torch.no_grad()
    def apply(self, prior: nn.Module) -> None:
        """Put the average in place of ``prior``'s parameters, keeping the live ones until ``restore``."""
        parameters = dict(prior.named_parameters())
        self._live = {name: p.detach().clone() for name, p in parameters.items()}
        for name, p in parameters.items():
            p.copy_(self.average[name])

    @torch.no_grad()
    def restore(self, prior: nn.Module) -> None:
        """Put back the live parameters that ``apply`` kept."""
        for name, p in prior.named_parameters():
            p.copy_(self._live[name])
        self._live = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        copies = sum(isinstance(callback, PriorAveraging) for callback in trainer.callbacks)
        if copies > 1:  # each would keep the other's average as the live parameters and train on from it
            raise ValueError(
                f"PriorAveraging is given {copies} times in trainer.callbacks (each --config "
                "conf/prior_averaging.yaml or --trainer.callbacks+=ebmflow.callbacks.PriorAveraging adds "
                "one): keep one"
            )
        if any(getattr(callback, "save_weights_only", False) for callback in trainer.checkpoint_callbacks):
            # Lightning calls no callback for a weights-only checkpoint: it would hold the live prior
            raise ValueError(
                "PriorAveraging cannot put the averaged prior into weights-only checkpoints: drop "
                "save_weights_only from the ModelCheckpoint callbacks, or PriorAveraging"
            )
        self.start(pl_module.prior)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        self.update(pl_module.prior)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Outside fit, a run given a checkpoint evaluates what it holds (a weights-only one calls no
        # on_load_checkpoint to clear the average); a run without one evaluates the fit's average.
        fitting = trainer.state.fn == TrainerFn.FITTING
        if self.average is not None and (fitting or trainer.ckpt_path is None):
            self.apply(pl_module.prior)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._live is not None:
            self.restore(pl_module.prior)

    # A test or predict run in the fit's own process, without a checkpoint, sees the average too.
    on_test_start = on_predict_start = on_validation_start
    on_test_end = on_predict_end = on_validation_end

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if self.average is None:
            return
        parameters = dict(pl_module.prior.named_parameters())
        live = self._live or {name: p.detach() for name, p in parameters.items()}
        checkpoint[LIVE_PRIOR_KEY] = {name: value.clone().cpu() for name, value in live.items()}
        for name, value in self.average.items():
            checkpoint["state_dict"][f"prior.{name}"] = value.clone()

    @torch.no_grad()
    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        """Resuming a fit: the module has loaded the average from ``state_dict``; train on from the live
        parameters saved beside it. Outside fit the loaded prior is evaluated as it is (the average, when
        one was saved), not an average an earlier fit in this process left."""
        live = checkpoint.get(LIVE_PRIOR_KEY)
        if trainer.state.fn != TrainerFn.FITTING:
            self.average = None
            return
        if live is None:
            return
        parameters = dict(pl_module.prior.named_parameters())
        self.average = {name: p.detach().clone() for name, p in parameters.items()}
        for name, p in parameters.items():
            p.copy_(live[name])
