"""The shared decoder-only transformer (DESIGN 3.1), with the dependency encoder as a switch (3.2-3.3).

One config object, one attention function, explicit init. ``ModelConfig.depenc.enabled=False`` is the
baseline; switching it on adds a :class:`DependencyEncoder` after block ``parser_layer`` whose soft
left-arc matrix M feeds (a) the structured token encoding and (b) dependency-weighted attention in
every block above it. With both of those off, DepEnc computes exactly what the baseline computes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from depenc.models.depenc import DepEncConfig, DependencyEncoder, alibi_slopes


@dataclass
class ModelConfig:
    vocab_size: int = 256
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    mlp_hidden: int = 0  # 0 = 4 * n_embd; baseline_matched widens this
    dropout: float = 0.0
    bias: bool = True
    pos: str = "learned"  # learned | alibi (a recency prior for the baseline, DESIGN study issue)
    eos_id: int = 0
    depenc: DepEncConfig = field(default_factory=DepEncConfig)

    @property
    def mlp_width(self) -> int:
        return self.mlp_hidden or 4 * self.n_embd

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        dep = d.pop("depenc", {}) or {}
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
        return cls(**d, depenc=dep if isinstance(dep, DepEncConfig) else DepEncConfig.from_dict(dep))

    def to_dict(self) -> dict:
        return asdict(self)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None = None,
    need_weights: bool = False,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal attention. q, k, v: (B, H, T, D). ``bias``: additive (B|1, H|1, T, T) that already
    contains the causal mask (-inf above the diagonal); None uses the fused ``is_causal`` kernel.
    Returns (out (B, H, T, D), weights (B, H, T, T) or None). Weights are only materialised on request."""
    if need_weights:
        T, S = q.size(-2), k.size(-2)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, H, T, S)
        if bias is None:
            causal = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
            scores = scores.masked_fill(~causal, float("-inf"))
        else:
            scores = scores + bias
        weights = scores.softmax(dim=-1)
        return weights @ v, weights
    if bias is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True), None
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout_p), None


def causal_mask_bias(T: int, device, dtype=torch.float32) -> torch.Tensor:
    """(T, T) additive mask: 0 on and below the diagonal, -inf above."""
    return torch.full((T, T), float("-inf"), device=device, dtype=dtype).triu(1)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, dep_weighted: bool):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)
        dep = cfg.depenc
        self.dep_mode = dep.attention if dep_weighted else None
        if self.dep_mode == "mix":
            # per head and hop: mixture logit against the content path (logit 0); sigmoid(gamma) for 1 hop
            self.dep_gamma = nn.Parameter(torch.full((cfg.n_head, dep.hops), dep.gamma_init))
        elif self.dep_mode == "bias":
            self.dep_beta = nn.Parameter(torch.full((cfg.n_head,), dep.beta_init))

    def mix_weights(self) -> torch.Tensor:
        """(H, 1 + hops): weight of the content path, then of M^1 .. M^K."""
        logits = torch.cat([torch.zeros_like(self.dep_gamma[:, :1]), self.dep_gamma], dim=1)
        return logits.softmax(dim=-1)

    def forward(self, x, dep=None, pos_bias=None, need_weights=False):
        """x: (B, T, C). dep: dict from the encoder (``M_powers`` list of (B, T, T), ``log_M`` (B, 1, T, T)).
        pos_bias: (1, H, T, T) additive causal bias (ALiBi) or None."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        bias = pos_bias
        use_dep = dep is not None and self.dep_mode is not None and not dep.get("zero_lambda", False)
        if use_dep and self.dep_mode == "bias":
            dep_bias = self.dep_beta.view(1, -1, 1, 1) * dep["log_M"]  # (B, H, T, T)
            bias = (bias if bias is not None else causal_mask_bias(T, x.device)) + dep_bias
        drop = self.dropout if self.training else 0.0
        y, weights = attention(q, k, v, bias=bias, need_weights=need_weights, dropout_p=drop)  # (B, H, T, D)
        if use_dep and self.dep_mode == "mix":
            w = self.mix_weights()  # (H, 1 + K)
            y = w[:, 0].view(1, -1, 1, 1) * y
            for hop, M_k in enumerate(dep["M_powers"], start=1):
                dep_out = M_k.unsqueeze(1).to(v.dtype) @ v  # (B, 1, T, T) @ (B, H, T, D) -> (B, H, T, D)
                y = y + w[:, hop].view(1, -1, 1, 1) * dep_out
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y)), weights


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, cfg.mlp_width, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.mlp_width, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, dep_weighted: bool = False):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg, dep_weighted)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, dep=None, pos_bias=None, need_weights=False):
        a, weights = self.attn(self.ln_1(x), dep=dep, pos_bias=pos_bias, need_weights=need_weights)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, weights


class Transformer(nn.Module):
    """Decoder-only pre-LayerNorm transformer; DepEnc when ``cfg.depenc.enabled``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        dep = cfg.depenc
        self.depenc_on = dep.enabled
        k = dep.parser_layer
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            Block(cfg, dep_weighted=dep.enabled and dep.dep_attention and i >= k) for i in range(cfg.n_layer)
        )
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        self.encoder = DependencyEncoder(cfg.n_embd, cfg.block_size, dep, cfg.bias) if dep.enabled else None
        if cfg.pos == "alibi":
            self.register_buffer("alibi_slopes", alibi_slopes(cfg.n_head), persistent=False)
        self.init_weights()

    # ---- init -------------------------------------------------------------------------------
    def init_weights(self) -> None:
        """nanoGPT/GPT-2 init: N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layer)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.cfg.n_layer))
        if self.encoder is not None:
            self.encoder.init_weights()  # its own, explicit (W_s = 0, gate, distance prior)

    def num_params(self, exclude_positions: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_positions and self.wpe is not None:
            n -= self.wpe.weight.numel()
        return n

    def encoder_parameter_names(self) -> set[str]:
        """Parameters that belong to dependency encoding (own learning rate in the optimizer)."""
        names = {f"encoder.{n}" for n, _ in self.encoder.named_parameters()} if self.encoder is not None else set()
        names |= {n for n, _ in self.named_parameters() if ".dep_gamma" in n or ".dep_beta" in n}
        return names

    # ---- forward ----------------------------------------------------------------------------
    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        need_weights: bool = False,
        return_analysis: bool = False,
        gold_M: torch.Tensor | None = None,
    ) -> dict:
        """idx: (B, T) token ids. targets: (B, T) with -100 = ignore. ``gold_M``: (B, T, T) oracle
        arcs (``depenc.parser=oracle``). Returns dict(logits, loss, attn (list of (B, H, T, T)),
        dep (encoder outputs: P, g, M)) -- the last two only when asked."""
        B, T = idx.shape
        if T > self.cfg.block_size:
            raise ValueError(f"sequence length {T} exceeds model.block_size={self.cfg.block_size}")
        tok = self.wte(idx)  # (B, T, C)
        x = tok if self.wpe is None else tok + self.wpe(torch.arange(T, device=idx.device))
        x = self.drop(x)
        pos_bias = self._alibi_bias(T, idx.device) if self.cfg.pos == "alibi" else None
        attn_maps: list[torch.Tensor] = []
        dep = None
        k = self.cfg.depenc.parser_layer if self.encoder is not None else -1
        for i, block in enumerate(self.blocks):
            if i == k:
                dep = self.encoder(x, idx, tok, gold_M=gold_M, from_embeddings=(k == 0), eos_id=self.cfg.eos_id)
                x = x + dep["structured"] if dep["structured"] is not None else x
            x, w = block(x, dep=dep, pos_bias=pos_bias, need_weights=need_weights)
            if need_weights:
                attn_maps.append(w)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        out = {"logits": logits, "loss": None}
        if targets is not None:
            out["loss"] = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-100)
        if need_weights:
            out["attn"] = attn_maps
        if return_analysis and dep is not None:
            out["dep"] = {key: dep[key] for key in ("P", "g", "M", "has_cand")}
        return out

    def _alibi_bias(self, T: int, device) -> torch.Tensor:
        pos = torch.arange(T, device=device)
        dist = (pos.view(-1, 1) - pos.view(1, -1)).clamp(min=0).float()  # (T, T) i - j
        bias = -self.alibi_slopes.view(-1, 1, 1) * dist  # (H, T, T)
        return (bias + causal_mask_bias(T, device)).unsqueeze(0)  # (1, H, T, T)

    # ---- generation -------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Ancestral sampling from prompt idx (B, T0). Rows that produced ``eos_id`` stop (padded with
        eos). Returns (B, T0 + n) ids. Seeded through ``generator``."""
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            context = idx[:, -self.cfg.block_size :]
            logits = self(context)["logits"][:, -1, :]  # (B, V)
            next_id = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
            if eos_id is not None:
                next_id = torch.where(finished, torch.full_like(next_id, eos_id), next_id)
                finished |= next_id == eos_id
            idx = torch.cat([idx, next_id.unsqueeze(1)], dim=1)
            if eos_id is not None and bool(finished.all()):
                break
        return idx


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None) -> torch.Tensor:
    """One sampling step: logits (B, V) -> ids (B,). temperature 0 = greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cum - sorted_logits.softmax(dim=-1) >= top_p  # keep the smallest set reaching top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def matched_mlp_hidden(cfg: ModelConfig, target_params: int) -> int:
    """MLP width that brings the baseline with ``cfg``'s shape closest to ``target_params``."""
    base = ModelConfig.from_dict({**cfg.to_dict(), "depenc": {"enabled": False}})
    n_base = Transformer(base).num_params()
    per_unit = cfg.n_layer * (2 * cfg.n_embd + (1 if cfg.bias else 0))  # c_fc row + bias + c_proj column
    return base.mlp_width + round((target_params - n_base) / per_unit)
