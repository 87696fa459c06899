"""Peak memory of this process: the one reader used by the training callbacks and the benchmark."""

from __future__ import annotations

import resource
import sys

import torch

__all__ = ["peak_memory_mb", "peak_rss_mb"]


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB: VmHWM of the current address space on Linux (a
    fresh process starts from zero; ``ru_maxrss`` would carry the parent's peak over fork + exec),
    else ``ru_maxrss`` (KiB on Linux, bytes on macOS)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated CUDA memory on a GPU device, else the process's peak RSS (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / (1024 * 1024)
    return peak_rss_mb()
