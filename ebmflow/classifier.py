"""A small image classifier that stands in for the Inception network where its weights cannot be
downloaded: feature extractor for FID and class probabilities for IS on the digits, MNIST and
Fashion-MNIST. Weights ship in ``ebmflow/weights`` and are made by ``scripts/train_classifier.py``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["CLASSIFIER_SHAPES", "ClassifierFeatures", "ClassifierLogits", "SmallClassifier", "load_shipped"]

WEIGHTS = Path(__file__).parent / "weights"
# Input shapes; weights ship for "digits" (test accuracy 98.6 %) and "fashion_mnist" (83.3 %). MNIST's
# are made with `python scripts/train_classifier.py mnist --root <folder with MNIST>`.
CLASSIFIER_SHAPES = {"digits": (1, 8, 8), "fashion_mnist": (1, 28, 28), "mnist": (1, 28, 28)}


class SmallClassifier(nn.Module):
    """uint8 images (batch, C, H, W) -> 10 class logits; ``features`` gives the 64-d penultimate layer."""

    num_features = 64

    def __init__(self, channels: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(64, classes)

    def features(self, images: Tensor) -> Tensor:
        return self.body(images.float() / 127.5 - 1)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))


class ClassifierFeatures(nn.Module):
    """The classifier's features, in the form torchmetrics' FID takes as ``feature``."""

    def __init__(self, classifier: SmallClassifier) -> None:
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.num_features

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier.features(images)


class ClassifierLogits(nn.Module):
    """The classifier's logits, in the form torchmetrics' InceptionScore takes as ``feature``."""

    def __init__(self, classifier: SmallClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(images)


def load_shipped(name: str) -> SmallClassifier:
    """The classifier for "digits", "fashion_mnist" or "mnist" from ebmflow/weights, in eval mode."""
    if name not in CLASSIFIER_SHAPES:
        raise ValueError(f"no classifier for {name!r}; there are {sorted(CLASSIFIER_SHAPES)}")
    path = WEIGHTS / f"{name}.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: make it with `python scripts/train_classifier.py {name}`"
        )
    model = SmallClassifier(CLASSIFIER_SHAPES[name][0])
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval().requires_grad_(False)
