"""The measurement callbacks inside real Trainer runs on the digits."""

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from ebmflow.callbacks import (
    CodeNMI,
    LogPartitionEstimate,
    SampleGrids,
    SampleQuality,
    build_quality_metrics,
)
from ebmflow.data import DigitsDataModule
from ebmflow.health import code_nmi
from ebmflow.loggers import CSVLogger, read_rows
from priors import BlockGibbs, GaussianPrior, RBMPrior
from tests.ebmflow.helpers import tiny_model, trainer


def test_code_nmi_is_one_for_class_codes_and_zero_for_random_ones() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 60)
    patterns = rng.random((10, 32)) < 0.5
    decided = np.where(patterns[labels], 0.95, 0.05) + rng.normal(0, 0.02, (600, 32))
    assert code_nmi(decided, labels) > 0.97
    assert code_nmi(rng.random((600, 32)), labels) < 0.1


def test_log_partition_callback_matches_exact_enumeration(tmp_path: Path) -> None:
    prior = RBMPrior(64, n_visible=52, sampler=BlockGibbs(3, 8), exact_max_units=0)  # n_h = 12: enumerable
    model = tiny_model(prior)
    callback = LogPartitionEstimate(steps=400, chains=400, test_batches=3, seed=5)
    run = trainer(tmp_path, max_epochs=2, limit_train_batches=5, callbacks=[callback])
    data = DigitsDataModule(batch_size=64)
    run.fit(model, data)
    assert not prior.log_partition_is_exact
    exact, _ = prior.estimate_log_partition(method="exact")
    logged, stderr = run.callback_metrics["ais/log_z_s"].item(), run.callback_metrics["ais/stderr"].item()
    assert abs(logged - exact.item()) <= max(3 * stderr, 1e-3) and abs(logged - exact.item()) < 0.1
    assert run.callback_metrics["ais/seconds"].item() > 0

    # The test bits/dim: the first 3 test batches, dequantized with the callback's seed, under the AIS
    # estimate (still in the prior's buffer); the exact log Z moves it by (exact - AIS) / (D ln 2).
    model.eval()
    prior.log_z_estimate.fill_(logged)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(5)
        batches = list(data.test_dataloader())[:3]
        bpd = [model.bits_per_dim(model.log_likelihood(x, model.uniform)) for x, _ in batches]
        expected = torch.cat(bpd).double().mean()
    assert sum(map(len, bpd)) == 3 * 64
    assert run.callback_metrics["ais/test_bpd"].item() == pytest.approx(expected.item(), abs=1e-5)


def test_measurements_are_written_and_leave_training_untouched(
    tmp_path: Path, device: torch.device, caplog: pytest.LogCaptureFixture
) -> None:
    """Built after seeding (as the CLI does) and run at every validation, two an epoch, the callbacks
    change no parameter; every validation keeps its grids, a later validate included, whose warnings
    name its checkpoint's step."""

    def fit(measure: bool, root: Path):
        L.seed_everything(0)
        callbacks = []
        if measure:
            callbacks = [
                SampleGrids(num_samples=16, columns=8),
                SampleQuality("digits", num_samples=50),
                CodeNMI(),
            ]
        model = tiny_model()
        run = trainer(
            root,
            accelerator=device.type,
            max_epochs=2,
            limit_train_batches=4,
            val_check_interval=2,
            callbacks=callbacks,
        )
        run.fit(model, DigitsDataModule(batch_size=64))
        return model

    with_grids = fit(True, tmp_path / "a")
    without = fit(False, tmp_path / "b")
    for a, b in zip(with_grids.state_dict().values(), without.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # A fresh validate from the step-8 checkpoint (as `ebmflow validate`): its step, a name of its own.
    (ckpt,) = (tmp_path / "a" / "checkpoints").glob("*.ckpt")
    callbacks = [SampleGrids(num_samples=16, columns=8), SampleQuality("digits", num_samples=50)]
    again = trainer(tmp_path / "a", accelerator=device.type, callbacks=callbacks)
    caplog.clear()
    again.validate(tiny_model(), DigitsDataModule(batch_size=64), ckpt_path=ckpt)
    assert "at step 8: the model has collapsed" in caplog.text
    folder = tmp_path / "a" / "samples"
    names = sorted(p.name for p in folder.glob("*.png"))
    steps = ["000002", "000004", "000006", "000008", "000008-2"]
    assert names == sorted(
        f"{kind}_step={step}.png" for kind in ("discrete_columns", "samples") for step in steps
    )
    assert Image.open(folder / "samples_step=000006.png").size == (8 * 10 + 2, 2 * 10 + 2)
    assert not [p for p in folder.iterdir() if p.suffix != ".png"]  # no temporary file left


def test_validate_after_fit_in_one_process_keeps_the_fits_step(tmp_path: Path) -> None:
    """trainer.validate(model) after trainer.fit (no checkpoint loaded since) reads the weights the fit
    left at its global step, even when the fit resumed from a checkpoint of an earlier step; its row is
    Lightning's own, at the steps trained, not at the checkpoint's."""
    run = trainer(tmp_path, max_steps=2, callbacks=[SampleGrids(num_samples=8, columns=4)])
    run.fit(tiny_model(), DigitsDataModule(batch_size=64))
    (ckpt,) = (tmp_path / "checkpoints").glob("*.ckpt")
    model = tiny_model()
    callbacks = [SampleGrids(num_samples=8, columns=4)]
    run = trainer(tmp_path, max_steps=4, callbacks=callbacks, logger=CSVLogger(str(tmp_path)))
    run.fit(model, DigitsDataModule(batch_size=64), ckpt_path=ckpt)
    run.validate(model, DigitsDataModule(batch_size=64))
    names = sorted(p.name for p in (tmp_path / "samples").glob("samples_*.png"))
    assert names == ["samples_step=000002.png", "samples_step=000004-2.png", "samples_step=000004.png"]
    rows = [row for row in read_rows(tmp_path / "metrics.csv") if row["val/bpd_uniform"]]
    assert [(float(row["epoch"]), float(row["step"])) for row in rows] == [(0, 3), (1, 4)]


def test_callbacks_skip_fast_dev_run_and_continuous_priors(tmp_path: Path) -> None:
    run = trainer(tmp_path, fast_dev_run=True, callbacks=[SampleGrids(), CodeNMI(), LogPartitionEstimate()])
    run.fit(tiny_model(), DigitsDataModule(batch_size=64))
    assert not (tmp_path / "samples").exists()
    assert "val/code_nmi" not in run.callback_metrics and "ais/log_z_s" not in run.callback_metrics
    run = trainer(tmp_path / "g", max_epochs=1, limit_train_batches=2, callbacks=[CodeNMI()])
    run.fit(tiny_model(GaussianPrior(64)), DigitsDataModule(batch_size=64))
    assert "val/code_nmi" not in run.callback_metrics


def test_code_nmi_callback_logs_a_score(tmp_path: Path) -> None:
    run = trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=3, callbacks=[CodeNMI()])
    run.fit(tiny_model(), DigitsDataModule(batch_size=64))
    nmi = run.callback_metrics["val/code_nmi"].item()
    assert math.isfinite(nmi) and 0 <= nmi <= 1


def digits_test_images() -> torch.Tensor:
    data = DigitsDataModule()
    data.setup("test")
    return torch.stack([data.test_set[i][0] for i in range(len(data.test_set))])


def test_fid_and_is_with_the_shipped_digits_classifier() -> None:
    images = digits_test_images()
    fid, inception_score = build_quality_metrics("digits")
    fid.update(images, real=True)
    fid.update(images, real=False)
    assert abs(fid.compute().item()) < 1e-3  # the test split against itself
    fid.reset()
    fid.update(torch.randint(0, 256, images.shape, dtype=torch.uint8), real=False)
    assert fid.compute().item() > 10  # against noise
    inception_score.update(images)
    score, _ = inception_score.compute()
    assert 8.5 < score.item() <= 10  # a 98.6 %-accurate classifier on ten balanced classes


def test_missing_inception_weights_fail_at_construction(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # no network, even where there is one
    with pytest.raises(RuntimeError, match="hub/checkpoints"):
        SampleQuality(feature="inception")


def test_sample_quality_callback_in_a_fit(tmp_path: Path) -> None:
    callback = SampleQuality(feature="digits", num_samples=100, batch_size=40)
    run = trainer(tmp_path, max_epochs=1, limit_train_batches=3, callbacks=[callback])
    run.fit(tiny_model(), DigitsDataModule(batch_size=64))
    fid, score = run.callback_metrics["val/fid"].item(), run.callback_metrics["val/is"].item()
    assert math.isfinite(fid) and fid > 0 and 1 <= score <= 10


def test_a_classifier_for_other_images_is_refused_before_training(tmp_path: Path) -> None:
    """cpu_small.yaml's fashion_mnist classifier composed onto 8x8 (or CIFAR-10) images would fail only
    at the first validation, after the first training steps."""
    model = tiny_model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    callback = SampleQuality(feature="fashion_mnist", num_samples=100)
    with pytest.raises(ValueError, match=r"\(1, 28, 28\).*\(1, 8, 8\).*'digits'"):
        trainer(tmp_path, max_steps=2, callbacks=[callback]).fit(model, DigitsDataModule(batch_size=64))
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
