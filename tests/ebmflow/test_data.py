"""Data modules on real files: the bundled digits, an ImageFolder archive made here, and the shared
Fashion-MNIST when it is present."""

from pathlib import Path

import lightning as L
import pytest
import torch

from ebmflow.data import DigitsDataModule, ImageFolderDataModule, ResumableLoader, TorchvisionDataModule
from tests.ebmflow.helpers import tiny_model, write_image_archive

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def test_digits_map_17_grey_levels_onto_8_bits() -> None:
    data = DigitsDataModule(batch_size=16)
    data.setup("fit")
    data.setup("test")
    images = torch.stack([data.train_set[i][0] for i in range(len(data.train_set))])
    assert images.dtype == torch.uint8 and images.shape[1:] == (1, 8, 8)
    levels = sorted(torch.unique(images).tolist())
    assert levels == [round(v * 255 / 16) for v in range(17)]
    assert len(data.train_set) + len(data.val_set) + len(data.test_set) == 1797
    train_labels = {int(data.train_set[i][1]) for i in range(len(data.train_set))}
    assert train_labels == set(range(10))


def test_loader_resumes_mid_epoch_with_the_same_batches() -> None:
    dataset = torch.utils.data.TensorDataset(torch.arange(100))
    loader = ResumableLoader(dataset, batch_size=10, shuffle=True, seed=3)
    loader._epoch_sampler.set_epoch(2)
    full = [b[0].tolist() for b in loader]
    assert sorted(i for batch in full for i in batch) == list(range(100))
    loader.consumed = 4
    state = loader.state_dict()
    resumed = ResumableLoader(dataset, batch_size=10, shuffle=True, seed=3)
    resumed.load_state_dict(state)
    assert [b[0].tolist() for b in resumed] == full[4:]
    assert [b[0].tolist() for b in resumed] == full  # the skip applies once


@pytest.mark.parametrize("grayscale", [False, True])
def test_image_folder_archive(tmp_path: Path, grayscale: bool) -> None:
    archive = tmp_path / "pets.tar.gz"
    write_image_archive(archive)
    data = ImageFolderDataModule(
        str(archive), size=16, grayscale=grayscale, cache=str(tmp_path / "cache"), val_fraction=0
    )
    data.setup("fit")
    data.setup("test")
    image, label = data.test_set[4]
    assert image.dtype == torch.uint8 and tuple(image.shape) == data.shape == (
        (1 if grayscale else 3),
        16,
        16,
    )
    assert label == 1 and len(data.train_set) == 6 and len(data.test_set) == 6


def test_missing_data_names_the_fix(tmp_path: Path) -> None:
    data = TorchvisionDataModule("fashion_mnist", root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="download true"):
        data.setup("fit")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataModule(str(tmp_path / "nowhere")).setup("fit")


@pytest.mark.skipif(
    not (SHARED / "FashionMNIST" / "raw").is_dir(), reason="../shared/data is not beside the checkout"
)
def test_shared_fashion_mnist_loads() -> None:
    data = TorchvisionDataModule("fashion_mnist", root=str(SHARED), val_fraction=0.1)
    data.setup("fit")
    data.setup("test")
    image, label = data.test_set[0]
    assert image.dtype == torch.uint8 and image.shape == (1, 28, 28) and 0 <= label < 10
    assert len(data.train_set) + len(data.val_set) == 60_000 and len(data.test_set) == 10_000


def test_a_batch_larger_than_the_training_set_fails_before_training(tmp_path) -> None:
    """Full batches only (drop_last): a batch size above the training set would train on nothing."""
    data = DigitsDataModule(batch_size=5000)
    run = L.Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    with pytest.raises(ValueError, match=r"batch_size 5000 exceeds the 1,\d+ training images"):
        run.fit(tiny_model(), data)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        DigitsDataModule(batch_size=0)
