"""`ebmflow report` from hand-made logs: the table is reproduced exactly, from run directories and from
the same logs in a W&B group."""

import csv
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ebmflow import loggers, report
from ebmflow.command import main

METRICS = {
    "rbm": [
        "epoch,step,train/objective,val/bpd_uniform,val/fid,val/is,val/is_std,val/code_nmi,train/wall_seconds,test/bpd_uniform,test/bpd_uniform_stderr,val/coverage_classes,val/coverage_max_share,health/chain_lag,health/moment_gap,health/samples_from_lagging_chains",
        "0,9,3.5,,,,,,,,,,,,,",
        "0,19,,3.40,120.0,3.10,0.05,0.41,,,,3,0.61,-40.0,0.93,1.0",
        "0,19,,,,,,,1800.0,,,,,,,",
        "1,39,,3.25,105.0,4.40,0.10,0.52,,,,10,0.14,-1.5,0.07,0.0",
        "1,39,,,,,,,3600.0,,,,,,,",
        "2,40,,,,,,,,3.18,0.01,,,,,",
    ],
    "gaussian": [
        "epoch,step,val/bpd_uniform,val/fid,val/is,val/is_std,train/wall_seconds",
        "0,19,3.30,130.0,3.00,0.20,",
        "0,19,,,,,1500.0",
    ],
}
PRIORS = {"rbm": "priors.RBMPrior", "gaussian": "priors.GaussianPrior"}
PARAMETERS = {"rbm": 31420584, "gaussian": 31445192}


def make_run(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "metrics.csv").write_text("\n".join(METRICS[name]) + "\n")
    (folder / "config.yaml").write_text(f"model:\n  prior:\n    class_path: {PRIORS[name]}\n")
    (folder / "hparams.yaml").write_text(f"num_parameters: {PARAMETERS[name]}\n")
    return folder


TABLE = (
    "| model | epochs | steps | bits/dim | IS | FID | NMI | classes ≥ 2 % | max class share | chain lag "
    "| moment gap | parameters | wall time |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    "| RBM-Flow | 3 | 40 | 3.180 ± 0.010 | 4.40 ± 0.10 | 105.0 | 0.520 | 10 | 0.14 | -1.5 | 0.07 "
    "| 31,420,584 | 1.00 h |\n"
    "| Gaussian-Flow | 1 | 20 | 3.300 (val) | 3.00 ± 0.20 | 130.0 | – | – | – | – | – | 31,445,192 "
    "| 0.42 h |\n"
)


def test_report_reproduces_the_table(tmp_path: Path) -> None:
    runs = [make_run(tmp_path, "rbm"), make_run(tmp_path, "gaussian")]
    main(["report", *map(str, runs), "--out", str(tmp_path / "report")])
    assert (tmp_path / "report" / "table.md").read_text() == TABLE
    with (tmp_path / "report" / "table.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["model"] == "RBM-Flow" and float(rows[0]["bits/dim"]) == 3.18 and rows[0]["epochs"] == "3"
    assert rows[1]["NMI"] == "nan" and float(rows[1]["wall seconds"]) == 1500.0
    assert float(rows[0]["moment gap"]) == 0.07 and rows[1]["moment gap"] == "nan"
    assert report.read_run(runs[0])["curves"]["health/moment_gap"] == [(19, 0.93), (39, 0.07)]
    assert (tmp_path / "report" / "curves.png").stat().st_size > 10_000

    (tmp_path / "rbm-slow").mkdir()
    for name in ("metrics.csv", "config.yaml", "hparams.yaml"):
        (tmp_path / "rbm-slow" / name).write_text((runs[0] / name).read_text())
    main(["report", str(runs[0]), str(tmp_path / "rbm-slow"), str(runs[1]), "--out", str(tmp_path / "two")])
    models = [line.split(" | ")[0] for line in (tmp_path / "two" / "table.md").read_text().splitlines()[2:]]
    assert models == ["| RBM-Flow (rbm)", "| RBM-Flow (rbm-slow)", "| Gaussian-Flow"]


def test_a_run_keeps_its_colour_in_every_panel(tmp_path: Path) -> None:
    """The Gaussian run comes first and has no chain lag or moment gap: the RBM run's lines must still
    share one colour across the panels (matplotlib's per-panel colour cycle would shift it)."""
    runs = [report.read_run(make_run(tmp_path, "gaussian")), report.read_run(make_run(tmp_path, "rbm"))]
    figure = report.plot_curves(runs)
    colours = {
        label: {line.get_color() for axis in figure.axes for line in axis.lines if line.get_label() == label}
        for label in ("Gaussian-Flow", "RBM-Flow")
    }
    assert colours == {"Gaussian-Flow": {"C0"}, "RBM-Flow": {"C1"}}
    assert any(line.get_label() == "RBM-Flow" for line in figure.axes[6].lines)  # the moment gap


def test_report_marks_samples_read_from_lagging_chains(tmp_path: Path) -> None:
    """ChainHealth flags a validation whose samples continued chains that lagged the RBM (the RBM run's
    step 19): its FID, IS and coverage points are ringed in the curves, and the table marks the FID of
    a run whose last validation is flagged; an unflagged last validation is not marked (the TABLE)."""
    folder = make_run(tmp_path, "rbm")
    run = report.read_run(folder)
    assert run["lagging_steps"] == [19]
    figure = report.plot_curves([run])
    ringed = {
        axis.get_ylabel(): list(zip(line.get_xdata(), line.get_ydata(), strict=True))
        for axis in figure.axes
        for line in axis.lines
        if line.get_label() == report.LAGGING
    }
    assert ringed == {
        "FID": [(19, 120.0)],
        "Inception Score": [(19, 3.10)],
        "classes holding ≥ 2 % of samples": [(19, 3.0)],
        "largest class share": [(19, 0.61)],
    }

    text = (folder / "metrics.csv").read_text()
    (folder / "metrics.csv").write_text(text.replace("-1.5,0.07,0.0", "-1.5,0.07,1.0"))
    main(["report", str(folder), str(make_run(tmp_path, "gaussian")), "--out", str(tmp_path / "report")])
    table = (tmp_path / "report" / "table.md").read_text().splitlines()
    assert [line.split(" | ")[5] for line in table[2:4]] == ["105.0 *", "130.0"]
    assert table[4:] == ["", report.LAGGING_FOOTNOTE]
    rows = list(csv.DictReader((tmp_path / "report" / "table.csv").open()))
    assert (
        float(rows[0]["samples from lagging chains"]) == 1.0
        and rows[1]["samples from lagging chains"] == "nan"
    )


def test_a_checkpoint_validated_again_replaces_its_own_step_only(tmp_path: Path) -> None:
    """`ebmflow validate` of the step-20 checkpoint after training (a row at step 19, appended last, its
    samples no longer from lagging chains) replaces step 19's points in the curves, and the table still
    reads the run's latest step."""
    folder = make_run(tmp_path, "rbm")
    with (folder / "metrics.csv").open("a") as handle:
        handle.write("0,19,,3.40,150.0,2.50,0.05,0.41,,,,5,0.40,-2.0,0.50,0.0\n")
    run = report.read_run(folder)
    assert run["curves"]["val/fid"] == [(19, 150.0), (39, 105.0)]
    assert run["lagging_steps"] == []
    main(["report", str(folder), str(make_run(tmp_path, "gaussian")), "--out", str(tmp_path / "report")])
    assert (tmp_path / "report" / "table.md").read_text() == TABLE


def test_the_last_test_run_fills_bits_per_dim_whatever_its_checkpoints_step(tmp_path: Path) -> None:
    """Test rows carry their checkpoint's step: `ebmflow test` of the step-40 checkpoint, then of the
    step-20 one, reports the one run last."""
    folder = make_run(tmp_path, "rbm")
    with (folder / "metrics.csv").open("a") as handle:
        handle.write("0,19,,,,,,,,3.30,0.02,,,,,\n")
    row = report.read_run(folder)["row"]
    assert (row["bits/dim"], row["bits/dim error"], row["steps"]) == (3.30, 0.02, 40)


def test_a_row_cut_short_is_left_out_and_named(tmp_path: Path, capsys) -> None:
    """A kill mid-write leaves the last line without its end: its cut number (3.1 of 3.18) must not
    become the run's bits/dim; the row is left out and named, the rest reported."""
    folder = make_run(tmp_path, "rbm")
    text = (folder / "metrics.csv").read_text()
    (folder / "metrics.csv").write_text(text.rstrip("\n")[:-6])  # "...,3.18,0.01" -> "...,3.1"
    main(["report", str(folder), "--out", str(tmp_path / "report")])
    (row,) = list(csv.DictReader((tmp_path / "report" / "table.csv").open()))
    assert float(row["bits/dim"]) == 3.25 and row["bits/dim split"] == "val"  # the last good row's
    assert f"{folder / 'metrics.csv'}: line 7 is damaged" in capsys.readouterr().err


def test_one_bad_run_directory_does_not_stop_the_report(tmp_path: Path, capsys) -> None:
    good = make_run(tmp_path, "gaussian")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tmp_path / "empty"), str(good), "--out", str(tmp_path / "report")])
    assert exit_info.value.code == 1
    assert "Gaussian-Flow" in (tmp_path / "report" / "table.md").read_text()
    assert "left out 1 run" in capsys.readouterr().err


@dataclass
class FakeRun:
    """What report reads of a W&B public-API run (the API itself needs the network)."""

    name: str
    created_at: str
    config: dict
    history: list[dict] = field(default_factory=list)

    def scan_history(self) -> list[dict]:
        return self.history


class FakeApi:
    def __init__(self, runs: dict[str, list[FakeRun]]) -> None:
        self.projects = runs

    def runs(self, path: str, filters: dict) -> list[FakeRun]:
        return [run for run in self.projects[path] if run.config["group"] == filters["group"]]


def wandb_history(name: str) -> list[dict]:
    """The hand-made CSV rows as W&B keeps them: only the keys logged at a step, numbers as floats, the
    step under Lightning's WandbLogger's name for it ("trainer/global_step"), and W&B's own counters."""
    header, *lines = METRICS[name]
    keys = ["trainer/global_step" if key == "step" else key for key in header.split(",")]
    return [
        {key: float(value) for key, value in zip(keys, line.split(","), strict=True) if value}
        | {"_step": float(index), "_runtime": 10.0 * index, "_timestamp": 1.7e9 + index}
        for index, line in enumerate(lines)
    ]


def test_report_from_a_wandb_group_matches_the_run_directories(tmp_path: Path) -> None:
    def config(name: str, group: str) -> dict:
        return {
            "group": group,
            "config": {"model": {"prior": {"class_path": PRIORS[name]}}},
            "num_parameters": PARAMETERS[name],
        }

    rbm, gaussian = wandb_history("rbm"), wandb_history("gaussian")
    rbm[1]["samples"] = {"_type": "images/separated", "count": 1}  # an image among the metrics
    runs = [
        # fit and then test of one model are two W&B runs with one name, listed out of order
        FakeRun("rbm", "2026-01-02", config("rbm", "ablation"), rbm[-1:]),
        FakeRun("rbm", "2026-01-01", config("rbm", "ablation"), rbm[:-1]),
        FakeRun("gaussian", "2026-01-03", config("gaussian", "ablation"), gaussian),
        FakeRun("other", "2026-01-04", config("gaussian", "another-group"), gaussian),
    ]
    summaries = report.read_wandb_group("me/ebmflow/ablation", api=FakeApi({"me/ebmflow": runs}))
    report.write_report(summaries, tmp_path / "from_wandb")
    assert (tmp_path / "from_wandb" / "table.md").read_text() == TABLE
    csv_runs = [report.read_run(make_run(tmp_path, name)) for name in ("rbm", "gaussian")]
    assert [s["curves"] for s in summaries] == [s["curves"] for s in csv_runs]


def test_report_says_what_a_wandb_group_is(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="ENTITY/PROJECT/GROUP"):
        report.read_wandb_group("ablation")
    monkeypatch.setattr(loggers, "wandb_api_key_configured", lambda: False)
    with pytest.raises(RuntimeError, match="pass the run directories"):
        report.read_wandb_group("me/ebmflow/ablation")


def test_report_starts_without_lightning() -> None:
    """`ebmflow report` only reads files: its command path must not import Lightning (or torch)."""
    code = (
        "import sys; import ebmflow.command, ebmflow.report; "
        "print(sorted({'lightning', 'torch'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
