"""``ebmflow report``: the paper's Table 1 (Markdown and CSV) and Fig. 1 (bits/dim, FID and IS against
epoch, one line per run) from run directories, offline, from their CSV logs.

    ebmflow report runs/cifar10/rbm runs/cifar10/bernoulli runs/cifar10/multicov runs/cifar10/gaussian \
        --out report

A run directory holds the CSVLogger's ``metrics.csv`` and ``hparams.yaml`` and LightningCLI's
``config.yaml`` (the layout of the configs in conf/). The bits/dim column is the test split's (with its
standard error) once ``ebmflow test`` has logged into the run directory, the last validation value
before that.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import yaml

__all__ = ["main", "read_run", "write_report"]

NAMES = {
    "RBMPrior": "RBM-Flow",
    "BernoulliPrior": "D-Flow",
    "MultiCovPrior": "MultiCov-Flow",
    "GaussianPrior": "Gaussian-Flow",
}
COLUMNS = (
    "model",
    "epochs",
    "bits/dim",
    "bits/dim error",
    "IS",
    "IS std",
    "FID",
    "NMI",
    "parameters",
    "wall seconds",
)
CURVES = (("val/bpd_uniform", "bits/dim"), ("val/fid", "FID"), ("val/is", "Inception Score"))


def read_run(folder: str | Path) -> dict:
    """One row of the table and the run's per-epoch curves."""
    folder = Path(folder)
    metrics_path = folder / "metrics.csv"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path} is missing: pass the run directory that holds metrics.csv")
    with metrics_path.open() as handle:
        rows = list(csv.DictReader(handle))
    last: dict[str, float] = {}
    curves: dict[str, dict[int, float]] = {key: {} for key, _ in CURVES}
    for row in rows:
        for key, value in row.items():
            if value not in ("", None) and key not in ("epoch", "step"):
                last[key] = float(value)
                if key in curves:
                    curves[key][int(row["epoch"])] = float(value)
    config = (
        yaml.safe_load((folder / "config.yaml").read_text()) if (folder / "config.yaml").is_file() else {}
    )
    prior = config.get("model", {}).get("prior", {}).get("class_path", "").rsplit(".", 1)[-1]
    hparams = (
        yaml.safe_load((folder / "hparams.yaml").read_text()) if (folder / "hparams.yaml").is_file() else {}
    )
    epochs = max((int(r["epoch"]) for r in rows if r.get("epoch") not in ("", None)), default=-1) + 1
    tested = "test/bpd_uniform" in last
    row = {
        "model": NAMES.get(prior, prior or folder.name),
        "epochs": epochs,
        "bits/dim": last.get("test/bpd_uniform" if tested else "val/bpd_uniform", math.nan),
        "bits/dim error": last.get("test/bpd_uniform_stderr", math.nan) if tested else math.nan,
        "IS": last.get("val/is", math.nan),
        "IS std": last.get("val/is_std", math.nan),
        "FID": last.get("val/fid", math.nan),
        "NMI": last.get("val/code_nmi", math.nan),
        "parameters": (hparams or {}).get("num_parameters", math.nan),
        "wall seconds": last.get("train/wall_seconds", math.nan),
    }
    return {"row": row, "curves": {k: sorted(v.items()) for k, v in curves.items()}}


def _cell(value: float, digits: int, error: float = math.nan) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "–"
    text = f"{value:.{digits}f}"
    return text if math.isnan(error) else f"{text} ± {error:.{digits}f}"


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model | epochs | bits/dim | IS | FID | NMI | parameters | wall time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        parameters = "–" if isinstance(r["parameters"], float) else f"{r['parameters']:,}"
        wall = _cell(r["wall seconds"] / 3600, 2)
        cells = [
            r["model"],
            str(r["epochs"]),
            _cell(r["bits/dim"], 3, r["bits/dim error"]),
            _cell(r["IS"], 2, r["IS std"]),
            _cell(r["FID"], 1),
            _cell(r["NMI"], 3),
            parameters,
            wall if wall == "–" else f"{wall} h",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(folders: list[str | Path], out: str | Path) -> list[Path]:
    """Write table.md, table.csv and curves.png into ``out``; returns their paths."""
    runs = [read_run(f) for f in folders]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [run["row"] for run in runs]
    (out / "table.md").write_text(markdown(rows))
    with (out / "table.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    figure, axes = plt.subplots(1, len(CURVES), figsize=(5 * len(CURVES), 3.6))
    for axis, (key, label) in zip(axes, CURVES, strict=True):
        for run in runs:
            if run["curves"][key]:
                epochs, values = zip(*run["curves"][key], strict=True)
                axis.plot(epochs, values, marker=".", label=run["row"]["model"])
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(out / "curves.png", dpi=120)
    plt.close(figure)
    return [out / "table.md", out / "table.csv", out / "curves.png"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ebmflow report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories (each with metrics.csv)")
    parser.add_argument("--out", default="report", help="output folder")
    args = parser.parse_args(argv)
    for path in write_report(args.runs, args.out):
        print(f"wrote {path}")
