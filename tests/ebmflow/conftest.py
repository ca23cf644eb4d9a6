"""A tiny RBM-Flow on the bundled digits, small enough for a 2-core CI machine."""

from pathlib import Path

import pytest
import yaml

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


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    config = {**TINY, "trainer": {**TINY["trainer"], "default_root_dir": str(tmp_path / "run")}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
