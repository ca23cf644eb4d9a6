"""Generate from a trained RBM-Flow with several spin samplers and score each: FID, IS and class coverage
with a shipped classifier (and, on the line below, each class's share of the samples beside the test
images', for classifiers of at most 20 classes), the mean −F (log p̃) of the spins, beside that of the
persistent chains, and the moment gap of the spins against the test images' codes
(``ebmflow.health.moment_gap``, its sampling noise, the samples' and the codes', in brackets; the
codes' own row is its floor, since it sums their hidden units out through the RBM too).

    python scripts/compare_samplers.py RUN_DIR [--feature fashion_mnist] [--samples 2000] [--betas 1.1 1.2]
        [--tempering REPLICAS SWEEPS]

RUN_DIR holds config.yaml and checkpoints/last.ckpt. Short block-Gibbs runs from fair coins (what the
configs' validation uses) against samplers that reach the model's equilibrium (tempering, chains
continued): a gap between them says the short runs measure their own distribution, not the RBM's. The
last row decodes spins drawn from p(s | z) of test images: what the samples would be if the RBM matched
the codes of the data exactly, so the gap to it is the RBM's share of what is missing. ``--betas`` adds
tempering rows at lower spin temperatures (β > 1 sharpens p(s) towards its modes); the mean −F is
always measured at β = 1. Each tempering row is followed by its swap acceptance per neighbouring pair:
where one is near 0 the ladder does not mix, and the row is no equilibrium check — give ``--tempering``
more replicas and sweeps, and check that tripling the sweeps changes nothing (docs/results.md, round 10b:
the default 10 x 100 passed an RBM whose equilibrium, at 20 x 500 and 20 x 1,500, had collapsed).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore

from ebmflow.callbacks import build_quality_metrics
from ebmflow.checkpoints import read_checkpoint
from ebmflow.cli import make_cli
from ebmflow.data import ImageDataModule
from ebmflow.health import class_coverage, class_shares, moment_gap
from ebmflow.module import EBMFlow
from priors import BlockGibbs, ParallelTempering, RBMPrior
from priors.samplers import RBM, gibbs
from priors.spins import sample_spins

MODEL_KEYS = ("seed_everything", "trainer", "model", "data")
BATCH = 500
CHECKPOINT = Path("checkpoints") / "last.ckpt"
MAX_SHARES = 20  # class shares are printed for classifiers of at most this many classes


def build(run: Path) -> tuple[EBMFlow, ImageDataModule]:
    """The run's model (untrained) and data module, from its config.yaml."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    # the run's logger and callbacks are not needed here (and older runs' may not parse any more)
    config["trainer"] = {k: v for k, v in config["trainer"].items() if k not in ("logger", "callbacks")}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as handle:
        yaml.safe_dump({k: v for k, v in config.items() if k in MODEL_KEYS}, handle)
        handle.flush()
        cli = make_cli(
            ["--config", handle.name, "--trainer.logger", "false", "--trainer.callbacks", "[]"], run=False
        )
    return cli.model, cli.datamodule


def restore(model: EBMFlow, run: Path) -> EBMFlow:
    """The model with the run's last checkpoint loaded, in eval mode."""
    model.on_load_checkpoint(checkpoint := read_checkpoint(run / CHECKPOINT))
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def check_run(parser: argparse.ArgumentParser, run: Path) -> None:
    """A one-line ``parser.error`` naming the file that ``run`` lacks to be read as a run directory."""
    for needed in (run / "config.yaml", run / CHECKPOINT):
        if not needed.is_file():
            parser.error(f"{needed} not found: RUN_DIR must be the run directory of an `ebmflow fit`")


def open_rbm_run(parser: argparse.ArgumentParser, run: Path, purpose: str) -> tuple[EBMFlow, ImageDataModule]:
    """The RBM-Flow run in ``run`` with its last checkpoint loaded, and its data; or a one-line
    ``parser.error`` naming the missing file, or the prior the run trained instead (``purpose`` says what
    needed an RBM)."""
    check_run(parser, run)
    model, data = build(run)
    if not isinstance(model.prior, RBMPrior):
        parser.error(f"{run} trained a {type(model.prior).__name__}: {purpose} (priors.RBMPrior)")
    return restore(model, run), data


@dataclass
class Yardstick:
    """What samples are scored against: FID's test-split statistics and the classifier (``fid``,
    ``inception``), the test split's predicted classes (``real``), the classifier's class names
    (``names``) and the test images whose codes the moment gap compares with (``images``)."""

    fid: FrechetInceptionDistance
    inception: InceptionScore
    real: torch.Tensor
    names: list[str]
    images: torch.Tensor


def yardstick(data: ImageDataModule, feature: str, samples: int) -> Yardstick:
    """The test split of ``data`` measured once through ``feature``'s network, and its first ``samples``
    images."""
    fid, inception = build_quality_metrics(feature)
    data.setup("test")
    real = []
    with torch.no_grad():
        for images, _ in data.test_dataloader():
            fid.update(images, real=True)
            logits = inception.inception(images)
            real.append(logits.argmax(1))
    images = torch.cat([images for images, _ in data.test_dataloader()])[:samples]
    # the classes are named where the classifier is the data set's own (a torchvision data set names
    # them), numbered otherwise
    names = list(getattr(data.test_set, "classes", [])) if getattr(data, "name", None) == feature else []
    if len(names) != logits.shape[1]:
        names = [str(k) for k in range(logits.shape[1])]
    return Yardstick(fid, inception, torch.cat(real), names, images)


def posterior(model: EBMFlow, images: torch.Tensor) -> torch.Tensor:
    """p(s_i = +1 | z) of ``images`` under the model's current prior: (n, N)."""
    return torch.cat([model.encode(part) for part in images.split(BATCH)])


def score(
    model: EBMFlow, ruler: Yardstick, s: torch.Tensor, probabilities: torch.Tensor
) -> dict[str, float | list[float]]:
    """Decode the spins ``s`` ((n, N), visible units first) to images and score them: FID, IS, class
    coverage, the visible spins' mean −F and their moment gap (and its noise) against the codes
    ``probabilities`` (``posterior`` of the yardstick's images)."""
    spins = model.prior.spin_model()
    s_v = s[:, : model.prior.n_visible]
    images = torch.cat([model.decode(model.prior.sample_given(part)) for part in s.split(BATCH)])
    ruler.fid.reset()
    ruler.inception.reset()
    ruler.fid.update(images, real=False)
    ruler.inception.update(images)
    classes = ruler.inception.inception(images).argmax(1)
    coverage = class_coverage(classes, ruler.real, len(ruler.names))
    inception_score, _ = ruler.inception.compute()
    gap, noise = moment_gap(2 * probabilities - 1, s_v, spins.weight, spins.bias_h)
    return {
        "fid": ruler.fid.compute().item(),
        "is": inception_score.item(),
        **coverage,
        "neg_free_energy": spins.neg_free_energy(s_v).mean().item(),
        "moment_gap": gap,
        "moment_noise": noise,
        "shares": class_shares(classes, len(ruler.names)).tolist(),
    }


def describe(row: dict) -> str:
    """One line of a ``score`` row."""
    return (
        f"FID {row['fid']:.1f}, IS {row['is']:.2f}, classes ≥ 2 % {row['classes']:.0f}, largest share "
        f"{row['max_share']:.2f}, KL {row['kl']:.3f}, mean -F {row['neg_free_energy']:.1f}, moment gap "
        f"{row['moment_gap']:.2f} ({row['moment_noise']:.2f})"
    )


def describe_shares(row: dict, ruler: Yardstick) -> str:
    """The line under a ``score`` row: each class's share of the samples, the test images' in brackets
    (both as the classifier sees them)."""
    data = class_shares(ruler.real, len(ruler.names)).tolist()
    return "  class shares (the test images' in brackets): " + ", ".join(
        f"{name} {share:.3f} ({real:.3f})"
        for name, share, real in zip(ruler.names, row["shares"], data, strict=True)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path)
    parser.add_argument("--feature", default="fashion_mnist")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument(
        "--betas", type=float, nargs="*", default=[], help="also sample the spins from p(s)^β at these β"
    )
    parser.add_argument(
        "--tempering",
        type=int,
        nargs=2,
        default=[10, 100],
        metavar=("REPLICAS", "SWEEPS"),
        help="the tempering rows' replicas (geometric, β 1 to 0.1) and sweeps; each prints its swap rates",
    )
    args = parser.parse_args(argv)
    model, data = open_rbm_run(parser, args.run, "this script compares the spin samplers of an RBM-Flow run")
    prior = model.prior
    spins = prior.spin_model()
    chains = prior.sampler.persistent_states()

    def continued(n: int) -> torch.Tensor:
        return gibbs(spins, chains[torch.arange(n) % len(chains)], 50)

    samplers = {
        "block Gibbs, 50 sweeps from fair coins": lambda n: BlockGibbs(50).sample(spins, n),
        "block Gibbs, 1,000 sweeps from fair coins": lambda n: BlockGibbs(1000).sample(spins, n),
    }
    if chains is not None:  # a sampler without persistent state (an external one) has no chains to continue
        samplers["the persistent chains, 50 more sweeps"] = continued
    replicas, sweeps = args.tempering
    tempering = f"parallel tempering, {sweeps} sweeps x {replicas} replicas"
    acceptance: dict[str, list[torch.Tensor]] = {}  # each tempering row's swap acceptance, per batch

    def tempered(name: str, model: RBM) -> Callable[[int], torch.Tensor]:
        def draw(n: int) -> torch.Tensor:
            sampler = ParallelTempering(sweeps, replicas=replicas)
            s_v = sampler.sample(model, n)
            acceptance.setdefault(name, []).append(sampler.sample_acceptance)
            return s_v

        return draw

    samplers |= {
        tempering: tempered(tempering, spins),
        # What the RBM should reproduce: spins drawn from p(s | z) of the test images, decoded as samples.
        "the test images' codes, s ~ p(s | z)": None,
    }
    spin_models = {}  # rows that sample another spin model than the RBM's own
    for beta in args.betas:  # p(s)^β: the RBM with every parameter scaled by β
        name = f"{tempering}, at β = {beta}"
        spin_models[name] = colder = RBM(spins.weight * beta, spins.bias_v * beta, spins.bias_h * beta)
        samplers[name] = tempered(name, colder)
    ruler = yardstick(data, args.feature, args.samples)
    with torch.no_grad():  # p(s = +1 | z) of the test images: the aggregate posterior
        probabilities = posterior(model, ruler.images)

    if chains is not None:
        print(f"persistent chains: mean -F {spins.neg_free_energy(chains).mean().item():.1f}")
    for name, draw in samplers.items():
        torch.manual_seed(0)
        start = time.perf_counter()
        with torch.no_grad():
            if draw is None:  # s ~ p(s | z) of the test images
                s = torch.where(torch.rand_like(probabilities) < probabilities, 1.0, -1.0)
                s_v = s[:, : prior.n_visible]
            else:
                s_v = torch.cat([draw(BATCH) for _ in range(-(-args.samples // BATCH))])[: args.samples]
                drawn_from = spin_models.get(name, spins)
                s = torch.cat([s_v, sample_spins(s_v @ drawn_from.weight + drawn_from.bias_h)], 1)
            row = score(model, ruler, s, probabilities)
        print(f"{name}: {describe(row)} ({time.perf_counter() - start:.0f} s)")
        if len(ruler.names) <= MAX_SHARES:  # (Inception's 1,008 classes would not be read)
            print(describe_shares(row, ruler))
        if name in acceptance:  # near 0 at a pair: the ladder does not mix there, so neither does the row
            rates = torch.stack(acceptance[name]).mean(0).tolist()
            print(
                "  swap acceptance per neighbouring pair, β = 1 first: " + " ".join(f"{r:.3f}" for r in rates)
            )


if __name__ == "__main__":
    main()
