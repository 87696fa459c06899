"""Dependency alignment: score a model's causal score matrices against gold trees (DESIGN 4.2).

Conventions
-----------
* Words are 0-based everywhere in this module, except ``heads`` which follow the treebank
  convention: ``heads[i]`` is the 1-based index of word ``i``'s head, 0 for the root.
* Edges are undirected and stored as ``(a, b)`` with ``a < b`` (0-based word indices); the
  root attachment is not an edge.
* A *causal score matrix* over ``n`` words is an ``(n, n)`` array ``M`` whose row ``b`` holds the
  weight word ``b`` puts on each earlier word ``a < b`` (strict lower triangle; entries on and
  above the diagonal are ignored by the left-arc score, and symmetrisation ``S = M + M^T`` makes
  them harmless for the tree).
* UUAS is micro-averaged: shared edges / gold edges, both summed over sentences.
* Punctuation is kept by default. With ``drop_punct=True`` the punctuation words are removed from
  the sentence before scoring: the spanning tree is taken over the remaining words only, the gold
  edges are those between two non-punctuation words, left-arc candidates are non-punctuation
  earlier words, and the references (chain / random) are built over the remaining words.
  Sentence-length buckets always use the full sentence length; arc lengths are distances in the
  original word positions.

Pipeline from a model's attention map ``A`` over ``[BOS] + tokens``::

    T = renormalise_rows_drop_first_and_diag(A)          # (t, t) over the sentence's tokens
    M = word_scores_from_tokens(T, word_of_token, n)     # (n, n) over words
    acc.add(M, heads)
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from depenc.metrics.buckets import bucket_labels, find_bucket

Edge = tuple[int, int]

#: Score sources of a model (DepEnc's parser, the mean of the attention heads, the best head chosen on
#: another treebank) and the reference trees scored over the same sentences.
# inducer: the whole-sentence inducer of depenc.inducer (training only; its trees, not the causal parser's)
MODEL_SOURCES = ("parser", "attn_mean", "attn_best", "inducer")
REFERENCE_SOURCES = ("chain", "random")
SOURCES = MODEL_SOURCES + REFERENCE_SOURCES

#: Sentence-length buckets in words (inclusive bounds, ``None`` = unbounded).
LENGTH_BUCKETS: list[tuple[int, int | None]] = [(1, 10), (11, 20), (21, 40), (41, None)]
#: Gold arc-length buckets (``|a - b|`` in words, inclusive bounds, ``None`` = unbounded).
ARC_BUCKETS: list[tuple[int, int | None]] = [(1, 1), (2, 2), (3, 4), (5, 8), (9, None)]

__all__ = [
    "ARC_BUCKETS",
    "ARC_BUCKET_LABELS",
    "LENGTH_BUCKETS",
    "LENGTH_BUCKET_LABELS",
    "MODEL_SOURCES",
    "REFERENCE_SOURCES",
    "SOURCES",
    "AlignmentAccumulator",
    "EdgeScore",
    "arc_bucket",
    "chain_edges",
    "gold_edges",
    "left_arc_attachment",
    "left_relatives",
    "length_bucket",
    "max_spanning_tree",
    "next_target_left_arcs",
    "random_tree_edges",
    "renormalise_rows_drop_first_and_diag",
    "score_edges",
    "score_reference",
    "shift_next_to_self",
    "uuas",
    "word_scores_from_tokens",
]


# --------------------------------------------------------------------------------------------
# buckets


LENGTH_BUCKET_LABELS: list[str] = bucket_labels(LENGTH_BUCKETS)
ARC_BUCKET_LABELS: list[str] = bucket_labels(ARC_BUCKETS)


def length_bucket(n_words: int) -> str | None:
    """Label of the sentence-length bucket of ``n_words`` (``None`` for 0 words)."""
    return find_bucket(n_words, LENGTH_BUCKETS)


def arc_bucket(arc_length: int) -> str | None:
    """Label of the arc-length bucket of an arc spanning ``arc_length`` words."""
    return find_bucket(arc_length, ARC_BUCKETS)


# --------------------------------------------------------------------------------------------
# trees


def max_spanning_tree(S: np.ndarray) -> list[Edge]:
    """Maximum spanning tree of a symmetric ``(n, n)`` score matrix (Prim's algorithm, O(n^2)).

    Returns ``n - 1`` undirected edges ``(a, b)`` with ``a < b``, sorted; ``[]`` for ``n <= 1``.
    Only ``S[i, j]`` for ``i != j`` is used (the matrix is assumed symmetric). NaN scores count as
    ``-inf``. Ties are broken deterministically: the lowest-index vertex joins first, and a
    vertex keeps the earliest tree vertex that reached its best score.
    """
    S = np.asarray(S, dtype=np.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {S.shape}")
    n = S.shape[0]
    if n <= 1:
        return []
    S = np.where(np.isnan(S), -np.inf, S)
    in_tree = np.zeros(n, dtype=bool)
    in_tree[0] = True
    best = S[0].copy()
    parent = np.zeros(n, dtype=np.int64)
    edges: list[Edge] = []
    for _ in range(n - 1):
        cand = np.where(in_tree, -np.inf, best)
        # argmax over non-tree vertices; all -inf is still a valid (if arbitrary) choice
        outside = np.flatnonzero(~in_tree)
        v = int(outside[np.argmax(cand[outside])])
        p = int(parent[v])
        edges.append((min(p, v), max(p, v)))
        in_tree[v] = True
        better = (~in_tree) & (S[v] > best)
        best[better] = S[v][better]
        parent[better] = v
    edges.sort()
    return edges


def gold_edges(heads: Sequence[int]) -> set[Edge]:
    """Undirected 0-based word edges ``(min, max)`` of a gold tree; root attachments excluded."""
    n = len(heads)
    out: set[Edge] = set()
    for i, h in enumerate(heads):
        h = int(h)
        if h < 0 or h > n:
            raise ValueError(f"head {h} of word {i + 1} out of range 0..{n}")
        if h == 0:
            continue
        a, b = i, h - 1
        if a == b:
            raise ValueError(f"word {i + 1} is its own head")
        out.add((min(a, b), max(a, b)))
    return out


def chain_edges(n: int) -> list[Edge]:
    """The chain reference: each word attached to the next, ``[(0, 1), ..., (n-2, n-1)]``."""
    return [(i, i + 1) for i in range(max(n - 1, 0))]


def random_tree_edges(n: int, rng: np.random.Generator) -> list[Edge]:
    """A uniformly random labelled tree on ``n`` words (decoded from a random Prüfer sequence)."""
    if n <= 1:
        return []
    if n == 2:
        return [(0, 1)]
    seq = [int(x) for x in rng.integers(0, n, size=n - 2)]
    degree = [1] * n
    for x in seq:
        degree[x] += 1
    leaves = [i for i in range(n) if degree[i] == 1]
    heapq.heapify(leaves)
    edges: list[Edge] = []
    for x in seq:
        leaf = heapq.heappop(leaves)
        edges.append((min(leaf, x), max(leaf, x)))
        degree[x] -= 1
        if degree[x] == 1:
            heapq.heappush(leaves, x)
    a, b = heapq.heappop(leaves), heapq.heappop(leaves)
    edges.append((min(a, b), max(a, b)))
    edges.sort()
    return edges


@dataclass(frozen=True)
class EdgeScore:
    """Result of comparing predicted with gold undirected edges."""

    shared: int
    gold: int
    predicted: int

    @property
    def uuas(self) -> float:
        """Shared / gold edges (NaN when there is no gold edge)."""
        return self.shared / self.gold if self.gold else float("nan")


def score_edges(pred_edges: Iterable[Edge], gold: Iterable[Edge]) -> EdgeScore:
    """Count shared, gold and predicted edges (edges are normalised to ``(min, max)``)."""
    p = {(min(a, b), max(a, b)) for a, b in pred_edges}
    g = {(min(a, b), max(a, b)) for a, b in gold}
    return EdgeScore(shared=len(p & g), gold=len(g), predicted=len(p))


def uuas(pred_edges: Iterable[Edge], gold_edges: Iterable[Edge]) -> float:
    """Undirected unlabelled attachment score of one sentence: shared / gold edges (NaN if none)."""
    return score_edges(pred_edges, gold_edges).uuas


# --------------------------------------------------------------------------------------------
# left-arc attachment


def left_relatives(heads: Sequence[int]) -> list[list[int]]:
    """For each word ``b``, the earlier words ``a < b`` joined to it by a gold arc, ascending.

    That is ``b``'s head if the head is earlier, plus ``b``'s earlier dependents.
    """
    rel: list[list[int]] = [[] for _ in heads]
    for a, b in sorted(gold_edges(heads)):
        rel[b].append(a)
    return rel


def _left_arc_counts(
    choice: Sequence[int], rel: Sequence[Sequence[int]], keep: np.ndarray | None = None
) -> tuple[int, int]:
    hits = total = 0
    for b in range(1, len(rel)):
        if keep is not None and not keep[b]:
            continue
        r = rel[b] if keep is None else [a for a in rel[b] if keep[a]]
        if not r:
            continue
        total += 1
        hits += int(choice[b] in r)
    return hits, total


def _argmax_choice(scores: np.ndarray, keep: np.ndarray | None = None) -> list[int]:
    """Per row b, the earlier (kept) word with the highest score (first on ties); -1 if none."""
    n = scores.shape[0]
    choice = [-1] * n
    for b in range(1, n):
        cand = np.arange(b) if keep is None else np.flatnonzero(keep[:b])
        if cand.size == 0:
            continue
        row = np.asarray(scores[b, cand], dtype=np.float64)
        row = np.where(np.isnan(row), -np.inf, row)
        choice[b] = int(cand[np.argmax(row)])
    return choice


def left_arc_attachment(scores: np.ndarray, heads: Sequence[int]) -> tuple[int, int]:
    """Left-arc attachment counts ``(hits, total)`` for one sentence.

    ``scores`` is an ``(n, n)`` causal score matrix (row ``b`` scores the earlier words
    ``a < b``). A word counts if it has at least one gold arc to an earlier word; it is a hit if
    ``argmax_{a<b} scores[b, a]`` (lowest index on ties) is one of those earlier gold relatives.
    Word 0 never counts.
    """
    scores = np.asarray(scores)
    n = len(heads)
    if scores.shape != (n, n):
        raise ValueError(f"scores shape {scores.shape} does not match {n} words")
    return _left_arc_counts(_argmax_choice(scores), left_relatives(heads))


def next_target_left_arcs(heads: Sequence[int]) -> list[list[int]]:
    """Targets for ``target=next`` scoring: row ``i`` -> left relatives of word ``i+1`` among 0..i.

    Returns ``n - 1`` sets (rows ``0..n-2``); the model at word ``i`` predicts where word ``i+1``
    attaches. Equivalent to scoring ``shift_next_to_self(M_next)`` with the ordinary functions.
    """
    return left_relatives(heads)[1:]


def shift_next_to_self(M_next: np.ndarray) -> np.ndarray:
    """Turn a ``target=next`` matrix into an ordinary ("self") causal matrix.

    ``M_next`` is ``(n, n)`` with row ``i`` a distribution over words ``0..i`` describing where
    word ``i+1`` attaches. The result has row ``i+1`` = ``M_next`` row ``i`` (so its support is
    the strictly earlier words), row 0 zero; the last row of ``M_next`` (about a word beyond the
    sentence) is dropped.
    """
    M_next = np.asarray(M_next)
    if M_next.ndim < 2 or M_next.shape[-1] != M_next.shape[-2]:
        raise ValueError(f"expected (..., n, n), got {M_next.shape}")
    out = np.zeros_like(M_next)
    out[..., 1:, :] = M_next[..., :-1, :]
    return np.tril(out, -1)


# --------------------------------------------------------------------------------------------
# from attention maps to word scores


def renormalise_rows_drop_first_and_diag(A: np.ndarray) -> np.ndarray:
    """Restrict an attention map over ``[BOS] + tokens`` to strictly earlier sentence tokens.

    ``A`` is ``(..., t, t)`` with index 0 the BOS token. Drops the BOS row and column, zeroes the
    diagonal and everything above it, and renormalises each row to sum to 1 over the earlier
    tokens. Returns ``(..., t-1, t-1)``; row 0 (and any row with no remaining weight) is zero.
    """
    A = np.asarray(A, dtype=np.float64)
    if A.ndim < 2 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"expected (..., t, t), got {A.shape}")
    B = np.tril(A[..., 1:, 1:], -1)
    z = B.sum(axis=-1, keepdims=True)
    return np.divide(B, z, out=np.zeros_like(B), where=z > 0)


def word_scores_from_tokens(
    T: np.ndarray, word_of_token: Sequence[int], n_words: int
) -> np.ndarray:
    """Aggregate a ``(t, t)`` token score matrix to an ``(n_words, n_words)`` word matrix.

    The score from word ``b`` to an earlier word ``a`` is the mean over ``b``'s tokens of the
    summed weight on ``a``'s tokens. Only the strict lower triangle (``a < b``) is kept. Tokens
    with ``word_of_token < 0`` (e.g. special tokens) are ignored; words without tokens get a zero
    row.
    """
    T = np.asarray(T, dtype=np.float64)
    wot = np.asarray(word_of_token, dtype=np.int64)
    t = T.shape[-1]
    if T.shape[-2:] != (t, t) or wot.shape != (t,):
        raise ValueError(f"T shape {T.shape} does not match {wot.shape[0]} tokens")
    if wot.size and wot.max() >= n_words:
        raise ValueError(f"word index {wot.max()} out of range for {n_words} words")
    valid = wot >= 0
    onehot = np.zeros((t, n_words), dtype=np.float64)
    onehot[np.flatnonzero(valid), wot[valid]] = 1.0
    summed = T @ onehot  # (..., t, n): token j's total weight on word a
    per_word = np.swapaxes(onehot, -1, -2) @ summed  # (..., n, n): sum over b's tokens
    counts = onehot.sum(axis=0)[:, None]
    W = np.divide(per_word, counts, out=np.zeros_like(per_word), where=counts > 0)
    return np.tril(W, -1)


# --------------------------------------------------------------------------------------------
# accumulation


def _as_keep_mask(n: int, punct_mask: Sequence[bool] | Iterable[int] | None) -> np.ndarray:
    """Boolean "keep" mask from a punctuation mask (bools of length n) or a set of word indices."""
    keep = np.ones(n, dtype=bool)
    if punct_mask is None:
        return keep
    pm = list(punct_mask)
    if len(pm) == n and all(isinstance(x, (bool, np.bool_)) for x in pm):
        keep[np.asarray(pm, dtype=bool)] = False
    else:
        for i in pm:
            keep[int(i)] = False
    return keep


class AlignmentAccumulator:
    """Accumulates UUAS (overall, per sentence length, recall per arc length) and left-arc scores.

    ``drop_punct=False`` (default) keeps punctuation; with ``drop_punct=True`` each ``add`` call
    must pass ``punct_mask`` (bools per word, or the set of punctuation word indices) and those
    words are removed before scoring (see the module docstring).
    """

    def __init__(self, drop_punct: bool = False) -> None:
        self.drop_punct = drop_punct
        self.n_sentences = 0
        self.shared = 0
        self.gold = 0
        self.len_shared: dict[str, int] = {}
        self.len_gold: dict[str, int] = {}
        self.arc_shared: dict[str, int] = {}
        self.arc_gold: dict[str, int] = {}
        self.left_hits = 0
        self.left_total = 0

    def _keep(self, n: int, punct_mask: Sequence[bool] | Iterable[int] | None) -> np.ndarray | None:
        if not self.drop_punct:
            return None
        if punct_mask is None:
            raise ValueError("drop_punct=True needs a punct_mask for every sentence")
        return _as_keep_mask(n, punct_mask)

    def _accumulate(
        self,
        pred: Iterable[Edge],
        heads: Sequence[int],
        keep: np.ndarray | None,
        choice: Sequence[int] | None,
    ) -> None:
        n = len(heads)
        gold = gold_edges(heads)
        pred_set = {(min(a, b), max(a, b)) for a, b in pred}
        if keep is not None:
            gold = {(a, b) for a, b in gold if keep[a] and keep[b]}
            pred_set = {(a, b) for a, b in pred_set if keep[a] and keep[b]}
        self.n_sentences += 1
        shared = pred_set & gold
        self.shared += len(shared)
        self.gold += len(gold)
        lb = length_bucket(n)
        if lb is not None and gold:
            self.len_shared[lb] = self.len_shared.get(lb, 0) + len(shared)
            self.len_gold[lb] = self.len_gold.get(lb, 0) + len(gold)
        for a, b in gold:
            ab = arc_bucket(b - a)
            assert ab is not None
            self.arc_gold[ab] = self.arc_gold.get(ab, 0) + 1
            if (a, b) in shared:
                self.arc_shared[ab] = self.arc_shared.get(ab, 0) + 1
        if choice is not None:
            h, t = _left_arc_counts(choice, left_relatives(heads), keep)
            self.left_hits += h
            self.left_total += t

    def add(
        self,
        scores_words: np.ndarray,
        heads: Sequence[int],
        punct_mask: Sequence[bool] | Iterable[int] | None = None,
    ) -> list[Edge]:
        """Score one sentence from its ``(n, n)`` causal word score matrix; returns the MST edges.

        The matrix is symmetrised (``S = M + M^T``) and its maximum spanning tree compared with
        the gold tree; the left-arc score uses the rows of ``M`` directly.
        """
        M = np.asarray(scores_words, dtype=np.float64)
        n = len(heads)
        if M.shape != (n, n):
            raise ValueError(f"scores shape {M.shape} does not match {n} words")
        keep = self._keep(n, punct_mask)
        S = M + M.T
        if keep is None:
            pred = max_spanning_tree(S)
        else:
            idx = np.flatnonzero(keep)
            sub = max_spanning_tree(S[np.ix_(idx, idx)])
            pred = [(int(idx[a]), int(idx[b])) for a, b in sub]
        self._accumulate(pred, heads, keep, _argmax_choice(M, keep))
        return pred

    def add_edges(
        self,
        pred_edges: Iterable[Edge],
        heads: Sequence[int],
        left_choice: Sequence[int] | None = None,
        punct_mask: Sequence[bool] | Iterable[int] | None = None,
    ) -> None:
        """Score a sentence from predicted edges directly (for the chain / random references).

        ``left_choice[b]`` is the predicted earlier word of word ``b`` for the left-arc score
        (e.g. ``b - 1`` for the chain); without it the sentence adds nothing to ``left_arc``.
        With ``drop_punct`` the edges should be built over the non-punctuation words; edges
        touching punctuation are ignored.
        """
        n = len(heads)
        keep = self._keep(n, punct_mask)
        self._accumulate(pred_edges, heads, keep, left_choice)

    def result(self) -> dict[str, float]:
        """Metrics so far: ``uuas``, ``uuas_len_<bucket>``, ``recall_arc_<bucket>``, ``left_arc``,
        ``n_sentences``, ``n_gold_edges``, ``n_left_arc_words``. Buckets with no gold edge (and
        ``left_arc`` with no counted word) are omitted rather than reported as 0."""
        out: dict[str, float] = {}
        if self.gold:
            out["uuas"] = self.shared / self.gold
        for label in LENGTH_BUCKET_LABELS:
            if self.len_gold.get(label):
                out[f"uuas_len_{label}"] = self.len_shared.get(label, 0) / self.len_gold[label]
        for label in ARC_BUCKET_LABELS:
            if self.arc_gold.get(label):
                out[f"recall_arc_{label}"] = self.arc_shared.get(label, 0) / self.arc_gold[label]
        if self.left_total:
            out["left_arc"] = self.left_hits / self.left_total
        out["n_sentences"] = self.n_sentences
        out["n_gold_edges"] = self.gold
        out["n_left_arc_words"] = self.left_total
        return out


def score_reference(
    name: str,
    sentences_heads: Iterable[Sequence[int]],
    seed: int = 0,
    punct_masks: Iterable[Sequence[bool] | Iterable[int]] | None = None,
) -> dict[str, float]:
    """Scores of a reference tree over a treebank, with the keys of ``AlignmentAccumulator.result``.

    ``name='chain'``: each word attached to the next; left-arc predicts the previous word.
    ``name='random'``: a uniformly random tree per sentence (``np.random.default_rng(seed)``);
    left-arc predicts a uniformly random earlier word (drawn from the same generator).
    With ``punct_masks`` (one per sentence) punctuation is dropped and the references are built
    over the remaining words.
    """
    if name not in ("chain", "random"):
        raise ValueError(f"unknown reference {name!r}; expected 'chain' or 'random'")
    rng = np.random.default_rng(seed)
    heads_list = list(sentences_heads)
    masks = list(punct_masks) if punct_masks is not None else [None] * len(heads_list)
    if len(masks) != len(heads_list):
        raise ValueError("punct_masks must have one entry per sentence")
    acc = AlignmentAccumulator(drop_punct=punct_masks is not None)
    for heads, pm in zip(heads_list, masks):
        n = len(heads)
        idx = np.flatnonzero(_as_keep_mask(n, pm))
        m = idx.size
        choice = [-1] * n
        if name == "chain":
            local = chain_edges(m)
            for j in range(1, m):
                choice[int(idx[j])] = int(idx[j - 1])
        else:
            local = random_tree_edges(m, rng)
            for j in range(1, m):
                choice[int(idx[j])] = int(idx[int(rng.integers(0, j))])
        edges = [(int(idx[a]), int(idx[b])) for a, b in local]
        acc.add_edges(edges, heads, left_choice=choice, punct_mask=pm)
    return acc.result()
