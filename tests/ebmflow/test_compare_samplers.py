"""scripts/compare_samplers.py refuses, in one line and before reading weights, what it cannot compare."""

from pathlib import Path

import pytest
import yaml

from ebmflow.command import main as ebmflow
from scripts.compare_samplers import main as compare_samplers
from tests.ebmflow.helpers import TINY


def test_a_run_without_spins_is_refused_by_name(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    last = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"filename": "last"}}
    config = {
        **TINY,
        "trainer": {**TINY["trainer"], "default_root_dir": str(run), "callbacks": [last]},
        "model": {**TINY["model"], "prior": {"class_path": "priors.GaussianPrior", "init_args": {"dim": 64}}},
    }
    (path := tmp_path / "gaussian.yaml").write_text(yaml.safe_dump(config))
    ebmflow(["fit", "--config", str(path)])
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
