"""Cost of the priors next to a Flow++ training step, and AIS at the paper's size (issue: priors).

    python -m bench.priors [--repeats N] [--device cpu|cuda]

1. Per-step cost of each prior's ``loss`` (forward + backward) at dim 3072, batch 20 (the RBM with
   several samplers: the paper's 200 sweeps of 20 chains and cheaper ones with more chains), as a
   fraction of one fp32 Flow++ training step at the paper's size measured in the same run.
2. AIS at dim 3072: time and standard error of log Z_s for a few schedules.
3. AIS bias against exact enumeration for N = 40 (n_h = 12), strong couplings, several seeds.
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.common import describe_machine, interleaved, report, synchronize
from bench.flow_step import paper_step
from priors import (
    BernoulliPrior,
    BlockGibbs,
    GaussianPrior,
    MultiCovPrior,
    ParallelTempering,
    Prior,
    RBMPrior,
)

DIM = 3072


def loss_case(prior: Prior, device: str):
    prior.train().to(device)
    z = torch.randn(20, DIM, requires_grad=True, device=device)

    def run() -> None:
        prior.zero_grad()
        prior.loss(z).backward()

    return run


def trained_like_rbm(dim: int, device: str, scale: float = 1.0, seed: int = 0) -> RBMPrior:
    """Random couplings with σ_max(W) at the cap 0.99 Δ (the largest any run can reach)."""
    torch.manual_seed(seed)
    prior = RBMPrior(dim, sampler=BlockGibbs(200, 20))
    with torch.no_grad():
        prior.coupling.raw_weight.normal_(0, scale)
        prior.bias.normal_(0, 0.1)
    return prior.eval().to(device)


RBM_SAMPLERS = {
    "200 sweeps, 20 chains (paper)": lambda: BlockGibbs(200, 20),
    "200 sweeps, 20 chains, bf16": lambda: BlockGibbs(200, 20, "bfloat16"),
    "200 sweeps, 100 chains": lambda: BlockGibbs(200, 100),
    "50 sweeps, 100 chains": lambda: BlockGibbs(50, 100),
    "50 sweeps, 100 chains, bf16": lambda: BlockGibbs(50, 100, "bfloat16"),
    "50 sweeps, 1000 chains": lambda: BlockGibbs(50, 1000),
    "50 sweeps, 1000 chains, bf16": lambda: BlockGibbs(50, 1000, "bfloat16"),
    "20 sweeps, 100 chains, bf16": lambda: BlockGibbs(20, 100, "bfloat16"),
    "tempering 10 sweeps, 100 chains x 5 replicas, bf16": lambda: ParallelTempering(
        10, 100, replicas=5, precision="bfloat16"
    ),
}


def overhead(repeats: int, device: str) -> dict:
    _, flow_step = paper_step(bf16=False, device=device)
    cases = {
        "Flow++ fp32 step": flow_step,
        "GaussianPrior loss": loss_case(GaussianPrior(DIM), device),
        "MultiCovPrior loss": loss_case(MultiCovPrior(DIM), device),
        "BernoulliPrior loss": loss_case(BernoulliPrior(DIM), device),
    }
    for name, make in RBM_SAMPLERS.items():
        torch.manual_seed(0)
        rbm = RBMPrior(DIM, sampler=make())
        with torch.no_grad():
            rbm.coupling.raw_weight.normal_(0, 0.05)
        cases[f"RBMPrior loss ({name})"] = loss_case(rbm, device)
    seconds = interleaved(cases, repeats)
    step = seconds["Flow++ fp32 step"]
    return {"seconds": seconds, "fraction of a Flow++ step": {k: v / step for k, v in seconds.items()}}


def ais_schedules(device: str) -> dict:
    prior = trained_like_rbm(DIM, device)
    results = {}
    for steps, chains in ((100, 100), (300, 100), (1000, 100)):
        torch.manual_seed(0)
        synchronize()
        start = time.perf_counter()
        value, stderr = prior.estimate_log_partition(method="ais", steps=steps, chains=chains)
        synchronize()
        results[f"{steps} temperatures, {chains} chains"] = {
            "seconds": time.perf_counter() - start,
            "log Z_s": value.item(),
            "standard error": stderr.item(),
        }
    return results


def ais_bias(device: str, seeds: int = 5) -> dict:
    rows = {}
    for seed in range(seeds):
        torch.manual_seed(seed)
        prior = RBMPrior(40, n_visible=28, delta=4.0).double()
        with torch.no_grad():
            prior.coupling.raw_weight.copy_(0.6 * torch.randn(28, 12))
            prior.bias.copy_(0.5 * torch.randn(40))
        prior.eval().to(device)
        exact, _ = prior.estimate_log_partition(method="exact")
        estimate, stderr = prior.estimate_log_partition(method="ais", steps=2000, chains=400)
        rows[f"seed {seed}"] = {
            "AIS - exact (nats)": estimate.item() - exact.item(),
            "standard error": stderr.item(),
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_flush_denormal(True)  # as the ebmflow command does
    results = {
        "machine": describe_machine(args.device),
        "overhead": overhead(args.repeats, args.device),
        "AIS at dim 3072": ais_schedules(args.device),
        "AIS bias, N = 40, n_h = 12": ais_bias(args.device),
    }
    report("priors", results)


if __name__ == "__main__":
    main()
