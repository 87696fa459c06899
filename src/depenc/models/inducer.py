"""A whole-sentence structure inducer for training only (``depenc.inducer=inside|dmv``; issue 18 variant c).

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

``dmv`` (:class:`ValenceInducer`) is the same story with valence, the DMV proper: the continue/stop odds
of a head on a side depend on whether it already has a child there.
``scripts/teacher_probe.py`` trains either alone and scores its trees (docs/structure-study-2.md: on the
synthetic grammar the family's likelihood ranks the chain above the gold trees).

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


def eisner_inside(arc: torch.Tensor, root: torch.Tensor, lengths: torch.Tensor,
                  arc_first: torch.Tensor | None = None) -> torch.Tensor:
    """log Z (S,) over single-root projective trees, summed in log space.

    arc: (S, n, n) log weight of the arc head h -> dependent d at [s, h, d]; root: (S, n) log weight of
    word r being the root's only child; lengths: (S,) words of each sentence (padding after them is
    never read). arc_first (S, n, n), optional: the weight instead when d is h's *nearest* child on its
    side (valence: a head's first child in a direction is scored apart from the later ones).
    Differentiable: d log Z / d arc[s, h, d] (+ d / d arc_first) is the arc's posterior probability."""
    S, n, _ = arc.shape
    a = arc.permute(1, 2, 0)  # (n, n, S): batch last so a span's chart cell is one stride
    a1 = None if arc_first is None else arc_first.permute(1, 2, 0)
    # complete spans C (the head at one end, nothing more to attach inside) and incomplete spans I (an arc
    # between the two ends): r = headed at the left end, l = headed at the right end; [i, j] = span i..j
    Cr, Cl, Ir, Il = (arc.new_zeros(n, n, S) for _ in range(4))
    for w in range(1, n):
        m = n - w  # spans of width w: starts 0..m-1
        # an arc between i and j = i + w over a split point k: C_r[i, k] + C_l[k + 1, j]
        split = stripe(Cr, m, w) + stripe(Cl, m, w, (1, w), horizontal=False)  # (m, w, S): k = i .. j - 1
        if a1 is None:
            right = left = split.logsumexp(1)  # (m, S)
            Ir.diagonal(w).copy_((right + a.diagonal(w).T).T)  # i -> j
            Il.diagonal(w).copy_((left + a.diagonal(-w).T).T)  # j -> i
        else:
            # i -> j: j is i's nearest right child iff C_r[i, k] holds none of i's children (k = i); j -> i:
            # i is j's nearest left child iff C_l[k + 1, j] holds none of j's (k = j - 1)
            far_r, far_l = split[:, 1:].logsumexp(1), split[:, :-1].logsumexp(1)  # -inf at w = 1
            Ir.diagonal(w).copy_(torch.logaddexp(split[:, 0] + a1.diagonal(w).T, far_r + a.diagonal(w).T).T)
            Il.diagonal(w).copy_(torch.logaddexp(split[:, -1] + a1.diagonal(-w).T, far_l + a.diagonal(-w).T).T)
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
    embeddings (its own, not the LM's), the root's child from one more row of logits.

    ``locality`` (>= 0, set from outside, 0 by default): a structural bias (Smith & Eisner 2006) that
    adds -locality * |h - d| to every arc's log weight while the posteriors are computed, so that early
    in training the E-step prefers short arcs; annealed to 0, after which the model is the pure one."""

    n_cont = 2  # continue logits: left, right

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, dim)  # the word as a head
        self.child = nn.ModuleList(nn.Linear(dim, vocab_size) for _ in range(2))  # left, right: p(child | head)
        self.cont = nn.Linear(dim, self.n_cont)  # logits of "one more child"
        self.root = nn.Parameter(torch.zeros(vocab_size))  # logits of p(word | ROOT)
        self.locality = 0.0

    def init_weights(self) -> None:
        nn.init.normal_(self.emb.weight, std=0.02)
        for lin in (*self.child, self.cont):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        nn.init.zeros_(self.root)

    def _parts(self, words: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(child (S, n, n): log p(w_d | w_h, side of d), cont (S, n, n_cont) logits, to_right (n, n):
        [h, d] = d right of h, real (S, n): a word, not padding)."""
        S, n = words.shape
        e = self.emb(words)  # (S, n, dim)
        child = words.unsqueeze(1).expand(S, n, n)  # [s, h, d] = w_d
        left, right = (F.log_softmax(lin(e), -1).gather(-1, child) for lin in self.child)  # (S, n, n)
        h = torch.arange(n, device=words.device)
        to_right = h.view(1, -1) > h.view(-1, 1)
        real = h.view(1, -1) < lengths.unsqueeze(1)
        return torch.where(to_right, right, left), self.cont(e), to_right, real

    def factors(self, words: torch.Tensor, lengths: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]:
        """((arc,): (S, n, n) log sigmoid(c_side(h)) + log p(w_d | w_h, side), root (S, n) log p(w_r | ROOT),
        stop (S,) sum over the words of log sigmoid(-c_left) + log sigmoid(-c_right))."""
        child, cont, to_right, real = self._parts(words, lengths)
        arc = child + torch.where(to_right, F.logsigmoid(cont[..., 1:]), F.logsigmoid(cont[..., :1]))
        stop = (F.logsigmoid(-cont).sum(-1) * real).sum(-1)  # (S,)
        return (arc,), F.log_softmax(self.root, -1)[words], stop

    def log_prob(self, words: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """(log p(sentence) (S,), the arc score tensors (S, n, n): an arc's posterior probability is the sum
        of the gradients of log p with respect to them)."""
        arcs, root, stop = self.factors(words, lengths)
        scored = arcs
        if self.locality:
            n = words.size(1)
            h = torch.arange(n, device=words.device)
            dist = (h.view(1, -1) - h.view(-1, 1)).abs().to(arcs[0].dtype)  # (n, n)
            scored = tuple(a - self.locality * dist for a in arcs)
        return eisner_inside(scored[0], root, lengths, *scored[1:]) + stop, arcs

    def _posteriors(self, segs: Segments) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p (S,), U (S, n, n) detached: the posterior probability of an arc between two words of a
        sentence, either direction). The inside pass costs n^3 in the padded length, so sentences run in
        groups of similar length (``length_groups``): the same numbers as one padded batch, far cheaper
        when a block holds one long sentence among many short ones."""
        S, n = segs.words.shape
        groups = length_groups(segs.lengths)
        parts = []  # (rows of the group, its log p, its arc score tensors)
        for rows in groups:
            m = int(segs.lengths[rows].max())
            logp_g, arcs_g = self.log_prob(segs.words[rows, :m], segs.lengths[rows])
            parts.append((rows, logp_g, arcs_g))
        # posterior of every arc: d log Z / d arc (the stop and root terms do not depend on the arcs)
        total = sum(lp.sum() for _, lp, _ in parts)
        flat = [a for _, _, arcs in parts for a in arcs]
        grads = torch.autograd.grad(total, flat, retain_graph=total.requires_grad, allow_unused=True)
        grads = [torch.zeros_like(a) if g is None else g for a, g in zip(flat, grads)]  # one-word sentences: no arc
        logp = torch.cat([lp for _, lp, _ in parts]).index_select(0, torch.cat(groups).argsort())  # (S,)
        U = segs.words.new_zeros(S, n, n, dtype=flat[0].dtype)
        k = len(parts[0][2])  # arc tensors per group
        for g, (rows, _, _) in enumerate(parts):
            post = sum(grads[g * k:(g + 1) * k])  # grad() without create_graph: already detached
            m = post.size(1)
            U[rows, :m, :m] = post + post.transpose(1, 2)
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


class ValenceInducer(HeadOutwardInducer):
    """The head-outward model with valence (the DMV; Klein & Manning 2004, ``depenc.inducer=dmv``): the
    continue/stop odds of a head in a direction depend on whether it already has a child there. A head
    with k children on one side has probability sigmoid(-c0) if k = 0, else
    sigmoid(c0) sigmoid(c1)^(k-1) sigmoid(-c1) times its children's words; written as the stop-at-once
    term sigmoid(-c0) per head and side, an arc weight for the nearest child (sigmoid(c0) sigmoid(-c1) /
    sigmoid(-c0)) and one for the later ones (sigmoid(c1)), which Eisner's algorithm tells apart."""

    n_cont = 4  # continue logits: left and right without a child yet (c0), left and right with one (c1)

    def factors(self, words: torch.Tensor, lengths: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]:
        """((arc_later, arc_nearest) (S, n, n) each, root (S, n), stop (S,): sum of log sigmoid(-c0) over
        the words and sides)."""
        child, cont, to_right, real = self._parts(words, lengths)
        side = lambda t: torch.where(to_right, t[..., 1:2], t[..., 0:1])  # (S, n, 1) -> (S, n, n): h's side of d
        c0, c1 = side(cont[..., :2]), side(cont[..., 2:])
        later = child + F.logsigmoid(c1)
        nearest = child + F.logsigmoid(c0) - F.logsigmoid(-c0) + F.logsigmoid(-c1)
        stop = (F.logsigmoid(-cont[..., :2]).sum(-1) * real).sum(-1)  # (S,)
        return (later, nearest), F.log_softmax(self.root, -1)[words], stop


def distill_loss(P: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the causal parser's rows P (B, T, T) against target rows (B, T, T), averaged
    over the rows that have a target."""
    has = rows.sum(-1) > 0  # (B, T)
    if not bool(has.any()):
        return P.new_zeros(())
    ce = -(rows * P.float().clamp(min=1e-9).log()).sum(-1)  # (B, T)
    return ce[has].mean()


# depenc.inducer: the whole-sentence inducers, by name
INDUCERS = {"inside": HeadOutwardInducer, "dmv": ValenceInducer}
