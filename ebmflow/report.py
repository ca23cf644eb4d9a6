"""``ebmflow report``: the paper's Table 1 (Markdown and CSV) and Fig. 1 (bits/dim, FID and IS against
the training step, one line per run, beside the training-health curves: class coverage of the samples,
the RBM's chain lag and moment gap) from run directories' CSV logs (offline) or from a W&B group
(online). Validations whose samples continued chains that lagged the RBM (ChainHealth's
``health/samples_from_lagging_chains``) are ringed in the curves of the samples, and the table marks
such a last validation's FID.

    ebmflow report runs/cifar10/rbm runs/cifar10/bernoulli runs/cifar10/multicov runs/cifar10/gaussian \
        --out report
    ebmflow report --wandb-group ENTITY/ebmflow/cifar10-ablation --out report   # online

A run directory holds the CSVLogger's ``metrics.csv`` and ``hparams.yaml`` and LightningCLI's
``config.yaml`` (the layout of the configs in conf/). The bits/dim column is the test split's (with its
standard error) once ``ebmflow test`` has logged into the run directory, the last validation value
before that (marked "(val)"). Damaged log rows are left out and named; a run directory that cannot be
read is listed and the others are reported (exit status 1).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import yaml

__all__ = ["main", "plot_curves", "read_run", "read_wandb_group", "summarise", "write_report"]

NAMES = {
    "RBMPrior": "RBM-Flow",
    "BernoulliPrior": "D-Flow",
    "MultiCovPrior": "MultiCov-Flow",
    "GaussianPrior": "Gaussian-Flow",
}
COLUMNS = (
    "model",
    "epochs",
    "steps",
    "bits/dim",
    "bits/dim error",
    "bits/dim split",
    "IS",
    "IS std",
    "FID",
    "NMI",
    "classes",
    "max class share",
    "chain lag",
    "moment gap",
    "samples from lagging chains",
    "parameters",
    "wall seconds",
)
CURVES = (
    ("val/bpd_uniform", "bits/dim"),
    ("val/fid", "FID"),
    ("val/is", "Inception Score"),
    ("val/coverage_classes", "classes holding ≥ 2 % of samples"),
    ("val/coverage_max_share", "largest class share"),
    ("health/chain_lag", "chain lag (nats of log p̃)"),
    ("health/moment_gap", "moment gap (RBM vs codes, relative)"),
)
# ChainHealth's flag: validation's samples continued copies of chains that lagged the RBM, so its FID, IS
# and coverage describe the chains, not the RBM (docs/results.md, round 15). Those points are ringed.
LAGGING_KEY = "health/samples_from_lagging_chains"
LAGGING = "samples from lagging chains"
SAMPLE_CURVES = ("val/fid", "val/is", "val/coverage_classes", "val/coverage_max_share")
LAGGING_FOOTNOTE = (
    "\\* the last validation's samples (under DDP, those of some ranks) continued persistent chains that "
    f"lagged the RBM (`{LAGGING_KEY}`): its FID, IS and class coverage describe the chains, not the RBM; "
    "check the checkpoint with `python scripts/compare_samplers.py RUN_DIR --tempering 20 500`."
)


def _number(value: object) -> float | None:
    """A logged cell as a float; None for an empty cell ("", None, NaN) or a non-number (a W&B image)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def summarise(name: str, rows: list[dict], prior: str, num_parameters: float) -> dict:
    """One row of the table and the curves against the training step from a run's logged rows (dicts
    holding "epoch", "step" and metric values). Training and validation rows are read in order of their
    step, so the columns are the latest step's validation (a checkpoint validated again later, with
    ``ebmflow validate``, replaces its own step's reading, not the run's last); then test rows in the
    order they were logged, so the last ``ebmflow test`` fills the bits/dim column when there is one.
    "steps" counts the optimiser steps trained by the last training or validation row: Lightning logs
    a row at step s during the (s + 1)-th step (a validation after 3,000 steps at step 2,999).
    "lagging_steps" lists the logged steps whose samples ChainHealth flagged as continuing lagging
    chains."""
    last: dict[str, float] = {}
    curves: dict[str, dict[int, float]] = {key: {} for key, _ in CURVES}
    lagging_steps: set[int] = set()
    epochs = steps = 0
    progress, tests = [], []  # (step, epoch, row, tested) of every row that has an epoch
    for row in rows:
        epoch, step = _number(row.get("epoch")), _number(row.get("step"))
        if epoch is not None:
            tested = any(k.startswith("test/") and _number(v) is not None for k, v in row.items())
            entry = (int(step) if step is not None else int(epoch), int(epoch), row, tested)
            (tests if tested else progress).append(entry)
    # training and validation by step (stable: within a step in the order logged), then the tests
    for step, epoch, row, tested in [*sorted(progress, key=lambda entry: entry[0]), *tests]:
        epochs = max(epochs, epoch + 1)
        if not tested:
            steps = max(steps, step + 1)  # a test run logs at the step it was tested at
        for key, value in row.items():
            number = _number(value)
            if key in ("epoch", "step") or number is None:
                continue
            last[key] = number
            if key in curves:
                curves[key][step] = number
            if key == LAGGING_KEY:  # a later reading of the step decides
                (lagging_steps.add if number > 0 else lagging_steps.discard)(step)
    tested = "test/bpd_uniform" in last
    row = {
        "model": NAMES.get(prior, prior or name),
        "epochs": epochs,
        "steps": steps,
        "bits/dim": last.get("test/bpd_uniform" if tested else "val/bpd_uniform", math.nan),
        "bits/dim error": last.get("test/bpd_uniform_stderr", math.nan) if tested else math.nan,
        "bits/dim split": "test" if tested else "val",
        "IS": last.get("val/is", math.nan),
        "IS std": last.get("val/is_std", math.nan),
        "FID": last.get("val/fid", math.nan),
        "NMI": last.get("val/code_nmi", math.nan),
        "classes": last.get("val/coverage_classes", math.nan),
        "max class share": last.get("val/coverage_max_share", math.nan),
        "chain lag": last.get("health/chain_lag", math.nan),
        "moment gap": last.get("health/moment_gap", math.nan),
        "samples from lagging chains": last.get(LAGGING_KEY, math.nan),
        "parameters": num_parameters,
        "wall seconds": last.get("train/wall_seconds", math.nan),
    }
    curves_by_step = {k: sorted(v.items()) for k, v in curves.items()}
    return {"name": name, "row": row, "curves": curves_by_step, "lagging_steps": sorted(lagging_steps)}


def _prior_name(config: dict | None) -> str:
    return (config or {}).get("model", {}).get("prior", {}).get("class_path", "").rsplit(".", 1)[-1]


def read_run(folder: str | Path) -> dict:
    """A run directory (metrics.csv, config.yaml, hparams.yaml) summarised: see ``summarise``. Damaged
    rows of metrics.csv (a line cut short by a kill) are left out; their line numbers are under
    "damaged"."""
    folder = Path(folder)
    metrics_path = folder / "metrics.csv"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path} is missing: pass the run directory that holds metrics.csv")
    rows, damaged = read_metrics(metrics_path)

    def load(name: str) -> dict:
        path = folder / name
        return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}

    summary = summarise(
        folder.name,
        rows,
        _prior_name(load("config.yaml")),
        load("hparams.yaml").get("num_parameters", math.nan),
    )
    return {**summary, "damaged": damaged}


def read_metrics(path: Path) -> tuple[list[dict], list[int]]:
    """The rows of a CSV log and the line numbers of damaged ones: a row with another number of fields
    than the header, or a last line without its end (written when the process was killed)."""
    lines = path.read_text().splitlines(keepends=True)
    if not lines:
        return [], []
    header = next(csv.reader(lines[:1]))
    rows, damaged = [], []
    for number, line in enumerate(lines[1:], start=2):
        fields = next(csv.reader([line]), [])
        if len(fields) != len(header) or not line.endswith("\n"):
            damaged.append(number)
        else:
            rows.append(dict(zip(header, fields, strict=True)))
    return rows, damaged


def read_wandb_group(path: str, api: object | None = None) -> list[dict]:
    """The runs of a W&B group, ``ENTITY/PROJECT/GROUP``, summarised: see ``summarise``. Runs that share
    a name (``ebmflow fit`` and then ``ebmflow test`` of one model) are one row, their histories joined
    in creation order. ``api`` defaults to ``wandb.Api()``, which needs the network and an API key."""
    entity_project, _, group = path.rpartition("/")
    if entity_project.count("/") != 1 or not group:
        raise ValueError(f"a W&B group is ENTITY/PROJECT/GROUP, got {path!r}")
    if api is None:
        from ebmflow.loggers import wandb_api_key_configured  # (imports Lightning: only here)

        if not wandb_api_key_configured():
            raise RuntimeError(
                "reading a W&B group needs an API key (`wandb login` or WANDB_API_KEY); offline, pass the "
                "run directories (their metrics.csv) instead"
            )
        import wandb

        api = wandb.Api()
    by_name: dict[str, list] = {}
    for run in sorted(api.runs(entity_project, filters={"group": group}), key=lambda r: r.created_at):
        by_name.setdefault(run.name, []).append(run)
    if not by_name:
        raise ValueError(f"W&B group {path!r} has no runs")
    summaries = []
    for name, runs in by_name.items():
        rows = [_as_logged(row) for run in runs for row in run.scan_history()]
        config = {key: value for run in runs for key, value in dict(run.config).items()}
        summaries.append(
            summarise(name, rows, _prior_name(config.get("config")), config.get("num_parameters", math.nan))
        )
    return summaries


def _as_logged(row: dict) -> dict:
    """A W&B history row as the CSV log holds it: Lightning's WandbLogger logs the step as
    "trainer/global_step" (W&B's own "_step" counts its log calls)."""
    logged = dict(row)
    if "trainer/global_step" in logged:
        logged["step"] = logged.pop("trainer/global_step")
    return logged


def _cell(value: float, digits: int, error: float = math.nan) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "–"
    text = f"{value:.{digits}f}"
    return text if math.isnan(error) else f"{text} ± {error:.{digits}f}"


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model | epochs | steps | bits/dim | IS | FID | NMI | classes ≥ 2 % | max class share "
        "| chain lag | moment gap | parameters | wall time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        parameters = "–" if isinstance(r["parameters"], float) else f"{r['parameters']:,}"
        wall = _cell(r["wall seconds"] / 3600, 2)
        cells = [
            r["model"],
            str(r["epochs"]),
            f"{r['steps']:,}",
            _cell(r["bits/dim"], 3, r["bits/dim error"]) + (" (val)" if r["bits/dim split"] == "val" else ""),
            _cell(r["IS"], 2, r["IS std"]),
            _cell(r["FID"], 1) + (" *" if r["samples from lagging chains"] > 0 else ""),
            _cell(r["NMI"], 3),
            _cell(r["classes"], 0),
            _cell(r["max class share"], 2),
            _cell(r["chain lag"], 1),
            _cell(r["moment gap"], 2),
            parameters,
            wall if wall == "–" else f"{wall} h",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if any(r["samples from lagging chains"] > 0 for r in rows):
        lines += ["", LAGGING_FOOTNOTE]
    return "\n".join(lines) + "\n"


def write_report(runs: list[dict], out: str | Path) -> list[Path]:
    """Write table.md, table.csv and curves.png of summarised runs into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = [run["row"]["model"] for run in runs]
    for run in runs:  # two runs of one prior (another setting) are told apart by their run names
        if models.count(run["row"]["model"]) > 1:
            run["row"]["model"] += f" ({run['name']})"
    rows = [run["row"] for run in runs]
    (out / "table.md").write_text(markdown(rows))
    with (out / "table.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    figure = plot_curves(runs)
    figure.savefig(out / "curves.png", dpi=120)
    plt.close(figure)
    return [out / "table.md", out / "table.csv", out / "curves.png"]


def plot_curves(runs: list[dict]) -> plt.Figure:
    """One panel per curve against the training step; a run keeps its colour in every panel, also in
    those where earlier runs have no values (a Gaussian run has no chain lag). In the panels of the
    samples (FID, IS, coverage), a ring marks a validation whose samples continued lagging chains."""
    columns = -(-len(CURVES) // 2)
    figure, axes = plt.subplots(2, columns, figsize=(5 * columns, 7.2))
    for axis in axes.flat[len(CURVES) :]:
        axis.set_axis_off()
    for axis, (key, label) in zip(axes.flat[: len(CURVES)], CURVES, strict=True):
        for index, run in enumerate(runs):
            if run["curves"][key]:
                steps, values = zip(*run["curves"][key], strict=True)
                axis.plot(steps, values, marker=".", color=f"C{index % 10}", label=run["row"]["model"])
            ringed = [(s, v) for s, v in run["curves"][key] if s in run["lagging_steps"]]
            if key in SAMPLE_CURVES and ringed:
                steps, values = zip(*ringed, strict=True)
                rings = axis.plot(steps, values, "o", mfc="none", mec="k", ms=10, label=LAGGING)
                if key == "val/fid":
                    axis.legend(handles=rings)
        axis.set_xlabel("training step")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes.flat[0].legend()
    figure.tight_layout()
    return figure


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ebmflow report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help="run directories (each with metrics.csv)")
    parser.add_argument("--wandb-group", metavar="ENTITY/PROJECT/GROUP", help="a W&B group's runs (online)")
    parser.add_argument("--out", default="report", help="output folder")
    args = parser.parse_args(argv)
    if not args.runs and not args.wandb_group:
        parser.error("give run directories, --wandb-group ENTITY/PROJECT/GROUP, or both")
    runs, bad = [], []
    for folder in args.runs:
        try:
            run = read_run(folder)
        except (OSError, ValueError, yaml.YAMLError) as error:
            bad.append(f"{folder}: {error}")
            continue
        for line in run["damaged"]:
            print(
                f"{Path(folder) / 'metrics.csv'}: line {line} is damaged (cut short?); left out",
                file=sys.stderr,
            )
        runs.append(run)
    if args.wandb_group:
        runs += read_wandb_group(args.wandb_group)
    if runs:
        for path in write_report(runs, args.out):
            print(f"wrote {path}")
    if bad:
        print(f"left out {len(bad)} run(s):\n  " + "\n  ".join(bad), file=sys.stderr)
        sys.exit(1)
