"""Subject-verb agreement across distance on the synthetic grammar (DESIGN 4.4): the functions behind
the agreement callback and ``python -m depenc.evaluate agree``.

Minimal pairs come from the grammar's annotations (:func:`depenc.data.synthetic.minimal_pairs`): at
every finite verb, the correct form against the form of the other number, given the same prefix.
Score: the margin ``log p(correct | [BOS] + prefix) - log p(wrong | [BOS] + prefix)`` in nats;
accuracy = share of margins > 0. Both overall, per distance bucket (words between subject and verb)
and per number of attractors (intervening nouns of the other number), each with a seeded bootstrap
95% confidence interval (percentile method, ``scipy.stats.bootstrap``).

Efficiency: with a word tokenizer every verb form is one token, so one forward pass over
``[BOS] + sentence`` gives both log-probabilities at every verb of the sentence at once (the model is
causal: the logits at the verb's position depend on the prefix only). Other tokenizers score each
form as the sum of the log-probabilities of its tokens, one sequence per form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from scipy.stats import bootstrap

from depenc.data.gold import gold_matrices
from depenc.evaluation.base import eval_mode, model_device, needs_gold_arcs, padded, synthetic_config
from depenc.metrics.buckets import bucket_labels, find_bucket

#: Distance buckets (words strictly between subject and verb), inclusive bounds.
DIST_BUCKETS: list[tuple[int, int | None]] = [(0, 3), (4, 7), (8, 12), (13, None)]
#: Attractor-count buckets.
ATTR_BUCKETS: list[tuple[int, int | None]] = [(0, 0), (1, 1), (2, 2), (3, None)]
DIST_LABELS = bucket_labels(DIST_BUCKETS)  # 0-3, 4-7, 8-12, >12
ATTR_LABELS = bucket_labels(ATTR_BUCKETS, open_style="+")  # 0, 1, 2, 3+

__all__ = [
    "ATTR_BUCKETS",
    "ATTR_LABELS",
    "BUCKET_COLUMNS",
    "DIST_BUCKETS",
    "DIST_LABELS",
    "PairItem",
    "agreement_metrics",
    "attr_label",
    "bootstrap_ci",
    "bucket_rows",
    "dist_label",
    "evaluate_pairs",
    "load_pairs",
    "score_pairs",
]


def dist_label(distance: int) -> str | None:
    """``0-3``, ``4-7``, ``8-12`` or ``>12``."""
    return find_bucket(distance, DIST_BUCKETS)


def attr_label(attractors: int) -> str | None:
    """``0``, ``1``, ``2`` or ``3+``."""
    return find_bucket(attractors, ATTR_BUCKETS, open_style="+")


@dataclass(frozen=True)
class PairItem:
    """One minimal pair: the sentence (tokens), the verb position and both forms."""

    sentence: tuple[str, ...]
    verb: int
    good: str
    bad: str
    distance: int
    attractors: int
    heads: tuple[int, ...] = ()  # gold heads of the sentence (for oracle models)


def load_pairs(synthetic_cfg: Any, split: str, max_pairs: int = 0) -> list[PairItem]:
    """Minimal pairs of a synthetic split, in sentence order; the first ``max_pairs`` (0 = all).

    Taking the first pairs (not a random subset) keeps the set fixed across evaluations and needs
    few sentences, hence few forward passes."""
    from depenc.data import synthetic

    scfg = synthetic_config(synthetic_cfg)
    out: list[PairItem] = []
    for s in synthetic.make_split(scfg, split):
        for p in synthetic.minimal_pairs([s], scfg):
            out.append(PairItem(tuple(p.good_sentence), int(p.verb), p.good, p.bad, int(p.distance),
                                int(p.attractors), tuple(s.heads)))
        if max_pairs and len(out) >= max_pairs:
            return out[:max_pairs]
    return out


# --------------------------------------------------------------------------------------------
# scoring


def _single_token_ids(tokenizer, words: Sequence[str]) -> list[int] | None:
    """Word tokenizer: the id of every word (None if some word is unknown)."""
    if tokenizer.kind != "word":
        return None
    ids = tokenizer.encode(" ".join(words))
    if len(ids) != len(words) or tokenizer.unk_id in ids:
        return None
    return ids


@torch.no_grad()
def score_pairs(
    model: torch.nn.Module, tokenizer, pairs: Sequence[PairItem], batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Margins (nats) of every pair and a mask of the pairs that could be scored (prefix + verb
    within the context). The model must be in eval mode."""
    margins = np.full(len(pairs), np.nan)
    block = int(model.cfg.block_size)
    device = model_device(model)
    eos = int(tokenizer.eos_id)
    # fast path: group by sentence, one forward gives every verb's two log-probs
    groups: dict[tuple[str, ...], list[int]] = {}
    slow: list[int] = []
    for k, p in enumerate(pairs):
        if p.verb + 1 > block:  # [BOS] + prefix must fit
            continue
        if _single_token_ids(tokenizer, [p.good, p.bad]) is None:
            slow.append(k)
            continue
        groups.setdefault(p.sentence, []).append(k)
    oracle = needs_gold_arcs(model)
    if oracle and slow:
        raise ValueError("an oracle model (depenc.parser=oracle) needs the word tokenizer for agreement pairs")
    units = []
    for sent, ks in groups.items():
        need = max(pairs[k].verb for k in ks)  # tokens up to (excluding) the last verb
        ids = _single_token_ids(tokenizer, list(sent[:need]))
        if ids is None and need > 0:
            if oracle:
                raise ValueError("an oracle model needs every word of the pairs in the vocabulary")
            slow.extend(ks)
            continue
        units.append(([eos] + (ids or []), ks))
    units.sort(key=lambda u: len(u[0]))
    for s in range(0, len(units), max(1, batch_size)):
        chunk = units[s : s + batch_size]
        idx = padded([ids for ids, _ in chunk], eos)  # (B, T)
        # the gold arcs of the sentence; rows after the prefix only touch padding (causal)
        gold = gold_matrices([pairs[ks[0]].heads for _, ks in chunk], model.cfg.depenc.target, idx.size(1),
                             device) if oracle else None
        logp = torch.log_softmax(model(idx.to(device), gold_M=gold)["logits"].float(), dim=-1).cpu()  # (B, T, V)
        for b, (_, ks) in enumerate(chunk):
            for k in ks:
                p = pairs[k]
                good, bad = _single_token_ids(tokenizer, [p.good, p.bad])
                row = logp[b, p.verb]  # position v holds the last prefix token (BOS at 0)
                margins[k] = float(row[good] - row[bad])
    if slow:
        margins[slow] = _score_slow(model, tokenizer, [pairs[k] for k in slow], batch_size, block, device, eos)
    return margins, ~np.isnan(margins)


def _continuation(tokenizer, prefix: Sequence[str], word: str) -> tuple[list[int], int] | None:
    """Token ids of ``prefix + word`` and the number of prefix tokens (None if the prefix's tokens
    are not a prefix of the full encoding)."""
    full = tokenizer.encode(" ".join([*prefix, word]))
    pre = tokenizer.encode(" ".join(prefix)) if prefix else []
    if full[: len(pre)] != pre or len(full) == len(pre):
        return None
    return full, len(pre)


@torch.no_grad()
def _score_slow(model, tokenizer, pairs, batch_size, block, device, eos) -> np.ndarray:
    """Margins as summed log-probabilities of each form's tokens (any tokenizer), NaN where a form's
    tokens do not continue the prefix's or do not fit the context."""
    seqs: list[tuple[list[int], int]] = []  # ([BOS] + ids, first scored position in ids)
    ok = []
    for p in pairs:
        prefix = list(p.sentence[: p.verb])
        g, b = _continuation(tokenizer, prefix, p.good), _continuation(tokenizer, prefix, p.bad)
        fits = g is not None and b is not None and len(g[0]) <= block and len(b[0]) <= block
        ok.append(fits)
        seqs += [([eos] + g[0], g[1]), ([eos] + b[0], b[1])] if fits else [([eos, eos], 1), ([eos, eos], 1)]
    totals = np.zeros(len(seqs))
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    for s in range(0, len(order), max(1, batch_size)):
        chunk = order[s : s + batch_size]
        idx = padded([seqs[i][0][:-1] for i in chunk], eos)  # (B, T): inputs, the last token is only a target
        logp = torch.log_softmax(model(idx.to(device))["logits"].float(), dim=-1).cpu()  # (B, T, V)
        for r, i in enumerate(chunk):
            ids, start = seqs[i]
            tgt = ids[1:]
            totals[i] = sum(float(logp[r, pos, tgt[pos]]) for pos in range(start, len(tgt)))
    out = totals[0::2] - totals[1::2]
    out[~np.asarray(ok, dtype=bool)] = np.nan
    return out


# --------------------------------------------------------------------------------------------
# statistics


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap ``(lo, hi)`` of the mean of ``values`` (``scipy.stats.bootstrap``, seeded);
    NaN for an empty sample, the mean itself for one value or ``n_boot <= 0``."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    if n_boot <= 0 or x.size == 1:
        return float(x.mean()), float(x.mean())
    res = bootstrap((x,), np.mean, n_resamples=n_boot, confidence_level=1 - alpha, method="percentile",
                    rng=np.random.default_rng(seed), batch=max(1, 2_000_000 // x.size))  # batch bounds memory
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def agreement_metrics(
    margins: np.ndarray, distances: np.ndarray, attractors: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> dict[str, float]:
    """``acc``, ``margin`` (+ ``_lo``/``_hi``), ``n``, overall and per ``dist_<bucket>`` /
    ``attr_<bucket>`` (keys like ``acc_dist_>12``, ``margin_attr_3+_lo``, ``n_dist_0-3``). Every
    bucket's intervals get their own seed (``seed + k``), so adding a bucket changes no other."""
    m = np.asarray(margins, dtype=np.float64)
    dl = np.array([dist_label(int(x)) for x in distances], dtype=object)
    al = np.array([attr_label(int(x)) for x in attractors], dtype=object)
    out: dict[str, float] = {}

    def fill(suffix: str, mask: np.ndarray, k: int) -> None:
        x = m[mask]
        out[f"n{suffix}"] = int(x.size)
        if x.size == 0:
            return
        acc = (x > 0).astype(np.float64)
        out[f"acc{suffix}"] = float(acc.mean())
        out[f"margin{suffix}"] = float(x.mean())
        out[f"acc{suffix}_lo"], out[f"acc{suffix}_hi"] = bootstrap_ci(acc, n_boot, seed + k)
        out[f"margin{suffix}_lo"], out[f"margin{suffix}_hi"] = bootstrap_ci(x, n_boot, seed + k)

    fill("", np.ones(m.shape, dtype=bool), 0)
    for i, label in enumerate(DIST_LABELS):
        fill(f"_dist_{label}", dl == label, 1 + i)
    for i, label in enumerate(ATTR_LABELS):
        fill(f"_attr_{label}", al == label, 101 + i)
    return out


def evaluate_pairs(model, tokenizer, pairs: Sequence[PairItem], batch_size: int = 64, n_boot: int = 1000,
                   seed: int = 0) -> tuple[dict[str, float], dict]:
    """(metrics, details) for one set of pairs; the model is put in eval mode here."""
    with eval_mode(model):
        margins, ok = score_pairs(model, tokenizer, pairs, batch_size)
    dist = np.array([p.distance for p in pairs], dtype=np.int64)
    attr = np.array([p.attractors for p in pairs], dtype=np.int64)
    metrics = agreement_metrics(margins[ok], dist[ok], attr[ok], n_boot, seed)
    metrics["n_skipped"] = int((~ok).sum())
    details = {"items": [[int(dist[i]), int(attr[i]), float(margins[i])] for i in np.flatnonzero(ok)],
               "item_columns": ["distance", "attractors", "margin"]}
    return metrics, details


BUCKET_COLUMNS = ["split", "kind", "bucket", "n", "acc", "acc_lo", "acc_hi", "margin", "margin_lo", "margin_hi"]


def bucket_rows(metrics_by_split: dict[str, dict[str, float]]) -> list[list]:
    """Rows of :data:`BUCKET_COLUMNS` for every split and every non-empty dist / attr bucket."""
    rows = []
    for split, m in metrics_by_split.items():
        for kind, labels in (("dist", DIST_LABELS), ("attr", ATTR_LABELS)):
            for label in labels:
                key = f"{kind}_{label}"
                if f"acc_{key}" in m:
                    rows.append([split, kind, label, m[f"n_{key}"]] + [m[f"{stat}_{key}{end}"] for stat in
                                ("acc", "margin") for end in ("", "_lo", "_hi")])
    return rows
