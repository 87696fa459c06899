"""The dependency encoder (DESIGN 3.2): a causal soft parser giving, for every position i,

- P_i: a distribution over candidate earlier word positions j (never position 0, the
  beginning-of-sequence token; never i itself for ``target=self``), and
- g_i in (0, 1): a gate, the probability that there is a left arc at all (0 where no candidate exists),

so that M = g * P (B, T, T) is a soft left-arc matrix. ``target=next`` reads row i as "where does
token i+1 attach among the words up to and including i" -- what a causal state at i is trained to
predict (DESIGN 3.5) -- so the diagonal is then a candidate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class DepEncConfig:
    enabled: bool = False
    parser: str = "biaffine"  # biaffine | distance (content-free) | frontier (stick-breaking openness) | oracle
    target: str = "next"  # self | next
    parser_layer: int = 1  # read the output of this many blocks (0 = embeddings through a causal conv)
    d_dep: int = 64  # biaffine projection width
    n_distance_buckets: int = 16
    recency_prior: bool = True  # distance term initialised to -log(distance)
    freeze_parser: bool = False  # parser weights not trained (with parser=distance: P frozen at the prior)
    within_document: bool = True  # candidates only after the latest <eos> (no arcs into previous documents)
    exclude_ids: list[int] = field(default_factory=list)  # token ids never chosen as heads (e.g. '.')
    structured_encoding: bool = True  # h_i += W_s (g_i sum_j P_ij e_j)
    second_order: bool = False  # ... + W_s (M^2 e): grand-parents
    dep_attention: bool = True  # dependency-weighted attention in blocks above the encoder
    attention: str = "mix"  # mix | bias
    hops: int = 1  # mix: components M^1 .. M^hops
    gamma_init: float = -2.0  # mix: initial logit of each M^k component (sigmoid(-2) = 0.12)
    beta_init: float = 0.0  # bias: initial weight of log(M + eps)
    bias_eps: float = 1e-2
    gate_init: float = 0.0  # gate bias at init (sigmoid(0) = 0.5)
    zero_gate: bool = False  # inference-time ablation: M = 0
    zero_lambda: bool = False  # inference-time ablation: no dependency-weighted attention

    @classmethod
    def from_dict(cls, d: dict) -> "DepEncConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: (list(v) if k == "exclude_ids" else v) for k, v in dict(d).items() if k in known})


def alibi_slopes(n_head: int) -> torch.Tensor:
    """Geometric head slopes 2^(-8 h / H) (Press et al.), one recency strength per head."""
    return torch.tensor([2 ** (-8 * (h + 1) / n_head) for h in range(n_head)])


def distance_bucket(dist: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """Distances >= 1 to buckets: 1..8 exact, then log-spaced, the last bucket open-ended."""
    exact = 8
    d = dist.clamp(min=1).float()
    log_b = exact + (torch.log(d / exact) / math.log(2) * 2).floor().long()  # two buckets per doubling
    b = torch.where(d <= exact, d.long() - 1, log_b)
    return b.clamp(max=n_buckets - 1)


def bucket_representative(n_buckets: int) -> torch.Tensor:
    """A typical distance of each bucket (for the recency prior)."""
    d = torch.arange(1, 4096)
    b = distance_bucket(d, n_buckets)
    return torch.stack([d[b == i].float().min() if (b == i).any() else torch.tensor(4096.0) for i in range(n_buckets)])


class DependencyEncoder(nn.Module):
    def __init__(self, n_embd: int, block_size: int, cfg: DepEncConfig, bias: bool = True):
        super().__init__()
        self.cfg = cfg
        self.ln = nn.LayerNorm(n_embd, bias=bias)
        if cfg.parser_layer == 0:  # local context for a parser that reads embeddings
            self.conv = nn.Conv1d(n_embd, n_embd, kernel_size=3, groups=n_embd, bias=bias)
        if cfg.parser in ("biaffine", "frontier"):
            self.w_head = nn.Linear(n_embd, cfg.d_dep, bias=False)  # W_a: the attaching token
            self.w_dep = nn.Linear(n_embd, cfg.d_dep, bias=False)  # W_b: the candidate head
        if cfg.parser == "frontier":
            self.w_close = nn.Linear(n_embd, 1, bias=True)  # boundary strength: token m closes what precedes it
        self.distance_bias = nn.Parameter(torch.zeros(cfg.n_distance_buckets))
        self.w_gate = nn.Linear(n_embd, 1, bias=True)
        self.w_struct = nn.Linear(n_embd, n_embd, bias=False) if cfg.structured_encoding else None
        self.register_buffer("bucket_dist", bucket_representative(cfg.n_distance_buckets), persistent=False)

    def init_weights(self) -> None:
        for lin in (getattr(self, "w_head", None), getattr(self, "w_dep", None)):
            if lin is not None:
                nn.init.normal_(lin.weight, std=0.02)
        with torch.no_grad():
            prior = -torch.log(self.bucket_dist) if self.cfg.recency_prior else torch.zeros_like(self.bucket_dist)
            self.distance_bias.copy_(prior)
            nn.init.zeros_(self.w_gate.weight)
            nn.init.constant_(self.w_gate.bias, self.cfg.gate_init)
            if hasattr(self, "w_close"):
                nn.init.zeros_(self.w_close.weight)
                nn.init.constant_(self.w_close.bias, -4.0)  # start nearly "all open"
            if hasattr(self, "conv"):
                nn.init.zeros_(self.conv.weight)
                if self.conv.bias is not None:
                    nn.init.zeros_(self.conv.bias)
        if self.w_struct is not None:
            nn.init.zeros_(self.w_struct.weight)  # starts as the plain backbone
        if self.cfg.freeze_parser:
            for name, p in self.named_parameters():
                if not (name.startswith("w_struct") or name.startswith("w_gate")):
                    p.requires_grad_(False)

    def candidate_mask(self, idx: torch.Tensor, eos_id: int = 0) -> torch.Tensor:
        """(B, T, T) bool: may row i pick word j? Causal by construction (j <= i)."""
        B, T = idx.shape
        i = torch.arange(T, device=idx.device).view(-1, 1)
        j = torch.arange(T, device=idx.device).view(1, -1)
        allowed = (j <= i) if self.cfg.target == "next" else (j < i)
        allowed = (allowed & (j >= 1)).unsqueeze(0).expand(B, T, T)  # never the BOS position
        is_eos = idx == eos_id  # (B, T)
        allowed = allowed & ~is_eos.unsqueeze(1)  # <eos> is a boundary, never a head
        for tok in self.cfg.exclude_ids:
            allowed = allowed & (idx != tok).unsqueeze(1)
        if self.cfg.within_document:
            # index of the latest <eos> at or before i; candidates must come after it
            pos = torch.arange(T, device=idx.device).expand(B, T)
            last_eos = torch.where(is_eos, pos, torch.full_like(pos, -1)).cummax(dim=1).values  # (B, T)
            allowed = allowed & (j.unsqueeze(0) > last_eos.unsqueeze(2))
        return allowed

    def forward(self, h, idx, tok_emb, gold_M=None, from_embeddings=False, eos_id: int = 0) -> dict:
        """h: (B, T, C) states of block ``parser_layer``; idx: (B, T); tok_emb: (B, T, C) token embeddings.
        Returns P, g, M (B, T, T / B, T), the structured term to add to h, and what attention needs."""
        cfg = self.cfg
        B, T, C = h.shape
        if from_embeddings and hasattr(self, "conv"):
            h = h + self.conv(F.pad(h.transpose(1, 2), (2, 0))).transpose(1, 2)  # causal: pad left only
        hn = self.ln(h)
        allowed = self.candidate_mask(idx, eos_id)  # (B, T, T)
        has_cand = allowed.any(dim=-1)  # (B, T)
        if cfg.parser == "oracle":
            if gold_M is None:
                raise ValueError("depenc.parser=oracle needs gold arcs (gold_M) for every batch")
            M = gold_M.float() * allowed
            g = M.sum(-1).clamp(max=1.0)
            P = M / M.sum(-1, keepdim=True).clamp(min=1e-9)
        else:
            scores = self.arc_scores(hn)  # (B, T, T)
            scores = scores.masked_fill(~allowed, float("-inf"))
            P = torch.softmax(scores.float(), dim=-1).nan_to_num(0.0)  # rows without candidates -> 0
            g = torch.sigmoid(self.w_gate(hn).squeeze(-1).float()) * has_cand  # (B, T)
            M = g.unsqueeze(-1) * P  # (B, T, T)
        if cfg.zero_gate:
            M = torch.zeros_like(M)
        M = M.to(h.dtype)
        out = {"P": P, "g": g, "M": M, "has_cand": has_cand, "zero_lambda": cfg.zero_lambda}
        powers = [M]
        for _ in range(1, cfg.hops):
            powers.append(powers[-1] @ M)  # (B, T, T): k-step chains (grand-parents, ...)
        out["M_powers"] = powers
        if cfg.attention == "bias":
            out["log_M"] = torch.log(M + cfg.bias_eps).unsqueeze(1)  # (B, 1, T, T), built once per forward
        out["structured"] = None
        if self.w_struct is not None:
            ctx = M @ tok_emb  # (B, T, C): soft copy of the attached words
            if cfg.second_order:
                M2 = powers[1] if len(powers) > 1 else M @ M
                ctx = ctx + M2 @ tok_emb
            out["structured"] = self.w_struct(ctx)
        return out

    def arc_scores(self, hn: torch.Tensor) -> torch.Tensor:
        """(B, T, T) unnormalised arc scores s_ij (row i attaches to j)."""
        B, T, _ = hn.shape
        pos = torch.arange(T, device=hn.device)
        dist = pos.view(-1, 1) - pos.view(1, -1) + (1 if self.cfg.target == "next" else 0)  # arc length
        scores = self.distance_bias[distance_bucket(dist, self.cfg.n_distance_buckets)].unsqueeze(0)  # (1, T, T)
        if self.cfg.parser in ("biaffine", "frontier"):
            q = self.w_head(hn)  # (B, T, d)
            k = self.w_dep(hn)  # (B, T, d)
            scores = scores + q @ k.transpose(1, 2) / math.sqrt(self.cfg.d_dep)
        if self.cfg.parser == "frontier":
            # stick-breaking openness: j stays open for row i unless a token m in (j, i] closed it;
            # log P(open) = sum_{m=j+1..i} log(1 - b_m), computed with one cumulative sum (O(T^2)).
            log_open = F.logsigmoid(-self.w_close(hn).squeeze(-1))  # (B, T) log(1 - b_m)
            cum = log_open.cumsum(dim=1)  # (B, T)
            # next: the token to come attaches, so token i itself may have closed j (m in (j, i]);
            # self: token i attaches, only the tokens between matter (m in (j, i)).
            upto = cum if self.cfg.target == "next" else cum - log_open
            scores = scores + (upto.unsqueeze(2) - cum.unsqueeze(1))
        return scores.expand(hn.size(0), T, T) if scores.size(0) == 1 else scores


def encoder_diagnostics(dep: dict, target: str) -> dict[str, float]:
    """Scalars that tell whether the structure is used: parser entropy, gate, mass on the previous word."""
    P, g, has = dep["P"].float(), dep["g"].float(), dep["has_cand"]
    if not bool(has.any()):
        return {}
    ent = -(P * P.clamp(min=1e-12).log()).sum(-1)  # (B, T)
    # the word immediately before the attaching token: j = i - 1 (self) or j = i (next)
    off = 0 if target == "next" else -1
    prev = torch.diagonal(P, offset=off, dim1=1, dim2=2)  # (B, T) or (B, T-1)
    prev_has = has if target == "next" else has[:, 1:]
    return {
        "parser_entropy": ent[has].mean().item(),
        "gate_mean": g[has].mean().item(),
        "prev_word_mass": prev[prev_has].mean().item(),
    }
