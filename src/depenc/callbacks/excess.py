"""Excess loss over the synthetic grammar's exact optimum during training (the scoring is
:mod:`depenc.evaluation.excess`).

Logs ``excess/<split>/<name>`` for every split of ``callbacks.excess.splits`` and writes the rich
results (per-bucket counts included) to ``excess/<step>.json``. ``test_long`` is scored against
``callbacks.excess.reference``, the depth splits (``test_depth*``) against the training rules without
the depth cap, the other splits against their own generator. The exact
distributions do not depend on the model, so each (split, number of sentences) is prepared once and
reused at every evaluation. Runs only with ``data.source=synthetic`` and the word tokenizer;
otherwise the callback is not built and says why once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from depenc.callbacks import EvalCallback, eval_size
from depenc.evaluation.base import synthetic_config, unwrap_model, with_depth_splits
from depenc.evaluation.excess import SplitTargets, evaluate_excess, prepare_targets
from depenc.evaluation.io import write_json

log = logging.getLogger("depenc.callbacks.excess")

__all__ = ["ExcessCallback"]


class ExcessCallback(EvalCallback):
    """Excess loss and KL with the settings of ``callbacks.excess`` (``c``)."""

    prefix = "excess"

    def __init__(self, c, tokenizer, synthetic_cfg: Any, run_dir: str | Path | None = None,
                 cache_dir: str | Path | None = None):
        super().__init__(c.every_n_val, run_dir)
        self.c = c
        self.tokenizer = tokenizer
        self.scfg = synthetic_config(synthetic_cfg)
        self.splits = with_depth_splits(c.splits, self.scfg)
        self.cache_dir = cache_dir  # the exact distributions' disk cache
        self._targets: dict[tuple[str, int, int], SplitTargets] = {}
        self.last_result: dict | None = None

    @classmethod
    def from_config(cls, c, cfg, dm, run_dir) -> ExcessCallback | None:
        if cfg.data.source != "synthetic":
            log.info("excess callback: data.source=%s has no exact optimum; disabled (it needs data.source=synthetic)",
                     cfg.data.source)
            return None
        if dm.tokenizer.kind != "word":
            log.info("excess callback: data.tokenizer=%s; disabled (the exact distributions are over words: "
                     "it needs data.tokenizer=word)", dm.tokenizer.kind)
            return None
        return cls(c, dm.tokenizer, cfg.data.synthetic, run_dir, Path(cfg.data.cache_dir) / "exact")

    def check_model(self, model) -> str | None:
        return None  # oracle models get their gold arcs from the sentences (word tokenizer, checked above)

    def split_reference(self, split: str) -> str:
        if split.startswith("test_depth"):
            return "train"  # sampled from the training rules without the depth cap: that is also their own generator
        return self.c.reference if split == "test_long" else "own"

    def targets(self, split: str, n: int, block_size: int) -> SplitTargets:
        key = (split, n, block_size)
        if key not in self._targets:
            self._targets[key] = prepare_targets(self.scfg, split, self.tokenizer, block_size,
                                                 self.split_reference(split), n, self.cache_dir)
        return self._targets[key]

    def evaluate(self, trainer, pl_module, final: bool) -> dict[str, float]:
        model = unwrap_model(pl_module)
        n = eval_size(self.c.max_sentences, self.c.final_max_sentences, final)
        metrics: dict[str, float] = {}
        result: dict[str, Any] = {"step": trainer.global_step, "final": final, "max_sentences": n, "splits": {}}
        for split in self.splits:
            targets = self.targets(split, n, int(model.cfg.block_size))
            m, result["splits"][split] = evaluate_excess(model, self.tokenizer, self.scfg, split, targets=targets,
                                                         batch_size=self.c.batch_size)
            metrics.update(m)
        if final:
            self._targets.clear()  # the full splits' distributions are large and nothing evaluates after this
        self.last_result = result
        if (path := self.out_path("excess", f"{trainer.global_step}.json")) is not None:
            write_json(path, result)
        return metrics
