"""Generate from a trained RBM-Flow with several spin samplers and score each: FID, IS and class coverage
with a shipped classifier, and the mean −F (log p̃) of the spins, beside that of the persistent chains.

    python scripts/compare_samplers.py RUN_DIR [--feature fashion_mnist] [--samples 2000]

RUN_DIR holds config.yaml and checkpoints/last.ckpt. Short block-Gibbs runs from fair coins (what the
configs' validation uses) against samplers that reach the model's equilibrium (tempering, chains
continued): a gap between them says the short runs measure their own distribution, not the RBM's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import yaml

from ebmflow.callbacks import build_quality_metrics
from ebmflow.checkpoints import read_checkpoint
from ebmflow.cli import make_cli
from ebmflow.health import class_coverage
from priors import BlockGibbs, ParallelTempering
from priors.samplers import gibbs
from priors.spins import sample_spins

MODEL_KEYS = ("seed_everything", "trainer", "model", "data")
BATCH = 500


def load(run: Path):
    """The run's model (last checkpoint, eval mode) and data module, from its config.yaml."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as handle:
        yaml.safe_dump({k: v for k, v in config.items() if k in MODEL_KEYS}, handle)
        handle.flush()
        cli = make_cli(
            ["--config", handle.name, "--trainer.logger", "false", "--trainer.callbacks", "[]"], run=False
        )
    model = cli.model
    model.on_load_checkpoint(checkpoint := read_checkpoint(run / "checkpoints" / "last.ckpt"))
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), cli.datamodule


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path)
    parser.add_argument("--feature", default="fashion_mnist")
    parser.add_argument("--samples", type=int, default=2000)
    args = parser.parse_args()
    model, data = load(args.run)
    prior = model.prior
    spins = prior.spin_model()
    chains = prior.sampler.persistent_states()

    def continued(n: int) -> torch.Tensor:
        return gibbs(spins, chains[torch.arange(n) % len(chains)], 50)

    samplers = {
        "block Gibbs, 50 sweeps from fair coins": lambda n: BlockGibbs(50).sample(spins, n),
        "block Gibbs, 1,000 sweeps from fair coins": lambda n: BlockGibbs(1000).sample(spins, n),
        "the persistent chains, 50 more sweeps": continued,
        "parallel tempering, 100 sweeps x 10 replicas": lambda n: ParallelTempering(100, replicas=10).sample(
            spins, n
        ),
    }
    fid, inception = build_quality_metrics(args.feature)
    data.setup("test")
    real = []
    with torch.no_grad():
        for images, _ in data.test_dataloader():
            fid.update(images, real=True)
            real.append(inception.inception(images).argmax(1))
    real = torch.cat(real)
    print(f"persistent chains: mean -F {spins.neg_free_energy(chains).mean().item():.1f}")
    for name, draw in samplers.items():
        torch.manual_seed(0)
        start = time.perf_counter()
        with torch.no_grad():
            s_v = torch.cat([draw(BATCH) for _ in range(-(-args.samples // BATCH))])[: args.samples]
            s = torch.cat([s_v, sample_spins(s_v @ spins.weight + spins.bias_h)], 1)
            images = torch.cat([model.decode(prior.sample_given(part)) for part in s.split(BATCH)])
            fid.reset()
            inception.reset()
            fid.update(images, real=False)
            inception.update(images)
            coverage = class_coverage(inception.inception(images).argmax(1), real, len(real.unique()))
            score, _ = inception.compute()
        print(
            f"{name}: FID {fid.compute().item():.1f}, IS {score.item():.2f}, classes ≥ 2 % "
            f"{coverage['classes']:.0f}, largest share {coverage['max_share']:.2f}, KL {coverage['kl']:.3f}, "
            f"mean -F {spins.neg_free_energy(s_v).mean().item():.1f} ({time.perf_counter() - start:.0f} s)"
        )


if __name__ == "__main__":
    main()
