"""The dependency encoder (DESIGN 3.2): a causal soft parser giving, for every position i,

- P_i: a distribution over candidate earlier word positions j (never position 0, the beginning-of-
  sequence token; never a ``<eos>``; never a word of an earlier document), and
- g_i in (0, 1): a gate, the probability that there is a left arc at all (0 where no candidate exists),

so that M = g * P (B, T, T) is a soft left-arc matrix. ``target=next`` reads row i as "where does
token i+1 attach among the words up to and including i" -- what a causal state at i is trained to
predict (DESIGN 3.5) -- so the diagonal is then a candidate; ``target=self``: where token i attaches.

The parser is one small class (``parser``: biaffine, distance, oracle); the encoder hands the blocks
above it an :class:`Arcs`. Like attention, it computes rows start..L-1 against positions 0..L-1, so the
full forward and cached decoding are one code path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from depenc.kernels import causal_matmul_add
from depenc.models.attention import cache_append
from depenc.schema import DepEncConfig


@dataclass
class Arcs:
    """What the encoder hands the blocks above it (rows start..L-1 of the soft left-arc matrix)."""

    M: torch.Tensor  # (B, Tn, L) g * P
    log_M: torch.Tensor | None  # (B, 1, Tn, L) log(M + eps): the bias form's term, built once per forward
    P: torch.Tensor | None  # (B, Tn, L) the arc distribution (analysis only; 0 on rows without candidates)
    g: torch.Tensor  # (B, Tn) the gate
    has_cand: torch.Tensor  # (B, Tn) bool: the row has a candidate


def distance_bucket(dist: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """Distances >= 1 to buckets: 1..8 exact, then two per doubling, the last bucket open-ended."""
    exact = 8
    d = dist.clamp(min=1).float()
    log_b = exact + (torch.log(d / exact) / math.log(2) * 2).floor().long()
    return torch.where(d <= exact, d.long() - 1, log_b).clamp(max=n_buckets - 1)


def bucket_start(n_buckets: int) -> torch.Tensor:
    """The smallest distance of each bucket (for the recency prior -log(distance))."""
    d = torch.arange(1, 4096)
    b = distance_bucket(d, n_buckets)
    return torch.stack([d[b == i].float().min() if (b == i).any() else torch.tensor(4096.0) for i in range(n_buckets)])


def masked_arc_softmax(scores: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
    """(B, Tn, L) softmax over the candidates. A finite fill instead of -inf: a row without candidates
    gives a finite (uniform) row that the gate (0 there) removes, so no nan cleaning is needed."""
    return torch.softmax(scores.masked_fill_(blocked, torch.finfo(torch.float32).min), dim=-1)


class DistanceParser(nn.Module):
    """Content-free control: arc scores are the distance term alone (any learned locality)."""

    def __init__(self, cfg: DepEncConfig, n_embd: int, bias: bool):
        super().__init__()

    def scores(self, hn: torch.Tensor, dist: torch.Tensor, cache: dict | None) -> torch.Tensor:
        B, Tn, _ = hn.shape
        return dist.expand(B, Tn, dist.size(-1)).clone()  # a fresh tensor: masked in place

    def forward(self, hn, dist, blocked, has_cand, gate: nn.Linear, cache=None, gold_M=None):
        """(M, P, g) rows from the states hn (B, Tn, C), the distance term (Tn, L), the blocked candidates
        (B, Tn, L) and the rows that have one (B, Tn)."""
        P = masked_arc_softmax(self.scores(hn, dist, cache), blocked)  # (B, Tn, L)
        g = torch.sigmoid(gate(hn).squeeze(-1).float()) * has_cand  # (B, Tn)
        return g.unsqueeze(-1) * P, P, g


class BiaffineParser(DistanceParser):
    """s_ij = (W_a h_i) . (W_b h_j) / sqrt(d_dep) + r(bucket(arc length)) (DESIGN 3.2)."""

    def __init__(self, cfg: DepEncConfig, n_embd: int, bias: bool):
        super().__init__(cfg, n_embd, bias)
        self.w_head = nn.Linear(n_embd, cfg.d_dep, bias=False)  # W_a: the attaching token
        self.w_dep = nn.Linear(n_embd, cfg.d_dep, bias=False)  # W_b: the candidate head
        self.scale = 1.0 / math.sqrt(cfg.d_dep)

    def scores(self, hn, dist, cache):
        keys = self.w_dep(hn)  # (B, Tn, d)
        if cache is not None:
            keys = cache_append(cache, "keys", keys)  # (B, L, d)
        q = self.w_head(hn)  # (B, Tn, d)
        if q.dtype == torch.float32 and not torch.is_autocast_enabled(q.device.type):
            return torch.baddbmm(dist, q, keys.transpose(1, 2), alpha=self.scale)  # (B, Tn, L) in one kernel
        return (q @ keys.transpose(1, 2)).float() * self.scale + dist  # low precision: the sum in float32


class OracleParser(DistanceParser):
    """Analysis mode: M is the gold left-arc matrix of the batch (``gold_M``), restricted to candidates."""

    def forward(self, hn, dist, blocked, has_cand, gate, cache=None, gold_M=None):
        if gold_M is None or cache is not None:
            raise ValueError("depenc.parser=oracle needs gold arcs (gold_M) for every batch; it cannot decode")
        M = gold_M.float() * ~blocked
        return M, M / M.sum(-1, keepdim=True).clamp(min=1e-9), M.sum(-1).clamp(max=1.0)


PARSERS = {"biaffine": BiaffineParser, "distance": DistanceParser, "oracle": OracleParser}


class DependencyEncoder(nn.Module):
    def __init__(self, cfg: DepEncConfig, n_embd: int, block_size: int, bias: bool = True):
        super().__init__()
        self.cfg = cfg
        self.zero_gate = False  # inference-time ablation (Transformer.ablate): M = 0
        self.distance_bias = nn.Parameter(torch.zeros(cfg.n_distance_buckets))  # r(bucket)
        self.ln = nn.LayerNorm(n_embd, bias=bias)
        self.parser = PARSERS[cfg.parser](cfg, n_embd, bias)
        self.w_gate = nn.Linear(n_embd, 1, bias=True)
        self.w_struct = nn.Linear(n_embd, n_embd, bias=False) if cfg.structured_encoding else None
        self.next_offset = 0 if cfg.target == "self" else 1  # row i of target=next (frontier) is about token i+1
        self.bias_form = cfg.dep_attention and cfg.attention == "bias"  # the blocks above read log(M + eps)
        # bucket of every arc length 0..block_size + 1, so no log/floor per forward
        self.register_buffer("bucket_of_len", distance_bucket(torch.arange(block_size + 2), cfg.n_distance_buckets),
                             persistent=False)

    def init_weights(self) -> None:
        """Projections N(0, 0.02); the distance term at the recency prior -log(distance); the gate at
        ``gate_init`` with zero weights; W_s = 0, so DepEnc starts as the plain backbone."""
        for name in ("w_head", "w_dep"):
            if hasattr(self.parser, name):
                nn.init.normal_(getattr(self.parser, name).weight, std=0.02)
        with torch.no_grad():
            self.distance_bias.copy_(-torch.log(bucket_start(self.cfg.n_distance_buckets)))
            nn.init.zeros_(self.w_gate.weight)
            nn.init.constant_(self.w_gate.bias, self.cfg.gate_init)
        if self.w_struct is not None:
            nn.init.zeros_(self.w_struct.weight)

    def blocked(self, idx: torch.Tensor, start: int, eos_id: int) -> torch.Tensor:
        """(B, Tn, L) bool, True where row i (of start..L-1) may NOT pick position j of idx (B, L): j beyond
        the target, the first token, a ``<eos>``, or at/before the latest ``<eos>`` (an earlier document)."""
        B, L = idx.shape
        i = torch.arange(start, L, device=idx.device).view(-1, 1)
        j = torch.arange(L, device=idx.device).view(1, -1)
        static = (j > i - 1 + self.next_offset) | (j < 1)  # (Tn, L)
        is_eos = idx == eos_id
        last_eos = torch.where(is_eos, torch.arange(L, device=idx.device), -1).cummax(dim=1).values[:, start:]  # (B, Tn)
        return static.unsqueeze(0) | is_eos.unsqueeze(1) | (j.unsqueeze(0) <= last_eos.unsqueeze(2))

    def distance_scores(self, start: int, L: int, device) -> torch.Tensor:
        """(Tn, L) distance term r(bucket(arc length)) of rows start..L-1 (arc length clamped to >= 1)."""
        i = torch.arange(start, L, device=device).view(-1, 1)
        j = torch.arange(L, device=device).view(1, -1)
        arc = (i - j + self.next_offset).clamp(0, self.bucket_of_len.numel() - 1)
        return self.distance_bias[self.bucket_of_len[arc]]

    def forward(self, h, idx, tok_emb, eos_id: int, cache: dict | None = None, gold_M=None,
                need_P: bool = False) -> tuple[torch.Tensor | None, Arcs]:
        """h, tok_emb: (B, Tn, C) states of block ``parser_layer`` and token embeddings of rows start..L-1;
        idx: (B, L) every token so far. Returns (the structured term to add to h or None, Arcs)."""
        start = idx.size(1) - h.size(1)
        hn = self.ln(h)
        blocked = self.blocked(idx, start, eos_id)  # (B, Tn, L)
        dist = self.distance_scores(start, idx.size(1), h.device)  # (Tn, L)
        has_cand = ~blocked.all(dim=-1)  # (B, Tn)
        M, P, g = self.parser(hn, dist, blocked, has_cand, self.w_gate, cache, gold_M)
        if self.zero_gate:
            M = torch.zeros_like(M)
        M = M.to(h.dtype)
        log_M = torch.log(M + self.cfg.bias_eps).unsqueeze(1) if self.bias_form else None
        arcs = Arcs(M, log_M, P * has_cand.unsqueeze(-1) if need_P else None, g, has_cand)
        if self.w_struct is None:
            return None, arcs
        tok_all = cache_append(cache, "tok", tok_emb) if cache is not None else tok_emb  # (B, L, C)
        return self.w_struct(causal_matmul_add(None, M, tok_all)), arcs  # W_s (M e): copies of attached words
