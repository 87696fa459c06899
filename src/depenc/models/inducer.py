"""A whole-sentence structure inducer for training only (``depenc.inducer=inside``; issue 18 variant c).

An unsupervised auxiliary objective, beyond the paper's "no auxiliary objective": a head-outward
generative dependency model (DMV without valence; Klein & Manning 2004) reads every sentence of the
training block whole. Its parameters are word embeddings, so what it learns is which words head which:

    root word r ~ p(. | ROOT);  each head h, in each direction d in {left, right}, repeats
    "continue with probability sigmoid(c_d(h)), then draw a child word ~ p(. | h, d)" until it stops,

the children nearest the head first. Every projective tree with its sentence gets probability
p(r | ROOT) * prod_arcs sigmoid(c_d(h)) p(child | h, d) * prod_h,d sigmoid(-c_d(h)), and Eisner's inside
algorithm sums it over all projective trees exactly: log p(sentence) is trained by gradient ascent
(marginal likelihood, the gradient is EM's), and the gradient of log Z with respect to the arc scores
is every arc's posterior probability given the whole sentence.

Those posteriors train the causal parser: row i of the encoder (target=next: where word i+1 attaches
among words <= i) is pulled towards the inducer's posterior over word i+1's left relatives (its head
or a dependent to its left), normalised over the row (cross-entropy, targets detached). At inference
only the causal parser runs: the inducer sees future words and is never used to predict.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


def stripe(x: torch.Tensor, n: int, w: int, offset: tuple[int, int] = (0, 0), horizontal: bool = True) -> torch.Tensor:
    """(n, w, S) view of the chart x (N, N, S): [a, b] = x[o0 + a, o1 + a + b] (horizontal) or
    x[o0 + a + b, o1 + a] (vertical), so that span starts a run along the first axis."""
    s0, s1, s2 = x.stride()
    step = s1 if horizontal else s0
    return x.as_strided((n, w, x.size(2)), (s0 + s1, step, s2), x.storage_offset() + offset[0] * s0 + offset[1] * s1)


def eisner_inside(arc: torch.Tensor, root: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """log Z (S,) over single-root projective trees, summed in log space.

    arc: (S, n, n) log weight of the arc head h -> dependent d at [s, h, d]; root: (S, n) log weight of
    word r being the root's only child; lengths: (S,) words of each sentence (padding after them is
    never read). Differentiable: d log Z / d arc[s, h, d] is the arc's posterior probability."""
    S, n, _ = arc.shape
    a = arc.permute(1, 2, 0)  # (n, n, S): batch last so a span's chart cell is one stride
    # complete spans C (the head at one end, nothing more to attach inside) and incomplete spans I (an arc
    # between the two ends): r = headed at the left end, l = headed at the right end; [i, j] = span i..j
    Cr, Cl, Ir, Il = (arc.new_zeros(n, n, S) for _ in range(4))
    for w in range(1, n):
        m = n - w  # spans of width w: starts 0..m-1
        # an arc between i and j = i + w over a split point k: C_r[i, k] + C_l[k + 1, j]
        split = (stripe(Cr, m, w) + stripe(Cl, m, w, (1, w), horizontal=False)).logsumexp(1)  # (m, S)
        Ir.diagonal(w).copy_((split + a.diagonal(w).T).T)  # i -> j
        Il.diagonal(w).copy_((split + a.diagonal(-w).T).T)  # j -> i
        Cr.diagonal(w).copy_((stripe(Ir, m, w, (0, 1)) + stripe(Cr, m, w, (1, w), horizontal=False)).logsumexp(1).T)
        Cl.diagonal(w).copy_((stripe(Cl, m, w) + stripe(Il, m, w, (0, w), horizontal=False)).logsumexp(1).T)
    # the root's child r: its left half C_l[0, r] and its right half C_r[r, length - 1]
    last = (lengths - 1).clamp(min=0)
    right = Cr[:, last, torch.arange(S)].T  # (S, n): C_r[r, length_s - 1]
    total = root + Cl[0].T + right  # (S, n)
    total = total.masked_fill(torch.arange(n, device=arc.device) >= lengths.unsqueeze(1), float("-inf"))
    return total.logsumexp(-1)


def length_groups(lengths: torch.Tensor) -> list[torch.Tensor]:
    """Indices of the sentences, grouped by the power of two at or above their length (1, 2, 3-4, 5-8,
    ...): inside a group the padded length is less than twice any member's."""
    key = torch.ceil(torch.log2(lengths.clamp(min=1).double())).long()  # (S,)
    return [(key == k).nonzero().squeeze(1) for k in key.unique().tolist()]


@dataclass
class Segments:
    """The sentences of a block (B, L): maximal runs of words (positions >= 1, not ``<eos>``; position 0
    is never a candidate of the causal parser), gathered into a padded (S, n) batch."""

    words: torch.Tensor  # (S, n) token ids, 0 after each length
    lengths: torch.Tensor  # (S,)
    seg: torch.Tensor  # (B, L) the segment of each block position, -1 outside any
    pos: torch.Tensor  # (B, L) its index inside the segment, -1 outside any

    @classmethod
    def of(cls, idx: torch.Tensor, eos_id: int) -> "Segments":
        B, L = idx.shape
        valid = idx != eos_id
        valid[:, 0] = False
        first = valid.clone()
        first[:, 1:] &= ~valid[:, :-1]  # a word whose left neighbour is not a word
        flat_valid, flat_first = valid.flatten(), first.flatten()
        seg = flat_first.long().cumsum(0) - 1  # (B L,)
        start = flat_first.nonzero().squeeze(1)  # (S,) flat position of each segment's first word
        pos = torch.arange(B * L, device=idx.device) - start[seg.clamp(min=0)]
        seg, pos = seg.masked_fill(~flat_valid, -1), pos.masked_fill(~flat_valid, -1)
        S = int(start.numel())
        lengths = torch.bincount(seg[flat_valid], minlength=S)
        n = int(lengths.max()) if S else 0
        words = idx.new_zeros(S, n)
        words[seg[flat_valid], pos[flat_valid]] = idx.flatten()[flat_valid]
        return cls(words, lengths, seg.view(B, L), pos.view(B, L))

    def next_word_rows(self, U: torch.Tensor) -> torch.Tensor:
        """(B, L, L) targets of the causal parser's rows (target=next) from U (S, n, n), a symmetric
        per-sentence matrix (posterior probability of an arc between two words, either direction): row i
        holds U[word i+1, j] for the words j <= i of word i+1's sentence, normalised; 0 where word i+1 is
        the first of its sentence, an ``<eos>`` or past the block."""
        B, L = self.seg.shape
        rows = U.new_zeros(B, L, L)
        if U.numel() == 0:
            return rows
        s_row, u = self.seg[:, 1:, None], self.pos[:, 1:, None]  # (B, L-1, 1): word i+1
        s_col, v = self.seg[:, None, :], self.pos[:, None, :]  # (B, 1, L): candidate j
        same = (s_row == s_col) & (s_row >= 0) & (v < u)  # (B, L-1, L)
        val = U[s_row.clamp(min=0), u.clamp(min=0), v.clamp(min=0)] * same
        rows[:, :-1] = val / val.sum(-1, keepdim=True).clamp(min=1e-12)
        return rows


class HeadOutwardInducer(nn.Module):
    """The generative model above: p(child | head, direction) and the continue/stop odds from word
    embeddings (its own, not the LM's), the root's child from one more row of logits."""

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, dim)  # the word as a head
        self.child = nn.ModuleList(nn.Linear(dim, vocab_size) for _ in range(2))  # left, right: p(child | head)
        self.cont = nn.Linear(dim, 2)  # logits of "one more child" to the left, to the right
        self.root = nn.Parameter(torch.zeros(vocab_size))  # logits of p(word | ROOT)

    def init_weights(self) -> None:
        nn.init.normal_(self.emb.weight, std=0.02)
        for lin in (*self.child, self.cont):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        nn.init.zeros_(self.root)

    def factors(self, words: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(arc (S, n, n) log sigmoid(c_d(h)) + log p(w_d | w_h, d), root (S, n) log p(w_r | ROOT),
        stop (S,) sum over the words of log sigmoid(-c_left) + log sigmoid(-c_right))."""
        S, n = words.shape
        e = self.emb(words)  # (S, n, dim)
        cont = self.cont(e)  # (S, n, 2)
        child = words.unsqueeze(1).expand(S, n, n)  # [s, h, d] = w_d
        left, right = (F.log_softmax(lin(e), -1).gather(-1, child) for lin in self.child)  # (S, n, n)
        h = torch.arange(n, device=words.device)
        to_right = h.view(1, -1) > h.view(-1, 1)  # [h, d]: d right of h
        arc = torch.where(to_right, right + F.logsigmoid(cont[..., 1:]), left + F.logsigmoid(cont[..., :1]))
        real = h.view(1, -1) < lengths.unsqueeze(1)  # (S, n)
        stop = (F.logsigmoid(-cont).sum(-1) * real).sum(-1)  # (S,)
        return arc, F.log_softmax(self.root, -1)[words], stop

    def log_prob(self, words: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p(sentence) (S,), arc (S, n, n): the arc scores, for posteriors by autograd)."""
        arc, root, stop = self.factors(words, lengths)
        return eisner_inside(arc, root, lengths) + stop, arc

    def _posteriors(self, segs: Segments) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p (S,), U (S, n, n) detached: the posterior probability of an arc between two words of a
        sentence, either direction). The inside pass costs n^3 in the padded length, so sentences run in
        groups of similar length (``length_groups``): the same numbers as one padded batch, far cheaper
        when a block holds one long sentence among many short ones."""
        S, n = segs.words.shape
        groups = length_groups(segs.lengths)
        parts = []  # (rows of the group, its log p, its arc scores)
        for rows in groups:
            m = int(segs.lengths[rows].max())
            logp_g, arc_g = self.log_prob(segs.words[rows, :m], segs.lengths[rows])
            parts.append((rows, logp_g, arc_g))
        # posterior of every arc: d log Z / d arc (the stop and root terms do not depend on the arcs)
        total = sum(lp.sum() for _, lp, _ in parts)
        arcs = [a for _, _, a in parts]
        posts = torch.autograd.grad(total, arcs, retain_graph=total.requires_grad, allow_unused=True)
        posts = [torch.zeros_like(a) if p is None else p for a, p in zip(arcs, posts)]  # one-word sentences: no arc
        logp = torch.cat([lp for _, lp, _ in parts]).index_select(0, torch.cat(groups).argsort())  # (S,)
        U = segs.words.new_zeros(S, n, n, dtype=posts[0].dtype)
        for (rows, _, _), post in zip(parts, posts):
            m = post.size(1)
            U[rows, :m, :m] = post + post.transpose(1, 2)  # grad() without create_graph: already detached
        return logp, U

    def forward(self, idx: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(the inducer's loss, -log p per word of the block's sentences; next-word rows (B, L, L):
        the causal parser's targets, detached)."""
        segs = Segments.of(idx, eos_id)
        if segs.words.numel() == 0:
            return idx.new_zeros((), dtype=torch.float32), idx.new_zeros(idx.shape + idx.shape[-1:], dtype=torch.float32)
        logp, U = self._posteriors(segs)
        return -logp.sum() / segs.lengths.sum(), segs.next_word_rows(U)

    def arc_posteriors(self, idx: torch.Tensor, eos_id: int) -> torch.Tensor:
        """(B, L, L) the posterior probability of an arc between positions i and j of one sentence of the
        block (either direction; 0 across sentences and at position 0): the inducer's own trees, for the
        alignment metric (source ``inducer``). Works under ``torch.no_grad``."""
        segs = Segments.of(idx, eos_id)
        B, L = idx.shape
        out = torch.zeros(B, L, L, device=idx.device)
        if segs.words.numel() == 0:
            return out
        with torch.enable_grad():
            _, U = self._posteriors(segs)
        seg, pos = segs.seg, segs.pos
        same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] >= 0)  # (B, L, L)
        val = U[seg.clamp(min=0)[:, :, None], pos.clamp(min=0)[:, :, None], pos.clamp(min=0)[:, None, :]]
        return out + val * same


def distill_loss(P: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the causal parser's rows P (B, T, T) against target rows (B, T, T), averaged
    over the rows that have a target."""
    has = rows.sum(-1) > 0  # (B, T)
    if not bool(has.any()):
        return P.new_zeros(())
    ce = -(rows * P.float().clamp(min=1e-9).log()).sum(-1)  # (B, T)
    return ce[has].mean()
