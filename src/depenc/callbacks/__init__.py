"""Evaluation callbacks, built from the ``callbacks`` section of the config.

* :class:`~depenc.callbacks.alignment.AlignmentCallback`: UUAS / left-arc attachment of the parser,
  the attention heads and reference trees against gold treebanks (DESIGN 4.2);
* :class:`~depenc.callbacks.generation.GenerationCallback`: samples and their statistics (4.3);
* :class:`~depenc.callbacks.agreement.AgreementCallback`: subject-verb agreement minimal pairs (4.4);
* :class:`~depenc.callbacks.efficiency.EfficiencyCallback`: tokens/s, step time, peak memory (6).

Each evaluation callback runs after every ``every_n_val``-th validation during ``fit`` and once more
at the end of training, on rank zero only; its scalars go to every logger (metrics.csv, W&B and so
summary.json), its W&B objects only to a ``WandbLogger``, its files into the run folder.

The helpers below are shared by the callbacks and by :mod:`depenc.evaluate`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

log = logging.getLogger("depenc.callbacks")

__all__ = [
    "EvalCallback",
    "build_callbacks",
    "cfg_get",
    "eval_mode",
    "gold_matrices",
    "numeric_scalars",
    "log_scalars",
    "needs_gold_arcs",
    "oracle_skip_reason",
    "unwrap_model",
    "wandb_runs",
    "write_json",
]


# --------------------------------------------------------------------------------------------
# shared helpers


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg[key]`` for dicts, DictConfigs and objects; ``default`` when absent or None."""
    if cfg is None:
        return default
    if isinstance(cfg, Mapping):
        value = cfg.get(key, default)
    else:
        try:
            value = cfg[key] if key in cfg else default  # DictConfig
        except TypeError:
            value = getattr(cfg, key, default)
    return default if value is None else value


def unwrap_model(model_or_lm: Any) -> torch.nn.Module:
    """The plain :class:`Transformer` behind a LightningModule and/or ``torch.compile``."""
    model = getattr(model_or_lm, "model", model_or_lm)
    return getattr(model, "_orig_mod", model)


def needs_gold_arcs(model: torch.nn.Module) -> bool:
    """``depenc.parser=oracle`` models cannot run without gold arcs for every input."""
    cfg = getattr(model, "cfg", None)
    dep = getattr(cfg, "depenc", None)
    return bool(dep is not None and dep.enabled and dep.parser == "oracle")


def gold_matrices(heads_list, target: str, T: int, device=None) -> torch.Tensor:
    """(B, T, T) gold arc matrices (``depenc.data.gold``) for inputs ``[BOS] + sentence`` cut or padded
    to T positions, one token per word (word tokenizer): what an oracle model reads instead of P."""
    from depenc.data.gold import sentence_gold_matrix

    mats = []
    for heads in heads_list:
        full = max(T, len(heads) + 1)
        mats.append(sentence_gold_matrix(list(heads), target, full)[:T, :T])
    out = torch.stack(mats)
    return out.to(device) if device is not None else out


def oracle_skip_reason(model: torch.nn.Module, tokenizer: Any) -> str | None:
    """Why a callback that builds gold arcs per sentence cannot score ``model`` (None when it can)."""
    if needs_gold_arcs(model) and getattr(tokenizer, "kind", "") != "word":
        return "an oracle model (depenc.parser=oracle) needs the word tokenizer; skipped"
    return None


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode and no gradients inside; the previous train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def numeric_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric values as floats (None and non-numbers dropped). NaN is kept on purpose: a metric
    that is undefined now (e.g. no invalid sentence to locate) must not leave an older value as the
    last one in metrics.csv, which is what summary.json reports."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (bool, np.bool_)):
            value = float(value)
        if isinstance(value, (int, float, np.integer, np.floating)):
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
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:  # pragma: no cover
        return []
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


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON atomically (NaN -> null), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(_nan_to_none(obj), default=_json_default, indent=1))
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------------
# base class of the evaluation callbacks

try:
    from lightning.pytorch.callbacks import Callback as _Callback
except ImportError:  # pragma: no cover
    _Callback = object


class EvalCallback(_Callback):
    """Runs :meth:`evaluate` after every ``every_n_val``-th validation of ``fit`` and at the end of
    training, on global rank zero, in eval mode without gradients; logs ``<prefix>/time_s``
    (cumulative seconds spent in this callback)."""

    prefix = "eval"

    def __init__(self, every_n_val: int = 1, run_dir: str | os.PathLike | None = None, at_end: bool = True):
        super().__init__()
        self.every_n_val = int(every_n_val)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.at_end = at_end
        self.n_val = 0
        self.time_s = 0.0
        self.last_step: int | None = None
        self.disabled_reason: str | None = None

    # subclasses ------------------------------------------------------------------------------
    def evaluate(self, trainer, pl_module, final: bool) -> dict[str, float]:  # pragma: no cover
        raise NotImplementedError

    def check_model(self, model: torch.nn.Module) -> str | None:
        """A reason not to run on this model, or None (subclasses that can feed gold arcs override)."""
        if needs_gold_arcs(model):
            return "model.depenc.parser=oracle needs gold arcs for every input, which this evaluation has not; skipped"
        return None

    # hooks -------------------------------------------------------------------------------------
    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or getattr(trainer.state, "fn", None) != "fit":
            return
        self.n_val += 1
        if self.at_end and trainer.max_steps and trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            return  # the validation at the last step: the end-of-training evaluation follows at once
        if self.every_n_val > 0 and self.n_val % self.every_n_val == 0:
            self._run(trainer, pl_module, final=False)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.at_end:
            self._run(trainer, pl_module, final=True)

    def _run(self, trainer, pl_module, final: bool) -> None:
        if not trainer.is_global_zero:
            return
        model = unwrap_model(pl_module)
        reason = self.disabled_reason or self.check_model(model)
        if reason:
            if self.disabled_reason is None:
                log.warning("%s callback: %s", self.prefix, reason)
                self.disabled_reason = reason
            return
        t0 = time.perf_counter()
        with eval_mode(model):
            metrics = self.evaluate(trainer, pl_module, final=final) or {}
        self.time_s += time.perf_counter() - t0
        metrics = dict(metrics)
        metrics[f"{self.prefix}/time_s"] = self.time_s
        log_scalars(trainer, metrics)
        self.last_step = trainer.global_step

    def out_path(self, folder: str, name: str) -> Path | None:
        return None if self.run_dir is None else self.run_dir / folder / name


# --------------------------------------------------------------------------------------------
# construction from the config


def build_callbacks(cfg, dm, run_dir: Path) -> list:
    """The callbacks enabled in ``cfg.callbacks`` (see experiments/base.yaml for every key)."""
    section = cfg_get(cfg, "callbacks", {}) or {}
    out: list = []
    eff = cfg_get(section, "efficiency")
    if eff is not None and cfg_get(eff, "enabled", False):
        from depenc.callbacks.efficiency import EfficiencyCallback

        out.append(EfficiencyCallback.from_config(eff))
    for key, module, cls_name in (
        ("alignment", "depenc.callbacks.alignment", "AlignmentCallback"),
        ("generation", "depenc.callbacks.generation", "GenerationCallback"),
        ("agreement", "depenc.callbacks.agreement", "AgreementCallback"),
    ):
        sub = cfg_get(section, key)
        if sub is None or not cfg_get(sub, "enabled", False):
            continue
        import importlib

        cls = getattr(importlib.import_module(module), cls_name)
        cb = cls.from_config(sub, cfg, dm, run_dir)
        if cb is not None:
            out.append(cb)
    return out
