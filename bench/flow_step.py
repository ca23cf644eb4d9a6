"""Flow++ speed on the CPU or a GPU, as ratios measured in one run (issue: "Speed").

    python -m bench.flow_step [--port PATH] [--repeats N] [--train-steps N] [--device cpu|cuda] [--batch B]

1. A training step at the paper's size (filters 96, 32 components, 10 blocks, no attention, batch 20 or
   ``--batch``, 3x32x32, variational dequantizer with 2 blocks as in the public port): GFLOP by
   torch.utils.flop_counter, GFLOP/s in fp32 and bf16-mixed, beside a plain 3x3 convolution of the
   conditioner's size and, with ``--port``, the public PyTorch port (github.com/chrischute/flowplusplus,
   a local checkout; its code is not part of this project) measured in the same run.
2. Sampling 20 images against one fp32 training step, in fp32 and bf16-mixed, each NCHW and channels_last.
3. A short training run of a small flow on real CIFAR-10 (../shared/data) in fp32 and in the fast path
   (bf16-mixed + channels_last) from the same initialisation and batches, two noise seeds each: test
   bits/dim of all four; then the fp32-trained flow's samples decoded in both paths from the same latents.
4. The MixLogCDF inverse on the values the trained model's couplings see while sampling: mixture-CDF
   evaluations of safeguarded Newton against bisection at equal accuracy.
"""

from __future__ import annotations

import argparse
import copy
import io
import math
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import flows.logistic
from bench.common import count_flops, describe_machine, interleaved, report
from flows import (
    FlowPlusPlus,
    UniformDequantizer,
    VariationalDequantizer,
    to_channels_last,
    use_channels_last,
)

SHARED_CIFAR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpeg.tar.gz"


def paper_step(bf16: bool, channels_last: bool = False, device: str = "cpu", batch: int = 20):
    torch.manual_seed(0)
    flow = FlowPlusPlus((3, 32, 32), filters=96, components=32, blocks=10, dropout=0.2).train().to(device)
    deq = VariationalDequantizer((3, 32, 32), filters=96, blocks=2).train().to(device)
    use_channels_last(flow, channels_last)
    use_channels_last(deq, channels_last)
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=device)

    def step() -> None:
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            y, log_q = deq(to_channels_last(images, channels_last))
            z, logdet = flow(to_channels_last(y, channels_last))
            loss = (0.5 * z.square().flatten(1).sum(1) - logdet + log_q).mean()
        loss.backward()

    return flow, step


def conv_case(bf16: bool, backward: bool, device: str = "cpu", batch: int = 20):
    conv = torch.nn.Conv2d(192, 96, 3, padding=1).to(device)
    x = torch.randn(batch, 192, 32, 16, requires_grad=backward, device=device)

    def run() -> None:
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            out = conv(x)
        if backward:
            out.float().sum().backward()

    return run


def port_cases(path: str, batch: int = 20):
    sys.path.insert(0, path)
    from models import FlowPlusPlus as PortFlow  # the port's own package, found through --port

    torch.manual_seed(0)
    model = PortFlow(mid_channels=96, num_blocks=10, num_components=32, use_attn=False, drop_prob=0.2)
    images = torch.randint(0, 256, (batch, 3, 32, 32)).float() / 255

    def step() -> None:
        model.train()
        z, sldj = model(images)
        (0.5 * z.square().flatten(1).sum(1) - sldj).mean().backward()

    def sample() -> None:
        model.eval()
        with torch.no_grad():
            model(torch.randn(20, 3, 32, 32), reverse=True)

    return step, sample


def sampler(flow: FlowPlusPlus, channels_last: bool, device: str, bf16: bool = False):

    def sample() -> None:
        decode(flow, torch.randn(20, *flow.out_shape, device=device), channels_last, bf16)

    return sample


def decode(flow: FlowPlusPlus, z: torch.Tensor, channels_last: bool, bf16: bool) -> torch.Tensor:
    """Images in [0, 1] from latents z, the conditioners in bf16 under autocast when ``bf16``."""
    with torch.no_grad(), torch.autocast(z.device.type, dtype=torch.bfloat16, enabled=bf16):
        return flow.inverse(to_channels_last(z, channels_last))


def speed(args) -> dict:
    device, batch = args.device, args.batch
    flow, fp32_step = paper_step(bf16=False, device=device, batch=batch)
    _, bf16_step = paper_step(bf16=True, device=device, batch=batch)
    flow_nhwc, fp32_nhwc_step = paper_step(bf16=False, channels_last=True, device=device, batch=batch)
    _, bf16_nhwc_step = paper_step(bf16=True, channels_last=True, device=device, batch=batch)
    flow.eval()
    flow_nhwc.eval()
    cases = {
        "ours fp32 step": fp32_step,
        "ours bf16-mixed step": bf16_step,
        "ours fp32 step channels_last": fp32_nhwc_step,
        "ours bf16-mixed step channels_last": bf16_nhwc_step,
        "ours sample 20": sampler(flow, False, device),
        "ours sample 20 channels_last": sampler(flow_nhwc, True, device),
        "ours sample 20 bf16-mixed": sampler(flow, False, device, bf16=True),
        "ours sample 20 bf16-mixed channels_last": sampler(flow_nhwc, True, device, bf16=True),
        "conv fp32 fwd+bwd": conv_case(False, True, device, batch),
        "conv fp32 fwd": conv_case(False, False, device, batch),
        "conv bf16 fwd+bwd": conv_case(True, True, device, batch),
        "conv bf16 fwd": conv_case(True, False, device, batch),
    }
    if args.port:
        cases["port fp32 step"], cases["port sample 20"] = port_cases(args.port, batch)
    flow.train()
    flops = {
        "ours step": count_flops(fp32_step),
        "conv fwd+bwd": count_flops(conv_case(False, True, device, batch)),
        "conv fwd": count_flops(conv_case(False, False, device, batch)),
    }
    if args.port:
        flops["port step"] = count_flops(cases["port fp32 step"])
    flow.eval()
    seconds = interleaved(cases, args.repeats)
    gflops = {
        "ours fp32 step": flops["ours step"] / seconds["ours fp32 step"] / 1e9,
        "ours bf16-mixed step": flops["ours step"] / seconds["ours bf16-mixed step"] / 1e9,
        "conv fp32 fwd+bwd": flops["conv fwd+bwd"] / seconds["conv fp32 fwd+bwd"] / 1e9,
        "conv fp32 fwd": flops["conv fwd"] / seconds["conv fp32 fwd"] / 1e9,
        "conv bf16 fwd+bwd": flops["conv fwd+bwd"] / seconds["conv bf16 fwd+bwd"] / 1e9,
        "conv bf16 fwd": flops["conv fwd"] / seconds["conv bf16 fwd"] / 1e9,
    }
    fp32 = seconds["ours fp32 step"]
    ratios = {
        "ours fp32 GFLOP/s / conv fp32 fwd+bwd GFLOP/s": gflops["ours fp32 step"]
        / gflops["conv fp32 fwd+bwd"],
        "bf16-mixed speed-up over fp32 step": fp32 / seconds["ours bf16-mixed step"],
        "channels_last speed-up, fp32": fp32 / seconds["ours fp32 step channels_last"],
        "channels_last speed-up, bf16-mixed": seconds["ours bf16-mixed step"]
        / seconds["ours bf16-mixed step channels_last"],
        "bf16-mixed + channels_last speed-up over fp32 NCHW step": fp32
        / seconds["ours bf16-mixed step channels_last"],
        "sample 20 / fp32 step": seconds["ours sample 20"] / fp32,
        "sample 20 channels_last / fp32 step": seconds["ours sample 20 channels_last"] / fp32,
        "sample 20 bf16-mixed / fp32 step": seconds["ours sample 20 bf16-mixed"] / fp32,
        "sample 20 bf16-mixed channels_last / fp32 step": seconds["ours sample 20 bf16-mixed channels_last"]
        / fp32,
    }
    if args.port:
        gflops["port fp32 step"] = flops["port step"] / seconds["port fp32 step"] / 1e9
        ratios["ours fp32 GFLOP/s / port GFLOP/s"] = gflops["ours fp32 step"] / gflops["port fp32 step"]
        ratios["ours fp32 step time / port step time"] = seconds["ours fp32 step"] / seconds["port fp32 step"]
        ratios["ours sample / port sample"] = seconds["ours sample 20"] / seconds["port sample 20"]
        ratios["port sample 20 / port step"] = seconds["port sample 20"] / seconds["port fp32 step"]
    return {
        "batch": batch,
        "seconds": seconds,
        "GFLOP": {k: v / 1e9 for k, v in flops.items()},
        "GFLOP/s": gflops,
        "ratios": ratios,
    }


def cifar_subset(n_train: int, n_test: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random class-balanced-in-expectation subset of the JPEG CIFAR-10 archive, read in one pass."""
    with tarfile.open(SHARED_CIFAR) as archive:
        names = [m.name for m in archive.getmembers() if m.name.endswith(".jpg")]
    rng = np.random.default_rng(seed)
    wanted = {}
    for split, n in (("train", n_train), ("test", n_test)):
        pool = sorted(name for name in names if f"/{split}/" in name)
        for name in rng.choice(pool, size=n, replace=False):
            wanted[str(name)] = split
    images: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    with tarfile.open(SHARED_CIFAR) as archive:
        for member in archive:
            if member.name in wanted:
                data = archive.extractfile(member).read()
                images[wanted[member.name]].append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    return tuple(
        torch.from_numpy(np.stack(images[s])).permute(0, 3, 1, 2).contiguous() for s in ("train", "test")
    )


def bits_per_dim(
    flow: FlowPlusPlus, images: torch.Tensor, bf16: bool, channels_last: bool = False
) -> torch.Tensor:
    """Uniform-dequantization bound with a N(0, I) prior, (batch,)."""
    dims = images[0].numel()
    y, _ = UniformDequantizer()(to_channels_last(images, channels_last))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        z, logdet = flow(to_channels_last(y, channels_last))
    log_p = -0.5 * (z.square().flatten(1).sum(1) + dims * math.log(2 * math.pi)) + logdet
    return (-log_p + dims * math.log(256)) / (dims * math.log(2))


def short_training(args) -> tuple[dict, FlowPlusPlus]:
    """The same small flow trained from one initialisation on the same batches, in fp32 and in the fast
    path (bf16-mixed + channels_last), each with two dequantization-noise seeds: the spread between the
    two seeds of one precision is the yardstick for the difference between the precisions."""
    train, test = cifar_subset(args.train_images, args.test_images)
    torch.manual_seed(0)
    init = FlowPlusPlus((3, 32, 32), filters=32, components=8, blocks=2, dropout=0.0)
    init.train()
    init(UniformDequantizer()(train[:256])[0])  # ActNorm's data-dependent initialisation
    results, models = {}, {}
    runs = [
        (f"{path} seed {seed}", path == "fast path", seed)
        for path in ("fp32", "fast path")
        for seed in (2, 5)
    ]
    for name, fast, noise_seed in runs:
        flow = use_channels_last(copy.deepcopy(init), fast).train()
        optimiser = torch.optim.Adam(flow.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(1)
        torch.manual_seed(noise_seed)
        for _ in range(args.train_steps):
            batch = train[torch.randint(0, len(train), (20,), generator=generator)]
            optimiser.zero_grad()
            bits_per_dim(flow, batch, fast, fast).mean().backward()
            optimiser.step()
        flow.eval()
        with torch.no_grad():
            torch.manual_seed(3)
            fp32_eval = torch.cat([bits_per_dim(flow, b, False, fast) for b in test.split(100)]).mean().item()
            torch.manual_seed(3)
            own_eval = torch.cat([bits_per_dim(flow, b, fast, fast) for b in test.split(100)]).mean().item()
        results[name] = {
            "test bits/dim (fp32 evaluation)": fp32_eval,
            "test bits/dim (own precision)": own_eval,
        }
        models[name] = flow
    key = "test bits/dim (fp32 evaluation)"
    for path in ("fp32", "fast path"):
        results[f"{path}: seed 5 - seed 2"] = results[f"{path} seed 5"][key] - results[f"{path} seed 2"][key]
    results["fast path - fp32 (mean of the seeds)"] = (
        sum(results[f"fast path seed {s}"][key] - results[f"fp32 seed {s}"][key] for s in (2, 5)) / 2
    )
    return results, models["fp32 seed 2"]


def sample_agreement(flow: FlowPlusPlus, n: int = 100) -> dict:
    """The same latents decoded by the trained flow in fp32 and in the fast path (bf16-mixed +
    channels_last), as uint8 images: how far the fast path's samples are from the fp32 ones."""
    z = torch.randn(n, *flow.out_shape, generator=torch.Generator().manual_seed(6))
    reference = (decode(flow, z, False, False) * 256).floor().clamp(0, 255)
    fast_flow = use_channels_last(copy.deepcopy(flow), True)
    fast = (decode(fast_flow, z, True, True) * 256).floor().clamp(0, 255)
    levels = (fast - reference).abs()
    return {
        "images": n,
        "max |difference| (of 255 levels)": levels.max().item(),
        "mean |difference| (levels)": levels.mean().item(),
        "pixels within 1 level": (levels <= 1).float().mean().item(),
        "pixels within 4 levels": (levels <= 4).float().mean().item(),
        "images whose every pixel is within 4 levels": (levels.flatten(1).amax(1) <= 4).float().mean().item(),
    }


def inverse_accuracy(flow: FlowPlusPlus) -> dict:
    """Capture the inverse problems the couplings solve while sampling, then solve them again with
    Newton (default settings) and with bisection, against a float64 bisection reference."""
    captured = []
    original = flows.logistic.mixture_logit_cdf_inverse

    def capture(t, log_pi, mu, log_s, **kw):
        captured.append((t, log_pi, mu, log_s))
        return original(t, log_pi, mu, log_s, **kw)

    flows.logistic.mixture_logit_cdf_inverse = capture
    try:
        with torch.no_grad():
            torch.manual_seed(4)
            flow.inverse(torch.randn(20, *flow.out_shape))
    finally:
        flows.logistic.mixture_logit_cdf_inverse = original
    newton_evals = bisection_evals = 0
    newton_error = 0.0
    for t, log_pi, mu, log_s in captured:
        reference, _ = original(
            t.double(), log_pi.double(), mu.double(), log_s.double(), newton=False, tol=0.0, max_iters=200
        )
        x, evaluations = original(t, log_pi, mu, log_s)
        error = (x.double() - reference).abs().max().item()
        newton_evals += evaluations
        newton_error = max(newton_error, error)
        for n in range(1, 200):  # the fewest bisection evaluations that reach the same accuracy
            xb, _ = original(t, log_pi, mu, log_s, newton=False, tol=0.0, max_iters=n)
            if (xb.double() - reference).abs().max().item() <= max(error, 1e-5):
                break
        bisection_evals += n
    return {
        "couplings inverted": len(captured),
        "Newton evaluations (total)": newton_evals,
        "Newton max |error| vs float64 reference": newton_error,
        "bisection evaluations at the same accuracy (total)": bisection_evals,
        "bisection / Newton evaluations": bisection_evals / newton_evals,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--port", help="path of a checkout of the public PyTorch Flow++ port, to measure beside ours"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=20, help="images per training step (speed rows only)")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--test-images", type=int, default=1000)
    args = parser.parse_args()
    torch.set_flush_denormal(True)  # as the ebmflow command does
    results = {"machine": describe_machine(args.device), "speed": speed(args)}
    print(results["speed"])
    if SHARED_CIFAR.exists():
        results["short training on CIFAR-10"], trained = short_training(args)
        print(results["short training on CIFAR-10"])
        results["fast-path samples against fp32"] = sample_agreement(trained)
        print(results["fast-path samples against fp32"])
        results["MixLogCDF inverse"] = inverse_accuracy(trained)
    else:
        print(f"{SHARED_CIFAR} not found: skipping the real-data checks")
    report("flow_step", results)


if __name__ == "__main__":
    main()
