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

from depenc.models.depenc import DepEncConfig, DependencyEncoder, alibi_slopes, cache_write, causal_matmul_add


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
    flex_attention: bool = False  # attention with an additive bias (depenc bias form, ALiBi) via FlexAttention (GPU training; CPU inference only)
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
    if bias is None and q.size(-2) != k.size(-2):  # queries are the last T of S positions (cached decoding)
        bias = causal_rows_bias(k.size(-2) - q.size(-2), k.size(-2), q.device)
    if bias is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True), None
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout_p), None


def causal_mask_bias(T: int, device, dtype=torch.float32) -> torch.Tensor:
    """(T, T) additive mask: 0 on and below the diagonal, -inf above."""
    return torch.full((T, T), float("-inf"), device=device, dtype=dtype).triu(1)


def causal_rows_bias(start: int, L: int, device, dtype=torch.float32) -> torch.Tensor:
    """(L - start, L) additive mask for query positions start..L-1 against key positions 0..L-1."""
    return torch.full((L - start, L), float("-inf"), device=device, dtype=dtype).triu(start + 1)


class _DepBiasAttention(torch.autograd.Function):
    """Causal attention with the dependency bias, softmax(q k^T / sqrt(d) + base + beta_h log_M) v, for
    CPU training in float32, where SDPA with a bias that needs a gradient falls back to its unfused math
    path (five (B, H, T, T) tensors per layer). Here: one (B, H, T, T) tensor is kept for the backward
    (the probabilities) and one more is made in it; the row sums of the softmax backward come from the
    outputs (rowsum(dP * P) = dy . y), and the gradients of beta and log_M are contractions, never
    materialised products. ``base``: (T, T) causal mask or (1, H, T, T) ALiBi + causal (no gradient)."""

    @staticmethod
    def forward(ctx, q, k, v, beta, log_M, base):
        B, H, T, D = q.shape
        scale = 1.0 / math.sqrt(D)
        q3, k3, v3 = (t.reshape(B * H, T, D) for t in (q, k, v))
        S = torch.addcmul(base, beta.view(1, H, 1, 1), log_M).view(B * H, T, T)  # bias, then the scores
        S.baddbmm_(q3, k3.transpose(1, 2), alpha=scale)
        P = torch.softmax(S, dim=-1)
        del S
        y = torch.bmm(P, v3)
        ctx.save_for_backward(q3, k3, v3, P, y, beta, log_M)
        ctx.dims = (B, H, T, D, scale)
        return y.view(B, H, T, D)

    @staticmethod
    def backward(ctx, dy):
        q3, k3, v3, P, y, beta, log_M = ctx.saved_tensors
        B, H, T, D, scale = ctx.dims
        dy3 = dy.reshape(B * H, T, D)
        dv = torch.bmm(P.transpose(1, 2), dy3)
        rows = (dy3 * y).sum(-1, keepdim=True)  # (BH, T, 1) = rowsum(dP * P)
        dS = torch.bmm(dy3, v3.transpose(1, 2)).sub_(rows).mul_(P)  # softmax backward, in place
        dq = torch.bmm(dS, k3).mul_(scale)
        dk = torch.bmm(dS.transpose(1, 2), q3).mul_(scale)
        dS4 = dS.view(B, H, T * T)
        d_beta = d_log_M = None
        if ctx.needs_input_grad[3]:  # sum over b, i, j of dS * log_M, per head
            d_beta = torch.bmm(dS4, log_M.reshape(B, T * T, 1)).sum(0).view(H)
        if ctx.needs_input_grad[4]:  # sum over heads of beta_h dS_h
            d_log_M = torch.bmm(beta.to(dS.dtype).view(1, 1, H).expand(B, 1, H), dS4).view(B, 1, T, T)
        return dq.view(B, H, T, D), dk.view(B, H, T, D), dv.view(B, H, T, D), d_beta, d_log_M, None


def dep_base_bias(pos_bias, dep: dict, T: int, device) -> torch.Tensor:
    """The additive causal bias the dependency term beta_h log(M + eps) is added to: ALiBi + causal if
    given, else the causal mask built once per forward (``dep["base_bias"]``), else a fresh one."""
    if pos_bias is not None:
        return pos_bias
    base = dep.get("base_bias")
    return base if base is not None else causal_mask_bias(T, device)


def dep_bias_attention(q, k, v, beta, log_M, base) -> torch.Tensor:
    """(B, H, T, D) causal attention with the dependency bias (see :class:`_DepBiasAttention`)."""
    return _DepBiasAttention.apply(q, k, v, beta, log_M, base)


_FLEX_ATTENTION = None


def flex_causal_attention(q, k, v, block_mask, pos_bias=None, beta=None, log_M=None) -> torch.Tensor:
    """Causal attention through FlexAttention (compiled), the additive terms as a score modifier instead
    of a materialised (B, H, T, T) bias: ``pos_bias`` (1, H, T, T) (ALiBi) and ``beta`` (H,) times
    ``log_M`` (B, 1, T, T) (the dependency bias form). ``block_mask``: the causal block mask."""
    global _FLEX_ATTENTION
    if _FLEX_ATTENTION is None:
        from torch.nn.attention.flex_attention import flex_attention

        _FLEX_ATTENTION = torch.compile(flex_attention, dynamic=False)
    log_M = log_M.squeeze(1) if log_M is not None else None

    def score_mod(score, b, h, q_idx, kv_idx):
        if pos_bias is not None:
            score = score + pos_bias[0, h, q_idx, kv_idx]
        if log_M is not None:
            score = score + beta[h] * log_M[b, q_idx, kv_idx]
        return score

    return _FLEX_ATTENTION(q, k, v, score_mod=score_mod, block_mask=block_mask)


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

    def forward(self, x, dep=None, pos_bias=None, need_weights=False, flex_mask=None):
        """x: (B, T, C). dep: dict from the encoder (``M_powers`` list of (B, T, T), ``log_M`` (B, 1, T, T),
        optionally ``base_bias`` (T, T) the causal mask built once per forward).
        pos_bias: (1, H, T, T) additive causal bias (ALiBi) or None. flex_mask: a causal FlexAttention
        block mask: attention that carries an additive bias then goes through FlexAttention."""
        B, T, C = x.shape
        H = self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)
        v_bthd = v.view(B, T, H, C // H)
        q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        bias = pos_bias
        use_dep = dep is not None and self.dep_mode is not None and not dep.get("zero_lambda", False)
        dep_bias = use_dep and self.dep_mode == "bias"
        mix = use_dep and self.dep_mode == "mix"
        drop = self.dropout if self.training else 0.0
        if mix:  # the content path's head weight folded into V (attention is linear in V)
            w = self.mix_weights()  # (H, 1 + K)
            v = (v_bthd * w[:, 0].view(1, 1, -1, 1)).transpose(1, 2)
        weights = None
        if flex_mask is not None and not need_weights and (bias is not None or dep_bias):
            y = flex_causal_attention(q, k, v, flex_mask, pos_bias=bias, beta=self.dep_beta if dep_bias else None,
                                      log_M=dep["log_M"] if dep_bias else None)
        elif (dep_bias and not need_weights and drop == 0.0 and x.device.type == "cpu" and q.dtype == torch.float32
              and dep["log_M"].dtype == torch.float32 and not torch.is_autocast_enabled("cpu")):
            base = dep_base_bias(bias, dep, T, x.device)
            y = dep_bias_attention(q, k, v, self.dep_beta, dep["log_M"], base)  # CPU training: lean unfused path
        else:
            if dep_bias:  # causal (+ ALiBi) + beta_h log(M + eps): one (B, H, T, T) kernel per layer
                base = dep_base_bias(bias, dep, T, x.device)
                bias = torch.addcmul(base, self.dep_beta.view(1, -1, 1, 1), dep["log_M"])
            y, weights = attention(q, k, v, bias=bias, need_weights=need_weights, dropout_p=drop)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, C)
        if mix:  # + sum_k lam_hk M^k V_h for all heads at once: (B, T, T) @ (B, T, C), added in the same kernel
            for hop, M_k in enumerate(dep["M_powers"], start=1):
                v_k = (v_bthd * w[:, hop].view(1, 1, -1, 1)).reshape(B, T, C)
                y = causal_matmul_add(y, M_k, v_k)
        return self.resid_dropout(self.c_proj(y)), weights

    def forward_cached(self, x, store: dict, start: int, capacity: int, dep=None, pos_bias=None):
        """Incremental attention: x (B, Tn, C) the new positions start..L-1; ``store`` holds the keys and
        values of earlier positions (updated). dep: the encoder's rows for the new positions
        (``M_powers`` (B, Tn, L), ``log_M`` (B, 1, Tn, L)); pos_bias: (1, H, Tn, L) or None."""
        B, Tn, C = x.shape
        H, L = self.n_head, start + Tn
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, Tn, H, C // H).transpose(1, 2) for t in (q, k, v))  # (B, H, Tn, D)
        k_all = cache_write(store, "k", k, start, capacity, dim=2)  # (B, H, L, D)
        v_all = cache_write(store, "v", v, start, capacity, dim=2)
        bias = pos_bias
        use_dep = dep is not None and self.dep_mode is not None and not dep.get("zero_lambda", False)
        if use_dep and self.dep_mode == "bias":
            base = bias if bias is not None else causal_rows_bias(start, L, x.device)
            bias = torch.addcmul(base, self.dep_beta.view(1, -1, 1, 1), dep["log_M"])
        if bias is not None:
            y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=bias.to(q.dtype))
        elif Tn == 1:  # one new token sees every cached position
            y = F.scaled_dot_product_attention(q, k_all, v_all)
        else:
            y, _ = attention(q, k_all, v_all)  # causal, queries aligned to the last Tn positions
        if use_dep and self.dep_mode == "mix":
            w = self.mix_weights()  # (H, 1 + K)
            y = w[:, 0].view(1, -1, 1, 1) * y
            for hop, M_k in enumerate(dep["M_powers"], start=1):  # rows (B, Tn, L) against cached V
                y = y + w[:, hop].view(1, -1, 1, 1) * (M_k.unsqueeze(1).to(v_all.dtype) @ v_all)
        y = y.transpose(1, 2).reshape(B, Tn, C)
        return self.resid_dropout(self.c_proj(y))


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

    def forward(self, x, dep=None, pos_bias=None, need_weights=False, flex_mask=None):
        a, weights = self.attn(self.ln_1(x), dep=dep, pos_bias=pos_bias, need_weights=need_weights, flex_mask=flex_mask)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, weights

    def forward_cached(self, x, store: dict, start: int, capacity: int, dep=None, pos_bias=None):
        x = x + self.attn.forward_cached(self.ln_1(x), store, start, capacity, dep=dep, pos_bias=pos_bias)
        return x + self.mlp(self.ln_2(x))


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
        self._flex_masks: dict = {}  # causal FlexAttention block masks per (T, device)
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
        flex_mask = self._flex_block_mask(T, idx.device) if self._flex_active(need_weights, idx.device) else None
        attn_maps: list[torch.Tensor] = []
        dep = None
        k = self.cfg.depenc.parser_layer if self.encoder is not None else -1
        for i, block in enumerate(self.blocks):
            if i == k:
                dep = self.encoder(x, idx, tok, gold_M=gold_M, from_embeddings=(k == 0), eos_id=self.cfg.eos_id,
                                   need_analysis=return_analysis)
                if "log_M" in dep and pos_bias is None:
                    dep["base_bias"] = causal_mask_bias(T, idx.device)  # once per forward, not per layer
                x = x + dep["structured"] if dep["structured"] is not None else x
            x, w = block(x, dep=dep, pos_bias=pos_bias, need_weights=need_weights, flex_mask=flex_mask)
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
        return self._alibi_rows(0, T, device)  # (1, H, T, T)

    def _alibi_rows(self, start: int, L: int, device) -> torch.Tensor:
        """(1, H, L - start, L) ALiBi + causal bias of query positions start..L-1."""
        i = torch.arange(start, L, device=device).view(-1, 1)
        j = torch.arange(L, device=device).view(1, -1)
        dist = (i - j).clamp(min=0).float()  # i - j
        bias = -self.alibi_slopes.view(-1, 1, 1) * dist  # (H, Tn, L)
        return (bias + causal_rows_bias(start, L, device)).unsqueeze(0)

    def _flex_active(self, need_weights: bool, device) -> bool:
        """FlexAttention for the biased attention: config flag on, a bias to carry (dependency bias form or
        ALiBi), no weights requested, no attention dropout, and either a GPU or no gradient (PyTorch's
        FlexAttention has no backward on CPU: CPU training keeps the SDPA path)."""
        if not self.cfg.flex_attention or need_weights:
            return False
        biased = self.cfg.pos == "alibi" or (self.encoder is not None and self.cfg.depenc.dep_attention
                                             and self.cfg.depenc.attention == "bias")
        if not biased or (self.training and self.cfg.dropout > 0):
            return False
        return device.type == "cuda" or not torch.is_grad_enabled()

    def _flex_block_mask(self, T: int, device):
        key = (T, str(device))
        if key not in self._flex_masks:
            from torch.nn.attention.flex_attention import create_block_mask

            self._flex_masks[key] = create_block_mask(lambda b, h, q, kv: q >= kv, None, None, T, T, device=device)
        return self._flex_masks[key]

    # ---- incremental decoding (KV cache) ----------------------------------------------------
    def supports_cache(self) -> bool:
        """Cached decoding needs no gold arcs: every configuration but ``depenc.parser=oracle``."""
        return self.encoder is None or self.cfg.depenc.parser != "oracle"

    def new_cache(self, batch_size: int, capacity: int | None = None) -> "KVCache":
        """An empty cache for ``batch_size`` sequences of at most ``capacity`` (<= block_size) positions."""
        cap = min(int(capacity or self.cfg.block_size), self.cfg.block_size)
        return KVCache(len(self.blocks), batch_size, cap)

    def forward_cached(self, idx: torch.Tensor, cache: "KVCache") -> dict:
        """Logits (B, Tn, V) of the new tokens idx (B, Tn) given the ``cache.length`` positions already in
        ``cache`` (a prompt in one call, then one token per call); appends them to the cache. Equal (up to
        float rounding) to the last Tn rows of ``forward`` on the whole sequence."""
        B, Tn = idx.shape
        S = cache.length
        L = S + Tn
        if L > cache.capacity:
            raise ValueError(f"cache holds {cache.capacity} positions; {L} needed (model.block_size={self.cfg.block_size})")
        tok = self.wte(idx)
        x = tok if self.wpe is None else tok + self.wpe(torch.arange(S, L, device=idx.device))
        x = self.drop(x)
        idx_all = cache_write(cache.state, "idx", idx, S, cache.capacity)  # (B, L)
        pos_bias = self._alibi_rows(S, L, idx.device) if self.cfg.pos == "alibi" else None
        dep = None
        k = self.cfg.depenc.parser_layer if self.encoder is not None else -1
        for i, block in enumerate(self.blocks):
            if i == k:
                dep = self.encoder.forward_cached(x, idx_all, tok, cache.encoder, S, cache.capacity,
                                                  from_embeddings=(k == 0), eos_id=self.cfg.eos_id)
                x = x + dep["structured"] if dep["structured"] is not None else x
            x = block.forward_cached(x, cache.layers[i], S, cache.capacity, dep=dep, pos_bias=pos_bias)
        cache.length = L
        return {"logits": self.lm_head(self.ln_f(x))}

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
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Ancestral sampling from prompt idx (B, T0). Rows that produced ``eos_id`` stop (padded with
        eos). Returns (B, T0 + n) ids. Seeded through ``generator``.

        ``use_cache``: incremental decoding with a KV cache (the dependency encoder's rows included) while
        the sequence fits in ``block_size``; beyond it every step recomputes the last ``block_size``
        tokens (positions shift, so a cache cannot continue), which is what ``use_cache=False`` does at
        every step. Both give the same tokens (up to float rounding of the logits)."""
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        block = self.cfg.block_size
        cache = None
        if use_cache and self.supports_cache() and 0 < idx.size(1) <= block:
            cache = self.new_cache(idx.size(0), idx.size(1) + max_new_tokens)
        for _ in range(max_new_tokens):
            if cache is not None and idx.size(1) <= cache.capacity:
                logits = self.forward_cached(idx[:, cache.length :], cache)["logits"][:, -1, :]  # (B, V)
            else:
                cache = None  # past the block: recompute on the cropped window
                context = idx[:, -block:]
                logits = self(context)["logits"][:, -1, :]  # (B, V)
            next_id = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
            if eos_id is not None:
                next_id = torch.where(finished, torch.full_like(next_id, eos_id), next_id)
                finished |= next_id == eos_id
            idx = torch.cat([idx, next_id.unsqueeze(1)], dim=1)
            if eos_id is not None and bool(finished.all()):
                break
        return idx


class KVCache:
    """What incremental decoding keeps for a batch of sequences (``Transformer.forward_cached``): per block
    the keys and values, for the dependency encoder its w_dep keys, token embeddings, frontier sums,
    conv inputs and, where powers of M or second order need them, every row of M. Buffers of
    ``capacity`` positions are allocated on first write; ``length`` positions are filled."""

    def __init__(self, n_layer: int, batch_size: int, capacity: int):
        self.batch_size, self.capacity, self.length = batch_size, capacity, 0
        self.state: dict[str, torch.Tensor] = {}  # token ids
        self.layers: list[dict[str, torch.Tensor]] = [{} for _ in range(n_layer)]
        self.encoder: dict[str, torch.Tensor] = {}

    def select(self, rows: torch.Tensor) -> "KVCache":
        """Keep the batch rows ``rows`` (indices or a bool mask), e.g. drop sequences that ended."""
        rows = torch.as_tensor(rows)
        if rows.dtype == torch.bool:
            rows = rows.nonzero().squeeze(1)
        for store in (self.state, self.encoder, *self.layers):
            for key, t in store.items():
                store[key] = t.index_select(0, rows.to(t.device))
        self.batch_size = int(rows.numel())
        return self


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
