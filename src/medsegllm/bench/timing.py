"""Timing helpers and the machine description every figure is reported with."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from medsegllm.model.inference import bf16_supported


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name: how bf16 and fp32 paths compare depends on it, and a re-measured section may run on another."""
    try:
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine()


def machine_info() -> dict:
    """What the numbers depend on: CPU model and count, native bf16, load at start, torch threads and the GPU if any."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    cuda = torch.cuda.is_available()
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_bf16": bf16_supported(torch.device("cpu")),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15": [round(v, 2) for v in load],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
    }


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so wall time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """Wall seconds of one call, and its result."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def summary(times: list[float]) -> dict:
    """Median (robust to a neighbour's burst on shared cores) plus every raw time."""
    return {"median_s": statistics.median(times), "min_s": min(times), "runs_s": [round(t, 4) for t in times]}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, None when either side is missing."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def paired_ratio(numerators: list[float], denominators: list[float]) -> float | None:
    """Median of per-repetition ratios of interleaved runs: a load burst hits both sides of a pair
    alike, so this is steadier on shared cores than the ratio of the two medians."""
    pairs = [n / d for n, d in zip(numerators, denominators) if d > 0]
    return statistics.median(pairs) if pairs else None
