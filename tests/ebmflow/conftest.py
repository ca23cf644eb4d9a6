"""The tiny RBM-Flow config (tests/ebmflow/helpers.py) written to a file, as the command reads it."""

from pathlib import Path

import pytest
import yaml

from tests.ebmflow.helpers import TINY


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    config = {**TINY, "trainer": {**TINY["trainer"], "default_root_dir": str(tmp_path / "run")}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
