"""Subject-verb agreement during training (DESIGN 4.4; the scoring is :mod:`depenc.evaluation.agreement`).

Logs ``agree/<split>/<metric>`` for every split of ``callbacks.agreement.splits`` and writes the
metrics and every pair's margin to ``agreement/<step>.json``; W&B gets a table of the buckets.
Runs only with ``data.source=synthetic`` (the pairs come from the grammar's annotations).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from depenc.callbacks import EvalCallback, eval_size, wandb_table
from depenc.evaluation.agreement import BUCKET_COLUMNS, PairItem, bucket_rows, evaluate_pairs, load_pairs
from depenc.evaluation.base import oracle_skip_reason, synthetic_config, unwrap_model, with_depth_splits
from depenc.evaluation.io import write_json

log = logging.getLogger("depenc.callbacks.agreement")

__all__ = ["AgreementCallback"]


class AgreementCallback(EvalCallback):
    """Agreement minimal pairs with the settings of ``callbacks.agreement`` (``c``)."""

    prefix = "agree"

    def __init__(self, c, tokenizer, synthetic_cfg: Any, run_dir: str | Path | None = None):
        super().__init__(c.every_n_val, run_dir)
        self.c = c
        self.tokenizer = tokenizer
        self.synthetic_cfg = synthetic_cfg
        self.splits = with_depth_splits(c.splits, synthetic_config(synthetic_cfg))
        self._pairs: dict[tuple[str, int], list[PairItem]] = {}
        self.last_result: dict | None = None

    @classmethod
    def from_config(cls, c, cfg, dm, run_dir) -> "AgreementCallback | None":
        if cfg.data.source != "synthetic":
            log.info("agreement callback: data.source=%s has no agreement annotations; disabled "
                     "(it needs data.source=synthetic)", cfg.data.source)
            return None
        return cls(c, dm.tokenizer, cfg.data.synthetic, run_dir)

    def check_model(self, model) -> str | None:
        return oracle_skip_reason(model, self.tokenizer)

    def pairs(self, split: str, n: int) -> list[PairItem]:
        if (split, n) not in self._pairs:
            self._pairs[split, n] = load_pairs(self.synthetic_cfg, split, n)
        return self._pairs[split, n]

    def evaluate(self, trainer, pl_module, final: bool) -> dict[str, float]:
        model = unwrap_model(pl_module)
        n = eval_size(self.c.max_pairs, self.c.final_max_pairs, final)
        result: dict[str, Any] = {"step": trainer.global_step, "final": final, "max_pairs": n, "splits": {}}
        for split in self.splits:
            m, details = evaluate_pairs(model, self.tokenizer, self.pairs(split, n), self.c.batch_size,
                                        self.c.n_bootstrap, self.c.seed)
            result["splits"][split] = {"metrics": m, **details}
        self.last_result = result
        if (path := self.out_path("agreement", f"{trainer.global_step}.json")) is not None:
            write_json(path, result)
        by_split = {split: r["metrics"] for split, r in result["splits"].items()}
        wandb_table(trainer, "agree/buckets", BUCKET_COLUMNS, bucket_rows(by_split))
        return {f"agree/{split}/{k}": v for split, m in by_split.items() for k, v in m.items()}
