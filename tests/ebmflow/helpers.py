"""Shared pieces of the application tests: a tiny RBM-Flow on the bundled digits (as a config, as a
module and as a 4-step run directory, for the scripts that read one) and a quiet CPU Trainer, small
enough for a 2-core CI machine."""

import io
import tarfile
from pathlib import Path

import lightning as L
import numpy as np
import yaml
from PIL import Image

from ebmflow.command import main as ebmflow
from ebmflow.module import EBMFlow
from flows import FlowPlusPlus
from priors import BlockGibbs, RBMPrior

TINY = {
    "seed_everything": 0,
    "trainer": {
        "accelerator": "cpu",
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "logger": False,
        "max_steps": 4,
        "limit_val_batches": 2,
        "num_sanity_val_steps": 0,
    },
    "model": {
        "flow": {
            "class_path": "flows.FlowPlusPlus",
            "init_args": {"in_shape": [1, 8, 8], "filters": 8, "components": 3, "blocks": 1, "dropout": 0.1},
        },
        "prior": {
            "class_path": "priors.RBMPrior",
            "init_args": {
                "dim": 64,
                "n_visible": 52,
                "sampler": {"class_path": "priors.BlockGibbs", "init_args": {"steps": 3, "chains": 8}},
            },
        },
        "importance_samples": 2,
    },
    "data": {"class_path": "ebmflow.data.DigitsDataModule", "init_args": {"batch_size": 32}},
}


def fit_run(tmp_path: Path, prior: dict) -> Path:
    """A 4-step run of the tiny config with ``prior`` that writes checkpoints/last.ckpt: its directory."""
    run = tmp_path / "run"
    last = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"filename": "last"}}
    config = {
        **TINY,
        "trainer": {**TINY["trainer"], "default_root_dir": str(run), "callbacks": [last]},
        "model": {**TINY["model"], "prior": prior},
    }
    (path := tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    ebmflow(["fit", "--config", str(path)])
    return run


def tiny_model(prior=None, **kwargs) -> EBMFlow:
    flow = FlowPlusPlus((1, 8, 8), filters=8, components=3, blocks=1, dropout=0.1)
    prior = prior if prior is not None else RBMPrior(64, n_visible=52, sampler=BlockGibbs(3, 8))
    return EBMFlow(flow, prior, **kwargs)


def trainer(root: Path, **kwargs) -> L.Trainer:
    options = dict(
        accelerator="cpu",
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
        limit_val_batches=1,
    )
    options.update(kwargs)
    return L.Trainer(**options)


def write_image_archive(path: Path) -> None:
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as archive:
        for split in ("train", "test"):
            for label in ("cat", "dog"):
                for i in range(3):
                    buffer = io.BytesIO()
                    Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(
                        buffer, format="JPEG"
                    )
                    info = tarfile.TarInfo(f"pets/{split}/{label}/{i:04d}.jpg")
                    info.size = buffer.tell()
                    buffer.seek(0)
                    archive.addfile(info, buffer)
