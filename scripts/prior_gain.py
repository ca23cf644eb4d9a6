"""Split a run's test bits/dim into its prior's share and its flow's, and measure what the prior buys over
the best Gaussian on the same codes (docs/results.md, round 24).

    python -m scripts.prior_gain RUN_DIR [RUN_DIR ...] [--ais-steps 1000] [--ais-chains 100] [--seed 0]

For each run (its config.yaml and checkpoints/last.ckpt, the prior as ``ebmflow test`` evaluates it) on
every test image, with uniform dequantization noise drawn from ``--seed`` (the same noise for every run):

- total = prior + flow, in bits/dim: ``prior`` = −log p(z), the prior's term; ``flow`` = the rest
  (−log|det ∂z/∂y| + log q(u|x) + D log 256);
- ``Gaussian``: −log N(z; m, S) on the same z, with m and S the maximum-likelihood full-covariance Gaussian
  of the train split's z (noise from ``--seed`` + 1): the flow's codes scored by the best Gaussian prior,
  so ``flow + Gaussian`` is the flow under that prior;
- ``gain`` = Gaussian − prior: what the run's prior explains beyond its codes' first two moments (about 0
  for a learned Gaussian; negative where the prior fits its codes worse than their own Gaussian does).

total = (flow + Gaussian) − gain, so between two runs a difference in total splits into the flows' share
and the priors'. Each later RUN_DIR is also printed as its difference from the first, paired by image.
A discrete prior's log Z_s is estimated afresh (``estimate_log_partition("auto")``: exact where it can
enumerate, else AIS with ``--ais-steps`` x ``--ais-chains``) and printed with its standard error. Runs
whose test splits differ (in dimensions or number of images) are refused before any is measured. Fitted
on the train split and scored on the test split, the Gaussian's bits/dim is pessimistic by about k/(2n)
nats, k = d + d(d+1)/2 its parameters for d dimensions and n train images, the same for every run on one
data set. Nothing in RUN_DIR is written.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from ebmflow.data import ImageDataModule
from ebmflow.module import EBMFlow
from priors import DiscretePrior
from scripts.compare_samplers import BATCH, build, check_run, restore

TERMS = ("total", "prior", "flow", "Gaussian", "flow + Gaussian", "gain")


@dataclass
class Codes:
    """Per image of one split, in nats: z (n, D), the prior's log p(z) and the rest of log P(x)."""

    z: Tensor
    prior: Tensor
    rest: Tensor


@torch.no_grad()
def codes(model: EBMFlow, data: ImageDataModule, split: str, seed: int) -> Codes:
    """The split's latents under uniform dequantization noise drawn from ``seed``."""
    torch.manual_seed(seed)
    z, prior, rest = [], [], []
    for images, _ in DataLoader(data.split(split), batch_size=BATCH):
        latent, logdet, log_q = model._latent(images, model.uniform)
        z.append(latent.double())
        prior.append(model.prior.log_prob(latent).double())
        rest.append((logdet - log_q).double() - model.dims * math.log(256))
    return Codes(torch.cat(z), torch.cat(prior), torch.cat(rest))


def gaussian_log_prob(train: Tensor, test: Tensor) -> Tensor:
    """log N(test; m, S) per row, with m, S the maximum-likelihood mean and covariance of ``train``'s
    rows (float64)."""
    mean = train.mean(0)
    centred = train - mean
    cholesky = torch.linalg.cholesky(centred.T @ centred / len(train))
    solved = torch.linalg.solve_triangular(cholesky, (test - mean).T, upper=False)
    log_det = 2 * cholesky.diagonal().log().sum()
    return -0.5 * (solved.square().sum(0) + log_det + train.shape[1] * math.log(2 * math.pi))


def terms(model: EBMFlow, data: ImageDataModule, seed: int) -> dict[str, Tensor]:
    """Each of ``TERMS`` per test image, in bits/dim."""
    test = codes(model, data, "test", seed)
    gaussian = gaussian_log_prob(codes(model, data, "train", seed + 1).z, test.z)
    nats = {
        "total": -(test.prior + test.rest),
        "prior": -test.prior,
        "flow": -test.rest,
        "Gaussian": -gaussian,
        "flow + Gaussian": -(test.rest + gaussian),
        "gain": test.prior - gaussian,
    }
    return {name: value / (model.dims * math.log(2)) for name, value in nats.items()}


def describe(values: dict[str, Tensor], sign: str = "") -> str:
    """'name value ± stderr' for each term; ``sign``: '+' to sign the values (differences)."""
    return ", ".join(
        f"{name} {value.mean():{sign}.4f} ± {value.std() / math.sqrt(len(value)):.4f}"
        for name, value in values.items()
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--ais-steps", type=int, default=1000)
    parser.add_argument("--ais-chains", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.ais_steps < 1 or args.ais_chains < 1:
        parser.error(f"--ais-steps and --ais-chains must be >= 1, got {args.ais_steps} and {args.ais_chains}")
    for run in args.runs:
        check_run(parser, run)
    built = [build(run) for run in args.runs]
    splits = [f"{model.dims} dims x {len(data.split('test')):,} test images" for model, data in built]
    if len(set(splits)) > 1:
        parser.error(
            f"the runs' test splits differ ({', '.join(splits)}): pairing by image needs runs on the same "
            "data set; give such runs one call each"
        )
    first = None
    for run, (model, data) in zip(args.runs, built, strict=True):
        model = restore(model, run)
        if isinstance(model.prior, DiscretePrior):
            log_z, stderr = model.prior.estimate_log_partition("auto", args.ais_steps, args.ais_chains)
            print(f"{run}: log Z_s {log_z.item():.2f} ± {stderr.item():.2f}")
        values = terms(model, data, args.seed)
        print(f"{run} (bits/dim, {len(values['total']):,} test images): {describe(values)}")
        if first is None:
            first = run, values
        else:
            difference = {name: values[name] - first[1][name] for name in TERMS}
            print(f"{run} - {first[0]} (paired by image): {describe(difference, '+')}")


if __name__ == "__main__":
    main()
