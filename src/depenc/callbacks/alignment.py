"""Dependency alignment during training (DESIGN 4.2; the scoring is :mod:`depenc.evaluation.alignment`).

Logs ``align/<treebank>/<source>/<metric>`` for every configured treebank and writes the whole
result (with example sentences) to ``alignment/<step>.json`` in the run folder; W&B gets a table of
the length and arc-length buckets.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from depenc.callbacks import EvalCallback, eval_size, wandb_table
from depenc.evaluation.alignment import (
    CROSS,
    SYNTHETIC_PREFIX,
    GoldSentence,
    Treebank,
    bucket_rows,
    encode_treebank,
    evaluate_alignment,
    flat_metrics,
    gold_from_spec,
    treebank_name,
)
from depenc.evaluation.base import oracle_skip_reason, unwrap_model
from depenc.evaluation.io import write_json

log = logging.getLogger("depenc.callbacks.alignment")

__all__ = ["AlignmentCallback", "treebank_specs"]


def treebank_specs(c, data) -> tuple[dict[str, str], str | None]:
    """``(name -> path | synthetic:<split>, selection)`` from ``callbacks.alignment`` (``c``) and the
    data config: the grammar's test split first on synthetic data, then ``c.treebanks``; selection
    ``auto`` is the validation split on synthetic data, else the first file treebank."""
    synthetic = data.source == "synthetic"
    specs = {"synthetic": f"{SYNTHETIC_PREFIX}test"} if synthetic and c.synthetic else {}
    specs.update({str(name): str(path) for name, path in c.treebanks.items()})
    selection = c.selection
    if selection == "auto":
        files = [n for n, p in specs.items() if not p.startswith(SYNTHETIC_PREFIX)]
        selection = f"{SYNTHETIC_PREFIX}validation" if synthetic else (files[0] if files else None)
    elif selection in ("none", ""):
        selection = None
    elif selection == CROSS and len(specs) < 2:
        raise ValueError(f"callbacks.alignment.selection: {CROSS!r} needs at least two treebanks "
                         f"(each reports a head chosen on another), got {sorted(specs) or 'none'}")
    return specs, selection


class AlignmentCallback(EvalCallback):
    """Dependency alignment on the configured treebanks, with the settings of ``callbacks.alignment``.

    ``treebanks``: name -> path (``.conllu``, ``.dp``, ``.zip``) or ``synthetic:<split>``;
    ``selection``: the name or path of the treebank that chooses attn_best, ``cross``, or None (no
    attn_best). Missing files are skipped with a warning.
    """

    prefix = "align"

    def __init__(self, c, tokenizer, treebanks: dict[str, str], selection: str | None, synthetic_cfg: Any,
                 run_dir: str | Path | None = None):
        super().__init__(c.every_n_val, run_dir)
        self.c = c
        self.tokenizer = tokenizer
        self.treebank_specs = dict(treebanks)
        self.selection_spec = selection
        self.synthetic_cfg = synthetic_cfg
        self._gold: dict[str, list[GoldSentence] | None] = {}
        self._encoded: dict[tuple[str, int, int], Treebank] = {}
        self.last_result: dict | None = None

    @classmethod
    def from_config(cls, c, cfg, dm, run_dir) -> "AlignmentCallback | None":
        specs, selection = treebank_specs(c, cfg.data)
        if not specs:
            log.warning("alignment callback: no treebank configured (callbacks.alignment.treebanks); disabled")
            return None
        return cls(c, dm.tokenizer, specs, selection, cfg.data.synthetic, run_dir)

    def check_model(self, model) -> str | None:
        return oracle_skip_reason(model, self.tokenizer)

    # data: loaded once per (spec, size), encoded once per context length -------------------------
    def _treebank(self, name: str, spec: str, n: int, block_size: int) -> Treebank | None:
        key = f"{spec}#{n}"
        if key not in self._gold:
            try:
                self._gold[key] = gold_from_spec(spec, self.synthetic_cfg, n)
            except FileNotFoundError as exc:
                if not any(k.startswith(f"{spec}#") for k in self._gold):
                    log.warning("alignment: %s -- skipped", exc)  # once per spec
                self._gold[key] = None
        if self._gold[key] is None:
            return None
        if (name, n, block_size) not in self._encoded:
            self._encoded[name, n, block_size] = encode_treebank(name, self._gold[key], self.tokenizer, block_size,
                                                                 source=spec)
        return self._encoded[name, n, block_size]

    def _selection(self, n: int, block: int) -> Treebank | str | None:
        """The treebank that chooses attn_best (or ``cross``, or None)."""
        sel = self.selection_spec
        if sel is None or sel == CROSS:
            return sel
        if sel in self.treebank_specs:  # one of the reported treebanks: the same sentences
            return self._treebank(sel, self.treebank_specs[sel], n, block)
        return self._treebank(treebank_name(sel), sel, self.c.selection_sentences, block)

    def evaluate(self, trainer, pl_module, final: bool) -> dict[str, float]:
        model = unwrap_model(pl_module)
        block = int(model.cfg.block_size)
        n = eval_size(self.c.max_sentences, self.c.final_max_sentences, final)
        t0 = time.perf_counter()
        treebanks = [tb for name, spec in self.treebank_specs.items()
                     if (tb := self._treebank(name, spec, n, block)) is not None]
        selection = self._selection(n, block)
        if selection == CROSS and len(treebanks) < 2:  # a treebank file is missing (warned above)
            log.warning("alignment: selection 'cross' needs two treebanks, %d found -- no attn_best", len(treebanks))
            selection = None
        result = evaluate_alignment(model, treebanks, selection, self.c.batch_size, self.c.drop_punct,
                                    self.c.n_examples, self.c.seed)
        result.update(step=trainer.global_step, final=final, seconds=time.perf_counter() - t0,
                      max_sentences=n, drop_punct=self.c.drop_punct,
                      target=model.cfg.depenc.target if model.encoder is not None else None)
        self.last_result = result
        if (path := self.out_path("alignment", f"{trainer.global_step}.json")) is not None:
            write_json(path, result)
        wandb_table(trainer, "align/buckets", ["treebank", "source", "kind", "bucket", "value"], bucket_rows(result))
        return flat_metrics(result)
