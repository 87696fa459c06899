"""Gold left-arc matrices from dependency trees, for the oracle analysis mode (``depenc.parser=oracle``).

Row i of a gold matrix is uniform over the gold *left relatives* of the attaching word (its head if
the head is to its left, and its dependents to its left): of word i itself for ``target=self``, of
word i+1 for ``target=next`` -- the same arcs the alignment metric scores the parser against.

``target=frontier`` (the honest ceiling of a causal target): row i is uniform over the *right frontier*
after word i, the words a next word could still attach to in a projective tree given the gold arcs
among words 0..i (:func:`right_frontiers`). It does not look at word i+1, but the prefix's
arcs come from the whole sentence's tree, so attachment ambiguities that later words resolve are
resolved early: an upper bound on what a left-to-right reader could know.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from depenc.metrics.alignment import left_relatives

__all__ = ["GoldArcs", "gold_matrices", "left_relatives", "right_frontiers", "sentence_gold_matrix"]


class GoldArcs:
    """Left relatives of every token of a token stream, in stream positions (one token per word).

    ``starts[k]`` is the stream position of sentence k's first word."""

    def __init__(self, heads_per_sentence: Sequence[Sequence[int]], starts: Sequence[int], stream_len: int, target: str):
        if target not in ("self", "next", "frontier"):
            raise ValueError(f"target must be 'self', 'next' or 'frontier', got {target!r}")
        self.target = target
        rel: list[list[int]] = [[] for _ in range(stream_len + 1)]
        per_word = right_frontiers if target == "frontier" else left_relatives
        for heads, start in zip(heads_per_sentence, starts):
            for word, lefts in enumerate(per_word(heads)):
                rel[start + word] = [start + j for j in lefts]
        self.rel = rel  # stream position -> the row's gold positions

    def matrix(self, start: int, T: int) -> torch.Tensor:
        """(T, T) gold matrix for the input block stream[start : start + T]."""
        M = np.zeros((T, T), dtype=np.float32)
        shift = 1 if self.target == "next" else 0  # frontier: row i is the frontier after word i itself
        for i in range(T):
            p = start + i + shift
            if p >= len(self.rel):
                break
            cols = [q - start for q in self.rel[p] if q >= start]
            if cols:
                M[i, cols] = 1.0 / len(cols)
        return torch.from_numpy(M)


def right_frontiers(heads: Sequence[int]) -> list[list[int]]:
    """For each word w, the words a <= w that a word after w may still attach to (as its head or its
    dependent) in a projective tree, given the gold arcs among words 0..w (ascending): a is neither
    strictly inside such an arc (a new arc from a would cross it) nor a left dependent of a word in
    (a, w] (its head is there, and a new right arc from a would have to span it)."""
    n = len(heads)
    out = []
    for w in range(n):
        closed = set()
        for d in range(w + 1):
            h = heads[d] - 1  # 0-based head; -1 = root
            if 0 <= h <= w:
                lo, hi = min(d, h), max(d, h)
                closed.update(range(lo + 1, hi))  # strictly inside a complete arc
                if h > d:
                    closed.add(d)  # a left dependent whose head has been read
        out.append([a for a in range(w + 1) if a not in closed])
    return out


def sentence_gold_matrix(heads: Sequence[int], target: str, T: int | None = None) -> torch.Tensor:
    """(T, T) gold matrix for the model input [BOS] + sentence (T defaults to len(heads) + 1)."""
    T = T or len(heads) + 1
    return GoldArcs([heads], [1], T, target).matrix(0, T)


def gold_matrices(heads_list: Sequence[Sequence[int]], target: str, T: int, device=None) -> torch.Tensor:
    """(B, T, T) gold matrices for inputs ``[BOS] + sentence`` cut or padded to T positions, one token
    per word (word tokenizer): what an oracle model (``depenc.parser=oracle``) reads instead of P."""
    mats = [sentence_gold_matrix(list(heads), target, max(T, len(heads) + 1))[:T, :T] for heads in heads_list]
    return torch.stack(mats).to(device)
