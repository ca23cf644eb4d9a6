"""`make demo` starts a fresh run without losing the previous one."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

MAKEFILE = Path(__file__).resolve().parents[2] / "Makefile"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_demo_keeps_the_previous_demo_run(tmp_path: Path) -> None:
    """The previous runs/demo moves aside whole. A stand-in `ebmflow` that fails at once stops the
    recipe right after that step: the real demo trains for minutes."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "ebmflow").write_text("#!/bin/sh\nexit 3\n")
    (venv / "bin" / "ebmflow").chmod(0o755)
    (tmp_path / "pyproject.toml").write_text("")
    (venv / ".installed").write_text("")  # installed after pyproject.toml changed: no install step
    os.utime(tmp_path / "pyproject.toml", (0, 0))
    previous = tmp_path / "runs" / "demo"
    (previous / "checkpoints").mkdir(parents=True)
    (previous / "metrics.csv").write_text("step,val/bpd_uniform\n7,1.5\n")
    (previous / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    done = subprocess.run(
        ["make", "-f", str(MAKEFILE), "-C", str(tmp_path), "demo", f"VENV={venv}"],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "ebmflow fit --config conf/demo.yaml" in done.stdout
    kept = [path for path in (tmp_path / "runs").iterdir() if path.name.startswith("demo-")]
    assert len(kept) == 1 and not previous.exists()
    assert f"The previous demo run is kept in runs/{kept[0].name}" in done.stdout
    assert (kept[0] / "metrics.csv").read_text() == "step,val/bpd_uniform\n7,1.5\n"
    assert (kept[0] / "checkpoints" / "last.ckpt").read_bytes() == b"weights"
