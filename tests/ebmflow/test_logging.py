"""W&B without an API key: an offline run that never prompts, with the metrics and the config."""

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.ebmflow.conftest import TINY

ROOT = Path(__file__).resolve().parents[2]


def test_wandb_runs_offline_without_a_key(tmp_path: Path) -> None:
    trainer = {
        **TINY["trainer"],
        "max_steps": -1,
        "max_epochs": 1,
        "limit_train_batches": 4,
        "log_every_n_steps": 1,
    }
    config = {**TINY, "trainer": {**trainer, "default_root_dir": str(tmp_path / "run")}}
    config["trainer"]["logger"] = {
        "class_path": "ebmflow.loggers.WandbLogger",
        "init_args": {
            "project": "ebmflow-test",
            "group": "ablation",
            "job_type": "fit",
            "tags": ["rbm"],
            "save_dir": str(tmp_path),
        },
    }
    path = tmp_path / "wandb.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), NETRC=str(tmp_path / "no-netrc"))
    result = subprocess.run(
        [sys.executable, "-m", "ebmflow", "fit", "--config", str(path)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    # The offline run's records (history, config, run settings) are in its transaction log, which
    # `wandb sync` uploads later.
    (records,) = run_dir.glob("run-*.wandb")
    data = records.read_bytes()
    for expected in (
        b"train/objective",
        b"val/bpd_uniform",
        b"priors.RBMPrior",
        b"ablation",
        b"ebmflow-test",
    ):
        assert expected in data, expected
