"""Sample quality: FID and IS through torchmetrics (the Inception network or a shipped classifier),
and the class coverage of generated samples."""

from __future__ import annotations

import logging
from typing import Literal

import lightning as L
import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore

from ebmflow.callbacks.base import EveryNEpochs, fixed_noise
from ebmflow.classifier import CLASSIFIER_SHAPES, ClassifierFeatures, ClassifierLogits, load_shipped
from ebmflow.health import class_coverage

__all__ = ["SampleQuality", "build_quality_metrics"]

log = logging.getLogger(__name__)

INCEPTION_HELP = (
    "the Inception weights for FID/IS could not be loaded ({error}). They download on first use; on a "
    "machine without network, copy torch-fidelity's weights-inception-2015-12-05-6726825d.pth into "
    "$TORCH_HOME/hub/checkpoints (default ~/.cache/torch/hub/checkpoints), or use a feature network that "
    "ships with ebmflow: SampleQuality(feature=...) with one of {shipped}"
)


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


class SampleQuality(EveryNEpochs):
    """FID against the test split and Inception Score of ``num_samples`` generated images, after
    validation (``val/fid``, ``val/is``, ``val/is_std``), and their class coverage through the same
    classifier (``val/coverage_classes``: classes holding at least ``coverage_threshold`` of the samples;
    ``val/coverage_max_share``: the largest class's share; ``val/coverage_kl``: KL(samples ‖ test split)
    of the predicted-class histograms), with a warning in the log when the samples cover fewer classes
    than the data or one class holds over twice the data's largest share. The feature network is built
    with the callback, so a missing Inception download fails before training, as does a shipped
    classifier made for other images than the model's. Samples are drawn in batches on the module's
    device, split over ranks; torchmetrics synchronises the statistics.

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

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        shape, expected = tuple(pl_module.flow.in_shape), CLASSIFIER_SHAPES.get(self.feature)
        if expected is not None and shape != expected:  # else it fails only at the first validation
            fitting = sorted(name for name, size in CLASSIFIER_SHAPES.items() if size == shape)
            raise ValueError(
                f"SampleQuality(feature={self.feature!r}) classifies {expected} images but the model makes "
                f"{shape} ones: use feature={' or '.join(map(repr, [*fitting, 'inception']))}"
            )

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._due(trainer):
            return
        fid = self.fid.to(pl_module.device)
        inception_score = self.inception_score.to(pl_module.device)
        classify = inception_score.inception  # the logits IS scores: the same classes for coverage
        remaining = -(-self.num_samples // trainer.world_size)
        sample_classes = []
        with fixed_noise(
            self.seed + trainer.global_rank, pl_module.device
        ):  # loaders, samples and IS draw random numbers
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
                pl_module.trained_steps,
            )
        fid.reset()
        inception_score.reset()
