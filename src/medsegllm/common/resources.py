"""What a stage command cost: wall time, CPU time and peak memory, logged when the command ends.

Every `medsegllm <stage>` logs one line with these figures; with MEDSEGLLM_RESOURCE_LOG set to a
file, it also appends them there as a JSON line, which is how `make bench` gets the per-stage
figures of a whole `dvc repro` (DVC runs each stage as its own process).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

RESOURCE_LOG_ENV = "MEDSEGLLM_RESOURCE_LOG"
log = logging.getLogger("medsegllm")


def _cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Start:
    """Taken when a command starts. A shell runs the last command of `a && b` in its own process (exec,
    no fork), so that command inherits the usage of `a`, a child the shell already waited for: what the
    finished children had used by the start is this command's baseline, not its cost."""

    wall: float = field(default_factory=time.perf_counter)
    children_cpu: float = field(default_factory=lambda: _cpu(resource.getrusage(resource.RUSAGE_CHILDREN)))


def peak_rss_mib() -> float:
    """Peak resident memory of this program. Linux's ru_maxrss is the wrong figure for a command a shell
    or DVC started: it keeps the maximum across exec, so it includes the RSS of the process that forked
    it (DVC's, for the last command of `a && b`). VmHWM belongs to the current program's memory map
    only; ru_maxrss (KiB on Linux) is the fallback where /proc is missing."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def usage(start: Start) -> dict[str, float]:
    """Since `start`: wall seconds, CPU seconds of this process and of its child processes (workers) that
    finished meanwhile, and the peak resident memory of this program (`peak_rss_mib`). Worker
    processes' memory is not included: the kernel keeps one maximum over all waited-for children, which
    after `a && b` includes `a`."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall_s": round(time.perf_counter() - start.wall, 3),
            "cpu_s": round(_cpu(own) + _cpu(children) - start.children_cpu, 3),
            "peak_rss_mib": peak_rss_mib()}


def record_usage(command: str, argv: list[str], start: Start) -> dict:
    """Log the command's usage and append it to $MEDSEGLLM_RESOURCE_LOG when that is set."""
    row = {"command": command, "argv": argv, **usage(start)}
    log.info("%s: %.1f s wall, %.1f s CPU, peak memory %.0f MiB", command, row["wall_s"], row["cpu_s"], row["peak_rss_mib"])
    target = os.environ.get(RESOURCE_LOG_ENV)
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        with open(target, "a", encoding="utf-8") as handle:  # one short O_APPEND write per command
            handle.write(json.dumps(row) + "\n")
    return row
