"""Generated text (DESIGN 4.3): seeded samples and their statistics against reference text; the
functions behind the generation callback and ``python -m depenc.evaluate generate``.

Each sample starts from the prompt ``[<eos>]`` and stops at ``<eos>`` (or after ``max_new_tokens``);
the sampling loop is :meth:`Transformer.generate`. Statistics
(:func:`depenc.metrics.text.text_statistics`): sentence-length distribution against the reference
(Wasserstein-1, Jensen-Shannon), distinct-1/2/3, MATTR, repeated-4-gram rate. On the synthetic
grammar every generated sentence (split at ``.``) is also judged by the recogniser: ``grammatical``
(accepted), ``valid_prefix`` (every prefix is a prefix of some sentence; an abrupt phrase transition
is the first token where that fails) and the mean position of that first invalid token among the
sentences that have one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from depenc.evaluation.base import eval_mode, model_device
from depenc.metrics.text import length_histogram, split_sentences, text_statistics

__all__ = ["generate_samples", "judge_synthetic", "length_table", "sample_metrics", "write_samples"]


def generate_samples(
    model: torch.nn.Module,
    tokenizer,
    n: int,
    seed: int = 0,
    batch_size: int = 100,
    max_new_tokens: int = 0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> list[dict]:
    """``n`` samples from ``[<eos>]``, each ``{"text", "n_tokens", "ended"}`` (``ended``: stopped at
    ``<eos>`` rather than at the length limit). ``max_new_tokens`` 0 = the model's block size,
    ``top_k`` 0 and ``top_p`` 1.0 = no truncation. Deterministic for a given seed and batch size."""
    device = model_device(model)
    eos = int(tokenizer.eos_id)
    max_new = max_new_tokens if max_new_tokens > 0 else int(model.cfg.block_size)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    samples: list[dict] = []
    with eval_mode(model):
        for start in range(0, n, max(1, batch_size)):
            prompt = torch.full((min(batch_size, n - start), 1), eos, dtype=torch.long, device=device)  # (b, 1)
            out = model.generate(prompt, max_new, temperature=temperature, top_k=top_k or None,
                                 top_p=top_p if top_p < 1.0 else None, eos_id=eos, generator=gen)  # (b, 1 + n')
            for row in out[:, 1:].tolist():
                ended = eos in row
                ids = row[: row.index(eos)] if ended else row
                samples.append({"text": tokenizer.decode(ids), "n_tokens": len(ids), "ended": ended})
    return samples


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


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


def sample_metrics(samples: Sequence[dict], reference: Sequence[str] | None, grammar=None) -> dict[str, float]:
    """Scalars (without prefix) for a list of samples; with ``grammar`` the samples must already be
    judged (``judge_synthetic`` merged into each sample) or are judged here."""
    out: dict[str, float] = dict(text_statistics([s["text"] for s in samples], reference))
    out["ended"] = _mean(s["ended"] for s in samples)
    out["mean_tokens"] = _mean(s["n_tokens"] for s in samples)
    if grammar is not None:
        sents = []
        for s in samples:
            if "sentences" not in s:
                s.update(judge_synthetic(s["text"], grammar))
            sents.extend(s["sentences"])
        if sents:
            bad = [x["first_invalid"] for x in sents if x["first_invalid"] is not None]
            out["grammatical"] = _mean(x["accepted"] for x in sents)
            out["valid_prefix"] = _mean(x["first_invalid"] is None for x in sents)
            out["first_invalid_pos"] = _mean(bad)
            out["n_invalid_sentences"] = len(bad)
        out["grammatical_samples"] = _mean(s["grammatical"] for s in samples)
    return out


def write_samples(path: str | os.PathLike, samples: Sequence[dict]) -> Path:
    """One JSON object per line: ``id``, ``text``, ``n_tokens``, ``ended`` (and the synthetic verdicts)."""
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

    def shares(lengths: Sequence[int]) -> np.ndarray:
        counts = length_histogram(lengths, edges)[0].astype(float)
        return counts / counts.sum() if counts.sum() else counts

    g, r = shares(gen_lengths), shares(ref_lengths)
    return [[int(edges[i] + 0.5), float(g[i]), float(r[i])] for i in range(len(g))]
