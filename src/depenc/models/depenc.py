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
        # bucket of every arc length 0..block_size (+1 for target=next), so no log/floor per forward
        self.register_buffer("bucket_of_len", distance_bucket(torch.arange(block_size + 2), cfg.n_distance_buckets),
                             persistent=False)

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
        return ~self._blocked(idx, 0, eos_id)

    # The encoder works on a block of rows ``start .. L-1`` against the columns ``0 .. L-1``: the full
    # forward is rows 0..T-1; cached decoding (``forward_cached``) is the new rows only. One code path
    # for both keeps them equal. The static (T x T) parts (causality, arc lengths) are built at (T, T)
    # size, never (B, T, T); the only (B, T, T) work is the mask, the scores, one softmax and M.
    def _blocked(self, idx: torch.Tensor, start: int, eos_id: int) -> torch.Tensor:
        """(B, L - start, L) bool, True where row i may NOT pick word j, for rows ``start..L-1`` of ``idx``
        (B, L) over columns 0..L-1 (the complement of the candidate mask, built directly: the scores are
        masked in place with it)."""
        B, L = idx.shape
        i = torch.arange(start, L, device=idx.device).view(-1, 1)
        j = torch.arange(L, device=idx.device).view(1, -1)
        static = ((j > i) if self.cfg.target == "next" else (j >= i)) | (j < 1)  # (Tn, L): causal, never BOS
        is_eos = idx == eos_id  # <eos> is a boundary, never a head
        col_bad = is_eos
        for tok in self.cfg.exclude_ids:
            col_bad = col_bad | (idx == tok)
        blocked = static.unsqueeze(0) | col_bad.unsqueeze(1)  # (B, Tn, L)
        if self.cfg.within_document:
            # index of the latest <eos> at or before i; candidates must come after it
            pos = torch.arange(L, device=idx.device).expand(B, L)
            last_eos = torch.where(is_eos, pos, -1).cummax(dim=1).values[:, start:]  # (B, Tn)
            blocked = blocked | (j.unsqueeze(0) <= last_eos.unsqueeze(2))
        return blocked

    def _distance_scores(self, start: int, L: int, device) -> torch.Tensor:
        """(Tn, L) distance term r(bucket(arc length)) for rows start..L-1 (arc length clamped to >= 1)."""
        i = torch.arange(start, L, device=device).view(-1, 1)
        j = torch.arange(L, device=device).view(1, -1)
        arc = (i - j + (1 if self.cfg.target == "next" else 0)).clamp(0, self.bucket_of_len.numel() - 1)
        return self.distance_bias[self.bucket_of_len[arc]]

    def _row_scores(self, hn_rows: torch.Tensor, keys: torch.Tensor | None, start: int,
                    cum: torch.Tensor | None = None, log_open_rows: torch.Tensor | None = None) -> torch.Tensor:
        """(B, Tn, L) arc scores of rows start..L-1. keys: (B, L, d_dep) w_dep projections of all positions;
        cum: (B, L) cumulative log-openness (frontier); log_open_rows: (B, Tn) the rows' own log(1 - b)."""
        B, Tn, _ = hn_rows.shape
        L = start + Tn
        dist = self._distance_scores(start, L, hn_rows.device)  # (Tn, L)
        if self.cfg.parser not in ("biaffine", "frontier"):
            return dist.unsqueeze(0).expand(B, Tn, L).clone()  # a fresh tensor: _parse_rows masks it in place
        q = self.w_head(hn_rows)  # (B, Tn, d)
        scale = 1.0 / math.sqrt(self.cfg.d_dep)
        if q.dtype == torch.float32 and not torch.is_autocast_enabled(q.device.type):
            scores = torch.baddbmm(dist, q, keys.transpose(1, 2), alpha=scale)  # bias + q k^T in one kernel
        else:  # low precision: keep the distance term and the sum in float32 (a fresh float32 tensor)
            scores = (q @ keys.transpose(1, 2)).float() * scale + dist
        if self.cfg.parser == "frontier":
            # stick-breaking openness: j stays open for row i unless a token m in (j, i] closed it;
            # log P(open) = sum_{m=j+1..i} log(1 - b_m), computed with one cumulative sum (O(T^2)).
            # next: the token to come attaches, so token i itself may have closed j (m in (j, i]);
            # self: token i attaches, only the tokens between matter (m in (j, i)).
            upto = cum[:, start:] if self.cfg.target == "next" else cum[:, start:] - log_open_rows
            scores = scores + (upto.unsqueeze(2) - cum.unsqueeze(1))
        return scores

    def _parse_rows(self, scores: torch.Tensor, blocked: torch.Tensor, hn_rows: torch.Tensor, need_P: bool):
        """P (or None), g, M, has_cand for a block of rows from their (fresh, float32) scores, which are
        masked in place, and the mask of blocked candidates."""
        has_cand = ~blocked.all(dim=-1)  # (B, Tn)
        # a finite fill instead of -inf: rows without candidates give a finite (uniform) softmax that
        # g = 0 removes from M, so no nan_to_num pass is needed (exp(min - max) is exactly 0 elsewhere)
        P_raw = torch.softmax(scores.masked_fill_(blocked, torch.finfo(torch.float32).min), dim=-1)
        g = torch.sigmoid(self.w_gate(hn_rows).squeeze(-1).float()) * has_cand  # (B, Tn)
        M = g.unsqueeze(-1) * P_raw
        P = P_raw * has_cand.unsqueeze(-1) if need_P else None  # rows without candidates -> 0
        return P, g, M, has_cand

    def _frontier_log_open(self, hn: torch.Tensor) -> torch.Tensor:
        return F.logsigmoid(-self.w_close(hn).squeeze(-1))  # (B, T) log(1 - b_m)

    def forward(self, h, idx, tok_emb, gold_M=None, from_embeddings=False, eos_id: int = 0,
                need_analysis: bool = True) -> dict:
        """h: (B, T, C) states of block ``parser_layer``; idx: (B, T); tok_emb: (B, T, C) token embeddings.
        Returns P, g, M (B, T, T / B, T), the structured term to add to h, and what attention needs.
        ``need_analysis=False`` skips building P (None then), which only analysis reads."""
        cfg = self.cfg
        B, T, C = h.shape
        if from_embeddings and hasattr(self, "conv"):
            h = h + self.conv(F.pad(h.transpose(1, 2), (2, 0))).transpose(1, 2)  # causal: pad left only
        hn = self.ln(h)
        blocked = self._blocked(idx, 0, eos_id)  # (B, T, T)
        if cfg.parser == "oracle":
            if gold_M is None:
                raise ValueError("depenc.parser=oracle needs gold arcs (gold_M) for every batch")
            allowed = ~blocked
            has_cand = allowed.any(dim=-1)
            M = gold_M.float() * allowed
            g = M.sum(-1).clamp(max=1.0)
            P = M / M.sum(-1, keepdim=True).clamp(min=1e-9)
        else:
            keys = self.w_dep(hn) if cfg.parser in ("biaffine", "frontier") else None
            cum = log_open = None
            if cfg.parser == "frontier":
                log_open = self._frontier_log_open(hn)
                cum = log_open.cumsum(dim=1)
            scores = self._row_scores(hn, keys, 0, cum, log_open)
            P, g, M, has_cand = self._parse_rows(scores, blocked, hn, need_analysis)
        return self._outputs(P, g, M, has_cand, h.dtype, tok_emb)

    def _outputs(self, P, g, M, has_cand, dtype, tok_emb, M_all=None) -> dict:
        """The encoder's outputs from (rows of) M: powers, log M for the bias form, the structured term.
        ``M_all``: every row of M so far (cached decoding, M holds the new rows only); None = M itself."""
        cfg = self.cfg
        if cfg.zero_gate:
            M = torch.zeros_like(M)
        M = M.to(dtype)
        full = M if M_all is None else M_all

        def times_M(X):  # X @ M over all positions (X: rows of a power of M)
            return X @ full

        out = {"P": P, "g": g, "M": M, "has_cand": has_cand, "zero_lambda": cfg.zero_lambda}
        powers = [M]
        for _ in range(1, cfg.hops):
            powers.append(times_M(powers[-1]))  # (B, T, T): k-step chains (grand-parents, ...)
        out["M_powers"] = powers
        if cfg.attention == "bias":
            out["log_M"] = torch.log(M + cfg.bias_eps).unsqueeze(1)  # (B, 1, T, T), built once per forward
        out["structured"] = None
        if self.w_struct is not None:
            ctx = causal_matmul_add(None, M, tok_emb)  # (B, T, C): soft copy of the attached words
            if cfg.second_order:
                M2 = powers[1] if len(powers) > 1 else times_M(M)
                ctx = causal_matmul_add(ctx, M2, tok_emb)
            out["structured"] = self.w_struct(ctx)
        return out

    def arc_scores(self, hn: torch.Tensor) -> torch.Tensor:
        """(B, T, T) unnormalised arc scores s_ij (row i attaches to j)."""
        keys = self.w_dep(hn) if self.cfg.parser in ("biaffine", "frontier") else None
        cum = log_open = None
        if self.cfg.parser == "frontier":
            log_open = self._frontier_log_open(hn)
            cum = log_open.cumsum(dim=1)
        return self._row_scores(hn, keys, 0, cum, log_open)

    # ---- incremental decoding ---------------------------------------------------------------
    def forward_cached(self, h, idx_all, tok_emb, state: dict, start: int, capacity: int,
                       from_embeddings: bool = False, eos_id: int = 0) -> dict:
        """Rows ``start..L-1`` (L = start + Tn) of what :meth:`forward` gives for the whole sequence.
        h, tok_emb: (B, Tn, C) the new positions; idx_all: (B, L) every token so far; ``state`` holds
        what earlier positions left (w_dep keys, token embeddings, frontier sums, conv inputs, the rows
        of M) in buffers of ``capacity`` positions, and is updated. Outputs hold the new rows only."""
        cfg = self.cfg
        if cfg.parser == "oracle":
            raise ValueError("depenc.parser=oracle needs gold arcs (gold_M) for every batch")
        B, Tn, C = h.shape
        L = start + Tn
        if from_embeddings and hasattr(self, "conv"):
            h_all = cache_write(state, "h_in", h, start, capacity)  # raw inputs: the conv looks 2 back
            lo = max(0, start - 2)
            window = F.pad(h_all[:, lo:L].transpose(1, 2), (2 - (start - lo), 0))
            h = h + self.conv(window).transpose(1, 2)
        hn = self.ln(h)
        keys = cum = log_open = None
        if cfg.parser in ("biaffine", "frontier"):
            keys = cache_write(state, "keys", self.w_dep(hn), start, capacity)  # (B, L, d)
        if cfg.parser == "frontier":
            log_open = self._frontier_log_open(hn)  # (B, Tn)
            prev = state["cum"][:, start - 1 : start] if start > 0 else log_open.new_zeros(B, 1)
            cum = cache_write(state, "cum", prev + log_open.cumsum(dim=1), start, capacity)  # (B, L)
        blocked = self._blocked(idx_all, start, eos_id)  # (B, Tn, L)
        scores = self._row_scores(hn, keys, start, cum, log_open)
        P, g, M, has_cand = self._parse_rows(scores, blocked, hn, need_P=True)
        tok_all = cache_write(state, "tok", tok_emb, start, capacity) if self.w_struct is not None else None
        need_rows = cfg.hops > 1 or (cfg.second_order and self.w_struct is not None)
        M_all = None
        if need_rows:  # powers need every earlier row of M: M^k rows = M^{k-1} rows @ M
            M_store = M if not cfg.zero_gate else torch.zeros_like(M)
            M_all = cache_write_rows(state, "M", M_store.to(h.dtype), start, capacity)  # (B, L, L)
        out = self._outputs(P, g, M, has_cand, h.dtype, tok_all, M_all)
        return out


# causal_matmul_add on CPU: at most CAUSAL_BLOCKS row blocks (37.5% fewer flops with 4; more blocks save
# a little more but cost more kernel calls, which a busy machine punishes), each at least CAUSAL_CHUNK rows
CAUSAL_BLOCKS = 4
CAUSAL_CHUNK = 64


class _CausalMatmulAdd(torch.autograd.Function):
    """y + M @ X for a causal (lower-triangular) M, in row blocks of ``chunk``: block r only multiplies
    the columns up to its last row, so the blocks above the diagonal (zeros) are never multiplied; the
    backward does the same (its gradient for M is zero above the block diagonal, where M is zero)."""

    @staticmethod
    def forward(ctx, y, M, X, chunk):
        ctx.save_for_backward(M, X)
        ctx.chunk = chunk
        T = M.size(1)
        out = y.clone() if y is not None else X.new_zeros(X.size(0), T, X.size(2))
        for r0 in range(0, T, chunk):
            r1 = min(T, r0 + chunk)
            out[:, r0:r1].baddbmm_(M[:, r0:r1, :r1], X[:, :r1])
        return out

    @staticmethod
    def backward(ctx, grad):
        M, X = ctx.saved_tensors
        chunk, T = ctx.chunk, M.size(1)
        gM = torch.zeros_like(M) if ctx.needs_input_grad[1] else None
        gX = torch.empty_like(X) if ctx.needs_input_grad[2] else None
        for r0 in range(0, T, chunk):
            r1 = min(T, r0 + chunk)
            if gM is not None:  # rows r0..r1-1 of dM = dOut X^T, columns up to r1
                gM[:, r0:r1, :r1].baddbmm_(grad[:, r0:r1], X[:, :r1].transpose(1, 2))
            if gX is not None:  # columns r0..r1-1 of M meet the rows from r0 on: dX = M^T dOut
                torch.bmm(M[:, r0:, r0:r1].transpose(1, 2), grad[:, r0:], out=gX[:, r0:r1])
        return (grad if ctx.needs_input_grad[0] else None), gM, gX, None


def causal_matmul_add(y: torch.Tensor | None, M: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """y + M @ X (y None: M @ X) for M (B, R, T) and X (B, T, C). A square M is causal (zero above the
    diagonal): on CPU in float32 its blocks above the diagonal are skipped (37.5% fewer flops with 4 row
    blocks); elsewhere (GPU, autocast, T <= CAUSAL_CHUNK, the R < T new rows of cached decoding) one
    batched matmul."""
    T = M.size(1)
    if (M.device.type != "cpu" or T <= CAUSAL_CHUNK or M.size(2) != T or torch.is_autocast_enabled("cpu")
            or not (M.dtype == X.dtype == torch.float32 and (y is None or y.dtype == torch.float32))):
        return M @ X if y is None else torch.baddbmm(y, M.to(y.dtype), X.to(y.dtype))
    return _CausalMatmulAdd.apply(y, M, X, max(CAUSAL_CHUNK, -(-T // CAUSAL_BLOCKS)))


def cache_write(store: dict, name: str, value: torch.Tensor, start: int, capacity: int, dim: int = 1) -> torch.Tensor:
    """Write ``value`` at positions ``start..start+n-1`` along ``dim`` of the buffer ``store[name]``
    (allocated with ``capacity`` positions on first use); return the filled prefix (a view)."""
    buf = store.get(name)
    if buf is None:
        shape = list(value.shape)
        shape[dim] = capacity
        buf = store[name] = value.new_zeros(shape)
    n = value.size(dim)
    buf.narrow(dim, start, n).copy_(value)
    return buf.narrow(dim, 0, start + n)


def cache_write_rows(store: dict, name: str, rows: torch.Tensor, start: int, capacity: int) -> torch.Tensor:
    """Rows ``start..L-1`` (B, Tn, L) of a causal (B, capacity, capacity) matrix; returns its (B, L, L) part."""
    buf = store.get(name)
    if buf is None:
        buf = store[name] = rows.new_zeros(rows.size(0), capacity, capacity)
    L = rows.size(2)
    buf[:, start:L, :L].copy_(rows)
    return buf[:, :L, :L]


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
