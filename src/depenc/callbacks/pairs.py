"""Minimal pairs in BLiMP's format during training (the scoring is :mod:`depenc.evaluation.pairs`).

Every input of ``callbacks.pairs.files`` (a JSONL file or a folder of them, named after the file's stem
or the folder) logs ``pairs/<name>/acc``, ``pairs/<name>/margin`` (+ ``_lo``/``_hi``, ``n``, and the
``prefix_`` numbers where the pairs have BLiMP's one-prefix fields) and, for every key of
``callbacks.pairs.by``, ``pairs/<name>/acc_<key>_<value>``; the full results go to ``pairs/<step>.json``
and W&B gets a table of the groups. The files are read and checked once, when the callback is built.
"""

from __future__ import annotations

import logging
from pathlib import Path

from depenc.callbacks import EvalCallback, wandb_table
from depenc.evaluation.alignment import resolve_path
from depenc.evaluation.base import unwrap_model
from depenc.evaluation.io import write_json
from depenc.evaluation.pairs import ROW_COLUMNS, PairSet, evaluate_pairs, group_labels, metric_rows, model_scorers, \
    read_pairs, scalars

log = logging.getLogger("depenc.callbacks.pairs")

__all__ = ["PairsCallback", "load_pair_sets"]


def load_pair_sets(files, by) -> dict[str, PairSet]:
    """Every input by name; ValueError (naming file and line) for unreadable pairs, a pair without a
    ``by`` key, or two inputs of the same name."""
    sets: dict[str, PairSet] = {}
    for f in files:
        ps = read_pairs(resolve_path(f))
        if ps.name in sets:
            raise ValueError(f"callbacks.pairs.files: two inputs are named {ps.name!r} ({f}); rename one")
        for key in by:
            group_labels(ps, key)
        sets[ps.name] = ps
    return sets


class PairsCallback(EvalCallback):
    """Minimal pairs with the settings of ``callbacks.pairs`` (``c``)."""

    prefix = "pairs"

    def __init__(self, c, tokenizer, sets: dict[str, PairSet], run_dir: str | Path | None = None):
        super().__init__(c.every_n_val, run_dir)
        self.c = c
        self.tokenizer = tokenizer
        self.sets = sets
        self.last_result: dict | None = None

    @classmethod
    def from_config(cls, c, cfg, dm, run_dir) -> "PairsCallback | None":
        if not c.files:
            log.warning("pairs callback: callbacks.pairs.files is empty; disabled")
            return None
        return cls(c, dm.tokenizer, load_pair_sets(list(c.files), list(c.by)), run_dir)

    def evaluate(self, trainer, pl_module, final: bool) -> dict[str, float]:
        logprob, prefix_margin = model_scorers(unwrap_model(pl_module), self.tokenizer, self.c.batch_size)
        results = {name: evaluate_pairs(ps, logprob, prefix_margin, list(self.c.by), self.c.n_bootstrap, self.c.seed)
                   for name, ps in self.sets.items()}
        self.last_result = {"step": trainer.global_step, "final": final, "inputs": results}
        if (path := self.out_path("pairs", f"{trainer.global_step}.json")) is not None:
            write_json(path, self.last_result)
        wandb_table(trainer, "pairs/groups", ROW_COLUMNS, [row for r in results.values() for row in metric_rows(r)])
        return {k: v for name, r in results.items() for k, v in scalars(r, f"pairs/{name}").items()}
