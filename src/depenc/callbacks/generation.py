"""Generated text during training (DESIGN 4.3; sampling and statistics are :mod:`depenc.evaluation.generation`).

Logs ``gen/<metric>``, writes the samples to ``samples/<step>.jsonl`` and their statistics with a
sentence-length histogram against the reference to ``samples/<step>.summary.json``; W&B gets the
samples, the length histograms and a length plot. The reference text is the first
``n_reference`` validation documents.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from depenc.callbacks import EvalCallback, wandb_log, wandb_runs
from depenc.evaluation.base import synthetic_config, unwrap_model
from depenc.evaluation.generation import generate_samples, length_table, sample_metrics, write_samples
from depenc.evaluation.io import write_json
from depenc.metrics.text import sentence_lengths

log = logging.getLogger("depenc.callbacks.generation")

__all__ = ["GenerationCallback"]


class GenerationCallback(EvalCallback):
    """Samples with the settings of ``callbacks.generation`` (``c``); ``grammar`` judges them on the
    synthetic grammar; ``reference_fn`` gives the reference texts (called once, when first needed)."""

    prefix = "gen"

    def __init__(self, c, tokenizer, grammar=None, reference_fn: Callable[[], Sequence[str]] | None = None,
                 run_dir: str | Path | None = None):
        super().__init__(c.every_n_val, run_dir)
        self.c = c
        self.tokenizer = tokenizer
        self.grammar = grammar
        self._reference_fn = reference_fn
        self._reference: list[str] | None = None
        self._ref_lengths: list[int] | None = None
        self.last_samples: list[dict] | None = None

    @classmethod
    def from_config(cls, c, cfg, dm, run_dir) -> "GenerationCallback":
        grammar = None
        if cfg.data.source == "synthetic":
            from depenc.data import synthetic

            grammar = synthetic.get_grammar(synthetic_config(cfg.data.synthetic))

        def reference() -> list[str]:
            docs = dm.documents("validation")
            return [d.text for d in (docs[: c.n_reference] if c.n_reference > 0 else docs)]

        return cls(c, dm.tokenizer, grammar, reference, run_dir)

    @property
    def reference(self) -> list[str]:
        if self._reference is None:
            try:
                self._reference = list(self._reference_fn()) if self._reference_fn is not None else []
            except Exception as exc:  # the reference is optional: never stop training for it
                log.warning("generation: no reference text (%s)", exc)
                self._reference = []
            self._ref_lengths = sentence_lengths(self._reference)
        return self._reference

    def evaluate(self, trainer, pl_module, final: bool) -> dict[str, float]:
        c = self.c
        n = c.final_n_samples if final and c.final_n_samples > 0 else c.n_samples
        samples = generate_samples(unwrap_model(pl_module), self.tokenizer, n, c.seed, c.batch_size,
                                   c.max_new_tokens, c.temperature, c.top_k, c.top_p)
        metrics = sample_metrics(samples, self.reference or None, self.grammar)
        self.last_samples = samples
        gen_lengths = sentence_lengths(s["text"] for s in samples)
        if (path := self.out_path("samples", f"{trainer.global_step}.jsonl")) is not None:
            write_samples(path, samples)
            write_json(path.with_suffix(".summary.json"), {
                "step": trainer.global_step, "final": final, "n_samples": n, "seed": c.seed,
                "temperature": c.temperature, "top_k": c.top_k, "top_p": c.top_p, "metrics": metrics,
                "length_histogram": length_table(gen_lengths, self._ref_lengths),
            })
        self._log_wandb(trainer, samples, gen_lengths)
        return {f"gen/{k}": v for k, v in metrics.items()}

    def _log_wandb(self, trainer, samples: list[dict], gen_lengths: list[int]) -> None:
        if not wandb_runs(trainer):
            return
        import wandb

        judged = self.grammar is not None
        cols = ["step", "id", "text", "n_tokens", "ended"] + (["grammatical", "first_invalid"] if judged else [])
        data = []
        for i, s in enumerate(samples):
            row = [trainer.global_step, i, s["text"], s["n_tokens"], s["ended"]]
            if judged:
                row += [s["grammatical"], -1 if s["first_invalid"] is None else s["first_invalid"]]
            data.append(row)
        payload: dict[str, Any] = {"gen/samples": wandb.Table(columns=cols, data=data)}
        if gen_lengths:
            payload["gen/sent_len_hist"] = wandb.Histogram(gen_lengths)
        if self._ref_lengths:
            payload["gen/ref_sent_len_hist"] = wandb.Histogram(self._ref_lengths)
        rows = length_table(gen_lengths, self._ref_lengths)
        if rows:
            payload["gen/sent_len_table"] = wandb.Table(columns=["length", "generated", "reference"], data=rows)
            payload["gen/sent_len_plot"] = wandb.plot.line_series(
                xs=[r[0] for r in rows], ys=[[r[1] for r in rows], [r[2] for r in rows]],
                keys=["generated", "reference"], title="sentence length (words)", xname="length")
        wandb_log(trainer, payload)
