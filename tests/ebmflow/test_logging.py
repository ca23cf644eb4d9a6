"""Logging: the CSV log of a run directory survives `ebmflow test` in that directory, and W&B without
an API key is an offline run that never prompts, with the metrics and the config."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ebmflow.cli import make_cli
from ebmflow.command import main
from ebmflow.loggers import CSVLogger, WandbLogger
from ebmflow.report import read_run
from tests.ebmflow.helpers import TINY

ROOT = Path(__file__).resolve().parents[2]


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_csv_log_continues_through_test(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "run"
    trainer = {**TINY["trainer"], "default_root_dir": str(run_dir), "log_every_n_steps": 1}
    trainer["logger"] = {
        "class_path": "ebmflow.loggers.CSVLogger",
        "init_args": {"save_dir": str(run_dir)},
    }
    config = tmp_path / "csv.yaml"
    config.write_text(yaml.safe_dump({**TINY, "trainer": trainer}))
    main(["fit", "--config", str(config)])
    metrics = run_dir / "metrics.csv"
    trained = read_rows(metrics)
    assert sum(bool(row["train/objective"]) for row in trained) == 4

    (ckpt,) = (run_dir / "checkpoints").glob("*.ckpt")
    main(["test", "--config", str(config), "--ckpt_path", str(ckpt)])
    rows = read_rows(metrics)
    # Every training row is kept, value for value; the test row adds its columns.
    assert [{k: row[k] for k in trained[0]} for row in rows[: len(trained)]] == trained
    (tested,) = rows[len(trained) :]
    assert float(tested["test/bpd_uniform"]) > 0 and float(tested["test/bpd_uniform_stderr"]) > 0
    row = read_run(run_dir)["row"]
    assert row["bits/dim"] == float(tested["test/bpd_uniform"])
    assert row["epochs"] == 1 and row["steps"] == 4  # the optimiser steps trained (rows at steps 0…3)
    # hparams.yaml, rewritten by the test run, still holds the parameter count
    assert row["parameters"] == sum(
        p.numel() for p in make_cli(["--config", str(config)], run=False).model.parameters()
    )

    # A fresh fit into the same directory stops before touching the log; resuming continues it.
    log = metrics.read_text()
    with pytest.raises(SystemExit) as stopped:
        main(["fit", "--config", str(config)])
    assert stopped.value.code == 2 and "earlier run's log" in capsys.readouterr().err
    assert metrics.read_text() == log
    main(["fit", "--config", str(config), "--trainer.max_steps", "6", "--ckpt_path", str(ckpt)])
    assert read_rows(metrics)[: len(rows)] == rows
    assert sum(bool(row["train/objective"]) for row in read_rows(metrics)) == 6
    assert read_run(run_dir)["row"]["steps"] == 6


def test_validate_and_test_log_at_their_checkpoints_step(tmp_path: Path) -> None:
    """`ebmflow validate` and `test` of a checkpoint put their rows at its step, where fit's validation of
    the same weights put its row, not at step 0, epoch 0 (Lightning restores the step in fit only); the
    report counts the validated run's steps from them. (Their warnings: test_callbacks.)"""
    logger = {"class_path": "ebmflow.loggers.CSVLogger"}
    config = tmp_path / "csv.yaml"
    config.write_text(yaml.safe_dump({**TINY, "trainer": {**TINY["trainer"], "logger": logger}}))
    main(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path / "run")])
    (fitted,) = [row for row in read_rows(tmp_path / "run" / "metrics.csv") if row["val/bpd_uniform"]]
    assert (fitted["epoch"], fitted["step"]) == ("0", "3")  # the validation after 4 steps
    (ckpt,) = (tmp_path / "run" / "checkpoints").glob("*.ckpt")
    for command in ("validate", "test"):
        where = ["--trainer.default_root_dir", str(tmp_path / command)]
        main([command, "--config", str(config), "--ckpt_path", str(ckpt), *where])
        (row,) = read_rows(tmp_path / command / "metrics.csv")
        assert (float(row["epoch"]), float(row["step"])) == (0, 3)
        assert read_run(tmp_path / command)["row"]["steps"] == (4 if command == "validate" else 0)
    (validated,) = read_rows(tmp_path / "validate" / "metrics.csv")
    assert validated["val/bpd_uniform"] == fitted["val/bpd_uniform"]  # the same weights, the same noise


def test_run_directory_guards_see_a_csv_log_behind_another_logger(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """With the CSV log second among the loggers (after W&B, say), a fresh fit into its directory still
    stops before touching the log, another run's checkpoint is still refused, and hparams.yaml still
    gets the parameter count the report shows."""
    run_dir = tmp_path / "run"
    other = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(run_dir), "name": "lightning"},
    }
    loggers = [other, {"class_path": "ebmflow.loggers.CSVLogger"}]
    config = tmp_path / "two.yaml"
    trainer = {**TINY["trainer"], "logger": loggers, "default_root_dir": str(run_dir)}
    config.write_text(yaml.safe_dump({**TINY, "trainer": trainer}))
    main(["fit", "--config", str(config)])
    assert read_run(run_dir)["row"]["parameters"] == sum(
        p.numel() for p in make_cli(["--config", str(config)], run=False).model.parameters()
    )
    log = (run_dir / "metrics.csv").read_text()
    with pytest.raises(SystemExit) as stopped:
        main(["fit", "--config", str(config)])
    assert stopped.value.code == 2 and "earlier run's log" in capsys.readouterr().err
    assert (run_dir / "metrics.csv").read_text() == log
    (ckpt,) = run_dir.rglob("*.ckpt")  # Lightning's layout under the first logger's directory
    stranger = tmp_path / "stranger.ckpt"
    stranger.write_bytes(ckpt.read_bytes())
    with pytest.raises(SystemExit) as stopped:
        main(["test", "--config", str(config), "--ckpt_path", str(stranger)])
    assert stopped.value.code == 2 and "is not one of" in capsys.readouterr().err
    assert (run_dir / "metrics.csv").read_text() == log


def test_one_flag_adds_the_csv_log_to_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/usage.md's `--trainer.logger+=ebmflow.loggers.CSVLogger` after conf/wandb.yaml: both loggers,
    both in the run directory."""
    for key in [key for key in os.environ if key.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    (config := tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    root = tmp_path / "run"
    configs = ["--config", str(config), "--config", str(ROOT / "conf" / "wandb.yaml")]
    flags = ["--trainer.logger+=ebmflow.loggers.CSVLogger", "--trainer.default_root_dir", str(root)]
    cli = make_cli([*configs, *flags], run=False)
    assert [type(logger) for logger in cli.trainer.loggers] == [WandbLogger, CSVLogger]
    assert [logger.save_dir for logger in cli.trainer.loggers] == [str(root), str(root)]


WANDB_AFTER_CSV = {  # conf/wandb.yaml's logger behind a CSV log
    "trainer": {
        "logger": [
            {"class_path": "ebmflow.loggers.CSVLogger"},
            {
                "class_path": "ebmflow.loggers.WandbLogger",
                "init_args": {"project": "ebmflow", "group": "cifar10-ablation", "name": "rbm"},
            },
        ]
    }
}


@pytest.mark.parametrize("csv_first", [False, True], ids=["wandb", "csv_then_wandb"])
def test_wandb_runs_offline_without_a_key(tmp_path: Path, csv_first: bool) -> None:
    """The shipped conf/wandb.yaml as a user composes it: no save_dir, so the run directory
    (--trainer.default_root_dir) holds the offline run, the config and the checkpoints, and nothing
    lands in the working directory. Behind a CSV log, W&B still gets the sample grids and the CSV log
    its rows and the parameter count."""
    trainer = {
        **TINY["trainer"],
        "max_steps": -1,
        "max_epochs": 1,
        "limit_train_batches": 4,
        "log_every_n_steps": 1,
    }
    root = tmp_path / "run"
    config = {**TINY, "trainer": {**trainer, "default_root_dir": str(root)}}
    config["trainer"]["callbacks"] = [
        {"class_path": "ebmflow.callbacks.SampleGrids", "init_args": {"num_samples": 8, "columns": 4}}
    ]
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), NETRC=str(tmp_path / "no-netrc"))
    command = ["fit", "--config", str(path), "--config", str(ROOT / "conf" / "wandb.yaml")]
    if csv_first:
        (both := tmp_path / "both.yaml").write_text(yaml.safe_dump(WANDB_AFTER_CSV))
        command += ["--config", str(both)]
    else:
        command += ["--trainer.logger.init_args.name", "rbm"]
    result = subprocess.run(
        [sys.executable, "-m", "ebmflow", *command],
        cwd=elsewhere,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(elsewhere.iterdir()) == []
    assert (root / "config.yaml").is_file()
    # Lightning's layout for the first logger's checkpoints: W&B's <save_dir>/<project>/<run id>/checkpoints
    layout = "checkpoints/*.ckpt" if csv_first else "ebmflow/*/checkpoints/*.ckpt"
    assert len(list(root.glob(layout))) == 1
    (run_dir,) = (root / "wandb").glob("offline-run-*")
    # The offline run's records (history, config, run settings) are in its transaction log, which
    # `wandb sync` uploads later.
    (records,) = run_dir.glob("run-*.wandb")
    data = records.read_bytes()
    for expected in (
        b"trainer/global_step",  # the step's name in W&B's history, which `ebmflow report` reads
        b"train/objective",
        b"val/bpd_uniform",
        b"priors.RBMPrior",
        b"cifar10-ablation",  # conf/wandb.yaml's group
        b"num_parameters",
    ):
        assert expected in data, expected
    # The sample grids went to W&B as images, not to PNG files in the run directory.
    media = sorted(p.name.split("_")[0] for p in (run_dir / "files" / "media" / "images").glob("*.png"))
    assert media == ["discrete", "samples"]
    assert not (root / "samples").exists()
    if csv_first:
        assert read_run(root)["row"]["parameters"] == sum(
            p.numel() for p in make_cli(["--config", str(path)], run=False).model.parameters()
        )
        assert sum(bool(row["train/objective"]) for row in read_rows(root / "metrics.csv")) == 4
