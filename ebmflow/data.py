"""Image data modules. Every module yields (uint8 image (C, H, W), label) pairs; the model dequantizes.

Training loaders are resumable mid-epoch: the shuffling order is a function of (seed, epoch) and the
loader's ``state_dict`` records how many batches of the epoch were consumed, so a run restored from a
mid-epoch checkpoint sees exactly the batches it would have seen (Lightning saves and restores the state
of loaders that implement ``state_dict`` / ``load_state_dict``). Random flips happen on the batch, at
the training step, so they draw from the random stream that checkpoints restore.
"""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, TensorDataset, random_split
from torchvision import datasets
from torchvision.datasets.folder import default_loader
from torchvision.transforms import v2

__all__ = [
    "DigitsDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "ResumableLoader",
    "TorchvisionDataModule",
]


class _EpochSampler(DistributedSampler):
    """DistributedSampler (so Lightning leaves it in place) that also runs outside a process group and
    can skip the first batches of an epoch once, after a mid-epoch restore: only if that epoch is the one
    Lightning then starts (a checkpoint saved at an epoch's last batch resumes with the next epoch)."""

    def __init__(self, dataset: Dataset, shuffle: bool, seed: int) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        super().__init__(
            dataset,
            num_replicas=dist.get_world_size() if distributed else 1,
            rank=dist.get_rank() if distributed else 0,
            shuffle=shuffle,
            seed=seed,
        )
        self.skip, self.skip_epoch = 0, 0

    def __iter__(self):
        indices = list(super().__iter__())
        skip, self.skip = (self.skip if self.epoch == self.skip_epoch else 0), 0
        return iter(indices[skip:])


class ResumableLoader(DataLoader):
    """A DataLoader whose position in the epoch is saved in checkpoints.

    ``consumed`` counts the batches of the current epoch that reached a training step; the data module
    advances it when it moves a training batch to the device, which is when the batch is used (the
    loader itself runs ahead: Lightning prefetches).
    """

    def __init__(
        self, dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0
    ) -> None:
        self._epoch_sampler = _EpochSampler(dataset, shuffle, seed)
        super().__init__(
            dataset,
            batch_size=batch_size,
            sampler=self._epoch_sampler,
            num_workers=num_workers,
            drop_last=shuffle,
            generator=torch.Generator(),
        )
        self.consumed = 0

    def __iter__(self):
        sampler = self._epoch_sampler
        self.consumed = sampler.skip // self.batch_size if sampler.epoch == sampler.skip_epoch else 0
        # An iterator draws its workers' base seed from its generator: one of its own, seeded by the
        # epoch, so that starting an epoch leaves the training random stream alone (exact resume).
        self.generator.manual_seed(sampler.seed * 100_003 + sampler.epoch)
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch_sampler.epoch, "batches": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._epoch_sampler.set_epoch(state["epoch"])
        self._epoch_sampler.skip = state["batches"] * self.batch_size
        self._epoch_sampler.skip_epoch = state["epoch"]


class ImageDataModule(L.LightningDataModule):
    """Base class: subclasses provide ``shape`` and the train/test datasets of (uint8 image, label).

    Args:
        batch_size: examples per batch (paper: 20).
        val_fraction: share of the training set held out for validation.
        hflip: flip training images horizontally at random.
        num_workers: DataLoader worker processes.
        seed: shuffling and train/validation split seed.
        predict_split: the split ``ebmflow predict`` scores ("train", "val" or "test").
    """

    shape: tuple[int, int, int]

    def __init__(
        self,
        batch_size: int = 20,
        val_fraction: float = 0.1,
        hflip: bool = False,
        num_workers: int = 0,
        seed: int = 0,
        predict_split: Literal["train", "val", "test"] = "test",
    ) -> None:
        super().__init__()
        if predict_split not in ("train", "val", "test"):
            raise ValueError(f'predict_split must be "train", "val" or "test", got {predict_split!r}')
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"--data.init_args.batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.hflip = hflip
        self.num_workers = num_workers
        self.seed = seed
        self.predict_split = predict_split

    def _train_set(self) -> Dataset:
        raise NotImplementedError

    def _test_set(self) -> Dataset:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and not hasattr(self, "train_set"):
            full = self._train_set()
            n_val = round(len(full) * self.val_fraction)
            generator = torch.Generator().manual_seed(self.seed)
            self.train_set, self.val_set = random_split(full, [len(full) - n_val, n_val], generator=generator)
        if stage in (None, "test") and not hasattr(self, "test_set"):
            self.test_set = self._test_set()

    def train_dataloader(self) -> ResumableLoader:
        if self.batch_size > len(self.train_set):  # training batches are full ones (drop_last)
            raise ValueError(
                f"batch_size {self.batch_size} exceeds the {len(self.train_set):,} training images, so no "
                "full batch could be drawn: lower --data.init_args.batch_size"
            )
        self._train_loader = ResumableLoader(
            self.train_set, self.batch_size, True, self.seed, self.num_workers
        )
        return self._train_loader

    def val_dataloader(self) -> DataLoader:
        return ResumableLoader(self.val_set, self.batch_size, False, self.seed, self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return ResumableLoader(self.test_set, self.batch_size, False, self.seed, self.num_workers)

    def predict_dataloader(self) -> DataLoader:
        # a plain loader: Lightning re-creates prediction loaders from their constructor arguments
        return DataLoader(
            self.split(self.predict_split), batch_size=self.batch_size, num_workers=self.num_workers
        )

    def split(self, name: str) -> Dataset:
        """The "train", "val" or "test" dataset."""
        if name == "test":
            self.setup("test")
            return self.test_set
        if name in ("train", "val"):
            self.setup("fit")
            return self.train_set if name == "train" else self.val_set
        raise ValueError(f'split must be "train", "val" or "test", got {name!r}')

    def on_after_batch_transfer(
        self, batch: tuple[Tensor, Tensor], dataloader_idx: int
    ) -> tuple[Tensor, Tensor]:
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        if training and hasattr(self, "_train_loader"):
            self._train_loader.consumed += 1
        if self.hflip and training:
            flip = torch.rand(images.shape[0], device=images.device) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        return images, labels


class DigitsDataModule(ImageDataModule):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, offline), shape (1, 8, 8).

    The digits have 17 grey levels 0..16; level v becomes the 8-bit value round(v · 255 / 16), so the
    range spans 0..255 and bits/dim are comparable to other 8-bit data. The last ``test_fraction`` of
    a fixed shuffle is the test split.
    """

    shape = (1, 8, 8)

    def __init__(self, test_fraction: float = 0.2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.test_fraction = test_fraction

    def _all(self) -> tuple[TensorDataset, int]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.from_numpy(np.round(digits.images * 255 / 16).astype(np.uint8))[:, None]
        labels = torch.from_numpy(digits.target)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(1234))
        n_test = round(len(images) * self.test_fraction)
        return TensorDataset(images[order], labels[order]), len(images) - n_test

    def _train_set(self) -> Dataset:
        full, n_train = self._all()
        return Subset(full, range(n_train))

    def _test_set(self) -> Dataset:
        full, n_train = self._all()
        return Subset(full, range(n_train, len(full)))


TORCHVISION = {
    "cifar10": (datasets.CIFAR10, (3, 32, 32)),
    "mnist": (datasets.MNIST, (1, 28, 28)),
    "fashion_mnist": (datasets.FashionMNIST, (1, 28, 28)),
}


class TorchvisionDataModule(ImageDataModule):
    """CIFAR-10, MNIST or Fashion-MNIST through torchvision.

    Args:
        name: "cifar10", "mnist" or "fashion_mnist".
        root: the folder torchvision reads (and, with ``download``, writes).
        download: fetch the files when they are absent.
    """

    def __init__(
        self,
        name: Literal["cifar10", "mnist", "fashion_mnist"] = "cifar10",
        root: str = "data",
        download: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if name not in TORCHVISION:
            raise ValueError(f"name must be one of {sorted(TORCHVISION)}, got {name!r}")
        self.name, self.root, self.download = name, root, download
        self.shape = TORCHVISION[name][1]

    def _load(self, train: bool) -> Dataset:
        cls = TORCHVISION[self.name][0]
        try:
            return cls(self.root, train=train, download=self.download, transform=v2.PILToTensor())
        except RuntimeError as error:
            raise FileNotFoundError(
                f"{self.name} is not under {Path(self.root).resolve()} ({error}). Point "
                "--data.init_args.root at a folder that holds it, or pass --data.init_args.download true "
                "where the network is reachable."
            ) from error

    def _train_set(self) -> Dataset:
        return self._load(True)

    def _test_set(self) -> Dataset:
        return self._load(False)


class ImageFolderDataModule(ImageDataModule):
    """Any folder of class sub-folders (torchvision ImageFolder) with ``train/`` and ``test/`` inside,
    or a ``.tar.gz`` archive of one (unpacked once next to ``cache``), resized and centre-cropped.

    Args:
        root: the folder, or the archive (e.g. ../shared/data/cifar10-jpeg.tar.gz).
        size: output height and width.
        grayscale: one channel instead of three.
        cache: where an archive is unpacked (default: beside it, or in ./data when that is read-only).
    """

    def __init__(
        self, root: str, size: int = 32, grayscale: bool = False, cache: str | None = None, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.root, self.size, self.grayscale, self.cache = root, size, grayscale, cache
        self.shape = (1 if grayscale else 3, size, size)

    def _folder(self) -> Path:
        root = Path(self.root)
        if not root.exists():
            raise FileNotFoundError(
                f"{root} does not exist: pass --data.init_args.root a folder or a .tar.gz archive"
            )
        if root.is_dir():
            return _single_child(root)
        target = Path(self.cache or "data") / root.name.removesuffix(".tar.gz")
        marker = target / ".unpacked"
        if not marker.exists():
            target.mkdir(parents=True, exist_ok=True)
            try:
                with tarfile.open(root) as archive:
                    archive.extractall(target, filter="data")
            except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
                raise ValueError(
                    f"{root} is not a readable .tar.gz archive ({error}): fetch it again, or point "
                    "--data.init_args.root at an unpacked image folder"
                ) from error
            marker.touch()
        return _single_child(target)

    def _load(self, split: str) -> Dataset:
        folder = self._folder() / split
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{folder} is missing: the image folder must hold train/ and test/ sub-folders"
            )
        steps = [v2.Resize(self.size), v2.CenterCrop(self.size)]
        if self.grayscale:
            steps.append(v2.Grayscale())
        steps.append(v2.PILToTensor())
        try:
            return datasets.ImageFolder(str(folder), transform=v2.Compose(steps), loader=_read_image)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{folder} holds no images in class sub-folders ({error})") from error

    def _train_set(self) -> Dataset:
        return self._load("train")

    def _test_set(self) -> Dataset:
        return self._load("test")


def _read_image(path: str):
    """torchvision's image loader, naming the file it cannot read (a truncated JPEG, say)."""
    try:
        return default_loader(path)
    except OSError as error:
        raise ValueError(f"{path} cannot be read as an image ({error}): remove or replace it") from error


def _single_child(folder: Path) -> Path:
    """An archive often wraps its content in one folder: step into it."""
    children = [c for c in folder.iterdir() if not c.name.startswith(".")]
    if len(children) == 1 and children[0].is_dir() and not (folder / "train").exists():
        return children[0]
    return folder
