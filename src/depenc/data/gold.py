"""Gold left-arc matrices from dependency trees, for the oracle analysis mode (``depenc.parser=oracle``).

Row i of a gold matrix is uniform over the gold *left relatives* of the attaching word (its head if
the head is to its left, and its dependents to its left): of word i itself for ``target=self``, of
word i+1 for ``target=next`` -- the same arcs the alignment metric scores the parser against.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from depenc.metrics.alignment import left_relatives

__all__ = ["GoldArcs", "gold_matrices", "left_relatives", "sentence_gold_matrix"]


class GoldArcs:
    """Left relatives of every token of a token stream, in stream positions (one token per word).

    ``starts[k]`` is the stream position of sentence k's first word."""

    def __init__(self, heads_per_sentence: Sequence[Sequence[int]], starts: Sequence[int], stream_len: int, target: str):
        if target not in ("self", "next"):
            raise ValueError(f"target must be 'self' or 'next', got {target!r}")
        self.target = target
        rel: list[list[int]] = [[] for _ in range(stream_len + 1)]
        for heads, start in zip(heads_per_sentence, starts):
            for word, lefts in enumerate(left_relatives(heads)):
                rel[start + word] = [start + j for j in lefts]
        self.rel = rel

    def matrix(self, start: int, T: int) -> torch.Tensor:
        """(T, T) gold matrix for the input block stream[start : start + T]."""
        M = np.zeros((T, T), dtype=np.float32)
        shift = 1 if self.target == "next" else 0
        for i in range(T):
            p = start + i + shift
            if p >= len(self.rel):
                break
            cols = [q - start for q in self.rel[p] if q >= start]
            if cols:
                M[i, cols] = 1.0 / len(cols)
        return torch.from_numpy(M)


def sentence_gold_matrix(heads: Sequence[int], target: str, T: int | None = None) -> torch.Tensor:
    """(T, T) gold matrix for the model input [BOS] + sentence (T defaults to len(heads) + 1)."""
    T = T or len(heads) + 1
    return GoldArcs([heads], [1], T, target).matrix(0, T)


def gold_matrices(heads_list: Sequence[Sequence[int]], target: str, T: int, device=None) -> torch.Tensor:
    """(B, T, T) gold matrices for inputs ``[BOS] + sentence`` cut or padded to T positions, one token
    per word (word tokenizer): what an oracle model (``depenc.parser=oracle``) reads instead of P."""
    mats = [sentence_gold_matrix(list(heads), target, max(T, len(heads) + 1))[:T, :T] for heads in heads_list]
    return torch.stack(mats).to(device)
