"""Two-process CPU DDP (gloo) end to end through the ebmflow command: PCD chains stay rank-local and
are saved for every rank."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.ebmflow.conftest import TINY

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_process_ddp_keeps_rank_local_chains(tmp_path: Path) -> None:
    trainer = {
        **TINY["trainer"],
        "default_root_dir": str(tmp_path / "run"),
        "devices": 2,
        "strategy": "ddp",
        "max_steps": 3,
        "callbacks": [
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {"dirpath": str(tmp_path / "ck"), "save_last": True},
            }
        ],
    }
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump({**TINY, "trainer": trainer}))
    command = [str(Path(sys.executable).parent / "ebmflow"), "fit", "--config", str(path)]
    env = {**os.environ, "PL_TORCH_DISTRIBUTED_BACKEND": "gloo"}
    result = subprocess.run(
        command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True)
    chains = state["state_dict"]["prior.chains"]
    assert chains.shape == (2, 8, 52)
    assert not torch.equal(chains[0], chains[1])
    assert state["ebmflow_rng"]["torch"].shape[0] == 2
