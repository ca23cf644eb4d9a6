"""Callbacks that measure what the paper claims: a fresh log Z for the reported likelihood, sample
quality (FID, IS), samples (and the Fig. 3 grid) to look at, and how much class information the
discrete codes carry.

Each is configured like any Lightning callback (``--trainer.callbacks+=ebmflow.callbacks.SampleGrids``),
works under DDP (the work runs on rank 0; log Z is broadcast) and does nothing in ``fast_dev_run``
unless ``in_fast_dev_run`` is set.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchvision.utils import make_grid, save_image

from ebmflow.classifier import CLASSIFIER_SHAPES, ClassifierFeatures, ClassifierLogits, load_shipped
from ebmflow.health import class_coverage, integrated_autocorrelation_time
from priors import DiscretePrior, RBMPrior
from priors.samplers import ParallelTempering, Sampler, gibbs

__all__ = [
    "ChainHealth",
    "CodeNMI",
    "LogPartitionEstimate",
    "SampleGrids",
    "SampleQuality",
    "build_quality_metrics",
    "code_nmi",
]

log = logging.getLogger(__name__)
SLOW_MIXING = 10  # warn when the energy's autocorrelation time exceeds a tenth of the recorded sweeps

INCEPTION_HELP = (
    "the Inception weights for FID/IS could not be loaded ({error}). They download on first use; on a "
    "machine without network, copy torch-fidelity's weights-inception-2015-12-05-6726825d.pth into "
    "$TORCH_HOME/hub/checkpoints (default ~/.cache/torch/hub/checkpoints), or use a feature network that "
    "ships with ebmflow: SampleQuality(feature=...) with one of {shipped}"
)


class _EveryNEpochs(L.Callback):
    def __init__(self, every_n_epochs: int, in_fast_dev_run: bool) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.in_fast_dev_run = in_fast_dev_run

    def _due(self, trainer: L.Trainer) -> bool:
        if trainer.sanity_checking or (trainer.fast_dev_run and not self.in_fast_dev_run):
            return False
        return trainer.current_epoch % self.every_n_epochs == 0


class LogPartitionEstimate(_EveryNEpochs):
    """AIS estimate of log Z_s before validation, for priors whose log Z is not exact, so the
    validation bits/dim use a current normaliser, and the test split's bits/dim with that estimate
    (the per-epoch likelihood of the paper's Fig. 1). Logs ``ais/log_z_s``, ``ais/stderr``,
    ``ais/seconds`` (the AIS cost) and ``ais/test_bpd`` (uniform dequantization, noise from ``seed``).

    Args:
        steps: AIS temperatures (linear in β).
        chains: AIS chains.
        test_batches: test batches for ``ais/test_bpd``; None for the whole split, 0 to skip it.
        seed: seed of the dequantization noise (the training random stream is left untouched).
        every_n_epochs: run on epochs 0, N, 2N, ...
        in_fast_dev_run: also run under ``fast_dev_run``.
    """

    def __init__(
        self,
        steps: int = 1000,
        chains: int = 100,
        test_batches: int | None = None,
        seed: int = 0,
        every_n_epochs: int = 1,
        in_fast_dev_run: bool = False,
    ) -> None:
        super().__init__(every_n_epochs, in_fast_dev_run)
        if test_batches is not None and test_batches < 0:
            raise ValueError(f"test_batches must be None (all), 0 (skip) or positive, got {test_batches}")
        self.steps, self.chains, self.test_batches, self.seed = steps, chains, test_batches, seed

    def test_bits_per_dim(self, trainer: L.Trainer, pl_module: L.LightningModule) -> torch.Tensor:
        """Mean uniform-dequantization bits/dim over the first ``test_batches`` test batches."""
        trainer.datamodule.setup("test")
        total, count = torch.zeros((), dtype=torch.float64, device=pl_module.device), 0
        with _fixed_noise(self.seed):
            for index, (images, _) in enumerate(trainer.datamodule.test_dataloader()):
                if index == self.test_batches:
                    break
                log_p = pl_module.log_likelihood(images.to(pl_module.device), pl_module.uniform)
                total += pl_module.bits_per_dim(log_p).sum()
                count += len(images)
        return total / count

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        prior = pl_module.prior
        if not self._due(trainer) or not isinstance(prior, DiscretePrior) or prior.log_partition_is_exact:
            return
        values = torch.full((4,), float("nan"), device=pl_module.device)
        if trainer.is_global_zero:
            start = time.perf_counter()
            value, stderr = prior.estimate_log_partition(method="ais", steps=self.steps, chains=self.chains)
            values[:3] = torch.stack([value, stderr, value.new_tensor(time.perf_counter() - start)])
            if self.test_batches != 0:
                values[3] = self.test_bits_per_dim(trainer, pl_module)
        values = trainer.strategy.broadcast(values, src=0)
        prior.set_log_partition(values[0], values[1])
        metrics = {"ais/log_z_s": values[0], "ais/stderr": values[1], "ais/seconds": values[2]}
        if self.test_batches != 0:
            metrics["ais/test_bpd"] = values[3]
        pl_module.log_dict(metrics)


@contextmanager
def _fixed_noise(seed: int) -> Iterator[None]:
    """Draw samples from a fixed seed without moving the training random stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_quality_metrics(feature: str) -> tuple[FrechetInceptionDistance, InceptionScore]:
    """FID and IS on ``feature`` = "inception" or a shipped classifier ("digits", "mnist",
    "fashion_mnist"); fails at once, with what to do, when the Inception weights cannot be had."""
    if feature == "inception":
        try:
            return FrechetInceptionDistance(feature=2048, reset_real_features=False), InceptionScore()
        except Exception as error:  # torch-fidelity raises URLError, HTTPError, OSError, ... offline
            raise RuntimeError(
                INCEPTION_HELP.format(error=error, shipped=sorted(CLASSIFIER_SHAPES))
            ) from error
    if feature not in CLASSIFIER_SHAPES:
        raise ValueError(
            f'feature must be "inception" or one of {sorted(CLASSIFIER_SHAPES)}, got {feature!r}'
        )
    classifier = load_shipped(feature)
    fid = FrechetInceptionDistance(
        feature=ClassifierFeatures(classifier),
        input_img_size=CLASSIFIER_SHAPES[feature],
        reset_real_features=False,
    )
    return fid, InceptionScore(feature=ClassifierLogits(classifier))


class SampleQuality(_EveryNEpochs):
    """FID against the test split and Inception Score of ``num_samples`` generated images, after
    validation (``val/fid``, ``val/is``, ``val/is_std``), and their class coverage through the same
    classifier (``val/coverage_classes``: classes holding at least ``coverage_threshold`` of the samples;
    ``val/coverage_max_share``: the largest class's share; ``val/coverage_kl``: KL(samples ‖ test split)
    of the predicted-class histograms), with a warning in the log when the samples cover fewer classes
    than the data or one class holds over twice the data's largest share. The feature network is built
    with the callback, so a missing Inception download fails before training. Samples are drawn in
    batches on the module's device, split over ranks; torchmetrics synchronises the statistics.

    Args:
        feature: "inception" (RGB data; weights download on first use) or "digits", "mnist",
            "fashion_mnist" (classifiers shipped with ebmflow; see ebmflow/weights).
        num_samples: generated images per evaluation (paper: 10,000).
        batch_size: images generated at a time.
        temperature: sampling temperature.
        coverage_threshold: the share of samples a class must hold to count as covered.
        every_n_epochs, in_fast_dev_run: as for the other callbacks.
    """

    def __init__(
        self,
        feature: Literal["inception", "digits", "mnist", "fashion_mnist"] = "inception",
        num_samples: int = 10_000,
        batch_size: int = 500,
        temperature: float = 1.0,
        coverage_threshold: float = 0.02,
        seed: int = 0,
        every_n_epochs: int = 1,
        in_fast_dev_run: bool = False,
    ) -> None:
        super().__init__(every_n_epochs, in_fast_dev_run)
        self.feature, self.num_samples, self.batch_size = feature, num_samples, batch_size
        self.temperature, self.seed = temperature, seed
        with torch.random.fork_rng(devices=[]):  # building InceptionScore draws a dummy image
            self.fid, self.inception_score = build_quality_metrics(feature)
        self.coverage_threshold = coverage_threshold
        self._data_classes: torch.Tensor | None = None  # the test split's classes, found once

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        return (
            images.expand(-1, 3, -1, -1) if self.feature == "inception" and images.shape[1] == 1 else images
        )

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._due(trainer):
            return
        fid = self.fid.to(pl_module.device)
        inception_score = self.inception_score.to(pl_module.device)
        classify = inception_score.inception  # the logits IS scores: the same classes for coverage
        remaining = -(-self.num_samples // trainer.world_size)
        sample_classes = []
        with _fixed_noise(self.seed + trainer.global_rank):  # loaders, samples and IS draw random numbers
            if self._data_classes is None:
                trainer.datamodule.setup("test")
                data_classes = []
                for images, _ in trainer.datamodule.test_dataloader():
                    images = self._prepare(images.to(pl_module.device))
                    fid.update(images, real=True)
                    data_classes.append(classify(images).argmax(1))
                self._data_classes = torch.cat(data_classes)
            while remaining > 0:
                images = self._prepare(pl_module.sample(min(self.batch_size, remaining), self.temperature))
                fid.update(images, real=False)
                inception_score.update(images)
                sample_classes.append(classify(images).argmax(1))
                remaining -= len(images)
            score, spread = inception_score.compute()  # draws a random split of the samples
        samples = trainer.strategy.all_gather(torch.cat(sample_classes)).flatten()
        num_classes = classify(images[:1]).shape[1]
        coverage = class_coverage(samples, self._data_classes, num_classes, self.coverage_threshold)
        metrics = {"val/fid": fid.compute(), "val/is": score, "val/is_std": spread}
        metrics |= {f"val/coverage_{name}": torch.tensor(value) for name, value in coverage.items()}
        pl_module.log_dict(metrics)
        data = class_coverage(self._data_classes, self._data_classes, num_classes, self.coverage_threshold)
        if coverage["classes"] < data["classes"] or coverage["max_share"] > 2 * data["max_share"]:
            log.warning(
                "samples cover %d of the %d classes the data covers (at least %.0f%% each), the largest "
                "holding %.0f%% (data: %.0f%%), at step %d: the model has collapsed onto few modes. For "
                "RBM-Flow see health/chain_lag (ebmflow.callbacks.ChainHealth).",
                coverage["classes"],
                data["classes"],
                100 * self.coverage_threshold,
                100 * coverage["max_share"],
                100 * data["max_share"],
                trainer.global_step,
            )
        fid.reset()
        inception_score.reset()


class SampleGrids(_EveryNEpochs):
    """A grid of samples and, for discrete priors, the paper's Fig. 3 grid (each column one discrete s)
    after validation: W&B images when the logger is W&B, otherwise PNG files in ``<log_dir>/samples``.
    The noise is the same every epoch (fixed seed, the training random stream is left untouched), so
    successive grids show the model changing, not the draw.
    """

    def __init__(
        self,
        num_samples: int = 64,
        columns: int = 8,
        temperature: float = 1.0,
        seed: int = 0,
        every_n_epochs: int = 1,
        in_fast_dev_run: bool = False,
    ) -> None:
        super().__init__(every_n_epochs, in_fast_dev_run)
        self.num_samples, self.columns, self.temperature, self.seed = num_samples, columns, temperature, seed

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._due(trainer):
            return
        to_wandb = isinstance(trainer.logger, WandbLogger)
        # trainer.log_dir broadcasts under DDP: every rank asks, rank 0 alone draws and writes.
        folder = None if to_wandb else Path(trainer.log_dir or trainer.default_root_dir) / "samples"
        if not trainer.is_global_zero:
            return
        with _fixed_noise(self.seed):
            grids = {"samples": pl_module.sample(self.num_samples, self.temperature)}
            if isinstance(pl_module.prior, DiscretePrior):
                rows = max(self.num_samples // self.columns, 1)
                columns = pl_module.sample_columns(self.columns, rows, self.temperature)
                grids["discrete_columns"] = columns.flatten(0, 1)
        for name, images in grids.items():
            grid = make_grid(images.float().cpu() / 255, nrow=self.columns)
            if to_wandb:
                trainer.logger.log_image(key=name, images=[grid], step=trainer.global_step)
            else:
                folder.mkdir(parents=True, exist_ok=True)
                save_image(grid, folder / f"{name}_epoch={trainer.current_epoch:04d}.png")


def code_nmi(
    probabilities: np.ndarray, labels: np.ndarray, clusters: int | None = None, seed: int = 0
) -> float:
    """Normalised mutual information between labels and the discrete codes.

    The N-bit codes are reduced by k-means on the posterior probabilities p(s | z) with as many clusters
    as classes (by default): a code that determines the class gives NMI ≈ 1, one independent of it ≈ 0.
    Clustering p(s | z) rather than picking bits uses every bit, weighs each by how decided it is, and
    is the same for every prior, so D-Flow and RBM-Flow are compared on equal terms.
    """
    clusters = clusters or len(np.unique(labels))
    assignment = KMeans(clusters, n_init=4, random_state=seed).fit_predict(
        np.asarray(probabilities, dtype=np.float64)
    )
    return float(normalized_mutual_info_score(labels, assignment))


class CodeNMI(_EveryNEpochs):
    """NMI between the validation labels and the discrete codes of a discrete prior (``val/code_nmi``).

    Args:
        max_examples: encode at most this many validation images.
        every_n_epochs, in_fast_dev_run: as for the other callbacks.
    """

    def __init__(
        self, max_examples: int = 2000, every_n_epochs: int = 1, in_fast_dev_run: bool = False
    ) -> None:
        super().__init__(every_n_epochs, in_fast_dev_run)
        self.max_examples = max_examples

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._probabilities, self._labels = [], []

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if not self._due(trainer) or not isinstance(pl_module.prior, DiscretePrior):
            return
        if sum(len(p) for p in self._probabilities) < self.max_examples:
            self._probabilities.append(pl_module.encode(batch[0]).cpu())
            self._labels.append(batch[1].cpu())

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._probabilities:
            return
        probabilities = trainer.strategy.all_gather(torch.cat(self._probabilities)).reshape(
            -1, pl_module.prior.dim
        )
        labels = trainer.strategy.all_gather(torch.cat(self._labels)).reshape(-1).cpu()
        nmi = code_nmi(probabilities.numpy(), labels.numpy()) if trainer.is_global_zero else 0.0
        pl_module.log("val/code_nmi", float(trainer.strategy.broadcast(nmi, src=0)))


class ChainHealth(_EveryNEpochs):
    """Whether PCD's persistent chains follow the RBM (docs/maths.md §8), after every validation:

    - ``health/chain_logp``, ``health/fresh_logp``, ``health/data_logp``: mean −F(s_v) (log p̃ with the
      hidden units summed out) of the persistent chains, of fresh samples from a long independent run
      (``reference``, from fair coins), and of the data's codes (visible part of argmax p(s|z) of the
      validation images);
    - ``health/chain_lag`` = chains − fresh, the number to watch (near 0 when healthy; strongly negative
      when the model's modes have run away from the chains), and ``health/data_gap`` = data − fresh;
    - ``health/flip_rate`` (fraction of visible spins that flip per block-Gibbs sweep) and
      ``health/energy_iat`` (integrated autocorrelation time of −F along ``mixing_sweeps`` sweeps from
      the chains, in sweeps), and the sampler's own figures (``health/swap_acceptance_k_k+1`` for
      parallel tempering).

    A warning in the log says what to change when the chains lag by more than ``lag_tolerance`` nats
    (and three standard errors), when the chains barely mix, or when a tempering swap rate is under
    ``min_swap_acceptance``. The training random stream and the chains are left untouched. Under DDP
    each rank measures its own chains and the values are averaged.

    Args:
        reference: the long independent run (default: parallel tempering, 200 sweeps of 10 replicas
            from fair coins, β down to 0.1).
        reference_samples: independent chains of that run.
        mixing_sweeps: sweeps recorded for the flip rate and autocorrelation time.
        max_examples: validation images whose codes are scored.
        lag_tolerance: chain lag (nats of log p̃) beyond which the log warns.
        min_swap_acceptance: tempering swap rate under which the log warns.
        seed, every_n_epochs, in_fast_dev_run: as for the other callbacks.
    """

    def __init__(
        self,
        reference: Sampler | None = None,
        reference_samples: int = 100,
        mixing_sweeps: int = 200,
        max_examples: int = 1000,
        lag_tolerance: float = 5.0,
        min_swap_acceptance: float = 0.1,
        seed: int = 0,
        every_n_epochs: int = 1,
        in_fast_dev_run: bool = False,
    ) -> None:
        super().__init__(every_n_epochs, in_fast_dev_run)
        if mixing_sweeps < 4:
            raise ValueError(
                f"mixing_sweeps must be >= 4 to estimate an autocorrelation, got {mixing_sweeps}"
            )
        # Block Gibbs from fair coins does not reach a trained RBM's modes even in 1,000 sweeps (README,
        # Fashion-MNIST): tempering does, so it is the reference the chains are compared with.
        self.reference = reference if reference is not None else ParallelTempering(steps=200, replicas=10)
        self.reference_samples = reference_samples
        self.mixing_sweeps, self.max_examples = mixing_sweeps, max_examples
        self.lag_tolerance, self.min_swap_acceptance, self.seed = lag_tolerance, min_swap_acceptance, seed
        self._codes: list[torch.Tensor] = []

    def _applies(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        return self._due(trainer) and isinstance(pl_module.prior, RBMPrior)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._codes = []

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if self._applies(trainer, pl_module) and sum(map(len, self._codes)) < self.max_examples:
            visible = pl_module.encode(batch[0])[:, : pl_module.prior.n_visible]
            self._codes.append(torch.where(visible > 0.5, 1.0, -1.0))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._applies(trainer, pl_module):
            return
        prior: RBMPrior = pl_module.prior
        model = prior.spin_model()
        with torch.no_grad(), _fixed_noise(self.seed + trainer.global_rank):
            fresh = self.reference.to(model.weight.device).sample(model, self.reference_samples)
            chains = prior.sampler.persistent_states()
            start = chains if chains is not None else fresh
            flips, trace = self._mixing(model, start.to(model.weight.dtype))
        fresh_logp = model.neg_free_energy(fresh)
        metrics = {"health/fresh_logp": fresh_logp.mean(), "health/flip_rate": flips}
        metrics["health/energy_iat"] = torch.tensor(integrated_autocorrelation_time(trace.T))
        if chains is not None:
            chain_logp = model.neg_free_energy(chains)
            lag = chain_logp.mean() - fresh_logp.mean()
            metrics |= {"health/chain_logp": chain_logp.mean(), "health/chain_lag": lag}
            stderr = (chain_logp.var() / len(chain_logp) + fresh_logp.var() / len(fresh_logp)).sqrt()
            if lag < -max(self.lag_tolerance, 3 * float(stderr)):
                log.warning(
                    "RBM health: the persistent chains lag the model by %.1f nats of log p̃ (± %.1f) at step "
                    "%d: the RBM moves faster than its chains follow, and its samples will collapse onto few "
                    "classes. Lower the prior's learning rate (--model.prior_lr, or --model.prior_optimizer "
                    "torch.optim.SGD), or mix better: more chains or sweeps, or "
                    "--model.prior.sampler priors.ParallelTempering.",
                    -float(lag),
                    float(stderr),
                    trainer.global_step,
                )
        if self._codes:
            data_logp = model.neg_free_energy(torch.cat(self._codes).to(model.weight.dtype)).mean()
            metrics |= {"health/data_logp": data_logp, "health/data_gap": data_logp - fresh_logp.mean()}
        if metrics["health/energy_iat"] * SLOW_MIXING > self.mixing_sweeps:
            log.warning(
                "RBM health: the chains' energy stays correlated over %.0f of %d sweeps: the sampler barely "
                "mixes. Use more sweeps per step or --model.prior.sampler priors.ParallelTempering.",
                float(metrics["health/energy_iat"]),
                self.mixing_sweeps,
            )
        for name, value in prior.sampler.statistics().items():
            metrics[f"health/{name}"] = value
            if name.startswith("swap_acceptance") and value < self.min_swap_acceptance:
                log.warning(
                    "RBM health: tempering swaps %s are accepted %.1f%% of the time: add replicas, raise "
                    "min_beta, or set adaptive: true.",
                    name.removeprefix("swap_acceptance_"),
                    100 * float(value),
                )
        pl_module.log_dict(
            {k: torch.as_tensor(v, dtype=torch.float32) for k, v in metrics.items()}, sync_dist=True
        )

    def _mixing(self, model, start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Block Gibbs from a copy of ``start``: mean fraction of visible spins flipped per sweep and the
        trace of −F, (sweeps, chains)."""
        s_v, flipped, trace = start.clone(), [], []
        for _ in range(self.mixing_sweeps):
            new = gibbs(model, s_v, 1)
            flipped.append((new != s_v).float().mean())
            trace.append(model.neg_free_energy(new))
            s_v = new
        return torch.stack(flipped).mean(), torch.stack(trace)
