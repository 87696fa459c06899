"""Evaluation callbacks, built from the ``callbacks`` section of the config.

* :class:`~depenc.callbacks.alignment.AlignmentCallback`: UUAS / left-arc attachment of the parser,
  the attention heads and reference trees against gold treebanks (DESIGN 4.2);
* :class:`~depenc.callbacks.generation.GenerationCallback`: samples and their statistics (4.3);
* :class:`~depenc.callbacks.agreement.AgreementCallback`: subject-verb agreement minimal pairs (4.4);
* :class:`~depenc.callbacks.excess.ExcessCallback`: excess loss over the synthetic grammar's exact optimum;
* :class:`~depenc.callbacks.pairs.PairsCallback`: minimal pairs in BLiMP's format (off by default);
* :class:`~depenc.callbacks.efficiency.EfficiencyMonitor`: tokens/s, step time, peak memory (6).

The evaluations themselves are functions in :mod:`depenc.evaluation`, shared with the command line
(:mod:`depenc.evaluate`); a callback decides when to call them and where their results go. Each
evaluation callback runs after every ``every_n_val``-th validation during ``fit`` and once more at
the end of training, on rank zero only; its scalars go to every logger (metrics.csv, W&B and so
summary.json), its W&B objects only to a ``WandbLogger``, its files into the run folder.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from depenc.evaluation.base import eval_mode, needs_gold_arcs, unwrap_model

log = logging.getLogger("depenc.callbacks")

__all__ = ["EvalCallback", "build_callbacks", "eval_size", "log_scalars", "numeric_scalars", "wandb_log",
           "wandb_runs", "wandb_table"]


# --------------------------------------------------------------------------------------------
# where results go


def numeric_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric values as floats (None and non-numbers dropped). NaN is kept on purpose: a metric
    that is undefined now (e.g. no invalid sentence to locate) must not leave an older value as the
    last one in metrics.csv, which is what summary.json reports."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (bool, np.bool_, int, float, np.integer, np.floating)):
            out[key] = float(value)
    return out


def log_scalars(trainer, metrics: Mapping[str, Any], step: int | None = None) -> dict[str, float]:
    """Send scalars to every logger of ``trainer`` (works from any hook, also on_train_end)."""
    clean = numeric_scalars(metrics)
    if clean:
        step = trainer.global_step if step is None else step
        for logger in trainer.loggers:
            logger.log_metrics(clean, step=step)
    return clean


def wandb_runs(trainer) -> list:
    """The W&B run objects of the trainer's ``WandbLogger``s (empty without one)."""
    from lightning.pytorch.loggers import WandbLogger

    runs = []
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            try:
                runs.append(logger.experiment)
            except Exception as exc:  # a disabled / broken W&B must never stop training
                log.warning("W&B logger unavailable: %s", exc)
    return runs


def wandb_log(trainer, payload: dict) -> None:
    """Log W&B objects (tables, histograms) against ``trainer/global_step``."""
    for run in wandb_runs(trainer):
        try:
            run.log({**payload, "trainer/global_step": trainer.global_step})
        except Exception as exc:
            log.warning("W&B log failed: %s", exc)


def wandb_table(trainer, key: str, columns: Sequence[str], rows: Sequence[Sequence]) -> None:
    """One W&B table (nothing without a ``WandbLogger`` or without rows)."""
    if rows and wandb_runs(trainer):
        import wandb

        wandb_log(trainer, {key: wandb.Table(columns=list(columns), data=[list(r) for r in rows])})


# --------------------------------------------------------------------------------------------
# when to evaluate


def eval_size(during: int, at_end: int, final: bool) -> int:
    """How many items (sentences, pairs) an evaluation uses: ``during`` while training; ``at_end``
    at the end of training, where 0 means all and -1 means ``during``."""
    if not final or at_end < 0:
        return during
    return at_end


class EvalCallback(Callback):
    """Runs :meth:`evaluate` after every ``every_n_val``-th validation of ``fit`` (0 = never) and at the
    end of training, on global rank zero, in eval mode without gradients; logs ``<prefix>/time_s``
    (cumulative seconds spent in this callback)."""

    prefix = "eval"

    def __init__(self, every_n_val: int, run_dir: str | os.PathLike | None = None):
        super().__init__()
        # False: the end-of-run evaluation waits for run_final (train.py calls it once best.ckpt is loaded)
        self.final_at_train_end = True
        self.every_n_val = int(every_n_val)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.n_val = 0
        self.time_s = 0.0
        self.last_step: int | None = None
        self.disabled_reason: str | None = None

    # subclasses ------------------------------------------------------------------------------
    def evaluate(self, trainer, pl_module, final: bool) -> dict[str, float]:
        raise NotImplementedError

    def check_model(self, model: torch.nn.Module) -> str | None:
        """A reason not to run on this model, or None (subclasses that can feed gold arcs override)."""
        if needs_gold_arcs(model):
            return "model.depenc.parser=oracle needs gold arcs for every input, which this evaluation has not"
        return None

    # hooks -------------------------------------------------------------------------------------
    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self.n_val += 1
        if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            return  # the validation at the last step: the end-of-training evaluation follows at once
        if self.every_n_val > 0 and self.n_val % self.every_n_val == 0:
            self._run(trainer, pl_module, final=False)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.final_at_train_end:
            self._run(trainer, pl_module, final=True)

    def run_final(self, trainer, pl_module) -> None:
        """The end-of-run evaluation, outside fit (on the weights ``pl_module`` holds now)."""
        self._run(trainer, pl_module, final=True)

    def _run(self, trainer, pl_module, final: bool) -> None:
        if not trainer.is_global_zero:
            return
        model = unwrap_model(pl_module)
        reason = self.disabled_reason or self.check_model(model)
        if reason:
            if self.disabled_reason is None:
                log.warning("%s callback: %s; skipped", self.prefix, reason)
                self.disabled_reason = reason
            return
        t0 = time.perf_counter()
        with eval_mode(model):
            metrics = dict(self.evaluate(trainer, pl_module, final=final))
        self.time_s += time.perf_counter() - t0
        metrics[f"{self.prefix}/time_s"] = self.time_s
        log_scalars(trainer, metrics)
        self.last_step = trainer.global_step

    def out_path(self, folder: str, name: str) -> Path | None:
        return None if self.run_dir is None else self.run_dir / folder / name


# --------------------------------------------------------------------------------------------
# construction from the config

EVAL_CALLBACKS = {  # config key -> (module, class)
    "alignment": ("depenc.callbacks.alignment", "AlignmentCallback"),
    "generation": ("depenc.callbacks.generation", "GenerationCallback"),
    "agreement": ("depenc.callbacks.agreement", "AgreementCallback"),
    "excess": ("depenc.callbacks.excess", "ExcessCallback"),
    "pairs": ("depenc.callbacks.pairs", "PairsCallback"),
}


def build_callbacks(cfg, dm, run_dir: Path) -> list:
    """The callbacks enabled in ``cfg.callbacks`` (see experiments/base.yaml for every key); an
    evaluation callback's ``from_config(section, cfg, dm, run_dir)`` may return None (not applicable)."""
    out: list = []
    if cfg.callbacks.efficiency.enabled:
        from depenc.callbacks.efficiency import EfficiencyMonitor

        out.append(EfficiencyMonitor(cfg.callbacks.efficiency.log_every_n_steps))
    for key, (module, cls_name) in EVAL_CALLBACKS.items():
        section = cfg.callbacks[key]
        if section.enabled:
            cb = getattr(importlib.import_module(module), cls_name).from_config(section, cfg, dm, run_dir)
            if cb is not None:
                out.append(cb)
    return out
