"""Excess loss over the grammar's exact optimum: how much of a model's loss is reducible, and where.

On the synthetic corpus the Bayes-optimal next-token distribution ``p`` after every sentence prefix
is known exactly (:class:`depenc.data.synthetic.exact.ExactReference`). The model is scored on
sentence-aligned blocks (:mod:`depenc.data.aligned`: every sentence in context from its opening
``<eos>``, as the optimum sees it). At every predicted position, with target ``t`` and the model's
distribution ``q``:

* ``excess`` = ``log p(t) - log q(t)``: the model's NLL minus the optimal NLL (nats/token);
* ``kl`` = ``KL(p || q) = sum_v p(v) (log p(v) - log q(v))`` (>= 0; the expected excess).

Both are averaged over all positions and per bucket: the category of the target token
(:data:`CATEGORIES`; every finite verb of the grammar agrees with its subject, so ``verb`` is the
agreeing verb), the embedding depth at the target (the token's depth in the derivation; the
closing ``<eos>`` has depth 0), and for the verbs the subject-verb distance and attractor buckets of
the agreement callback. ``share`` is a bucket's part of the total excess (of the verbs' excess for
the distance and attractor buckets). A bucket holds the positions whose *target* is in it, so its
excess can be negative (a model that gives prepositions more mass than the optimum gains where one
follows and loses where it does not); its KL is never negative. At the verbs the
agreement margin ``log P(correct form) - log P(other-number form)`` of the model is reported next
to the optimum's; the grammar makes the other form ungrammatical, so the optimal margin is
infinite wherever the reference gives it probability 0 (``opt_inf_share``; ``opt_margin`` is the
mean of the finite ones, NaN when there are none).

The same sentences are also scored in the plain blocks of today's evaluation (the packed stream
``[eos] s1 [eos] s2 ...`` cut every ``block_size`` tokens), so ``plain_ppl`` against ``ppl`` shows
what cutting sentences at block starts costs. Sentences longer than ``block_size - 1`` tokens cannot
be aligned: they are left out of both and counted (``n_skipped``).

Entry point: :func:`evaluate_excess` -> (flat metrics ``excess/<split>/<name>``, rich JSON-able
result with per-bucket counts). :func:`prepare_targets` does the model-independent part (the exact
distributions); callers that score several models or steps keep its result.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from depenc.data.aligned import AlignedBlocks, fits, stream_of
from depenc.data.datamodule import IGNORE_INDEX, EvalBlocks
from depenc.evaluation.agreement import ATTR_LABELS, DIST_LABELS, attr_label, dist_label
from depenc.evaluation.base import model_device, needs_gold_arcs

__all__ = [
    "CATEGORIES",
    "SplitTargets",
    "aligned_sentences",
    "aligned_vs_plain",
    "block_nll",
    "category_of",
    "evaluate_excess",
    "exact_reference",
    "flat_metrics",
    "kl_rows",
    "plain_blocks",
    "prepare_targets",
    "score_model",
    "summarize",
]

#: Categories of the target token, in report order.
CATEGORIES = ("det", "noun", "verb", "adj", "adv", "prep", "rel_that", "comp_that", "and", "period", "eos")
# lexical category (tag without its number) -> report category
_TAG_CATEGORY = {"DET": "det", "N": "noun", "IV": "verb", "TV": "verb", "CV": "verb", "ADJ": "adj",
                 "ADV": "adv", "P": "prep", "RPRON": "rel_that", "CTHAT": "comp_that", "CC": "and",
                 "PUNCT": "period"}


def category_of(tag: str) -> str:
    """Report category of a generator tag (``N_sg`` -> ``noun``, ``RPRON`` -> ``rel_that``, ...)."""
    return _TAG_CATEGORY[tag.split("_")[0]]


def exact_reference(scfg, split: str, reference: str, cache_dir=None):
    """The grammar's exact next-token distributions for one split (``reference``: own | train), cached
    on disk under ``cache_dir`` (None: not cached)."""
    from depenc.data.synthetic.exact import ExactReference

    return ExactReference(scfg, reference=reference, split=split, cache_dir=cache_dir)


# --------------------------------------------------------------------------------------------
# the model-independent part: sentences, targets and the exact distributions


@dataclass
class SplitTargets:
    """Every predicted position of the aligned sentences of one split, flattened: sentence i's
    positions are ``offsets[i] .. offsets[i] + len(ids[i])`` (its tokens, then its closing ``<eos>``)."""

    split: str
    reference: str
    block_size: int
    eos_id: int
    ids: list[np.ndarray]  # token ids per kept sentence
    heads: list[list[int]]  # gold heads per kept sentence (oracle models read them)
    offsets: np.ndarray  # (S,) first flat position of each sentence
    opt_logp: np.ndarray  # (N, V) exact log-probabilities of the next token (-inf = impossible)
    target: np.ndarray  # (N,) target token id
    category: np.ndarray  # (N,) index into CATEGORIES
    depth: np.ndarray  # (N,) embedding depth of the target
    other: np.ndarray  # (N,) id of the other-number form at agreeing verbs, -1 elsewhere
    distance: np.ndarray  # (N,) subject-verb distance at agreeing verbs, -1 elsewhere
    attractors: np.ndarray  # (N,) attractor count at agreeing verbs, -1 elsewhere
    n_requested: int  # sentences asked for (before dropping the ones that do not fit)

    @property
    def n_skipped(self) -> int:
        return self.n_requested - len(self.ids)

    @property
    def opt_nll(self) -> np.ndarray:  # (N,)
        return -self.opt_logp[np.arange(len(self.target)), self.target]


def _word_ids(tokenizer, words: Sequence[str]) -> list[int]:
    ids = [tokenizer.token_to_id(w) for w in words]
    missing = sorted({w for w, i in zip(words, ids) if i is None})
    if missing:
        raise ValueError(f"words {missing} are not in the model's vocabulary (a run of another grammar?)")
    return ids


def aligned_sentences(scfg, split: str, block_size: int, max_sentences: int = 0) -> tuple[list, int]:
    """(the first ``max_sentences`` (0 = all) sentences of a synthetic split that fit an aligned
    block of ``block_size``, how many were asked for)."""
    from depenc.data import synthetic

    sentences = synthetic.make_split(scfg, split)  # ValueError for an unknown split
    if max_sentences > 0:
        sentences = sentences[:max_sentences]
    return [s for s in sentences if fits(len(s.tokens), block_size)], len(sentences)


def prepare_targets(scfg, split: str, tokenizer, block_size: int, reference: str = "own",
                    max_sentences: int = 0, cache_dir=None) -> SplitTargets:
    """The sentences of :func:`aligned_sentences`, their targets and annotations, and the exact
    next-token log-probabilities (:func:`exact_reference`; ``cache_dir`` for its disk cache)."""
    from depenc.data import synthetic

    if getattr(tokenizer, "kind", "") != "word":
        raise ValueError("the excess loss needs data.tokenizer=word (the exact distributions are over words)")
    kept, n_requested = aligned_sentences(scfg, split, block_size, max_sentences)
    grammar = synthetic.get_grammar(scfg)
    vocab = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
    ref = exact_reference(scfg, split, reference, cache_dir)
    eos = int(tokenizer.eos_id)
    eos_category = CATEGORIES.index("eos")
    ids, rows, cols = [], [], {k: [] for k in ("target", "category", "depth", "other", "distance", "attractors")}
    for s in kept:
        n = len(s.tokens)
        sent_ids = _word_ids(tokenizer, s.tokens)
        logp = np.asarray(ref.next_token_logprobs(s.tokens, vocab), dtype=np.float64)  # (n + 1, V)
        if logp.shape != (n + 1, len(vocab)):
            raise ValueError(f"reference gave shape {logp.shape} for a {n}-token sentence, expected {(n + 1, len(vocab))}")
        other, distance, attractors = [-1] * (n + 1), [-1] * (n + 1), [-1] * (n + 1)
        for a in s.agreement:
            other[a.verb] = _word_ids(tokenizer, [grammar.other_form(s.tokens[a.verb])])[0]
            distance[a.verb], attractors[a.verb] = a.distance, a.attractors
        ids.append(np.asarray(sent_ids, dtype=np.int64))
        rows.append(logp)
        cols["target"] += sent_ids + [eos]
        cols["category"] += [CATEGORIES.index(category_of(t)) for t in s.tags] + [eos_category]
        cols["depth"] += list(s.depths) + [0]
        cols["other"] += other
        cols["distance"] += distance
        cols["attractors"] += attractors
    lengths = np.array([len(x) + 1 for x in ids], dtype=np.int64)
    V = len(vocab)
    return SplitTargets(
        split=split, reference=reference, block_size=int(block_size), eos_id=eos, ids=ids,
        heads=[list(s.heads) for s in kept],
        offsets=np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if ids else np.zeros(0, np.int64),
        opt_logp=np.concatenate(rows) if rows else np.zeros((0, V)),
        **{k: np.asarray(v, dtype=np.int64) for k, v in cols.items()},
        n_requested=n_requested,
    )


# --------------------------------------------------------------------------------------------
# scoring a model


def kl_rows(p_log: np.ndarray, q_log: np.ndarray) -> np.ndarray:
    """KL(p || q) per row of two (N, V) log-probability arrays (terms with p = 0 count 0)."""
    p = np.exp(p_log)
    with np.errstate(invalid="ignore"):  # -inf - x where p = 0: dropped by the where
        terms = np.where(p > 0, p * (p_log - q_log), 0.0)
    return terms.sum(axis=-1)


@torch.no_grad()
def _log_probs(model, dataset, batch_size: int) -> Iterator[tuple[dict, torch.Tensor]]:
    """(batch, (B, T, V) float64 log-probabilities on the CPU) over the items of ``dataset``."""
    device = model_device(model)
    for s in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(s, min(len(dataset), s + batch_size))]
        batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        kw = {"gold_M": batch["gold_M"].to(device)} if "gold_M" in batch else {}
        logits = model(batch["input_ids"].to(device), **kw)["logits"]
        yield batch, torch.log_softmax(logits.double(), dim=-1).cpu()


def _oracle_args(model, heads: Sequence[Sequence[int]] | None) -> dict:
    """Gold heads and reading for the blocks of an oracle model (nothing for any other model)."""
    return {"heads": heads, "target": model.cfg.depenc.target} if needs_gold_arcs(model) else {}


def score_model(model, targets: SplitTargets, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Per flat position: the model's NLL, KL(optimum || model) and, at agreeing verbs, the model's
    margin (NaN elsewhere). Every position must be predicted exactly once (checked). Eval mode."""
    N = len(targets.target)
    model_nll, kl, margin = np.full(N, np.nan), np.full(N, np.nan), np.full(N, np.nan)
    seen = np.zeros(N, dtype=np.int64)
    blocks = AlignedBlocks(targets.ids, targets.block_size, targets.eos_id, **_oracle_args(model, targets.heads))
    for batch, logp in _log_probs(model, blocks, batch_size):
        mask = batch["targets"] != IGNORE_INDEX  # (B, T)
        g = targets.offsets[batch["sentence"][mask].numpy()] + batch["position"][mask].numpy()  # (n,)
        tgt = batch["targets"][mask].numpy()
        if not np.array_equal(tgt, targets.target[g]):
            raise AssertionError("aligned blocks and targets disagree (a packing bug)")
        q = logp[mask].numpy()  # (n, V)
        np.add.at(seen, g, 1)
        model_nll[g] = -q[np.arange(len(g)), tgt]
        kl[g] = kl_rows(targets.opt_logp[g], q)
        verb = targets.other[g] >= 0
        margin[g[verb]] = q[verb, tgt[verb]] - q[verb, targets.other[g[verb]]]
    if not (seen == 1).all():
        raise AssertionError(f"{int((seen != 1).sum())} positions not predicted exactly once")
    return {"nll": model_nll, "kl": kl, "margin": margin}


# --------------------------------------------------------------------------------------------
# aligned and plain perplexity (no reference needed)


def block_nll(model, blocks, batch_size: int = 32) -> tuple[float, int]:
    """Summed NLL (nats) and number of predicted tokens over blocks (``AlignedBlocks``, ``EvalBlocks``)."""
    total, count = 0.0, 0
    for batch, logp in _log_probs(model, blocks, batch_size):
        y = batch["targets"]  # (B, T)
        mask = y != IGNORE_INDEX
        total -= float(logp.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)[mask].sum())
        count += int(mask.sum())
    return total, count


def plain_blocks(ids: Sequence[np.ndarray], block_size: int, eos_id: int, heads=None, target=None) -> EvalBlocks:
    """Today's evaluation blocks of these sentences: the packed stream cut every ``block_size`` tokens
    (what ``LMDataModule.eval_dataset`` gives for a whole split); gold arcs for oracle models."""
    stream = stream_of(ids, eos_id)
    arcs = None
    if heads is not None:
        from depenc.data.gold import GoldArcs

        starts = 1 + np.concatenate([[0], np.cumsum([len(x) + 1 for x in ids])[:-1]]).astype(np.int64)
        arcs = GoldArcs(heads, starts, len(stream), target)
    return EvalBlocks(stream, block_size, pad_id=eos_id, arcs=arcs)


def _ppl(total: float, count: int) -> dict:
    mean = total / count if count else float("nan")
    return {"n": count, "nll": mean, "ppl": math.exp(mean)}


def aligned_vs_plain(model, ids: Sequence[np.ndarray], eos_id: int, heads: Sequence[Sequence[int]] | None = None,
                     batch_size: int = 32) -> dict:
    """``{"aligned": {n, nll, ppl}, "plain": {...}}``: the same sentences (token ids without ``<eos>``)
    scored in sentence-aligned blocks and in today's plain blocks of the model's context (``heads``:
    gold heads per sentence, read by oracle models)."""
    T, oracle = int(model.cfg.block_size), _oracle_args(model, heads)
    return {"aligned": _ppl(*block_nll(model, AlignedBlocks(ids, T, eos_id, **oracle), batch_size)),
            "plain": _ppl(*block_nll(model, plain_blocks(ids, T, eos_id, **oracle), batch_size))}


# --------------------------------------------------------------------------------------------
# aggregation


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else float("nan")


def _bucket(mask: np.ndarray, excess: np.ndarray, kl: np.ndarray, nll: np.ndarray, opt_nll: np.ndarray) -> dict:
    total = excess.sum()
    return {"n": int(mask.sum()), "excess": _mean(excess[mask]), "kl": _mean(kl[mask]), "nll": _mean(nll[mask]),
            "opt_nll": _mean(opt_nll[mask]),
            "share": float(excess[mask].sum() / total) if mask.any() and total != 0 else float("nan")}


def _margins(model_margin: np.ndarray, opt_margin: np.ndarray) -> dict:
    finite = np.isfinite(opt_margin)
    return {"n": int(model_margin.size), "margin": _mean(model_margin), "acc": _mean((model_margin > 0) * 1.0),
            "opt_margin": _mean(opt_margin[finite]), "opt_acc": _mean((opt_margin > 0) * 1.0),
            "opt_inf_share": _mean((~finite) * 1.0)}


def summarize(targets: SplitTargets, scores: dict[str, np.ndarray], plain: dict | None = None) -> dict:
    """The rich result: overall, per category / depth / distance / attractors, verb margins."""
    nll, kl, opt_nll = scores["nll"], scores["kl"], targets.opt_nll
    excess = nll - opt_nll
    everything = np.ones(len(nll), dtype=bool)
    overall = _bucket(everything, excess, kl, nll, opt_nll)
    overall["ppl"], overall["opt_ppl"] = math.exp(overall["nll"]), math.exp(overall["opt_nll"])  # NaN if empty
    verb = targets.other >= 0
    rows = np.flatnonzero(verb)
    opt_margin = targets.opt_logp[rows, targets.target[rows]] - targets.opt_logp[rows, targets.other[rows]]
    model_margin = scores["margin"][verb]
    dist = np.array([dist_label(int(d)) for d in targets.distance[verb]], dtype=object)
    attr = np.array([attr_label(int(a)) for a in targets.attractors[verb]], dtype=object)

    def verb_buckets(labels: np.ndarray, order: Sequence[str]) -> dict:
        out = {}
        for label in order:
            m = labels == label
            stats = _bucket(m, excess[verb], kl[verb], nll[verb], opt_nll[verb])
            stats.update({k: v for k, v in _margins(model_margin[m], opt_margin[m]).items() if k != "n"})
            out[label] = stats
        return out

    result: dict[str, Any] = {
        "split": targets.split, "reference": targets.reference, "block_size": targets.block_size,
        "n_sentences": len(targets.ids), "n_skipped": targets.n_skipped, "n_positions": len(nll),
        "n_opt_impossible": int(np.isinf(opt_nll).sum()),  # targets the reference rules out (should be 0)
        "overall": overall,
        "cat": {c: _bucket(targets.category == i, excess, kl, nll, opt_nll) for i, c in enumerate(CATEGORIES)},
        "depth": {str(d): _bucket(targets.depth == d, excess, kl, nll, opt_nll) for d in np.unique(targets.depth)},
        "dist": verb_buckets(dist, DIST_LABELS),
        "attr": verb_buckets(attr, ATTR_LABELS),
        "agree": _margins(model_margin, opt_margin),
    }
    if plain is not None:
        result["plain"] = plain
    return result


def flat_metrics(result: dict) -> dict[str, float]:
    """``excess/<split>/<name>`` scalars of a rich result (counts stay in the rich result)."""
    pre = f"excess/{result['split']}"
    out = {f"{pre}/{k}": result["overall"][k] for k in ("excess", "kl", "nll", "opt_nll", "ppl", "opt_ppl")}
    if "plain" in result:
        out[f"{pre}/plain_nll"], out[f"{pre}/plain_ppl"] = result["plain"]["nll"], result["plain"]["ppl"]
    out[f"{pre}/n_skipped"] = result["n_skipped"]
    for group in ("cat", "depth", "dist", "attr"):
        for label, stats in result[group].items():
            for k in ("excess", "kl", "share"):
                out[f"{pre}/{group}/{label}/{k}"] = stats[k]
    for group in ("dist", "attr"):
        for label, stats in result[group].items():
            out[f"{pre}/{group}/{label}/margin"] = stats["margin"]
    for k in ("margin", "acc", "opt_margin", "opt_acc", "opt_inf_share"):
        out[f"{pre}/agree/{k}"] = result["agree"][k]
    return out


def evaluate_excess(model, tokenizer, scfg, split: str, reference: str = "own", max_sentences: int = 0,
                    batch_size: int = 32, targets: SplitTargets | None = None,
                    cache_dir=None) -> tuple[dict[str, float], dict]:
    """(flat metrics, rich result) of ``model`` on a synthetic split; ``targets`` from an earlier
    :func:`prepare_targets` call is reused. The model must be in eval mode."""
    if targets is None:
        targets = prepare_targets(scfg, split, tokenizer, int(model.cfg.block_size), reference, max_sentences,
                                  cache_dir)
    scores = score_model(model, targets, batch_size)
    plain = plain_blocks(targets.ids, targets.block_size, targets.eos_id, **_oracle_args(model, targets.heads))
    result = summarize(targets, scores, _ppl(*block_nll(model, plain, batch_size)))
    return flat_metrics(result), result
