"""Causal self-attention: the plain form and the two dependency-weighted forms (DESIGN 3.3). Attention
with an additive bias goes through one backend of :mod:`depenc.kernels`, chosen when the model is built
(``attention_impl``).

Every form attends query rows ``start..L-1`` to key positions ``0..L-1``: training is the square case
(start 0), cached decoding the new rows only; the keys and values of earlier rows come from the cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from depenc.kernels import BIASED_BACKENDS, causal_matmul_add
from depenc.schema import ModelConfig


@dataclass
class AttnContext:
    """What every block's attention needs about the positions of one forward pass, built once per pass:
    query rows start..L-1 against keys 0..L-1."""

    start: int
    L: int
    device: torch.device
    pos_bias: torch.Tensor | None = None  # (1, H, Tn, L) ALiBi + causal, or None (learned positions)
    need_weights: bool = False  # return the (B, H, Tn, L) attention probabilities (analysis)
    _causal: torch.Tensor | None = None

    def causal_mask(self) -> torch.Tensor:
        """(Tn, L) additive causal mask: 0 on and below the diagonal, -inf above (built once)."""
        if self._causal is None:
            self._causal = torch.full((self.L - self.start, self.L), float("-inf"), device=self.device).triu(self.start + 1)
        return self._causal


def explicit_attention(q, k, v, bias):
    """(out (B, H, Tn, D), probabilities (B, H, Tn, L)), materialised; ``bias`` holds the causal mask."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1)) + bias  # (B, H, Tn, L)
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


def resolve_attention_impl(cfg: ModelConfig) -> str:
    """auto: by device at call time (FlexAttention on CUDA, lean on CPU), SDPA with dropout (neither of the
    other two has attention dropout)."""
    if cfg.attention_impl != "auto":
        return cfg.attention_impl
    return "sdpa" if cfg.dropout > 0 else "auto"


class CausalSelfAttention(nn.Module):
    """Plain causal attention (the baseline's, and DepEnc's below its encoder)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.biased = BIASED_BACKENDS[resolve_attention_impl(cfg)]

    def forward(self, x, ctx: AttnContext, arcs=None, cache: dict | None = None):
        """x: (B, Tn, C) rows start..L-1. ``cache``: this layer's keys and values of earlier rows
        (updated in place). Returns (out (B, Tn, C), probabilities (B, H, Tn, L) or None)."""
        B, Tn, C = x.shape
        H = self.n_head
        q, k, v = (t.view(B, Tn, H, C // H).transpose(1, 2) for t in self.c_attn(x).split(C, dim=2))  # (B, H, Tn, D)
        if cache is not None:
            k, v = cache_append(cache, "k", k, dim=2), cache_append(cache, "v", v, dim=2)  # (B, H, L, D)
        y, weights = self.attend(q, k, v, ctx, arcs)
        y = self.add_structure(y.transpose(1, 2).reshape(B, Tn, C), v, arcs)
        return self.resid_dropout(self.c_proj(y)), weights

    def attend(self, q, k, v, ctx: AttnContext, arcs, beta=None, log_M=None):
        """(B, H, Tn, D) causal attention, + ALiBi, + beta_h log_M where given, and the probabilities
        (B, H, Tn, L) when ``ctx.need_weights``."""
        drop = self.dropout if self.training else 0.0
        base = ctx.pos_bias if ctx.pos_bias is not None or log_M is None else ctx.causal_mask()
        if ctx.need_weights:
            bias = base if base is not None else ctx.causal_mask()
            return explicit_attention(q, k, v, bias if log_M is None else torch.addcmul(bias, beta.view(1, -1, 1, 1), log_M))
        Tn, L = q.size(2), k.size(2)
        if base is None and (Tn == L or Tn == 1):  # plain causal: fused kernels (one new row sees every key)
            return F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=Tn == L), None
        return self.biased(q, k, v, base if base is not None else ctx.causal_mask(), beta, log_M, drop), None

    def add_structure(self, y, v, arcs):
        return y  # (B, Tn, C)


class DepBiasAttention(CausalSelfAttention):
    """Bias form: logits + beta_h log(M + eps), beta_h per head (DESIGN 3.3)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.dep_beta = nn.Parameter(torch.full((cfg.n_head,), cfg.depenc.beta_init))

    def attend(self, q, k, v, ctx, arcs, beta=None, log_M=None):
        if arcs is None:  # the zero_lambda ablation
            return super().attend(q, k, v, ctx, None)
        return super().attend(q, k, v, ctx, arcs, self.dep_beta, arcs.log_M)


class DepMixAttention(CausalSelfAttention):
    """Mix form: (1 - lam_h) causal attention + lam_h M V_h, lam_h = sigmoid(gamma_h) (DESIGN 3.3)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.dep_gamma = nn.Parameter(torch.full((cfg.n_head,), cfg.depenc.gamma_init))

    def mix_weights(self) -> torch.Tensor:
        """(H, 2): weight of the content path, then of M (softmax over the logits (0, gamma_h))."""
        return torch.stack([torch.zeros_like(self.dep_gamma), self.dep_gamma], dim=1).softmax(dim=-1)

    def attend(self, q, k, v, ctx, arcs, beta=None, log_M=None):
        if arcs is not None:  # the content path's weight folded into V (attention is linear in V)
            v = v * self.mix_weights()[:, 0].view(1, -1, 1, 1)
        return super().attend(q, k, v, ctx, arcs)

    def add_structure(self, y, v, arcs):
        if arcs is None:
            return y
        B, H, L, D = v.shape
        v_dep = (v * self.mix_weights()[:, 1].view(1, H, 1, 1)).transpose(1, 2).reshape(B, L, H * D)  # (B, L, C)
        return causal_matmul_add(y, arcs.M, v_dep)  # y + M @ lam V, all heads in one product


class DepGateAttention(CausalSelfAttention):
    """Gate form, an information bottleneck (UDGN, Shen et al. 2022): the causal attention probabilities
    multiplied by the induced structure and *not* renormalised, out_i = sum_j A_ij S_ij v_j with
    S = I + R, R[i, j] = token i's soft arc to the earlier word j (head or left dependent: M's row i
    for target=self, row i-1 for target=next). A token sees only itself and its relatives above the
    encoder; the attention mass it loses is the price of a wrong parse. Materialises (B, H, Tn, L);
    no KV cache (generation recomputes)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.target_self = cfg.depenc.target == "self"

    def attend(self, q, k, v, ctx, arcs, beta=None, log_M=None):
        if arcs is None:  # the zero_lambda ablation: plain attention
            return super().attend(q, k, v, ctx, None)
        bias = ctx.pos_bias if ctx.pos_bias is not None else ctx.causal_mask()
        _, A = explicit_attention(q, k, v, bias)  # (B, H, Tn, L)
        S = structure_of(arcs.M, self.target_self, ctx.start)  # (B, Tn, L)
        weights = A * S.unsqueeze(1).to(A.dtype)  # (B, H, Tn, L), rows sum to <= 1
        return weights @ v, (weights if ctx.need_weights else None)


def structure_of(M: torch.Tensor, target_self: bool, start: int = 0) -> torch.Tensor:
    """(B, Tn, L) S = I + R of :class:`DepGateAttention` from M (B, Tn, L), rows start..L-1."""
    B, Tn, L = M.shape
    if start != 0 and not target_self:
        raise ValueError("attention=gate with target=next needs the full sequence (no KV cache)")
    R = M if target_self else torch.cat([M.new_zeros(B, 1, L), M[:, :-1]], dim=1)  # row i <- row i-1
    eye = torch.arange(start, L, device=M.device).view(-1, 1) == torch.arange(L, device=M.device).view(1, -1)  # (Tn, L)
    return (R + eye.to(M.dtype)).clamp(max=1.0)


def cache_append(cache: dict, name: str, value: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Append ``value`` along ``dim`` to ``cache[name]``; return everything so far. Buffers of
    ``cache["capacity"]`` positions are allocated on first use; ``cache["start"]`` is where to write."""
    start = cache["start"]
    buf = cache.get(name)
    if buf is None:
        shape = list(value.shape)
        shape[dim] = cache["capacity"]
        buf = cache[name] = value.new_zeros(shape)
    buf.narrow(dim, start, value.size(dim)).copy_(value)
    return buf.narrow(dim, 0, start + value.size(dim))
