"""scripts/compare_samplers.py on tiny runs of the bundled digits: one scored row per sampler, and a
one-line refusal, before any weights are read, of what it cannot compare."""

from pathlib import Path

import pytest
import torch
import yaml

from ebmflow.callbacks import build_quality_metrics
from ebmflow.data import DigitsDataModule
from scripts.compare_samplers import main as compare_samplers
from tests.ebmflow.helpers import TINY, fit_run


def test_a_run_without_spins_is_refused_by_name(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = fit_run(tmp_path, {"class_path": "priors.GaussianPrior", "init_args": {"dim": 64}})
    assert (run / "config.yaml").is_file()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"not read")  # refused before the weights are read
    capsys.readouterr()

    with pytest.raises(SystemExit) as exit:
        compare_samplers([str(run)])
    assert exit.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "trained a GaussianPrior" in error and "priors.RBMPrior" in error


def test_a_missing_checkpoint_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(TINY))
    with pytest.raises(SystemExit) as exit:
        compare_samplers([str(tmp_path)])
    assert exit.value.code == 2
    assert f"{tmp_path / 'checkpoints' / 'last.ckpt'} not found" in capsys.readouterr().err


@pytest.mark.parametrize("external", [False, True])
def test_every_sampler_gets_a_row(tmp_path: Path, capsys: pytest.CaptureFixture, external: bool) -> None:
    """The script's whole path on a tiny RBM-Flow trained on the bundled digits: one scored row per
    sampler, and the persistent chains' row only where the training sampler keeps chains (an external
    sampler keeps none)."""
    sampler = (
        {"class_path": "tests.priors.external_sampler.EnumerationSampler", "init_args": {"chains": 8}}
        if external
        else TINY["model"]["prior"]["init_args"]["sampler"]
    )
    prior = {"class_path": "priors.RBMPrior", "init_args": {"dim": 64, "n_visible": 12, "sampler": sampler}}
    run = fit_run(tmp_path, prior)
    capsys.readouterr()

    compare_samplers([str(run), "--feature", "digits", "--samples", "20"])
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [line.split(": FID")[0] for line in lines if ": FID " in line]
    chains = [] if external else ["the persistent chains, 50 more sweeps"]
    assert rows == [
        "block Gibbs, 50 sweeps from fair coins",
        "block Gibbs, 1,000 sweeps from fair coins",
        *chains,
        "parallel tempering, 100 sweeps x 10 replicas",
        "the test images' codes, s ~ p(s | z)",
    ]
    assert any(line.startswith("persistent chains: mean -F") for line in lines) != external
    (swaps,) = [line for line in lines if line.startswith("  swap acceptance")]
    rates = [float(rate) for rate in swaps.split(":")[1].split()]
    assert len(rates) == 9 and all(0 <= rate <= 1 for rate in rates)  # one per neighbouring pair

    # under every scored row, each class's share of its samples and, in brackets, of the test images as
    # the shipped digits classifier predicts them (the digits are unnamed, so numbered)
    shares = [line for line in lines if line.startswith("  class shares")]
    assert len(shares) == len(rows)
    _, classifier = build_quality_metrics("digits")
    data = DigitsDataModule()
    data.setup("test")
    with torch.no_grad():
        predicted = torch.cat(
            [classifier.inception(images).argmax(1) for images, _ in data.test_dataloader()]
        )
    expected = torch.bincount(predicted, minlength=10) / len(predicted)
    scored = [line for line in lines if ": FID " in line]
    for row, line in zip(scored, shares, strict=True):
        pairs = [entry.split() for entry in line.split(": ", 1)[1].split(", ")]
        assert [name for name, _, _ in pairs] == [str(k) for k in range(10)]
        assert [float(real.strip("()")) for _, _, real in pairs] == [round(x, 3) for x in expected.tolist()]
        got = [float(share) for _, share, _ in pairs]
        assert sum(got) == pytest.approx(1, abs=10 * 0.0005)
        # the row's own shares: as many at 2 % or more as its coverage counts, its largest share the same
        assert f"classes ≥ 2 % {sum(share >= 0.02 for share in got)}," in row
        assert f"largest share {max(got):.2f}," in row
