"""A run directory loses nothing: one owner at a time (the lock dies with its process), checkpoints and
logs written atomically, the training config never overwritten, every file of a run under the one
directory the config names, and the command line winning over a checkpoint's hyperparameters."""

import inspect
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ebmflow.cli import make_cli
from ebmflow.command import main
from ebmflow.loggers import CSVLogger, read_rows
from ebmflow.rundir import LOCK_NAME, TEMP_MARK, AtomicCheckpointIO, RunLock, atomic_write
from tests.ebmflow.helpers import TINY

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


def logged_config(tmp_path: Path) -> Path:
    """The tiny config laid out as the shipped ones: a run directory named once (default_root_dir),
    the CSV logger and a checkpoint callback without paths of their own."""
    trainer = {
        **TINY["trainer"],
        "default_root_dir": str(tmp_path / "run"),
        "logger": {"class_path": "ebmflow.loggers.CSVLogger"},
        "callbacks": [
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {"monitor": "val/bpd_uniform", "save_last": True},
            }
        ],
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**TINY, "trainer": trainer}))
    return path


def child_paused_at(code: str, argument: Path, ready: str) -> subprocess.Popen:
    """A Python process running ``code`` (with ``argument`` as sys.argv[1]), once it has printed
    ``ready``: it then sleeps until killed."""
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(argument)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == ready
    return child


def hold_lock_in_child(folder: Path) -> subprocess.Popen:
    code = (
        "import sys, time\n"
        "from ebmflow.rundir import RunLock\n"
        "RunLock.acquire(sys.argv[1])\n"
        "print('locked', flush=True)\n"
        "time.sleep(600)\n"
    )
    return child_paused_at(code, folder, "locked")


def test_a_run_directory_has_one_owner_and_a_killed_owner_frees_it(tmp_path: Path, capsys) -> None:
    config = logged_config(tmp_path)
    run = tmp_path / "run"
    child = hold_lock_in_child(run)
    try:
        with pytest.raises(SystemExit) as stopped:
            main(["fit", "--config", str(config)])
        error = capsys.readouterr().err
        assert stopped.value.code == 2
        assert error.startswith("error: run directory") and f"pid {child.pid}" in error
        assert not (run / "metrics.csv").exists() and not (run / "checkpoints").exists()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    lock = RunLock.acquire(run)  # the kernel dropped the dead process's lock
    assert f"pid {os.getpid()}" in (run / LOCK_NAME).read_text()
    lock.release()


def test_a_csv_log_behind_a_logger_that_logs_elsewhere_is_locked_too(tmp_path: Path, capsys) -> None:
    """The lock follows the first logger's directory; a CSV log elsewhere (behind Lightning's own CSV
    logger, which logs in <save_dir>/<name>/version_N) is locked as well."""
    config = logged_config(tmp_path)
    run = tmp_path / "run"
    settings = yaml.safe_load(config.read_text())
    first = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run)}}
    settings["trainer"]["logger"] = [first, settings["trainer"]["logger"]]
    config.write_text(yaml.safe_dump(settings))
    child = hold_lock_in_child(run)
    try:
        with pytest.raises(SystemExit) as stopped:
            main(["fit", "--config", str(config)])
        assert stopped.value.code == 2 and f"pid {child.pid}" in capsys.readouterr().err
        assert not (run / "metrics.csv").exists()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


@pytest.mark.parametrize("folder", ["checkpoints", "ebmflow/1a2b3c4d/checkpoints"], ids=["csv", "wandb"])
def test_a_kill_during_a_save_leaves_the_previous_file_whole(tmp_path: Path, folder: str) -> None:
    """Checkpoints where the configs' CSV logger and a W&B logger put them (Lightning's layout)."""
    target = tmp_path / "run" / folder / "last.ckpt"
    target.parent.mkdir(parents=True)
    torch.save({"step": 1}, target)
    code = (
        "import sys, time\n"
        "from ebmflow.rundir import atomic_write\n"
        "def write(handle):\n"
        "    handle.write(b'x' * 1_000_000); handle.flush()\n"
        "    print('writing', flush=True); time.sleep(600)\n"
        "atomic_write(sys.argv[1], write)\n"
    )
    child = child_paused_at(code, target, "writing")
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert torch.load(target, weights_only=True) == {"step": 1}
    (partial,) = target.parent.glob(f".*{TEMP_MARK}*")  # the killed writer's temporary file, beside it
    RunLock.acquire(tmp_path / "run").release()  # the next owner removes it
    assert not partial.exists()


def test_a_parent_of_runs_leaves_their_temporary_files_alone(tmp_path: Path) -> None:
    """A run directory given as the parent of others (runs/, holding runs/cifar10/rbm) must not delete
    a nested run's temporary file, which may be a save in progress, though it matches W&B's layout."""
    nested = tmp_path / "runs" / "cifar10" / "rbm"
    (nested / "checkpoints").mkdir(parents=True)
    RunLock.acquire(nested).release()  # a run ran there: its lock file stays
    saving = nested / "checkpoints" / f".last.ckpt{TEMP_MARK}abc"
    saving.write_bytes(b"x")
    RunLock.acquire(tmp_path / "runs").release()
    assert saving.exists()


def test_the_command_saves_checkpoints_atomically(tmp_path: Path) -> None:
    cli = make_cli(["--config", str(logged_config(tmp_path))], run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    path = tmp_path / "x.ckpt"
    cli.trainer.strategy.checkpoint_io.save_checkpoint({"a": torch.arange(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("old\n")

    def fail(handle) -> None:
        handle.write(b"new, half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def test_one_directory_holds_the_run_and_later_commands_never_overwrite_it(tmp_path: Path, capsys) -> None:
    config = logged_config(tmp_path)
    run = tmp_path / "run"
    main(["fit", "--config", str(config)])
    assert (run / "checkpoints" / "last.ckpt").is_file()  # derived from default_root_dir alone
    kept = {name: (run / name).read_bytes() for name in ("config.yaml", "hparams.yaml")}
    ckpt = str(run / "checkpoints" / "last.ckpt")

    # A checkpoint of another architecture: one line, exit 2, nothing written.
    with pytest.raises(SystemExit) as stopped:
        main(["test", "--config", str(config), "--ckpt_path", ckpt, "--model.flow.init_args.filters", "16"])
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and error.count("\n") == 1
    assert "another architecture" in error and "differ in shape" in error and "config.yaml" in error
    assert sorted(p.name for p in run.glob("config*")) == ["config.yaml"]

    # Flags win over the checkpoint's hyperparameters; each command's config goes beside the training one.
    for _ in range(2):
        main(["test", "--config", str(config), "--ckpt_path", ckpt, "--model.importance_samples", "3"])
    assert {name: (run / name).read_bytes() for name in kept} == kept
    assert sorted(p.name for p in run.glob("config*")) == [
        "config.test-2.yaml",
        "config.test.yaml",
        "config.yaml",
    ]
    assert yaml.safe_load((run / "config.test.yaml").read_text())["model"]["importance_samples"] == 3
    tested = [row for row in read_rows(run / "metrics.csv") if row.get("test/bpd_uniform")]
    assert len(tested) == 2 and all(row["test/bpd_importance_3"] for row in tested)
    assert not any(key.startswith("test/bpd_importance_2") for key in tested[0])  # TINY trains with 2


def test_a_run_directory_with_a_log_takes_its_own_checkpoints_only(tmp_path: Path, capsys) -> None:
    """Another run's checkpoint would add its numbers (or its resumed training) to this run's log, and
    `ebmflow report` would show them as this run's: refused, with nothing written."""
    config = logged_config(tmp_path)
    main(["fit", "--config", str(config)])
    other = tmp_path / "other"
    main(["fit", "--config", str(config), "--trainer.default_root_dir", str(other)])
    log = (tmp_path / "run" / "metrics.csv").read_bytes()
    foreign = str(other / "checkpoints" / "last.ckpt")
    for command, *extra in (("test",), ("validate",), ("fit", "--trainer.max_steps", "6")):
        with pytest.raises(SystemExit) as stopped:
            main([command, "--config", str(config), "--ckpt_path", foreign, *extra])
        error = capsys.readouterr().err
        assert stopped.value.code == 2 and "is not one of" in error and "--trainer.default_root_dir" in error
    assert (tmp_path / "run" / "metrics.csv").read_bytes() == log
    assert sorted(p.name for p in (tmp_path / "run").glob("config*")) == ["config.yaml"]
    # a directory without a log takes any checkpoint
    main(
        [
            "test",
            "--config",
            str(config),
            "--ckpt_path",
            foreign,
            "--trainer.default_root_dir",
            str(tmp_path / "new"),
        ]
    )
    (row,) = read_rows(tmp_path / "new" / "metrics.csv")
    assert float(row["test/bpd_uniform"]) > 0
    # the run's own checkpoint by its real path, the run directory through a link: its own
    (link := tmp_path / "link").symlink_to(tmp_path / "run")
    own = str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    main(["test", "--config", str(config), "--ckpt_path", own, "--trainer.default_root_dir", str(link)])
    assert sum(bool(row.get("test/bpd_uniform")) for row in read_rows(link / "metrics.csv")) == 1


def test_a_resumed_fit_replaces_the_rows_the_interrupted_run_logged_after_its_checkpoint(
    tmp_path: Path,
) -> None:
    logger = CSVLogger(str(tmp_path))
    for step in range(15):
        logger.log_metrics({"train/objective": 10.0 - step}, step)
    logger.log_metrics({"val/bpd_uniform": 4.0}, 9)
    logger.log_metrics({"test/bpd_uniform": 3.5}, 12)  # a test of a later checkpoint stays
    logger.save()

    resumed = CSVLogger(str(tmp_path))
    resumed.resume_at(10)
    kept = read_rows(tmp_path / "metrics.csv")
    replaced = read_rows(tmp_path / "metrics.replaced.csv")
    assert [int(row["step"]) for row in kept] == [*range(10), 9, 12]
    assert [int(row["step"]) for row in replaced] == list(range(10, 15))
    assert [float(row["train/objective"]) for row in replaced] == [0.0, -1.0, -2.0, -3.0, -4.0]


@pytest.mark.parametrize("path", sorted(CONF.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONF)))
def test_shipped_configs_name_the_run_in_one_place(path: Path) -> None:
    assert "dirpath" not in path.read_text() and "save_dir" not in path.read_text()


def test_the_run_directory_moves_everything(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    cli = make_cli(
        ["--config", str(CONF / "demo.yaml"), "--trainer.default_root_dir", str(elsewhere)], run=False
    )
    assert cli.trainer.logger.save_dir == str(elsewhere) and cli.trainer.log_dir == str(elsewhere)


def test_the_lightning_name_overridden_for_checkpoint_hyperparameters_still_exists() -> None:
    """ebmflow/lightning_seams.py overrides LightningCLI._parse_ckpt_path so that a checkpoint's
    hyperparameters never replace the user's flags. If a Lightning release renames it, the override
    would silently stop working: this fails instead (test_one_directory_holds_the_run... checks the
    behaviour)."""
    from lightning.pytorch.cli import LightningCLI

    assert callable(vars(LightningCLI).get("_parse_ckpt_path")), "Lightning renamed _parse_ckpt_path"
    assert "self._parse_ckpt_path()" in inspect.getsource(LightningCLI.__init__)
