"""Training throughput and memory (DESIGN 6), measured by Lightning's ``ThroughputMonitor``.

The monitor times every training batch from ``on_train_batch_end`` to ``on_train_batch_end`` (data
loading, forward, backward, optimizer step and per-step logging included) and keeps rolling windows
of batches and tokens. This subclass changes two things:

* the pause around a validation is left out whole: from the end of the last training batch before
  it to the start of the next one, so the evaluation callbacks that run in ``on_validation_end``
  (seconds each) are not counted as training (the stock monitor stops the pause at the last
  validation batch). Validation itself is not measured;
* it logs this project's keys, every ``log_every_n_steps`` optimizer steps:

  - ``perf/tokens_per_s``: input tokens of all ranks per second over the last ``log_every_n_steps``
    batches (once that many batches have been measured),
  - ``perf/step_time_ms``: mean time per training batch over the same window,
  - ``perf/peak_mem_mb``: peak device memory (``torch.cuda.max_memory_allocated``) on GPU, the peak
    resident set size of the process on CPU; ``perf/peak_rss_mb`` is always the process's peak RSS.

At the end of training the same keys are logged once more as whole-run averages from the end of the
first batch (which holds warm-up and compilation) to the end of the last: those are the values that
summary.json keeps; plus ``perf/train_time_s`` (that measured time) and ``perf/measured_steps``.
"""

from __future__ import annotations

import time

import torch
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.trainer.states import RunningStage

from depenc.callbacks import log_scalars
from depenc.evaluation.memory import peak_memory_mb, peak_rss_mb

__all__ = ["EfficiencyMonitor"]

TRAIN = RunningStage.TRAINING


class EfficiencyMonitor(ThroughputMonitor):
    def __init__(self, log_every_n_steps: int):
        super().__init__(batch_size_fn=lambda batch: batch["input_ids"].size(0),
                         length_fn=lambda batch: batch["input_ids"].numel())
        self.log_every_n_steps = log_every_n_steps  # 0 = trainer.log_every_n_steps
        self._module_has_flops = False  # no FLOP count: skips the monitor's warning about flops_per_batch
        self._first: dict | None = None  # totals at the end of the first training batch
        self._last_end: float | None = None
        self._paused = False
        self.last_metrics: dict[str, float] = {}

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.every = self.log_every_n_steps or max(1, trainer.log_every_n_steps)
        self.kwargs["window_size"] = self.every + 1  # rates over the last `every` batches
        super().setup(trainer, pl_module, stage)

    def on_train_start(self, trainer, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        self._first, self._last_end, self._paused = None, None, False
        super().on_train_start(trainer, pl_module)

    # validation is a pause: nothing measured, and the gap is removed from the training clock
    def on_validation_start(self, trainer, pl_module) -> None:
        self._paused = True

    def on_validation_batch_end(self, *args, **kwargs) -> None:
        pass

    def on_validation_end(self, trainer, pl_module) -> None:
        pass

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._paused and self._last_end is not None and TRAIN in self._t0s:
            self._t0s[TRAIN] += time.perf_counter() - self._last_end
        self._paused = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if trainer.is_global_zero and self._first is None:
            self._first = self._throughputs[TRAIN].compute()
        self._last_end = time.perf_counter()

    # logging -----------------------------------------------------------------------------------
    def _compute(self, trainer, iter_num: int | None = None) -> None:
        """Called by the monitor after every measured batch (of any stage): logs the training window."""
        if trainer.state.stage != TRAIN or trainer.global_step % self.every != 0:
            return
        window = self._throughputs[TRAIN].compute()
        metrics = self._memory(trainer)
        per_device = window.get("device/items_per_sec")
        if per_device is not None:
            metrics["perf/tokens_per_s"] = per_device * trainer.world_size
            metrics["perf/step_time_ms"] = 1000.0 / window["device/batches_per_sec"]
        self._log(trainer, metrics)

    def on_train_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or self._first is None:
            return
        last = self._throughputs[TRAIN].compute()
        seconds = last["time"] - self._first["time"]
        steps = last["batches"] - self._first["batches"]
        if steps <= 0 or seconds <= 0:
            return
        tokens = (last["lengths"] - self._first["lengths"]) * trainer.world_size
        self._log(trainer, {"perf/tokens_per_s": tokens / seconds, "perf/step_time_ms": 1000.0 * seconds / steps,
                            **self._memory(trainer), "perf/train_time_s": seconds, "perf/measured_steps": steps})

    def _memory(self, trainer) -> dict[str, float]:
        return {"perf/peak_mem_mb": peak_memory_mb(trainer.strategy.root_device), "perf/peak_rss_mb": peak_rss_mb()}

    def _log(self, trainer, metrics: dict[str, float]) -> None:
        self.last_metrics = metrics
        log_scalars(trainer, metrics)
