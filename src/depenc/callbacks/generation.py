"""Generated text (DESIGN 4.3): seeded samples and their statistics against reference text.

Each sample starts from the prompt ``[<eos>]`` and stops at ``<eos>`` (or after ``max_new_tokens``).
Statistics (:func:`depenc.metrics.text.text_statistics`): sentence-length distribution against the
reference (Wasserstein-1, Jensen-Shannon), distinct-1/2/3, MATTR, repeated-4-gram rate. On the
synthetic grammar every generated sentence (split at ``.``) is also judged by the recogniser:
``grammatical`` (accepted), ``valid_prefix`` (every prefix is a prefix of some sentence; an abrupt
phrase transition is the first token where that fails) and the mean position of that first invalid
token among the sentences that have one.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from depenc.callbacks import EvalCallback, cfg_get, eval_mode, model_device, unwrap_model, wandb_log, write_json
from depenc.metrics.text import length_histogram, sentence_lengths, split_sentences, text_statistics

log = logging.getLogger("depenc.callbacks.generation")

__all__ = [
    "GenerationCallback",
    "generate_samples",
    "judge_synthetic",
    "sample_metrics",
    "write_samples",
]


def generate_samples(
    model: torch.nn.Module,
    tokenizer,
    n: int,
    seed: int = 0,
    batch_size: int = 100,
    max_new_tokens: int = 0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> list[dict]:
    """``n`` samples from ``[<eos>]``, each ``{"text", "n_tokens", "ended"}`` (``ended``: stopped
    at ``<eos>`` rather than at the length limit). Deterministic for a given seed and batch size.

    Same sampling as ``Transformer.generate`` (its ``sample_next`` and KV cache, the context cropped to
    the block size beyond it), but rows that reached ``<eos>`` leave the batch (and the cache), so a
    batch costs what its samples need rather than ``batch x longest sample``."""
    device = model_device(model)
    eos = int(tokenizer.eos_id)
    max_new = int(max_new_tokens) if max_new_tokens and max_new_tokens > 0 else int(model.cfg.block_size)
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    top_k = int(top_k) if top_k else None
    top_p = float(top_p) if top_p is not None and top_p < 1.0 else None
    samples: list[dict] = []
    with eval_mode(model):
        for start in range(0, n, max(1, batch_size)):
            b = min(batch_size, n - start)
            rows = _sample_batch(model, b, eos, max_new, float(temperature), top_k, top_p, gen, device)
            for ids, ended in rows:
                samples.append({"text": tokenizer.decode(ids), "n_tokens": len(ids), "ended": ended})
    return samples


@torch.no_grad()
def _sample_batch(model, b, eos, max_new, temperature, top_k, top_p, gen, device) -> list[tuple[list[int], bool]]:
    from depenc.models.transformer import sample_next

    block = int(model.cfg.block_size)
    seq = torch.full((b, 1), eos, dtype=torch.long, device=device)
    cache = None
    if getattr(model, "supports_cache", None) is not None and model.supports_cache():
        cache = model.new_cache(b, min(block, 1 + max_new))  # KV cache while the sequence fits the block
    active = torch.arange(b)  # original row of each batch row
    out: list[list[int]] = [[] for _ in range(b)]
    ended = [False] * b
    for _ in range(max_new):
        if cache is not None and seq.size(1) <= cache.capacity:
            logits = model.forward_cached(seq[:, cache.length :], cache)["logits"][:, -1, :]
        else:  # past the block (or no cache): recompute the last block_size tokens, as generate() does
            cache = None
            logits = model(seq[:, -block:])["logits"][:, -1, :]
        nxt = sample_next(logits, temperature, top_k, top_p, gen)  # (rows,)
        for r, tok in zip(active.tolist(), nxt.tolist()):
            if tok == eos:
                ended[r] = True
            else:
                out[r].append(tok)
        keep = (nxt != eos).cpu()
        if not bool(keep.any()):
            break
        seq = torch.cat([seq, nxt.unsqueeze(1)], dim=1)
        if not bool(keep.all()):  # finished rows leave the batch (and the cache)
            rows = keep.nonzero().squeeze(1)
            seq = seq.index_select(0, rows.to(seq.device))
            active = active[rows]
            if cache is not None:
                cache.select(rows)
    return [(out[r], ended[r]) for r in range(b)]


def judge_synthetic(text: str, grammar) -> dict:
    """Recogniser verdicts for one text: per sentence (split at ``.``) ``accepted`` and
    ``first_invalid`` (0-based within the sentence, None if every prefix is valid); for the text
    ``grammatical`` (at least one sentence and all accepted) and ``first_invalid`` (0-based word
    position in the text of the first invalid token, None if none)."""
    sentences = []
    first_invalid = None
    offset = 0
    for sent in split_sentences(text):
        fi, ok = grammar.check(sent)
        sentences.append({"accepted": bool(ok), "first_invalid": fi, "n_words": len(sent)})
        if fi is not None and first_invalid is None:
            first_invalid = offset + fi
        offset += len(sent)
    return {
        "grammatical": bool(sentences) and all(s["accepted"] for s in sentences),
        "first_invalid": first_invalid,
        "sentences": sentences,
    }


def sample_metrics(samples: Sequence[dict], reference: Sequence[str] | None, grammar=None) -> dict[str, float]:
    """Scalars (without prefix) for a list of samples; with ``grammar`` the samples must already be
    judged (``judge_synthetic`` merged into each sample) or are judged here."""
    texts = [s["text"] for s in samples]
    stats = text_statistics(texts, reference)
    out: dict[str, float] = {k: v for k, v in stats.items()}
    out["ended"] = float(np.mean([s["ended"] for s in samples])) if samples else float("nan")
    out["mean_tokens"] = float(np.mean([s["n_tokens"] for s in samples])) if samples else float("nan")
    if grammar is not None:
        sents = []
        for s in samples:
            if "sentences" not in s:
                s.update(judge_synthetic(s["text"], grammar))
            sents.extend(s["sentences"])
        if sents:
            out["grammatical"] = float(np.mean([x["accepted"] for x in sents]))
            out["valid_prefix"] = float(np.mean([x["first_invalid"] is None for x in sents]))
            bad = [x["first_invalid"] for x in sents if x["first_invalid"] is not None]
            out["first_invalid_pos"] = float(np.mean(bad)) if bad else float("nan")
            out["n_invalid_sentences"] = len(bad)
        out["grammatical_samples"] = float(np.mean([s["grammatical"] for s in samples])) if samples else float("nan")
    return out


def write_samples(path: str | os.PathLike, samples: Sequence[dict]) -> Path:
    """One JSON object per line: ``text``, ``n_tokens``, ``ended`` (and the synthetic verdicts)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i, s in enumerate(samples):
            f.write(json.dumps({"id": i, **s}, ensure_ascii=False) + "\n")
    return path


def length_table(gen_lengths: Sequence[int], ref_lengths: Sequence[int]) -> list[list]:
    """Rows ``[length, generated share, reference share]`` over the pooled integer range."""
    pooled = list(gen_lengths) + list(ref_lengths)
    if not pooled:
        return []
    edges = np.arange(min(pooled), max(pooled) + 2) - 0.5
    g = length_histogram(gen_lengths, edges)[0].astype(float) if len(gen_lengths) else np.zeros(len(edges) - 1)
    r = length_histogram(ref_lengths, edges)[0].astype(float) if len(ref_lengths) else np.zeros(len(edges) - 1)
    g = g / g.sum() if g.sum() else g
    r = r / r.sum() if r.sum() else r
    return [[int(edges[i] + 0.5), float(g[i]), float(r[i])] for i in range(len(g))]


class GenerationCallback(EvalCallback):
    prefix = "gen"

    def __init__(
        self,
        tokenizer,
        reference: Sequence[str] | None = None,
        grammar=None,
        every_n_val: int = 1,
        n_samples: int = 100,
        final_n_samples: int = 0,
        batch_size: int = 100,
        max_new_tokens: int = 0,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        run_dir: str | Path | None = None,
        reference_fn=None,
    ):
        super().__init__(every_n_val=every_n_val, run_dir=run_dir)
        self.tokenizer = tokenizer
        self._reference = list(reference) if reference is not None else None
        self._reference_fn = reference_fn
        self.grammar = grammar
        self.n_samples = int(n_samples)
        self.final_n_samples = int(final_n_samples)
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.top_k = int(top_k)
        self.top_p = float(top_p)
        self.seed = int(seed)
        self._ref_lengths: list[int] | None = None
        self.last_samples: list[dict] | None = None

    @classmethod
    def from_config(cls, c, cfg, dm, run_dir) -> "GenerationCallback":
        data = getattr(dm, "cfg", None) or cfg_get(cfg, "data", {})
        grammar = None
        if cfg_get(data, "source") == "synthetic":
            from depenc.data import synthetic

            grammar = synthetic.get_grammar(synthetic.SyntheticConfig.from_dict(dict(cfg_get(data, "synthetic", {}) or {})))
        n_ref = int(cfg_get(c, "n_reference", 2000))

        def reference() -> list[str]:
            docs = dm.documents("validation")
            docs = docs[:n_ref] if n_ref > 0 else docs
            return [d.text for d in docs]

        return cls(
            tokenizer=dm.tokenizer,
            grammar=grammar,
            every_n_val=cfg_get(c, "every_n_val", 1),
            n_samples=cfg_get(c, "n_samples", 100),
            final_n_samples=cfg_get(c, "final_n_samples", 0),
            batch_size=cfg_get(c, "batch_size", 100),
            max_new_tokens=cfg_get(c, "max_new_tokens", 0),
            temperature=cfg_get(c, "temperature", 1.0),
            top_k=cfg_get(c, "top_k", 0),
            top_p=cfg_get(c, "top_p", 1.0),
            seed=cfg_get(c, "seed", 0),
            run_dir=run_dir,
            reference_fn=reference,
        )

    @property
    def reference(self) -> list[str] | None:
        if self._reference is None and self._reference_fn is not None:
            try:
                self._reference = list(self._reference_fn())
            except Exception as exc:  # the reference is optional: never stop training for it
                log.warning("generation: no reference text (%s)", exc)
                self._reference = []
            self._reference_fn = None
        return self._reference

    def evaluate(self, trainer, pl_module, final: bool) -> dict[str, float]:
        model = unwrap_model(pl_module)
        n = self.final_n_samples if final and self.final_n_samples > 0 else self.n_samples
        samples = generate_samples(model, self.tokenizer, n, self.seed, self.batch_size, self.max_new_tokens,
                                   self.temperature, self.top_k, self.top_p)
        ref = self.reference or None
        metrics = sample_metrics(samples, ref, self.grammar)
        self.last_samples = samples
        step = trainer.global_step
        path = self.out_path("samples", f"{step}.jsonl")
        gen_lengths = sentence_lengths(s["text"] for s in samples)
        if self._ref_lengths is None:
            self._ref_lengths = sentence_lengths(ref) if ref else []
        if path is not None:
            write_samples(path, samples)
            write_json(path.with_suffix(".summary.json"), {
                "step": step, "final": final, "n_samples": n, "seed": self.seed,
                "temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
                "metrics": metrics,
                "length_histogram": length_table(gen_lengths, self._ref_lengths),
            })
        self._log_wandb(trainer, samples, gen_lengths)
        return {f"gen/{k}": v for k, v in metrics.items()}

    def _log_wandb(self, trainer, samples: list[dict], gen_lengths: list[int]) -> None:
        from depenc.callbacks import wandb_runs

        if not wandb_runs(trainer):
            return
        import wandb

        cols = ["step", "id", "text", "n_tokens", "ended"] + (["grammatical", "first_invalid"] if self.grammar else [])
        data = []
        for i, s in enumerate(samples):
            row = [trainer.global_step, i, s["text"], s["n_tokens"], s["ended"]]
            if self.grammar:
                row += [s.get("grammatical"), -1 if s.get("first_invalid") is None else s["first_invalid"]]
            data.append(row)
        payload: dict[str, Any] = {"gen/samples": wandb.Table(columns=cols, data=data)}
        if gen_lengths:
            payload["gen/sent_len_hist"] = wandb.Histogram(gen_lengths)
        if self._ref_lengths:
            payload["gen/ref_sent_len_hist"] = wandb.Histogram(self._ref_lengths)
        rows = length_table(gen_lengths, self._ref_lengths or [])
        if rows:
            table = wandb.Table(columns=["length", "generated", "reference"], data=rows)
            payload["gen/sent_len_table"] = table
            payload["gen/sent_len_plot"] = wandb.plot.line_series(
                xs=[r[0] for r in rows], ys=[[r[1] for r in rows], [r[2] for r in rows]],
                keys=["generated", "reference"], title="sentence length (words)", xname="length")
        wandb_log(trainer, payload)
