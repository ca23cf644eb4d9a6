"""How the cost of block-Gibbs sweeps grows with the number of chains (issue: many chains, cheaply).

    python -m bench.samplers [--repeats N] [--sweeps S] [--device cpu|cuda]

At N = 784 (Fashion-MNIST) and N = 3072 (CIFAR-10), n_v = n_h = N/2, float32 and bf16 products: seconds
per sweep for 20 … 2,000 chains, interleaved in one run, reported as the cost relative to 20 chains
(the ratio that matters: how much more a step costs for more chains) and as chain-sweeps per second.
Then parallel tempering at the size of the configs' sampler, against block Gibbs with the same
number of chains in total.
"""

from __future__ import annotations

import argparse

import torch

from bench.common import describe_machine, interleaved, report
from priors.samplers import RBM, BlockGibbs, ParallelTempering, gibbs

CHAINS = (20, 50, 100, 200, 500, 1000, 2000)


def rbm(dim: int, device: str, seed: int = 0) -> RBM:
    """Random couplings of a trained-like size (σ_max(W) near the cap for Δ = 2.5)."""
    g = torch.Generator().manual_seed(seed)
    n_v = dim // 2
    weight = torch.randn(n_v, dim - n_v, generator=g)
    weight *= 0.99 * 2.5 / torch.linalg.matrix_norm(weight, ord=2)
    return RBM(
        weight.to(device),
        0.1 * torch.randn(n_v, generator=g).to(device),
        torch.zeros(dim - n_v, device=device),
    )


def sweep_case(model: RBM, chains: int, sweeps: int, dtype: torch.dtype):
    start = model.random_visible(chains)

    def run() -> None:
        gibbs(model, start, sweeps, dtype=dtype)

    return run


def chain_curve(dim: int, device: str, sweeps: int, repeats: int) -> dict:
    model = rbm(dim, device)
    cases = {
        (precision, chains): sweep_case(model, chains, sweeps, dtype)
        for precision, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16))
        for chains in CHAINS
    }
    seconds = interleaved({f"{p} {c}": fn for (p, c), fn in cases.items()}, repeats)
    rows = {}
    for precision, chains in cases:
        per_sweep = seconds[f"{precision} {chains}"] / sweeps
        base = seconds[f"{precision} {CHAINS[0]}"] / sweeps
        rows[f"{precision}, {chains} chains"] = {
            "ms per sweep": 1e3 * per_sweep,
            f"cost / {CHAINS[0]} chains": per_sweep / base,
            "chain-sweeps per s": chains / per_sweep,
        }
    return rows


def tempering_cost(dim: int, device: str, repeats: int) -> dict:
    """One negative phase of ParallelTempering(20 sweeps, 100 chains, 10 replicas) against BlockGibbs
    with 200 sweeps of 100 chains (the configs' two choices) and 20 sweeps of 1,000 chains."""
    model = rbm(dim, device)
    samplers = {
        "BlockGibbs 200 sweeps x 100 chains": BlockGibbs(200, 100),
        "BlockGibbs 20 sweeps x 1000 chains": BlockGibbs(20, 1000),
        "ParallelTempering 20 sweeps x 100 chains x 10 replicas": ParallelTempering(20, 100, replicas=10),
    }
    for sampler in samplers.values():
        sampler.bind(model.n_visible, model.weight.shape[1])
        sampler.to(device)
    seconds = interleaved({k: (lambda s=s: s.negative_phase(model)) for k, s in samplers.items()}, repeats)
    base = seconds["BlockGibbs 200 sweeps x 100 chains"]
    return {k: {"seconds": v, "relative": v / base} for k, v in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sweeps", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    results = {"machine": describe_machine(args.device)}
    for dim in (784, 3072):
        results[f"sweeps against chains, N = {dim}"] = chain_curve(
            dim, args.device, args.sweeps, args.repeats
        )
        results[f"samplers' negative phase, N = {dim}"] = tempering_cost(dim, args.device, args.repeats)
    report("samplers", results)


if __name__ == "__main__":
    main()
