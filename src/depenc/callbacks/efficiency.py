"""Training throughput and memory (DESIGN 6).

Measured, not estimated: the wall time between consecutive ``on_train_batch_end`` calls (so data
loading, forward, backward, optimizer step and per-step logging are included); an interval that
contains a validation run (and so the evaluation callbacks) is dropped, as is the first step. Logged
every ``log_every_n_steps`` optimizer steps:

* ``perf/tokens_per_s``: input tokens of all ranks per second over the window,
* ``perf/step_time_ms``: mean time per training batch over the window,
* ``perf/peak_mem_mb``: peak device memory (``torch.cuda.max_memory_allocated``) on GPU, the peak
  resident set size of the process on CPU; ``perf/peak_rss_mb`` is always the process's peak RSS.

At the end of training the same keys are logged once more as whole-run averages (those are the
values that summary.json keeps), plus ``perf/train_time_s`` (measured training time).
"""

from __future__ import annotations

import resource
import sys
import time

import torch

from depenc.callbacks import cfg_get, log_scalars

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # pragma: no cover
    Callback = object

__all__ = ["EfficiencyCallback", "peak_rss_mb", "peak_memory_mb"]


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def peak_memory_mb(device: torch.device | None) -> float:
    """Peak allocated CUDA memory on a GPU device, else the process's peak RSS (MiB)."""
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(device) / (1024 * 1024)
    return peak_rss_mb()


def _batch_tokens(batch) -> int:
    if isinstance(batch, dict) and "input_ids" in batch:
        return int(batch["input_ids"].numel())
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return int(batch[0].numel())
    if isinstance(batch, torch.Tensor):
        return int(batch.numel())
    return 0


class EfficiencyCallback(Callback):
    def __init__(self, log_every_n_steps: int = 0):
        super().__init__()
        self.log_every_n_steps = int(log_every_n_steps)
        self._last_end: float | None = None
        self._interrupted = False
        self._win_tokens = 0
        self._win_time = 0.0
        self._win_steps = 0
        self.total_tokens = 0
        self.total_time = 0.0
        self.total_steps = 0
        self.last_metrics: dict[str, float] = {}

    @classmethod
    def from_config(cls, c) -> "EfficiencyCallback":
        return cls(log_every_n_steps=cfg_get(c, "log_every_n_steps", 0))

    # measurement ---------------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        self._last_end = None
        if pl_module.device.type == "cuda" and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._interrupted = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        every = self.log_every_n_steps or max(1, int(trainer.log_every_n_steps or 1))
        flush = trainer.global_step % every == 0
        if flush and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)  # the window closes when the queued work is done
        now = time.perf_counter()
        if self._last_end is not None and not self._interrupted:
            dt = now - self._last_end
            tokens = _batch_tokens(batch) * max(1, trainer.world_size)
            self._win_tokens += tokens
            self._win_time += dt
            self._win_steps += 1
            self.total_tokens += tokens
            self.total_time += dt
            self.total_steps += 1
        self._interrupted = False
        if flush and self._win_steps:
            self._flush(trainer, pl_module)
        self._last_end = time.perf_counter()  # logging itself is not part of the next step

    def _metrics(self, tokens: int, seconds: float, steps: int, pl_module) -> dict[str, float]:
        return {
            "perf/tokens_per_s": tokens / seconds if seconds > 0 else float("nan"),
            "perf/step_time_ms": 1000.0 * seconds / steps if steps else float("nan"),
            "perf/peak_mem_mb": peak_memory_mb(pl_module.device),
            "perf/peak_rss_mb": peak_rss_mb(),
        }

    def _flush(self, trainer, pl_module) -> None:
        metrics = self._metrics(self._win_tokens, self._win_time, self._win_steps, pl_module)
        self.last_metrics = metrics
        if trainer.is_global_zero:
            log_scalars(trainer, metrics)
        self._win_tokens, self._win_time, self._win_steps = 0, 0.0, 0

    def on_train_end(self, trainer, pl_module) -> None:
        if not self.total_steps:
            return
        metrics = self._metrics(self.total_tokens, self.total_time, self.total_steps, pl_module)
        metrics["perf/train_time_s"] = self.total_time
        metrics["perf/measured_steps"] = self.total_steps
        self.last_metrics = metrics
        if trainer.is_global_zero:
            log_scalars(trainer, metrics)
