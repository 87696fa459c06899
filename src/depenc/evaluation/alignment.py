"""Dependency alignment of a model against gold trees (DESIGN 4.2): the functions behind the alignment
callback and ``python -m depenc.evaluate align``.

For every sentence of a gold treebank the model reads ``[BOS] + the sentence's tokens`` (sentences
are batched, padded at the end: the model is causal, so padding after a sentence cannot change its
rows). Sources scored against the gold tree (:data:`depenc.metrics.alignment.SOURCES`):

* ``parser``: DepEnc's soft left-arc matrix M = g * P. With ``target=next`` row i says where token
  i+1 attaches, so the matrix is shifted (:func:`shift_next_to_self`) and row b is scored against
  word b's own left arcs, i.e. the state before word b against where word b attaches;
* ``attn_mean``: every head of every layer with the BOS column and the diagonal dropped and the
  rows renormalised over the earlier tokens (DESIGN 4.2 step 3), then averaged;
* ``attn_best``: the single (layer, head) with the highest UUAS on a *selection* treebank,
  reported on the other treebanks (never on the one it was chosen on). With ``selection="cross"``
  every treebank gets its own attn_best, chosen on the next treebank of the list (wrapping round),
  so that two treebanks (WSJ, EWT) each report a head chosen on the other;
* ``inducer`` (``depenc.inducer=inside`` only): the arc posteriors of the whole-sentence inducer, which
  reads the entire sentence and is used in training only -- the teacher, not what predicts;
* ``chain`` and ``random``: reference trees over the same sentences.

Token scores are aggregated to words with :func:`word_scores_from_tokens`; the tree is the maximum
spanning tree of ``M + M^T`` (:class:`AlignmentAccumulator`). Sentences whose input does not fit
into the model's context, or whose tokens do not map back onto their words, are skipped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from depenc.data.gold import gold_matrices
from depenc.evaluation.base import eval_mode, model_device, needs_gold_arcs, padded, synthetic_config
from depenc.metrics.alignment import (
    ARC_BUCKET_LABELS,
    LENGTH_BUCKET_LABELS,
    REFERENCE_SOURCES,
    SOURCES,
    AlignmentAccumulator,
    renormalise_rows_drop_first_and_diag,
    score_reference,
    shift_next_to_self,
    word_scores_from_tokens,
)

SYNTHETIC_PREFIX = "synthetic:"  # a treebank spec naming a split of the synthetic grammar
CROSS = "cross"  # selection mode: each treebank reports a head chosen on the next one

__all__ = [
    "CROSS",
    "SYNTHETIC_PREFIX",
    "EncodedSentence",
    "GoldSentence",
    "Treebank",
    "bucket_rows",
    "encode_treebank",
    "evaluate_alignment",
    "evaluate_treebank",
    "flat_metrics",
    "gold_from_spec",
    "load_gold",
    "resolve_path",
    "select_best_head",
    "sentence_word_scores",
    "synthetic_gold",
    "treebank_name",
]


# --------------------------------------------------------------------------------------------
# gold sentences and their encoding


@dataclass
class GoldSentence:
    """Words with 1-based gold heads (0 = root) and a punctuation mask."""

    words: list[str]
    heads: list[int]
    punct: list[bool] | None = None


@dataclass
class EncodedSentence:
    """A gold sentence as model input: ``ids = [BOS] + tokens``; ``word_of_token`` per token
    (without BOS); ``index`` = its position in the treebank."""

    index: int
    sentence: GoldSentence
    ids: list[int]
    word_of_token: list[int]


@dataclass
class Treebank:
    """Gold sentences that fit the model (``encoded``) and the count of those skipped, by reason."""

    name: str
    encoded: list[EncodedSentence]
    n_total: int
    skipped: dict[str, int] = field(default_factory=dict)
    source: str = ""
    _references: dict | None = None

    @property
    def n_used(self) -> int:
        return len(self.encoded)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())


def synthetic_gold(synthetic_cfg: Any, split: str, n: int = 0) -> list[GoldSentence]:
    """The first ``n`` (0 = all) gold trees of a synthetic split."""
    from depenc.data import synthetic

    # the full split of the run's own config: make_split caches it (and the earlier splits that a
    # held-out split must be disjoint from), so the data module's work is reused
    sents = synthetic.make_split(synthetic_config(synthetic_cfg), split)
    if n > 0:
        sents = sents[:n]
    return [GoldSentence(list(s.tokens), list(s.heads), [t == "." for t in s.tokens]) for s in sents]


def resolve_path(path: str | Path) -> Path:
    """A path as given (relative to the working directory), else relative to the repository root."""
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        return p
    alt = Path(__file__).resolve().parents[3] / p
    return alt if alt.exists() else p


def load_gold(path: str | Path, n: int = 0) -> list[GoldSentence]:
    """The first ``n`` (0 = all) sentences of a treebank file (.conllu, .dp, .zip, folder)."""
    from depenc.data.treebanks import load_treebank

    sents = load_treebank(resolve_path(path))
    if n > 0:
        sents = sents[:n]
    return [GoldSentence(list(s.words), list(s.heads), s.punct_mask()) for s in sents]


def gold_from_spec(spec: str, synthetic_cfg: Any, n: int = 0) -> list[GoldSentence]:
    """Gold sentences of ``synthetic:<split>`` or of a treebank path (FileNotFoundError if missing)."""
    if spec.startswith(SYNTHETIC_PREFIX):
        return synthetic_gold(synthetic_cfg, spec[len(SYNTHETIC_PREFIX):], n)
    return load_gold(spec, n)


def treebank_name(spec: str) -> str:
    """``synthetic:test`` -> ``synthetic_test``; a path -> its stem."""
    return spec.replace(":", "_") if spec.startswith(SYNTHETIC_PREFIX) else Path(spec).stem


def encode_treebank(
    name: str, sentences: Sequence[GoldSentence], tokenizer, block_size: int, source: str = ""
) -> Treebank:
    """Tokenise every sentence (word tokenizer: one id per word; BPE / char: the space-joined words,
    mapped back to words with ``words_of``). Skipped: ``too_long`` (``1 + tokens > block_size``),
    ``word_mismatch`` (tokens do not map onto the words), ``empty``."""
    encoded: list[EncodedSentence] = []
    skipped: dict[str, int] = {}
    for i, s in enumerate(sentences):
        n = len(s.words)
        ids = tokenizer.encode(" ".join(s.words)) if n else []
        wot = list(range(len(ids))) if tokenizer.kind == "word" else list(tokenizer.words_of(ids))
        if n == 0:
            reason = "empty"
        elif sorted(set(w for w in wot if w >= 0)) != list(range(n)) or max(wot) != n - 1:
            reason = "word_mismatch"
        elif 1 + len(ids) > block_size:
            reason = "too_long"
        else:
            encoded.append(EncodedSentence(i, s, [tokenizer.eos_id] + list(ids), wot))
            continue
        skipped[reason] = skipped.get(reason, 0) + 1
    return Treebank(name, encoded, len(sentences), skipped, source)


# --------------------------------------------------------------------------------------------
# model -> word score matrices


def _batches(items: Sequence[EncodedSentence], batch_size: int) -> Iterator[list[EncodedSentence]]:
    """Batches of sentences of similar length (less padding), in a deterministic order."""
    order = sorted(range(len(items)), key=lambda k: (len(items[k].ids), k))
    for s in range(0, len(order), max(1, batch_size)):
        yield [items[k] for k in order[s : s + batch_size]]


def sentence_word_scores(
    model: torch.nn.Module,
    treebank: Treebank,
    batch_size: int = 32,
    heads: str | Sequence[tuple[int, int]] | None = None,
    want_parser: bool = True,
    want_mean: bool = True,
) -> Iterator[tuple[EncodedSentence, dict[str, np.ndarray]]]:
    """Yield ``(sentence, {source: (n, n) word score matrix})`` for every usable sentence.

    Sources: ``parser`` (DepEnc with ``want_parser``), ``attn_mean`` (``want_mean``), and
    ``heads``: ``"all"`` adds ``"heads"`` (L, H, n, n) with every renormalised head, a list of
    ``(layer, head)`` adds ``"head_<l>_<h>"`` for each. The model must be in eval mode.
    """
    device = model_device(model)
    want_parser = want_parser and model.encoder is not None
    target = model.cfg.depenc.target
    need_attn = want_mean or heads is not None
    oracle = needs_gold_arcs(model)
    if oracle and any(len(e.ids) - 1 != len(e.sentence.words) for e in treebank.encoded):
        raise ValueError("an oracle model (depenc.parser=oracle) needs one token per word (word tokenizer)")
    for batch in _batches(treebank.encoded, batch_size):
        idx = padded([e.ids for e in batch], batch[0].ids[0])  # (B, T), padded with BOS
        # depenc.parser=oracle reads the gold arcs (one token per word: word tokenizer)
        gold = gold_matrices([e.sentence.heads for e in batch], target, idx.size(1), device) if oracle else None
        idx = idx.to(device)
        with torch.no_grad():
            out = model(idx, need_weights=need_attn, return_analysis=want_parser, gold_M=gold)
        attn = torch.stack([a.float() for a in out["attn"]], dim=1).cpu().numpy() if need_attn else None  # (B, L, H, T, T)
        M = out["dep"]["M"].float().cpu().numpy() if want_parser else None  # (B, T, T)
        inducer = getattr(model, "inducer", None) if want_parser else None
        U = inducer.arc_posteriors(idx, model.cfg.eos_id).cpu().numpy() if inducer is not None else None
        for b, e in enumerate(batch):
            t1, n = len(e.ids), len(e.sentence.words)
            res: dict[str, np.ndarray] = {}
            if M is not None:
                Mb = M[b, :t1, :t1]
                if target != "self":  # next, frontier
                    Mb = shift_next_to_self(Mb)  # row i+1 <- row i: where token i+1 attaches
                res["parser"] = word_scores_from_tokens(np.tril(Mb[1:, 1:], -1), e.word_of_token, n)
            if U is not None:  # symmetric: its lower triangle holds every pair once
                res["inducer"] = word_scores_from_tokens(np.tril(U[b, 1:t1, 1:t1], -1), e.word_of_token, n)
            if attn is not None:
                R = renormalise_rows_drop_first_and_diag(attn[b, :, :, :t1, :t1])  # (L, H, t, t)
                if want_mean:
                    res["attn_mean"] = word_scores_from_tokens(R.mean(axis=(0, 1)), e.word_of_token, n)
                if heads == "all":
                    res["heads"] = word_scores_from_tokens(R, e.word_of_token, n)
                elif heads:
                    for layer, head in heads:
                        res[f"head_{layer}_{head}"] = word_scores_from_tokens(R[layer, head], e.word_of_token, n)
            yield e, res


# --------------------------------------------------------------------------------------------
# scoring


def select_best_head(
    model: torch.nn.Module, treebank: Treebank, batch_size: int = 32, drop_punct: bool = False
) -> dict | None:
    """The (layer, head) with the highest UUAS on ``treebank`` (first on ties).

    Returns ``{"layer", "head", "uuas", "selected_on", "n_sentences", "per_head": [[uuas]]}``
    (per_head is layers x heads), or None when the treebank has no usable sentence.
    """
    if treebank.n_used == 0:
        return None
    L, H = model.cfg.n_layer, model.cfg.n_head
    accs = [[AlignmentAccumulator(drop_punct) for _ in range(H)] for _ in range(L)]
    for e, res in sentence_word_scores(model, treebank, batch_size, heads="all", want_parser=False, want_mean=False):
        pm = e.sentence.punct if drop_punct else None
        W = res["heads"]  # (L, H, n, n)
        for layer in range(L):
            for head in range(H):
                accs[layer][head].add(W[layer, head], e.sentence.heads, pm)
    per_head = [[accs[layer][head].result().get("uuas", float("nan")) for head in range(H)] for layer in range(L)]
    arr = np.nan_to_num(np.asarray(per_head, dtype=np.float64), nan=-1.0)
    layer, head = divmod(int(np.argmax(arr)), H)
    return {
        "layer": layer,
        "head": head,
        "uuas": per_head[layer][head],
        "selected_on": treebank.name,
        "n_sentences": treebank.n_used,
        "per_head": per_head,
    }


def _references(treebank: Treebank, drop_punct: bool, seed: int) -> dict[str, dict]:
    """chain / random scores of the treebank's usable sentences (cached: they do not change)."""
    key = (drop_punct, seed)
    if treebank._references is None or treebank._references.get("key") != key:
        heads = [e.sentence.heads for e in treebank.encoded]
        masks = [e.sentence.punct for e in treebank.encoded] if drop_punct else None
        treebank._references = {
            "key": key,
            "chain": score_reference("chain", heads, punct_masks=masks),
            "random": score_reference("random", heads, seed=seed, punct_masks=masks),
        }
    return {k: treebank._references[k] for k in REFERENCE_SOURCES}


def evaluate_treebank(
    model: torch.nn.Module,
    treebank: Treebank,
    best_head: dict | None = None,
    batch_size: int = 32,
    drop_punct: bool = False,
    n_examples: int = 20,
    seed: int = 0,
) -> dict:
    """Scores of every source on one treebank.

    Returns ``{"name", "n_used", "n_skipped", "skipped", "sources": {source: result}, "best_head",
    "examples"}`` where each result has the keys of :meth:`AlignmentAccumulator.result`. ``attn_best``
    is only scored with a ``best_head`` chosen on another treebank; ``parser`` only for DepEnc.
    The first ``n_examples`` sentences (treebank order) keep their words, gold heads and predicted
    edges per model source.
    """
    dep_on = model.encoder is not None
    use_best = best_head is not None and best_head["selected_on"] != treebank.name
    bh = (best_head["layer"], best_head["head"]) if use_best else None
    accs: dict[str, AlignmentAccumulator] = {"attn_mean": AlignmentAccumulator(drop_punct)}
    if dep_on:
        accs["parser"] = AlignmentAccumulator(drop_punct)
    if dep_on and getattr(model, "inducer", None) is not None:
        accs["inducer"] = AlignmentAccumulator(drop_punct)
    if bh is not None:
        accs["attn_best"] = AlignmentAccumulator(drop_punct)
    example_ids = {e.index for e in sorted(treebank.encoded, key=lambda e: e.index)[: max(0, n_examples)]}
    examples: dict[int, dict] = {}
    for e, res in sentence_word_scores(model, treebank, batch_size, heads=[bh] if bh else None, want_parser=dep_on):
        pm = e.sentence.punct if drop_punct else None
        if bh is not None:
            res["attn_best"] = res.pop(f"head_{bh[0]}_{bh[1]}")
        edges = {src: accs[src].add(W, e.sentence.heads, pm) for src, W in res.items() if src in accs}
        if e.index in example_ids:
            examples[e.index] = {
                "index": e.index,
                "words": e.sentence.words,
                "heads": e.sentence.heads,
                "pred": {src: [list(x) for x in ed] for src, ed in edges.items()},
            }
    sources = {src: acc.result() for src, acc in accs.items()}
    if treebank.n_used:
        sources.update(_references(treebank, drop_punct, seed))
    return {
        "name": treebank.name,
        "source": treebank.source,
        "n_total": treebank.n_total,
        "n_used": treebank.n_used,
        "n_skipped": treebank.n_skipped,
        "skipped": dict(treebank.skipped),
        "sources": {s: sources[s] for s in SOURCES if s in sources},
        "best_head": ({k: v for k, v in best_head.items() if k != "per_head"} if use_best else None),
        "examples": [examples[k] for k in sorted(examples)],
    }


def evaluate_alignment(
    model: torch.nn.Module,
    treebanks: Sequence[Treebank],
    selection: Treebank | str | None = None,
    batch_size: int = 32,
    drop_punct: bool = False,
    n_examples: int = 20,
    seed: int = 0,
) -> dict:
    """Choose attn_best on ``selection`` (if given), then score every treebank.

    ``selection="cross"``: each treebank's attn_best is chosen on the next treebank of ``treebanks``
    (wrapping round; needs at least two). Returns ``{"selection": select_best_head(...) or None,
    "cross_selection": {treebank name: the choice used for it} (cross only), "treebanks": {name:
    evaluate_treebank(...)}}``. The model is put in eval mode (and restored) here.
    """
    cross = isinstance(selection, str)
    if cross and selection != CROSS:
        raise ValueError(f"selection must be a treebank, None or {CROSS!r}, got {selection!r}")
    if cross and len(treebanks) < 2:
        raise ValueError(f"selection {CROSS!r} needs at least two treebanks, got {len(treebanks)}")
    with eval_mode(model):
        if cross:
            picks = [select_best_head(model, tb, batch_size, drop_punct) for tb in treebanks]
            chosen = {tb.name: picks[(i + 1) % len(treebanks)] for i, tb in enumerate(treebanks)}
            best = None
        else:
            best = select_best_head(model, selection, batch_size, drop_punct) if selection is not None else None
            chosen = {tb.name: best for tb in treebanks}
        results = {
            tb.name: evaluate_treebank(model, tb, chosen[tb.name], batch_size, drop_punct, n_examples, seed)
            for tb in treebanks
        }
    out = {"selection": best, "treebanks": results}
    if cross:
        out["cross_selection"] = chosen
    return out


# --------------------------------------------------------------------------------------------
# flat views of a result


def flat_metrics(result: dict, prefix: str = "align") -> dict[str, float]:
    """``align/<treebank>/<source>/<metric>`` scalars (+ ``align/<treebank>/n_used|n_skipped``; the
    chosen head as ``align/best_head/*``, or ``align/<treebank>/best_head/*`` under cross-selection)."""
    out: dict[str, float] = {}
    for name, tb in result["treebanks"].items():
        out[f"{prefix}/{name}/n_used"] = tb["n_used"]
        out[f"{prefix}/{name}/n_skipped"] = tb["n_skipped"]
        for src, res in tb["sources"].items():
            for key, value in res.items():
                if key not in ("n_sentences", "n_gold_edges", "n_left_arc_words"):
                    out[f"{prefix}/{name}/{src}/{key}"] = value
    chosen = {"": result["selection"]}
    chosen.update({f"{name}/": sel for name, sel in result.get("cross_selection", {}).items()})
    for key, sel in chosen.items():
        if sel is not None:
            out[f"{prefix}/{key}best_head/layer"] = sel["layer"]
            out[f"{prefix}/{key}best_head/head"] = sel["head"]
            out[f"{prefix}/{key}best_head/selection_uuas"] = sel["uuas"]
    return out


def bucket_rows(result: dict) -> list[list]:
    """Rows ``[treebank, source, kind, bucket, value]`` (kind: uuas_len | recall_arc) for a table."""
    rows = []
    for name, tb in result["treebanks"].items():
        for src, res in tb["sources"].items():
            for kind, labels in (("uuas_len", LENGTH_BUCKET_LABELS), ("recall_arc", ARC_BUCKET_LABELS)):
                for label in labels:
                    value = res.get(f"{kind}_{label}")
                    if value is not None:
                        rows.append([name, src, kind, label, float(value)])
    return rows
