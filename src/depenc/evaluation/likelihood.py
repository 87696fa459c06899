"""Likelihood of text under a model: perplexity and bits per byte of documents, log-probabilities of
sentences (``python -m depenc.evaluate ppl`` / ``score``)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from depenc.evaluation.base import model_device

__all__ = ["nll_of_blocks", "perplexity", "score_sentences"]


@torch.no_grad()
def nll_of_blocks(model, blocks, batch_size: int = 16) -> tuple[float, int]:
    """Summed NLL (nats) and number of predicted tokens over ``EvalBlocks``-like items."""
    device = model_device(model)
    total, count = 0.0, 0
    for s in range(0, len(blocks), batch_size):
        items = [blocks[i] for i in range(s, min(len(blocks), s + batch_size))]
        x = torch.stack([it["input_ids"] for it in items]).to(device)
        y = torch.stack([it["targets"] for it in items]).to(device)
        logits = model(x)["logits"].float()
        nll = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=-100,
                                                reduction="sum")
        total += float(nll)
        count += int((y != -100).sum())
    return total, count


def perplexity(model, tokenizer, documents: Sequence[str], batch_size: int = 16, stride: int = 0) -> dict:
    """Token ppl, bits per byte (UTF-8 bytes of the documents + one per closing ``<eos>``, as in
    training) and word ppl (whitespace words + one per ``<eos>``) of the documents joined with
    ``<eos>`` (``[eos] d1 [eos] d2 [eos] ...``), in non-overlapping blocks of the model's context
    (``stride`` 0) or sliding windows every ``stride`` tokens, each token scored once (``EvalBlocks``)."""
    from depenc.data.datamodule import EvalBlocks

    eos = tokenizer.eos_id
    stream: list[int] = [eos]
    for d in documents:
        stream.extend(tokenizer.encode(d))
        stream.append(eos)
    blocks = EvalBlocks(np.asarray(stream, dtype=np.int64), int(model.cfg.block_size), pad_id=eos, stride=stride)
    nll, n = nll_of_blocks(model, blocks, batch_size)
    n_text = len(stream) - len(documents) - 1  # tokens of the documents, without the <eos> separators
    unk = tokenizer.unk_id
    n_unk = int(np.count_nonzero(np.asarray(stream) == unk)) if unk is not None else 0
    n_bytes = sum(len(d.encode("utf-8")) for d in documents) + len(documents)
    n_words = sum(len(d.split()) for d in documents) + len(documents)
    mean = nll / n if n else float("nan")
    return {
        "n_docs": len(documents),
        "n_tokens": n,
        "loss": mean,
        "ppl": math.exp(mean) if n else float("nan"),
        "n_bytes": n_bytes,
        "bpb": nll / math.log(2) / n_bytes if n_bytes else float("nan"),
        "n_words": n_words,
        "word_ppl": math.exp(nll / n_words) if n_words else float("nan"),
        "block_size": int(model.cfg.block_size),
        "stride": blocks.stride,
        # share of the documents' tokens that are <unk> (None: the tokenizer has no <unk>, e.g. byte BPE)
        "unk_rate": n_unk / n_text if unk is not None and n_text else (None if unk is None else 0.0),
    }


@torch.no_grad()
def score_sentences(model, tokenizer, sentences: Sequence[str], batch_size: int = 32) -> list[dict]:
    """Total log-prob (nats) of each sentence's tokens + closing ``<eos>`` given ``[<eos>]``.

    Sentences longer than the context are scored in consecutive non-overlapping windows (the first
    token of each later window sees only its own window); they are flagged ``"windowed": true``."""
    device = model_device(model)
    eos = tokenizer.eos_id
    T = int(model.cfg.block_size)
    seqs = [[eos] + tokenizer.encode(s) + [eos] for s in sentences]
    # (sequence index, inputs, targets) windows of at most T inputs
    windows: list[tuple[int, list[int], list[int]]] = []
    for k, seq in enumerate(seqs):
        for s in range(0, len(seq) - 1, T):
            chunk = seq[s : s + T + 1]
            windows.append((k, chunk[:-1], chunk[1:]))
    totals = np.zeros(len(seqs))
    order = sorted(range(len(windows)), key=lambda i: len(windows[i][1]))
    for s in range(0, len(order), batch_size):
        chunk = [windows[i] for i in order[s : s + batch_size]]
        L = max(len(w[1]) for w in chunk)
        x = torch.full((len(chunk), L), eos, dtype=torch.long)
        y = torch.full((len(chunk), L), -100, dtype=torch.long)
        for r, (_, inp, tgt) in enumerate(chunk):
            x[r, : len(inp)] = torch.tensor(inp)
            y[r, : len(tgt)] = torch.tensor(tgt)
        logp = torch.log_softmax(model(x.to(device))["logits"].float(), dim=-1).cpu()
        mask = y != -100
        picked = logp.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
        for r, (k, _, _) in enumerate(chunk):
            totals[k] += float(picked[r].sum())
    return [
        {"text": s, "logprob": float(totals[k]), "n_tokens": len(seqs[k]) - 1,
         **({"windowed": True} if len(seqs[k]) - 1 > T else {})}
        for k, s in enumerate(sentences)
    ]
