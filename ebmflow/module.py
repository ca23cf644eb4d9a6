"""The EBMFlow LightningModule: dequantizer → Flow++ (logit preprocessing inside) → flatten → prior.

All bits/dim are computed by one function and shared by the train, validation and test steps
(docs/maths.md §1). Reported numbers:

- ``train/objective``: the training loss in bits/dim (a bound on the variational-dequantization
  bits/dim); for the RBM prior it uses the latest log Z_s estimate, refreshed at validation when exact.
- ``{val,test}/bpd_uniform``: uniform-dequantization bound, the number the paper reports;
- ``{val,test}/bpd_variational``: variational-dequantization bound (when the dequantizer is learned);
- ``test/bpd_importance_K``: importance-weighted estimate with K dequantization samples;
- ``{val,test}/log_z_exact``: 1 when the prior's normaliser is exact, 0 when it is the latest estimate.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from ebmflow.callbacks.averaging import LIVE_PRIOR_KEY, PriorAveraging
from ebmflow.loggers import CSVLogger
from ebmflow.optim import CombinedOptimizer
from flows import Dequantizer, FlowPlusPlus, UniformDequantizer, to_channels_last, use_channels_last
from priors import DiscretePrior, Prior

__all__ = ["EBMFlow", "NonFiniteLossError"]

log = logging.getLogger(__name__)
VALIDATION_SEED = 0
RANK_SEED_STRIDE = 7919  # rank r trains from seed + r · stride (a prime: no two runs' ranks collide early)


class NonFiniteLossError(RuntimeError):
    """The training loss or one of its terms is NaN or infinite."""


class EBMFlow(L.LightningModule):
    """A Flow++ with a pluggable prior.

    Args:
        flow: the Flow++ backbone; its ``in_shape`` must match the data.
        prior: the base distribution; its ``dim`` must equal C·H·W.
        dequantizer: a learned dequantizer (e.g. ``flows.VariationalDequantizer``); uniform when None.
        optimizer: the optimiser factory (default Adam at its default rate; the paper's configs use a
            constant learning rate of 1e-4).
        lr_scheduler: an optional scheduler factory (Flow++ used a linear warm-up).
        prior_lr: a learning rate for the prior's parameters alone (None: the optimiser's). An RBM
            trained by PCD needs its energy to move slowly enough for the persistent chains to follow.
        prior_optimizer: an optimiser factory for the prior's parameters alone (None: the prior
            learns with ``optimizer``), e.g. ``torch.optim.SGD`` with momentum, as RBMs are usually
            trained; ``prior_lr``, when given, sets its rate. Both step as one optimiser (one global
            step per batch; ``lr_scheduler`` and gradient clipping act on both).
        prior_lr_scheduler: a scheduler factory for ``prior_optimizer`` alone, stepped after every
            optimiser step and saved in the checkpoints (``train/prior_lr`` logs the rate), e.g.
            ``torch.optim.lr_scheduler.ExponentialLR`` for an RBM's rate that starts fast and decays. It
            cannot be combined with ``lr_scheduler``, which sets the prior's rate too.
        importance_samples: K of the importance-weighted test estimate (0 turns it off; Flow++: 4096).
        nonfinite: "stop" ends training at a non-finite loss or gradient, naming the step and the term;
            "skip" skips that batch (no update) and counts it (``train/skipped_batches``).
        channels_last: run the flow and the dequantizer in channels-last (NHWC) memory layout end to
            end (flows.use_channels_last); the numbers are the same, the speed is not (bench/README.md).
        max_skipped: with "skip", training stops (as with "stop") once more than this many batches
            have been skipped in the run. A non-finite validation bits/dim always stops training,
            before any checkpoint of that validation is written.
    """

    def __init__(
        self,
        flow: FlowPlusPlus,
        prior: Prior,
        dequantizer: Dequantizer | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        prior_lr: float | None = None,
        prior_optimizer: OptimizerCallable | None = None,
        prior_lr_scheduler: LRSchedulerCallable | None = None,
        importance_samples: int = 16,
        nonfinite: Literal["stop", "skip"] = "stop",
        max_skipped: int = 10,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        dims = math.prod(flow.in_shape)
        if prior.dim != dims:
            raise ValueError(
                f"the prior has dim={prior.dim} but the flow's in_shape {tuple(flow.in_shape)} has {dims} "
                f"dimensions: set --model.prior.init_args.dim={dims}"
            )
        if nonfinite not in ("stop", "skip"):
            raise ValueError(f'nonfinite must be "stop" or "skip", got {nonfinite!r}')
        if prior_lr is not None and prior_lr <= 0:
            raise ValueError(f"prior_lr must be positive (or null for the optimiser's), got {prior_lr}")
        if prior_lr_scheduler is not None and prior_optimizer is None:
            raise ValueError(
                "prior_lr_scheduler schedules the prior's own optimiser: set --model.prior_optimizer too "
                "(e.g. torch.optim.SGD), or --model.lr_scheduler to schedule every parameter's rate at once"
            )
        if prior_lr_scheduler is not None and lr_scheduler is not None:
            raise ValueError(
                "lr_scheduler sets every parameter group's rate, the prior's included, so with "
                "prior_lr_scheduler the prior's rate would be scheduled twice: give only one of them"
            )
        if max_skipped < 0:
            raise ValueError(f"max_skipped must be >= 0, got {max_skipped}")
        if importance_samples < 0:
            raise ValueError(f"importance_samples must be >= 0, got {importance_samples}")
        self.save_hyperparameters(
            ignore=[
                "flow",
                "prior",
                "dequantizer",
                "optimizer",
                "lr_scheduler",
                "prior_optimizer",
                "prior_lr_scheduler",
            ]
        )
        self.flow = flow
        self.prior = prior
        # The module's own data path cannot feed them bad input (its dequantizers give [0, 1), it checks
        # its objective itself: ``nonfinite``): skip the public-boundary checks, each a host sync.
        self.flow.check_range = False
        self.prior.check_finite = False
        self.dequantizer = dequantizer if dequantizer is not None else UniformDequantizer()
        self.channels_last = channels_last
        use_channels_last(self.flow, channels_last)
        use_channels_last(self.dequantizer, channels_last)
        self.uniform = UniformDequantizer()
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.prior_lr = prior_lr
        self.prior_optimizer_factory = prior_optimizer
        self.prior_scheduler_factory = prior_lr_scheduler
        self.prior_scheduler: LRScheduler | None = None
        self._saved_prior_schedule: dict | None = None  # the scheduler's state a checkpoint held
        self.importance_samples = importance_samples
        self.nonfinite = nonfinite
        self.max_skipped = max_skipped
        self._validation_finite = True
        self.dims = dims
        self.skipped_batches = 0
        self.wall_seconds = 0.0  # training time, carried across resumes
        self._averaged_checkpoint = False  # loaded from a checkpoint that PriorAveraging wrote
        # (epoch, global step) of the checkpoint the weights were loaded from outside fit, else None
        self._checkpoint_progress: tuple[int, int] | None = None
        self._test_bpd: list[Tensor] = []

    # ----------------------------------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        data_shape = getattr(self.trainer.datamodule, "shape", None)
        if data_shape is not None and tuple(data_shape) != tuple(self.flow.in_shape):
            raise ValueError(
                f"the data has shape {tuple(data_shape)} but the flow expects {tuple(self.flow.in_shape)}: "
                f"set --model.flow.init_args.in_shape={list(data_shape)} (and the prior's dim to match)"
            )
        for logger in self.loggers:
            logger.log_hyperparams({"num_parameters": sum(p.numel() for p in self.parameters())})

    @property
    def trained_steps(self) -> int:
        """The optimiser steps behind the weights being evaluated: the trainer's global step, or outside
        fit the loaded checkpoint's (Lightning restores the step in fit only)."""
        if self._checkpoint_progress is None or self.trainer.state.fn == TrainerFn.FITTING:
            return self.trainer.global_step
        return self._checkpoint_progress[1]

    def _log_checkpoint_progress(self) -> None:
        """Evaluating a checkpoint outside fit, put the row where fit's validation of the same weights put
        its own: the checkpoint's epoch, and one step under its global step (Lightning logs a row at step
        s during the (s + 1)-th step), not at epoch 0, step 0 (a logged ``step`` is the logging step:
        LoggerConnector.log_metrics)."""
        if self._checkpoint_progress is not None and self.trainer.state.fn != TrainerFn.FITTING:
            epoch, steps = self._checkpoint_progress
            self.log_dict({"epoch": float(epoch), "step": float(max(steps - 1, 0))}, sync_dist=True)

    def on_fit_start(self) -> None:
        # From here on the weights are the fit's, whatever checkpoint it resumed from (restored by now,
        # except under strategies that restore after setup: on_fit_end clears it for those).
        self._checkpoint_progress = None
        wrapped = self.trainer.strategy.model
        if isinstance(wrapped, DistributedDataParallel):
            # DDP would overwrite every rank's buffers with rank 0's before each forward pass, making
            # all PCD chains identical; the chains must stay rank-local (ActNorm syncs its own init).
            wrapped.broadcast_buffers = False
        if self.trainer.world_size > 1 and self.trainer.ckpt_path is None:
            # Give each rank its own random stream (dropout, dequantization noise, Gibbs sampling)
            # and its own PCD chains; seed_everything gives them all the same one.
            torch.manual_seed(torch.initial_seed() + RANK_SEED_STRIDE * self.global_rank)
            self.prior.reset_rank_local_state()

    def configure_optimizers(self):
        prior_parameters = list(self.prior.parameters())
        in_prior = {id(p) for p in prior_parameters}
        prior_group = {"params": prior_parameters}
        if self.prior_lr is not None:
            prior_group["lr"] = self.prior_lr
        rest = {"params": [p for p in self.parameters() if id(p) not in in_prior]}
        if self.prior_scheduler_factory is not None and not prior_parameters:
            raise ValueError(
                f"{type(self.prior).__name__} has no parameters for --model.prior_lr_scheduler to schedule: "
                "drop it (and --model.prior_optimizer) for this prior"
            )
        if self.prior_optimizer_factory is not None and prior_parameters:
            prior_optimizer = self.prior_optimizer_factory([prior_group])
            optimizer = CombinedOptimizer([self.optimizer_factory([rest]), prior_optimizer])
            self._start_prior_schedule(prior_optimizer)
        elif self.prior_lr is not None and prior_parameters:
            optimizer = self.optimizer_factory([rest, prior_group])
        else:
            optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"},
        }

    def _start_prior_schedule(self, optimizer: Optimizer) -> None:
        """Builds the prior's scheduler, when asked for, before Lightning restores the optimiser's state
        on resume (which then overwrites the rate a scheduler sets when built); Lightning only schedules
        the optimiser configure_optimizers returns, so this module steps it."""
        if self.prior_scheduler_factory is None:
            return
        self.prior_scheduler = self.prior_scheduler_factory(optimizer)
        if isinstance(self.prior_scheduler, ReduceLROnPlateau):
            raise ValueError(
                "--model.prior_lr_scheduler is stepped after every optimiser step, with no metric: use a "
                "schedule of the step (e.g. ExponentialLR, StepLR, LinearLR, CosineAnnealingLR), not "
                "ReduceLROnPlateau"
            )

    def _resume_prior_schedule(self, saved: dict | None) -> None:
        """Restores the prior's scheduler from a resumed checkpoint, or says why it cannot."""
        if (saved is None) != (self.prior_scheduler is None):
            checkpoint, run = ("had no", "has one") if saved is None else ("had one", "has none")
            raise ValueError(
                f"the checkpoint's run {checkpoint} prior learning-rate schedule and this run {run}: resume "
                "with the same --model.prior_lr_scheduler setting (the run's config.yaml has it)"
            )
        if saved is not None:  # the checkpoint's settings (gamma, step_size, ...) win, as Lightning's do
            self.prior_scheduler.load_state_dict(saved)

    def optimizer_step(
        self,
        epoch: int,
        batch_idx: int,
        optimizer: Optimizer | LightningOptimizer,
        optimizer_closure: Callable[[], Any] | None = None,
    ) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self.prior_scheduler is not None:
            self.prior_scheduler.step()

    # -------------------------------------------------------------------------------------- densities
    def _latent(self, images: Tensor, dequantizer: Dequantizer) -> tuple[Tensor, Tensor, Tensor]:
        """uint8 images -> (z: (batch, N), log|det ∂z/∂y|: (batch,), log q(u|x): (batch,))."""
        y, log_q = dequantizer(to_channels_last(images, self.channels_last))
        z, logdet = self.flow(to_channels_last(y, self.channels_last))
        return z.flatten(1), logdet, log_q

    def log_likelihood(self, images: Tensor, dequantizer: Dequantizer) -> Tensor:
        """Lower bound on log P(x) in nats, (batch,): log p_Z(f(y)) + log|det| − log q(u|x) − D log 256."""
        z, logdet, log_q = self._latent(images, dequantizer)
        return self.prior.log_prob(z) + logdet - log_q - self.dims * math.log(256)

    def bits_per_dim(self, log_p: Tensor) -> Tensor:
        """log-likelihood in nats -> bits per dimension (docs/maths.md §1)."""
        return -log_p / (self.dims * math.log(2))

    def importance_weighted(self, images: Tensor, samples: int) -> Tensor:
        """log (1/K) Σ_k p(x, u_k) / q(u_k | x), (batch,) (docs/maths.md §1)."""
        log_w = torch.stack([self.log_likelihood(images, self.dequantizer) for _ in range(samples)])
        return torch.logsumexp(log_w, dim=0) - math.log(samples)

    # ---------------------------------------------------------------------------------------- steps
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        z, logdet, log_q = self._latent(batch[0], self.dequantizer)
        prior_loss = self.prior.loss(z)
        log_p = -prior_loss + logdet.mean() - log_q.mean() - self.dims * math.log(256)
        objective = self.bits_per_dim(log_p)
        if not torch.isfinite(objective):
            terms = {"z": z, "log-determinant": logdet, "log q(u|x)": log_q, "prior loss": prior_loss}
            return self._nonfinite(objective, terms)
        self.log("train/objective", objective, prog_bar=True)
        return objective

    def _nonfinite(self, objective: Tensor, terms: dict[str, Tensor]) -> None:
        bad = [name for name, value in terms.items() if not bool(torch.isfinite(value).all())] or ["the sum"]
        self._skip_or_stop(
            f"non-finite training loss ({objective.item()}) at global step {self.global_step}, "
            f"epoch {self.current_epoch}: non-finite {', '.join(bad)}"
        )

    def on_after_backward(self) -> None:
        gradients = [p.grad for p in self.parameters() if p.grad is not None]
        if gradients and not bool(torch.stack([g.isfinite().all() for g in gradients]).all()):
            bad = sorted(
                {
                    name.split(".")[0]
                    for name, p in self.named_parameters()
                    if p.grad is not None and not bool(p.grad.isfinite().all())
                }
            )
            self._skip_or_stop(
                f"non-finite gradient at global step {self.global_step}, epoch {self.current_epoch} "
                f"(finite loss): non-finite in {', '.join(bad)}"
            )
            for parameter in self.parameters():
                parameter.grad = None  # skipped: the optimisers leave parameters without gradients alone

    def _skip_or_stop(self, message: str) -> None:
        """Skip the batch ("skip", within ``max_skipped``) or raise NonFiniteLossError."""
        if self.nonfinite == "skip" and self.skipped_batches < self.max_skipped:
            self.skipped_batches += 1
            log.warning("%s; skipping the batch (%d skipped so far)", message, self.skipped_batches)
            self.log("train/skipped_batches", float(self.skipped_batches))
            return
        if self.nonfinite == "skip":
            message += f"; {self.skipped_batches} batches skipped already, the limit (--model.max_skipped)"
        raise NonFiniteLossError(
            f"{message}. Training stopped before the update, so the parameters and checkpoints are those of "
            "the last finite step. Lower the learning rate, clip gradients (--trainer.gradient_clip_val), or "
            "set --model.nonfinite skip (and --model.max_skipped) to skip such batches."
        )

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # The last step is validated even between two scheduled validations: where validation is counted
        # in steps (cpu_small.yaml), the configs' checkpoints come after validations only, so the steps
        # after the last one were in no checkpoint. Lightning validates a step after which training was
        # asked to stop (as EarlyStopping asks), unless check_val_every_n_epoch skips that epoch or
        # min_steps / min_epochs are not met; a stop at a scheduled validation still validates once.
        if 0 < self.trainer.max_steps <= self.trainer.global_step:
            self.trainer.should_stop = True
        if self.prior_scheduler is not None:
            self.log("train/prior_lr", self.prior_scheduler.get_last_lr()[0])

    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        self.wall_seconds += time.perf_counter() - self._epoch_start
        self.log("train/wall_seconds", self.wall_seconds)

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        images = batch[0]
        bpd = self.bits_per_dim(self.log_likelihood(images, self.uniform))
        if stage == "val":
            self._validation_finite &= bool(bpd.isfinite().all())
        if stage == "test":
            self._test_bpd.append(bpd)
        metrics = {f"{stage}/bpd_uniform": bpd.mean()}
        if not isinstance(self.dequantizer, UniformDequantizer):
            bound = self.log_likelihood(images, self.dequantizer)
            metrics[f"{stage}/bpd_variational"] = self.bits_per_dim(bound).mean()
        if stage == "test" and self.importance_samples:
            iw = self.importance_weighted(images, self.importance_samples)
            metrics[f"{stage}/bpd_importance_{self.importance_samples}"] = self.bits_per_dim(iw).mean()
        metrics[f"{stage}/log_z_exact"] = float(self.prior.log_partition_is_exact)
        self.log_dict(metrics, prog_bar=stage == "val", sync_dist=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_validation_epoch_start(self) -> None:
        # Validation draws its dequantization noise from a fixed seed and leaves the training stream as
        # it was: every validation sees the same noise, and a run resumed from a checkpoint taken just
        # before a validation (which the resumed run does not repeat) continues exactly.
        self._training_rng = random_state(self.device)
        torch.manual_seed(VALIDATION_SEED)  # every device's generator
        if isinstance(self.prior, DiscretePrior) and self.prior.log_partition_is_exact:
            self.prior.estimate_log_partition()  # exact and cheap: keeps train/objective's log Z current

    def on_validation_epoch_end(self) -> None:
        set_random_state(self._training_rng, self.device)
        finite, self._validation_finite = self._validation_finite, True
        if not finite:  # raised before ModelCheckpoint sees this validation: never a "best" checkpoint
            raise NonFiniteLossError(
                f"non-finite validation bits/dim at step {self.trained_steps}: the model has diverged. "
                "Resume from an earlier checkpoint with a lower learning rate or gradient clipping "
                "(--trainer.gradient_clip_val)."
            )
        self._log_checkpoint_progress()

    def on_test_epoch_end(self) -> None:
        bpd = self.all_gather(torch.cat(self._test_bpd)).flatten()
        self._test_bpd = []
        self.log("test/bpd_uniform_stderr", bpd.std() / math.sqrt(len(bpd)))
        self._log_checkpoint_progress()

    def on_test_epoch_start(self) -> None:
        if isinstance(self.prior, DiscretePrior) and not self.prior.log_partition_is_exact:
            value, stderr = self.prior.estimate_log_partition()
            log.info("log Z_s = %.3f ± %.3f (AIS) for the test bits/dim", value.item(), stderr.item())
            self.log_dict({"test/log_z_s": value, "test/log_z_s_stderr": stderr})

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Per image: bits/dim (uniform-dequantization bound), the label and, for discrete priors, the
        exact posterior p(s_i = +1 | z) and the most likely code (ebmflow.prediction writes them)."""
        images, labels = batch
        out = {"bpd": self.bits_per_dim(self.log_likelihood(images, self.uniform)), "labels": labels}
        if isinstance(self.prior, DiscretePrior):
            p = self.encode(images)
            out |= {"probabilities": p.float(), "codes": torch.where(p > 0.5, 1, -1).to(torch.int8)}
        return out

    # ------------------------------------------------------------------------- sampling and codes
    def decode(self, z: Tensor) -> Tensor:
        """z: (n, N) -> uint8 images (n, C, H, W)."""
        y = self.flow.inverse(to_channels_last(z.reshape(-1, *self.flow.out_shape), self.channels_last))
        return (y * 256).floor().clamp(0, 255).to(torch.uint8)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        """n uint8 images drawn from the model."""
        return self.decode(self.prior.sample(n, temperature))

    @torch.no_grad()
    def sample_columns(self, columns: int, rows: int, temperature: float = 1.0) -> Tensor:
        """The paper's Fig. 3: (rows, columns, C, H, W); each column shares one discrete sample s, each
        row draws z ~ N(s, J̃⁻¹)."""
        if not isinstance(self.prior, DiscretePrior):
            raise TypeError(
                f"{type(self.prior).__name__} has no discrete latent: Fig. 3 needs RBMPrior or BernoulliPrior"
            )
        spins = self.prior.sample_discrete(columns)
        z = self.prior.sample_given(spins.repeat(rows, 1), temperature)
        return self.decode(z).reshape(rows, columns, *self.flow.in_shape)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """uint8 images -> p(s_i = +1 | z) (n, N), exact; z from the centre of each pixel's bin."""
        if not isinstance(self.prior, DiscretePrior):
            raise TypeError(f"{type(self.prior).__name__} has no discrete latent to encode into")
        z, _ = self.flow(to_channels_last((images.to(torch.float32) + 0.5) / 256, self.channels_last))
        return self.prior.posterior(z.flatten(1))

    # ---------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Every rank's random state and rank-local prior state (PCD chains), so a resumed run
        continues exactly."""
        state = random_state(self.device)
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            state = {key: self.all_gather(value.to(self.device)).cpu() for key, value in state.items()}
            local = {f"prior.{name}": buffer for name, buffer in self.prior.rank_local_state().items()}
            for key, buffer in local.items():
                checkpoint["state_dict"][key] = self.all_gather(buffer).cpu()
            checkpoint["ebmflow_rank_local"] = sorted(local)
        checkpoint["ebmflow_rng"] = state
        checkpoint["ebmflow_skipped_batches"] = self.skipped_batches
        checkpoint["ebmflow_wall_seconds"] = self.wall_seconds
        if self.prior_scheduler is not None:
            checkpoint["ebmflow_prior_lr_scheduler"] = self.prior_scheduler.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        rank = self.global_rank
        for key in checkpoint.get("ebmflow_rank_local", []):  # saved by several ranks: take this one's
            saved = checkpoint["state_dict"][key]
            checkpoint["state_dict"][key] = saved[rank % saved.shape[0]]
        saved = checkpoint.get("ebmflow_rng", {})  # (ranks, n) when saved by several ranks
        self._rng_to_restore = {
            key: rng[rank % rng.shape[0]] if rng.dim() == 2 else rng for key, rng in saved.items()
        }
        self.skipped_batches = checkpoint.get("ebmflow_skipped_batches", 0)
        self.wall_seconds = checkpoint.get("ebmflow_wall_seconds", 0.0)
        self._averaged_checkpoint = LIVE_PRIOR_KEY in checkpoint
        self._saved_prior_schedule = checkpoint.get("ebmflow_prior_lr_scheduler")
        self._checkpoint_progress = (checkpoint.get("epoch", 0), checkpoint.get("global_step", 0))

    def on_fit_end(self) -> None:
        self._checkpoint_progress = None

    def on_train_start(self) -> None:
        self._epoch_start = time.perf_counter()  # a resumed run may start mid-epoch
        # Restored here, after any sanity-check validation, which draws random numbers too.
        rng = getattr(self, "_rng_to_restore", None)
        if rng:
            set_random_state(rng, self.device)
            self._rng_to_restore = None
        saved, self._saved_prior_schedule = self._saved_prior_schedule, None
        if self.trainer.ckpt_path is not None:  # not a fit from loaded weights (load_from_checkpoint)
            self._resume_prior_schedule(saved)
        if self._averaged_checkpoint and not any(
            isinstance(callback, PriorAveraging) for callback in self.trainer.callbacks
        ):
            raise ValueError(
                f"{self.trainer.ckpt_path} was written with ebmflow.callbacks.PriorAveraging: its state_dict "
                "holds the averaged prior, not the one training left. Resume with the same callback "
                "(--trainer.callbacks+=ebmflow.callbacks.PriorAveraging), as the run's config.yaml has it."
            )
        if self.trainer.ckpt_path is not None:  # resumed: the interrupted run's later rows are superseded
            for logger in self.loggers:
                if isinstance(logger, CSVLogger):
                    logger.resume_at(self.global_step)


def random_state(device: torch.device) -> dict[str, Tensor]:
    """The random streams training draws from on ``device``: the CPU's and, on CUDA, that device's."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_random_state(state: dict[str, Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
