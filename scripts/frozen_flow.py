"""Train a run's RBM on with its flow frozen, and score its samples as it goes (docs/results.md, round 9).

    python -m scripts.frozen_flow RUN_DIR [--steps 1500] [--every 250] [--average 0.99 0.999]
        [--control-seeds 6] [--feature fashion_mnist] [--samples 2000] [--out FILE.jsonl]

From RUN_DIR's checkpoints/last.ckpt the prior alone trains on as in the run: its optimiser from the
run's config (fresh momentum; no schedule), its sampler and persistent chains, its loss in bits/dim,
training batches with their dequantization noise; the flow's parameters never change. Every ``--every``
steps, 2,000 (``--samples``) samples are drawn as validation draws them (the generation sampler, seed 0)
and scored as ``scripts/compare_samplers.py`` scores them (FID, IS, class coverage, mean −F, moment gap
against the test images' codes): with the live parameters and with each exponential moving average
(``--average``: ``ebmflow.callbacks.PriorAveraging`` with those decays) of them. At step 0 the live model is
also sampled at ``--control-seeds`` more seeds: how far FID moves from sampling alone. With the codes
held still, a prior whose FID swings anyway swings by itself, not because it lags a moving flow.
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
from scripts.compare_samplers import BATCH, describe, open_rbm_run, posterior, score, yardstick


def train_prior(
    model: EBMFlow, batches: Iterator[tuple[Tensor, Tensor]], steps: int, after_step: Callable[[int], None]
) -> None:
    """``steps`` updates of the prior alone on the latents of ``batches`` (the flow frozen), by the run's
    own optimiser; ``after_step(step)`` after each."""
    optimizer = model.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer  # no schedule
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
    args = parser.parse_args(argv)
    if args.out is not None and args.out.exists():
        parser.error(f"{args.out} exists: give --out a new file (this script never overwrites one)")
    if args.steps < 0 or args.every < 1 or args.control_seeds < 0:
        parser.error("--steps must be >= 0, --every >= 1 and --control-seeds >= 0")
    if not all(0 < decay < 1 for decay in args.average):
        parser.error(f"--average takes decays in (0, 1), got {args.average}")
    model, data = open_rbm_run(parser, args.run, "this script trains an RBM-Flow run's prior")
    prior = model.prior
    ruler = yardstick(data, args.feature, args.samples)
    averages = [PriorAveraging(decay) for decay in args.average]
    for average in averages:
        average.start(prior)
    out = args.out.open("x") if args.out is not None else None

    @torch.no_grad()
    def evaluate(step: int, readout: str, seed: int = 0) -> None:
        probabilities = posterior(model, ruler.images)
        with fixed_noise(seed):  # batch by batch, as validation draws them
            s = torch.cat([prior.sample_discrete(BATCH) for _ in range(-(-args.samples // BATCH))])
            s = s[: args.samples]
            row = {"step": step, "readout": readout, "seed": seed} | score(model, ruler, s, probabilities)
        print(f"step {step}, {readout}, seed {seed}: {describe(row)}", flush=True)
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
            evaluate_all(step)

    evaluate_all(0)
    for seed in range(1, args.control_seeds + 1):
        evaluate(0, "live", seed)
    data.setup("fit")
    torch.manual_seed(args.seed)
    train_prior(model, endless(data.train_dataloader()), args.steps, after_step)
    if out is not None:
        out.close()


if __name__ == "__main__":
    main()
