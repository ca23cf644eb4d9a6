"""scripts/prior_gain.py: the Gaussian it scores codes with, the split of a run's bits/dim into its terms
on a tiny run of the bundled digits, and the paired difference between runs."""

import math
import re
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from ebmflow.data import DigitsDataModule
from priors.ais import exact_log_partition
from scripts.compare_samplers import build, restore
from scripts.prior_gain import TERMS, codes, gaussian_log_prob, main, terms
from tests.ebmflow.helpers import TINY, fit_run


def test_the_gaussian_is_the_maximum_likelihood_fit_of_the_train_rows() -> None:
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(5, 5, generator=generator, dtype=torch.float64)
    train = torch.randn(400, 5, generator=generator, dtype=torch.float64) @ mixing + 3.0
    test = torch.randn(7, 5, generator=generator, dtype=torch.float64) @ mixing
    mean = train.mean(0)
    covariance = torch.cov(train.T, correction=0)  # maximum likelihood: divided by n, not n - 1
    expected = torch.distributions.MultivariateNormal(mean, covariance).log_prob(test)
    torch.testing.assert_close(gaussian_log_prob(train, test), expected, rtol=1e-12, atol=1e-10)


def test_the_terms_add_up_to_the_models_own_bits_per_dim(tmp_path: Path) -> None:
    """On a tiny RBM-Flow: total is what the model's ``log_likelihood`` gives the test images under the same
    noise, prior is −log p(z) of the codes, and total = (flow + Gaussian) − gain exactly."""
    run = fit_run(tmp_path, TINY["model"]["prior"])
    model, data = build(run)
    model = restore(model, run)
    values = terms(model, data, seed=3)

    torch.manual_seed(3)
    with torch.no_grad():
        expected = torch.cat(
            [
                model.bits_per_dim(model.log_likelihood(images, model.uniform))
                for images, _ in DataLoader(data.split("test"), batch_size=500)
            ]
        )
    torch.testing.assert_close(values["total"], expected.double(), rtol=0, atol=1e-5)
    test = codes(model, data, "test", seed=3)
    bits = model.dims * math.log(2)
    torch.testing.assert_close(values["prior"], -model.prior.log_prob(test.z.float()).double() / bits)
    torch.testing.assert_close(values["total"], values["prior"] + values["flow"], rtol=0, atol=1e-12)
    torch.testing.assert_close(
        values["total"], values["flow + Gaussian"] - values["gain"], rtol=0, atol=1e-12
    )
    # the Gaussian is fitted to the train split's codes (noise from seed + 1) and scores the test split's
    train = codes(model, data, "train", seed=4)
    torch.testing.assert_close(values["Gaussian"], -gaussian_log_prob(train.z, test.z) / bits, rtol=0, atol=0)
    assert len(train.z) == len(data.split("train")) != len(test.z)
    # the noise follows the seed, so the two splits' codes are not drawn with the same noise
    assert not torch.equal(codes(model, data, "test", seed=4).z, test.z)


def test_a_run_against_itself_differs_by_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The same noise for every run: a run compared with itself differs by exactly 0 in every term; a
    prior small enough to enumerate prints its exact log Z_s."""
    run = fit_run(tmp_path, TINY["model"]["prior"])
    capsys.readouterr()
    main([str(run), str(run)])
    lines = capsys.readouterr().out.strip().splitlines()
    model, data = build(run)
    spins = restore(model, run).prior.spin_model()
    exact = exact_log_partition(spins.weight, spins.bias_v, spins.bias_h).item()
    assert lines[0] == f"{run}: log Z_s {exact:.2f} ± 0.00"
    assert lines[1].startswith(f"{run} (bits/dim, {len(data.split('test'))} test images): total ")
    (difference,) = [line for line in lines if " - " in line]
    reported = re.findall(r"([\w +]+?) ([+-]\d\.\d{4}) ± (\d\.\d{4})", difference.split(": ", 1)[1])
    assert [name.strip(", ") for name, _, _ in reported] == list(TERMS)
    assert all(float(value) == 0 and float(stderr) == 0 for _, value, stderr in reported)


def test_a_missing_checkpoint_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(TINY))
    with pytest.raises(SystemExit) as exit:
        main([str(tmp_path)])
    assert exit.value.code == 2
    assert f"{tmp_path / 'checkpoints' / 'last.ckpt'} not found" in capsys.readouterr().err


def test_runs_on_different_test_splits_are_refused_before_any_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    runs = []
    for name, fraction in (("a", 0.2), ("b", 0.3)):
        run = tmp_path / name
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "last.ckpt").write_bytes(b"not read")  # refused before the weights are read
        data = {**TINY["data"], "init_args": {**TINY["data"]["init_args"], "test_fraction": fraction}}
        (run / "config.yaml").write_text(yaml.safe_dump({**TINY, "data": data}))
        runs.append(str(run))
    with pytest.raises(SystemExit) as exit:
        main(runs)
    assert exit.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    sizes = [len(DigitsDataModule(test_fraction=fraction).split("test")) for fraction in (0.2, 0.3)]
    assert (
        f"the runs' test splits differ (64 dims x {sizes[0]} test images, 64 dims x {sizes[1]} test " in error
    )


@pytest.mark.parametrize("option", ["--ais-steps", "--ais-chains"])
def test_an_empty_ais_schedule_is_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture, option: str
) -> None:
    with pytest.raises(SystemExit) as exit:
        main([str(tmp_path), option, "0"])
    assert exit.value.code == 2
    assert "--ais-steps and --ais-chains must be >= 1" in capsys.readouterr().err
