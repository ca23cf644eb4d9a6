"""Train a run's RBM on with its flow frozen, and score its samples as it goes (docs/results.md, round 9).

    python -m scripts.frozen_flow RUN_DIR [--steps 1500] [--every 250] [--average 0.99 0.999]
        [--control-seeds 6] [--feature fashion_mnist] [--samples 2000] [--out FILE.jsonl]
        [--train-tempering REPLICAS SWEEPS] [--equilibrium REPLICAS SWEEPS] [--centering RATE]

From RUN_DIR's checkpoints/last.ckpt the prior alone trains on as in the run: its optimiser from the
run's config (fresh momentum; no schedule), its sampler and persistent chains, its loss in bits/dim,
training batches with their dequantization noise; the flow's parameters never change. Every ``--every``
steps, 2,000 (``--samples``) samples are drawn as validation draws them (the generation sampler, seed 0)
and scored as ``scripts/compare_samplers.py`` scores them (FID, IS, class coverage, mean −F, moment gap
against the test images' codes): with the live parameters and with each exponential moving average
(``--average``: ``ebmflow.callbacks.PriorAveraging`` with those decays) of them. At step 0 the live model is
also sampled at ``--control-seeds`` more seeds: how far FID moves from sampling alone. With the codes
held still, a prior whose FID swings anyway swings by itself, not because it lags a moving flow.

``--equilibrium REPLICAS SWEEPS`` scores samples from parallel tempering instead (REPLICAS replicas,
geometric β 1 to 0.1, SWEEPS sweeps from fair coins, as ``compare_samplers --tempering`` draws them; each
row keeps the ladder's smallest swap acceptance): the RBM's own distribution, where short runs may
flatter it (docs/results.md, rounds 10b and 11). ``--train-tempering REPLICAS SWEEPS`` trains the prior's
negative phase by parallel tempering instead of the run's sampler (as many chains per replica, an adaptive
geometric ladder from β 1 to 0.1, SWEEPS sweeps a step, burnt in for ``BURN_IN`` sweeps from fair coins
first, from its own seed, so the training random stream starts where a plain run's does): a prior learning
against its equilibrium rather than against short runs. Validation's samples stay the run's generation
sampler's. (Round 12's rows were drawn before the burn-in had its own seed: rerun, they differ by
sampling noise.) ``--centering RATE`` trains by the centered gradient (``RBMPrior.set_centering``: offsets
set by the first step's codes, then following them at RATE) where the run learned by the plain one, or
at RATE where it was centered already (its offsets start afresh).
Nothing in RUN_DIR is written; ``--out`` (a new file) keeps the rows as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor

from ebmflow.callbacks import PriorAveraging
from ebmflow.callbacks.base import fixed_noise
from ebmflow.module import EBMFlow
from priors import ParallelTempering, RBMPrior
from scripts.compare_samplers import BATCH, describe, open_rbm_run, posterior, score, yardstick

BURN_IN = 500  # sweeps: a 20-replica ladder from fair coins converged by then on round 11's RBMs


def train_prior(
    model: EBMFlow, batches: Iterator[tuple[Tensor, Tensor]], steps: int, after_step: Callable[[int], None]
) -> None:
    """``steps`` updates of the prior alone on the latents of ``batches`` (the flow frozen), by the run's
    own optimiser at its starting rate (neither --model.lr_scheduler nor --model.prior_lr_scheduler is
    stepped); ``after_step(step)`` after each."""
    optimizer = model.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    scale = model.dims * math.log(2)  # the training objective is in bits/dim
    for step in range(1, steps + 1):
        images, _ = next(batches)
        model.prior.train()
        with torch.no_grad():  # the flow and the dequantizer get no gradient: their optimiser skips them
            y, _ = model.dequantizer(images)
            z, _ = model.flow(y)
        loss = model.prior.loss(z.flatten(1)) / scale
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.prior.eval()
        after_step(step)


def burnt_in_tempering(prior: RBMPrior, replicas: int, sweeps: int) -> ParallelTempering:
    """A training sampler for ``prior`` in place of its own: parallel tempering with as many chains per
    replica, ``replicas`` replicas on an adaptive geometric ladder (β 1 to 0.1), ``sweeps`` sweeps a step,
    its states run from fair coins for ``BURN_IN`` sweeps, the ladder adapting as in training (its swap
    counts then cleared)."""
    sampler = ParallelTempering(
        sweeps, chains=len(prior.sampler.persistent_states()), replicas=replicas, adaptive=True
    )
    sampler.bind(prior.n_visible, prior.dim - prior.n_visible)
    with torch.no_grad():
        for _ in range(-(-BURN_IN // sweeps)):
            sampler.negative_phase(prior.spin_model())
    sampler.statistics()
    return sampler


def endless(loader: torch.utils.data.DataLoader) -> Iterator[tuple[Tensor, Tensor]]:
    while True:
        yield from loader


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--average", type=float, nargs="*", default=[], help="EMA decays to score beside")
    parser.add_argument("--control-seeds", type=int, default=6)
    parser.add_argument("--feature", default="fashion_mnist")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=12345, help="the training batches' order and noise")
    parser.add_argument("--out", type=Path, help="a new file for the rows as JSON lines")
    for option, purpose in (
        (
            "--train-tempering",
            "train against parallel tempering (adaptive geometric ladder, SWEEPS sweeps a step)",
        ),
        (
            "--equilibrium",
            "score samples from parallel tempering (geometric, β 1 to 0.1), not the generation sampler",
        ),
    ):
        parser.add_argument(option, type=int, nargs=2, metavar=("REPLICAS", "SWEEPS"), help=purpose)
    parser.add_argument("--centering", type=float, metavar="RATE", help="train by the centered gradient")
    args = parser.parse_args(argv)
    if args.out is not None and args.out.exists():
        parser.error(f"{args.out} exists: give --out a new file (this script never overwrites one)")
    if args.out is not None and not args.out.parent.is_dir():
        parser.error(f"{args.out.parent} does not exist: make it, or give --out a file in a folder that does")
    if args.steps < 0 or args.every < 1 or args.control_seeds < 0:
        parser.error("--steps must be >= 0, --every >= 1 and --control-seeds >= 0")
    if args.centering is not None and not 0 < args.centering <= 1:
        parser.error(f"--centering takes a rate in (0, 1], got {args.centering}")
    if not all(0 < decay < 1 for decay in args.average):
        parser.error(f"--average takes decays in (0, 1), got {args.average}")
    for option in ("train_tempering", "equilibrium"):
        if (value := getattr(args, option)) is not None and (value[0] < 2 or value[1] < 1):
            parser.error(f"--{option.replace('_', '-')} takes REPLICAS >= 2 and SWEEPS >= 1, got {value}")
    model, data = open_rbm_run(parser, args.run, "this script trains an RBM-Flow run's prior")
    prior = model.prior
    if args.train_tempering is not None and prior.sampler.persistent_states() is None:
        parser.error(f"{args.run}'s sampler keeps no chains: --train-tempering needs their number")
    if args.equilibrium is not None:
        replicas, sweeps = args.equilibrium
        prior.generation_sampler = ParallelTempering(sweeps, replicas=replicas)
    elif prior.generation_sampler is None:  # validation drew with the training sampler
        prior.generation_sampler = prior.sampler
    ruler = yardstick(data, args.feature, args.samples)
    averages = [PriorAveraging(decay) for decay in args.average]
    for average in averages:
        average.start(prior)
    out = args.out.open("x") if args.out is not None else None

    @torch.no_grad()
    def evaluate(step: int, readout: str, seed: int = 0) -> None:
        probabilities = posterior(model, ruler.images)
        batches, acceptance = [], []
        with fixed_noise(seed):  # batch by batch, as validation draws them
            for _ in range(-(-args.samples // BATCH)):
                batches.append(prior.sample_discrete(BATCH))
                if args.equilibrium is not None:
                    acceptance.append(prior.generation_sampler.sample_acceptance)
            s = torch.cat(batches)[: args.samples]
            row = {"step": step, "readout": readout, "seed": seed} | score(model, ruler, s, probabilities)
        line = describe(row)
        if acceptance:
            row["smallest_swap_acceptance"] = torch.stack(acceptance).mean(0).min().item()
            line += f", smallest swap acceptance {row['smallest_swap_acceptance']:.3f}"
        print(f"step {step}, {readout}, seed {seed}: {line}", flush=True)
        if out is not None:
            out.write(json.dumps(row) + "\n")
            out.flush()

    def evaluate_all(step: int) -> None:
        evaluate(step, "live")
        for average in averages:
            average.apply(prior)
            evaluate(step, f"average {average.decay}")
            average.restore(prior)

    def after_step(step: int) -> None:
        for average in averages:
            average.update(prior)
        if step % args.every == 0:
            if args.train_tempering is not None:
                rates = prior.sampler.statistics()
                offered = [v.item() for k, v in rates.items() if k.startswith("swap_acceptance")]
                pairs = len(prior.sampler.betas) - 1  # one sweep a step offers every other pair only
                worst = min(offered, default=float("nan"))
                print(
                    f"step {step}: training ladder's smallest swap acceptance {worst:.3f} "
                    f"({len(offered)} of {pairs} pairs offered swaps)",
                    flush=True,
                )
            evaluate_all(step)

    evaluate_all(0)
    for seed in range(1, args.control_seeds + 1):
        evaluate(0, "live", seed)
    data.setup("fit")
    if args.centering is not None:
        prior.set_centering(args.centering)
    torch.manual_seed(args.seed)
    if args.train_tempering is not None:
        with fixed_noise(args.seed + 1):  # the training stream starts where a plain run's does
            prior.sampler = burnt_in_tempering(prior, *args.train_tempering)
    train_prior(model, endless(data.train_dataloader()), args.steps, after_step)
    if out is not None:
        out.close()


if __name__ == "__main__":
    main()
