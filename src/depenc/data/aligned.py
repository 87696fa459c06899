"""Sentence-aligned evaluation blocks: every sentence is predicted with its whole start in context.

The plain evaluation (:class:`depenc.data.datamodule.EvalBlocks`) cuts the packed stream
``[eos] s1 [eos] s2 [eos] ...`` into non-overlapping blocks of ``block_size`` tokens, so most blocks
start in the middle of a sentence and its first predictions lack the sentence's beginning. An
optimum that sees each sentence from its start (the grammar's exact distribution) cannot be compared
with that. Here a block is ``[eos] s_a [eos] s_b [eos] ...`` holding whole sentences only:

* inputs are that sequence without its last token, targets the sequence shifted by one;
* the block is padded to ``block_size`` with ``<eos>`` inputs and ``IGNORE_INDEX`` targets;
* sentences are packed greedily in order: a sentence goes into the current block if its tokens and
  its closing ``<eos>`` still fit, else it opens the next block.

Every token and closing ``<eos>`` of every sentence is predicted exactly once, and a sentence's
context always reaches back to its opening ``<eos>`` (earlier whole sentences of the same block are
in context too, as in training; sentences are independent, so the optimum is unchanged by them). A
sentence of more than ``block_size - 1`` tokens cannot be aligned and raises ``ValueError``
(:func:`fits` filters them beforehand).

Each item also says, per position, which sentence its target belongs to (``sentence``, -1 on
padding) and the target's index in that sentence (``position``: ``k`` = the k-th token, ``len`` =
the closing ``<eos>``), which is row ``k`` of a per-sentence next-token table such as
:meth:`ExactReference.next_token_logprobs`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from depenc.data.datamodule import IGNORE_INDEX

__all__ = ["AlignedBlocks", "fits", "pack_sentences", "sentences_of_stream", "stream_of"]


def fits(n_tokens: int, block_size: int) -> bool:
    """Whether a sentence of ``n_tokens`` tokens fits an aligned block (its opening ``<eos>``, its
    tokens and its closing ``<eos>``: ``n_tokens + 1`` predictions after the opening one)."""
    return n_tokens + 1 <= block_size


def pack_sentences(lengths: Sequence[int], block_size: int) -> list[list[int]]:
    """Sentence indices of each block, greedy in order (a sentence of n tokens takes n + 1 targets)."""
    for i, n in enumerate(lengths):
        if not fits(n, block_size):
            raise ValueError(
                f"sentence {i} has {n} tokens: an aligned block of block_size={block_size} holds sentences "
                f"of at most {block_size - 1} tokens (its tokens and closing <eos> follow its opening <eos>)")
    blocks: list[list[int]] = []
    used = block_size  # targets used in the current block; a full block forces a new one
    for i, n in enumerate(lengths):
        if used + n + 1 > block_size:
            blocks.append([])
            used = 0
        blocks[-1].append(i)
        used += n + 1
    return blocks


def stream_of(sentences: Sequence[Sequence[int]], eos_id: int) -> np.ndarray:
    """The packed stream ``[eos] s1 [eos] s2 [eos] ...`` (as the DataModule writes a split)."""
    out = [eos_id]
    for s in sentences:
        out.extend(int(t) for t in s)
        out.append(eos_id)
    return np.asarray(out, dtype=np.int64)


def sentences_of_stream(stream: np.ndarray, starts: np.ndarray) -> list[np.ndarray]:
    """The token ids of every document of a packed stream (``starts`` = each one's first position,
    as ``LMDataModule.doc_offsets`` gives them; each document ends at the next start - 1)."""
    ends = list(np.asarray(starts[1:], dtype=np.int64) - 1) + [len(stream) - 1]
    return [np.asarray(stream[s:e], dtype=np.int64) for s, e in zip(starts, ends)]


class AlignedBlocks(Dataset):
    """Blocks of whole sentences (see the module docstring).

    ``sentences``: token ids per sentence (without ``<eos>``). ``heads`` and ``target``: gold heads per
    sentence and the oracle reading (``self``/``next``), for models with ``depenc.parser=oracle``;
    items then carry ``gold_M`` (T, T). Attributes: ``blocks`` (sentence indices per block),
    ``offsets`` (input position of each sentence's opening ``<eos>`` in its block), ``n_predicted``.
    """

    def __init__(self, sentences: Sequence[Sequence[int]], block_size: int, eos_id: int,
                 heads: Sequence[Sequence[int]] | None = None, target: str | None = None):
        self.sentences = [np.asarray(s, dtype=np.int64) for s in sentences]
        self.block_size = int(block_size)
        self.eos_id = int(eos_id)
        self.heads = heads
        self.target = target
        self.blocks = pack_sentences([len(s) for s in self.sentences], self.block_size)
        self.offsets = np.zeros(len(self.sentences), dtype=np.int64)
        for block in self.blocks:
            pos = 0
            for i in block:
                self.offsets[i] = pos
                pos += len(self.sentences[i]) + 1
        self.n_predicted = sum(len(s) + 1 for s in self.sentences)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, b: int) -> dict[str, torch.Tensor]:
        if not 0 <= b < len(self.blocks):
            raise IndexError(b)
        T = self.block_size
        x = torch.full((T,), self.eos_id, dtype=torch.long)
        y = torch.full((T,), IGNORE_INDEX, dtype=torch.long)
        sent = torch.full((T,), -1, dtype=torch.long)
        position = torch.full((T,), -1, dtype=torch.long)
        for i in self.blocks[b]:
            o, ids = int(self.offsets[i]), torch.from_numpy(self.sentences[i])
            n = len(ids)
            x[o + 1 : o + 1 + n] = ids  # x[o] is the opening <eos> (already there)
            y[o : o + n] = ids
            y[o + n] = self.eos_id
            sent[o : o + n + 1] = i
            position[o : o + n + 1] = torch.arange(n + 1)
        item = {"input_ids": x, "targets": y, "sentence": sent, "position": position}
        if self.heads is not None:
            item["gold_M"] = self._gold(b)
        return item

    def _gold(self, b: int) -> torch.Tensor:
        """(T, T) gold arcs of the block's sentences, as the oracle reads them (one token per word)."""
        from depenc.data.gold import GoldArcs

        block = self.blocks[b]
        starts = [int(self.offsets[i]) + 1 for i in block]  # each sentence's first word
        arcs = GoldArcs([self.heads[i] for i in block], starts, self.block_size + 1, self.target)
        return arcs.matrix(0, self.block_size)
