"""Train the small classifier that ebmflow ships for FID/IS on digits, MNIST and Fashion-MNIST.

    python scripts/train_classifier.py digits
    python scripts/train_classifier.py fashion_mnist --root ../shared/data

Writes ebmflow/weights/<name>.pt (float16, tens of kB) and prints the test accuracy.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import DataLoader

from ebmflow.classifier import WEIGHTS, SmallClassifier
from ebmflow.data import DigitsDataModule, TorchvisionDataModule


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("name", choices=["digits", "mnist", "fashion_mnist"])
    parser.add_argument("--root", default="data")
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.name == "digits":
        data, epochs = DigitsDataModule(batch_size=64, val_fraction=0), args.epochs or 60
    else:
        data, epochs = (
            TorchvisionDataModule(args.name, root=args.root, batch_size=128, val_fraction=0),
            args.epochs or 4,
        )
    data.setup("fit")
    data.setup("test")
    model = SmallClassifier(1)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    loader = DataLoader(data.train_set, batch_size=data.batch_size, shuffle=True)
    for epoch in range(epochs):
        model.train()
        for images, labels in loader:
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(images), labels).backward()
            optimiser.step()
        print(f"epoch {epoch}: test accuracy {accuracy(model, data.test_set):.4f}")
    WEIGHTS.mkdir(exist_ok=True)
    path = WEIGHTS / f"{args.name}.pt"
    torch.save({k: v.half() for k, v in model.state_dict().items()}, path)
    print(f"wrote {path} ({path.stat().st_size} bytes), test accuracy {accuracy(model, data.test_set):.4f}")


@torch.no_grad()
def accuracy(model: SmallClassifier, dataset) -> float:
    model.eval()
    correct = total = 0
    for images, labels in DataLoader(dataset, batch_size=512):
        correct += (model(images).argmax(1) == labels).sum().item()
        total += len(labels)
    return correct / total


if __name__ == "__main__":
    main()
