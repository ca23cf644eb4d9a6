"""Timing helpers shared by the benchmarks: interleaved repeats, medians and ratios, because absolute
times drift on a shared machine."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

RESULTS = Path(__file__).parent / "results"


def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs of one call, by torch.utils.flop_counter."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def synchronize() -> None:
    """Wait for queued GPU work, so that a wall-clock time covers it (GPU kernels run asynchronously)."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def interleaved(cases: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each case; the cases take turns so that drift hits all alike."""
    for fn in cases.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            synchronize()
            start = time.perf_counter()
            fn()
            synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def report(name: str, results: dict) -> Path:
    """Write bench/results/<name>.json and print the sections."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"results: {path}")
    for section, values in results.items():
        print(f"\n## {section}")
        if isinstance(values, dict):
            for key, value in values.items():
                print(f"  {key}: {value}")
        else:
            print(f"  {values}")
    return path


def describe_machine(device: str = "cpu") -> str:
    capability = torch.backends.cpu.get_cpu_capability()
    machine = f"torch {torch.__version__}, {torch.get_num_threads()} threads, {capability}"
    if torch.device(device).type == "cuda":
        machine += f", {torch.cuda.get_device_name(device)}"
    return machine
