"""scripts/fashion_mnist_ablation.sh's own logic: it checks every run's outputs before starting any,
never replaces an earlier run's logs or report, and fails (without a report) when a run fails. The
ebmflow command is a stand-in here: a real ablation trains for hours."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

STAND_IN = """#!/usr/bin/env bash
# the ebmflow command's stand-in: records each call; `fit` fails for the runs named in $FAIL
command=$1
shift
previous=""
for arg in "$@"; do
  [ "$previous" = --trainer.default_root_dir ] && run_dir=$arg
  [ "$previous" = --ckpt_path ] && ckpt=$arg
  [ "$previous" = --out ] && out=$arg
  previous=$arg
done
case $command in
  fit) echo "fit $run_dir" >> "$CALLS"
       [[ " $FAIL " == *" $(basename "$run_dir") "* ]] && { echo "diverged"; exit 3; }
       mkdir -p "$run_dir/checkpoints"; echo "fitted $run_dir" ;;
  test) echo "test $ckpt" >> "$CALLS"; echo "tested" ;;
  report) echo "report $out" >> "$CALLS"; mkdir -p "$out"; printf '%s\\n' "$@" > "$out/table.md" ;;
esac
"""


def ablation(tmp_path: Path, out: Path, *runs: str, fail: str = "") -> subprocess.CompletedProcess:
    stand_in = tmp_path / "ebmflow"
    if not stand_in.exists():
        stand_in.write_text(STAND_IN)
        stand_in.chmod(0o755)
    env = {**os.environ, "EBMFLOW": str(stand_in), "CALLS": str(tmp_path / "calls"), "FAIL": fail}
    script = ROOT / "scripts" / "fashion_mnist_ablation.sh"
    return subprocess.run(
        [str(script), "data", "3", str(out), *runs], cwd=ROOT, env=env, capture_output=True, text=True
    )


def calls(tmp_path: Path) -> list[str]:
    path = tmp_path / "calls"
    return path.read_text().splitlines() if path.exists() else []


def test_runs_are_tested_and_reported_and_a_second_report_is_its_own(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = ablation(tmp_path, out, "gaussian", "rbm")
    assert done.returncode == 0, done.stderr
    assert sorted(calls(tmp_path)) == sorted(
        [f"fit {out}/{run}" for run in ("gaussian", "rbm")]
        + [f"test {out}/{run}/checkpoints/last.ckpt" for run in ("gaussian", "rbm")]
        + [f"report {out}/report"]
    )
    first = (out / "report" / "table.md").read_text()
    assert first.split()[:2] == [f"{out}/gaussian", f"{out}/rbm"]
    assert (out / "rbm.fit.log").read_text() == f"fitted {out}/rbm\n"

    # Another run into the same OUT, as the header suggests for rbm_averaged: a report of its own.
    assert ablation(tmp_path, out, "multicov").returncode == 0
    assert (out / "report" / "table.md").read_text() == first
    assert (out / "report-2" / "table.md").read_text().split()[0] == f"{out}/multicov"


def test_an_earlier_runs_outputs_stop_everything_before_it_starts(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "rbm.fit.log").write_text("3,000 steps of an earlier run\n")
    done = ablation(tmp_path, out, "gaussian", "rbm")
    assert done.returncode == 2
    assert f"{out / 'rbm.fit.log'} exists" in done.stderr and "nothing was started" in done.stderr
    assert (out / "rbm.fit.log").read_text() == "3,000 steps of an earlier run\n"
    assert calls(tmp_path) == [] and sorted(p.name for p in out.iterdir()) == ["rbm.fit.log"]


def test_a_failed_run_fails_the_script_without_a_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = ablation(tmp_path, out, "bernoulli", "gaussian", "rbm", fail="bernoulli")
    assert done.returncode == 1
    assert "bernoulli failed" in done.stderr and "gaussian" not in done.stderr.split("failed")[0]
    assert (out / "bernoulli.fit.log").read_text() == "diverged\n"
    assert f"test {out}/bernoulli/checkpoints/last.ckpt" not in calls(tmp_path)
    for run in ("gaussian", "rbm"):  # the others still ran to the end
        assert f"test {out}/{run}/checkpoints/last.ckpt" in calls(tmp_path)
    assert not (out / "report").exists()
