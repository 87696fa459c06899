"""What a person watching a run sees: a progress bar on a terminal, one log line every N steps elsewhere.

``trainer.progress``: ``auto`` (a bar when stderr is a terminal, else lines), ``bar``, ``log`` or ``none``.
The bar counts optimizer steps against ``trainer.max_steps`` (from the resumed step on a resume) and shows
the current loss and tokens/s; a line reads ``step 150/2000 (8%) | loss 3.1234 | 12.3k tok/s | 1m02s, eta 12m40s``.
After each validation the first eval set's perplexity is reported the same way. Rank zero only.
Lightning's own bar is off: it counts batches per epoch ("Epoch 0/-2" when training by steps).
"""

from __future__ import annotations

import shutil
import sys
import time

from lightning.pytorch.callbacks import Callback

__all__ = ["Progress", "format_duration"]

REFRESH_S = 0.5  # the bar's loss and rate are read (a host sync) at most this often


def format_duration(seconds: float) -> str:
    seconds = int(round(max(0.0, seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def format_rate(tokens_per_s: float) -> str:
    return f"{tokens_per_s / 1e6:.2f}M tok/s" if tokens_per_s >= 1e6 else f"{tokens_per_s / 1e3:.1f}k tok/s"


class Progress(Callback):
    def __init__(self, mode: str = "auto", every_n_steps: int = 50, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "log"
        self.mode, self.every = mode, max(1, int(every_n_steps))
        self.bar = None

    # ---- clock: tokens/s over the steps since the last report, validation pauses left out
    def on_train_start(self, trainer, pl_module) -> None:
        self.total = int(trainer.max_steps)
        self.t_start = self.t_last = time.perf_counter()
        self.step_start = self.step_last = trainer.global_step
        self.tokens = 0
        if self.mode == "bar" and trainer.is_global_zero:
            from tqdm.auto import tqdm

            # the size asked once, with a fallback: a terminal that reports 0 x 0 (some ptys) hides a tqdm bar
            columns, lines = shutil.get_terminal_size((100, 20))
            self.bar = tqdm(total=self.total, initial=trainer.global_step, desc="train", unit="step",
                            file=self.stream, ncols=columns, nrows=lines, smoothing=0.1)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not trainer.is_global_zero or self.mode == "none":
            return
        self.tokens += batch["input_ids"].numel() * trainer.world_size
        step, now = trainer.global_step, time.perf_counter()
        if step == self.step_last:  # a micro-batch of gradient accumulation: the step is not done yet
            return
        due = (now - self.t_last >= REFRESH_S) if self.mode == "bar" else (step % self.every == 0)
        if not due and step < self.total:
            return
        rate = self.tokens / max(now - self.t_last, 1e-9)
        loss = trainer.callback_metrics.get("train/loss")
        if self.mode == "bar":
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(f"loss {float(loss):.4f} | {format_rate(rate)}" if loss is not None
                                     else format_rate(rate), refresh=True)
        else:
            done = step - self.step_start
            elapsed = now - self.t_start
            eta = elapsed / max(done, 1) * (self.total - step)
            loss_part = f" | loss {float(loss):.4f}" if loss is not None else ""
            self._line(f"step {step}/{self.total} ({100 * step / max(self.total, 1):.0f}%){loss_part} | "
                       f"{format_rate(rate)} | {format_duration(elapsed)}, eta {format_duration(eta)}")
        self.t_last, self.step_last, self.tokens = now, step, 0

    # a validation (and the evaluation callbacks after it) is a pause: left out of rate and eta
    def on_validation_start(self, trainer, pl_module) -> None:
        self._paused_at = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if getattr(self, "_paused_at", None) is not None:
            paused = time.perf_counter() - self._paused_at
            self.t_last += paused
            self.t_start += paused
            self._paused_at = None

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or self.mode == "none" or trainer.sanity_checking:
            return
        shown = [f"{key.split('/')[1]} ppl {float(value):.3f}" for key, value in trainer.callback_metrics.items()
                 if key.startswith("val/") and key.endswith("/ppl")]
        if shown:
            best = " (best.ckpt)" if getattr(trainer, "depenc_on_best", False) else ""
            self._line(f"step {trainer.global_step}{best}: " + ", ".join(shown))

    def on_train_end(self, trainer, pl_module) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if trainer.is_global_zero and self.mode != "none" and trainer.global_step < self.total:
            self._line(f"stopped at step {trainer.global_step} of {self.total} (early stopping)")

    def _line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)
