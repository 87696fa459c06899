"""The shared decoder-only transformer (DESIGN 3.1), with the dependency encoder switched on by
``kind="depenc"`` (3.2-3.3).

DepEnc is this model plus a :class:`DependencyEncoder` after block ``parser_layer``, whose soft
left-arc matrix M feeds (a) the structured token encoding and (b) dependency-weighted attention in
every block above it (:class:`DepBiasAttention` or :class:`DepMixAttention`, chosen when the model is
built). With both switched off, DepEnc computes exactly what the baseline computes. Training and
cached decoding are one ``forward(idx, cache=...)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from depenc.models.attention import (AttnContext, CausalSelfAttention, DepBiasAttention, DepGateAttention,
                                    DepMixAttention, cache_append)
from depenc.schema import ModelConfig
from depenc.models.depenc import DependencyEncoder
from depenc.models.inducer import INDUCERS, distill_loss



def alibi_slopes(n_head: int) -> torch.Tensor:
    """Geometric head slopes 2^(-8 h / H) (Press et al.), one recency strength per head."""
    return torch.tensor([2 ** (-8 * (h + 1) / n_head) for h in range(n_head)])


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, cfg.mlp_width, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.mlp_width, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, attention_class: type[CausalSelfAttention]):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = attention_class(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, ctx: AttnContext, arcs=None, cache: dict | None = None):
        a, weights = self.attn(self.ln_1(x), ctx, arcs, cache)
        x = x + a
        return x + self.mlp(self.ln_2(x)), weights


def attention_class(cfg: ModelConfig, layer: int) -> type[CausalSelfAttention]:
    dep = cfg.depenc
    if not (cfg.has_encoder and dep.dep_attention and layer >= dep.parser_layer):
        return CausalSelfAttention
    return {"bias": DepBiasAttention, "mix": DepMixAttention, "gate": DepGateAttention}[dep.attention]


class HeadMixture(nn.Module):
    """Prediction through the structure (Dependency-based Mixture LMs, Yang & Tu 2022;
    ``depenc.output=head_mixture``). With M = g P the encoder's next-word attachment rows (target=next),

        p(x_{i+1}) = (1 - g_i) softmax(lm(h_i)) + sum_j M_ij q_j,   q_j = softmax(lm(W_q h_j))

    so the parser is directly responsible for the loss. q_j, "what a dependent of word j looks like",
    depends on j alone, so the mixture is one (B, Tn, L) x (B, L, V) product. Returns log-probabilities,
    which cross-entropy, sampling and every evaluation read like logits (they are normalised)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w_q = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)  # the head-conditioned view of h_j
        self.ln_q = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)

    def forward(self, x, logits, arcs, lm_head: nn.Linear, cache: dict | None = None) -> torch.Tensor:
        p_lm = F.softmax(logits.float(), dim=-1)  # (B, Tn, V)
        q = F.softmax(lm_head(self.ln_q(self.w_q(x))).float(), dim=-1)  # (B, Tn, V)
        if cache is not None:
            q = cache_append(cache, "q", q)  # (B, L, V)
        M = arcs.M.float()  # (B, Tn, L): g_i P_ij, 0 on rows without candidates
        keep = (1.0 - M.sum(-1, keepdim=True)).clamp(min=0.0)  # (B, Tn, 1) = 1 - g_i
        return torch.log(keep * p_lm + M @ q + torch.finfo(torch.float32).tiny)  # (B, Tn, V)


class KVCache:
    """What cached decoding keeps for a batch of sequences: token ids, and per block (and for the
    encoder) buffers of ``capacity`` positions allocated on first write; ``length`` positions filled."""

    def __init__(self, n_layer: int, batch_size: int, capacity: int):
        self.batch_size, self.capacity, self.length = batch_size, capacity, 0
        self.stores: list[dict] = [{} for _ in range(n_layer + 2)]  # blocks, encoder (and head mixture), token ids

    def prepare(self, n_new: int) -> None:
        if self.length + n_new > self.capacity:
            raise ValueError(f"cache holds {self.capacity} positions; {self.length + n_new} needed")
        for store in self.stores:
            store.update(start=self.length, capacity=self.capacity)

    def select(self, rows: torch.Tensor) -> "KVCache":
        """Keep the batch rows ``rows`` (indices or a bool mask), e.g. drop sequences that ended."""
        rows = torch.as_tensor(rows)
        rows = rows.nonzero().squeeze(1) if rows.dtype == torch.bool else rows
        for store in self.stores:
            for key, t in store.items():
                if isinstance(t, torch.Tensor):
                    store[key] = t.index_select(0, rows.to(t.device))
        self.batch_size = int(rows.numel())
        return self


class Transformer(nn.Module):
    """Decoder-only pre-LayerNorm transformer; DepEnc when ``cfg.kind == "depenc"``."""

    ABLATIONS = ("zero_gate", "zero_lambda")

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, attention_class(cfg, i)) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        mixture = cfg.has_encoder and cfg.depenc.output == "head_mixture"
        self.head_mixture = HeadMixture(cfg) if mixture else None  # the output through the candidate heads
        self.encoder = DependencyEncoder(cfg.depenc, cfg.n_embd, cfg.block_size, cfg.bias) if cfg.has_encoder else None
        self.parser_layer = cfg.depenc.parser_layer if cfg.has_encoder else -1
        inducer = cfg.has_encoder and cfg.depenc.inducer != "none"  # training only: never used to predict
        self.inducer = INDUCERS[cfg.depenc.inducer](cfg.vocab_size, cfg.depenc.inducer_dim) if inducer else None
        self.use_dep_attention = True  # False: the zero_lambda ablation
        if cfg.pos == "alibi":
            self.register_buffer("alibi_slopes", alibi_slopes(cfg.n_head), persistent=False)
        self.init_weights()

    def init_weights(self) -> None:
        """nanoGPT/GPT-2 init: N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layer); the encoder's own."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.cfg.n_layer))
        if self.encoder is not None:
            self.encoder.init_weights()
        if self.inducer is not None:
            self.inducer.init_weights()

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def encoder_parameter_names(self) -> set[str]:
        """Parameters of dependency encoding (own learning rate in the optimizer)."""
        return {n for n, _ in self.named_parameters() if n.startswith("encoder.") or ".dep_" in n}

    def ablate(self, *names: str) -> "Transformer":
        """Inference-time ablations (DESIGN 3.5), on for good: ``zero_gate`` (M = 0: no structured term, the
        bias form's log(0 + eps) everywhere), ``zero_lambda`` (no dependency-weighted attention)."""
        for name in names:
            if name not in self.ABLATIONS:
                raise ValueError(f"unknown ablation {name!r}; choose from {list(self.ABLATIONS)}")
            if self.encoder is None:
                raise ValueError(f"ablation {name} needs a DepEnc model (this one has no dependency encoder)")
        if "zero_gate" in names:
            self.encoder.zero_gate = True
        if "zero_lambda" in names:
            self.use_dep_attention = False
        return self

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, need_weights: bool = False,
                return_analysis: bool = False, gold_M: torch.Tensor | None = None,
                cache: KVCache | None = None) -> dict:
        """idx: (B, Tn) token ids at positions start..L-1 (start = ``cache.length``, 0 without a cache).
        targets: (B, Tn), -100 = ignore. gold_M: (B, T, T) oracle arcs (``parser=oracle``). Returns
        dict(logits (B, Tn, V), loss, attn (list of (B, H, Tn, L)) and dep (P, g, M, has_cand) when asked;
        with ``depenc.inducer`` and targets in training, aux_loss = inducer_nll + distill_weight * distill,
        the auxiliary objective, which ``loss`` (the LM's) leaves out)."""
        B, Tn = idx.shape
        start = cache.length if cache is not None else 0
        L = start + Tn
        if cache is not None:
            cache.prepare(Tn)
        if L > self.cfg.block_size:
            raise ValueError(f"sequence length {L} exceeds model.block_size={self.cfg.block_size}")
        tok = self.wte(idx)  # (B, Tn, C)
        x = self.drop(tok if self.wpe is None else tok + self.wpe(torch.arange(start, L, device=idx.device)))
        ctx = AttnContext(start, L, idx.device, need_weights=need_weights)
        ctx.pos_bias = self._alibi(ctx)
        idx_all = cache_tokens(cache, idx)  # (B, L)
        arcs = structured = None
        attn_maps = []
        induce = self.inducer is not None and targets is not None and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            if i == self.parser_layer:
                structured, arcs = self.encoder(x, idx_all, tok, self.cfg.eos_id, cache and cache.stores[-2],
                                                gold_M, need_P=return_analysis or induce)
                x = x if structured is None else x + structured
            x, weights = block(x, ctx, arcs if self.use_dep_attention else None, cache and cache.stores[i])
            attn_maps.append(weights)
        if cache is not None:
            cache.length = L
        logits = self.lm_head(self.ln_f(x))  # (B, Tn, V)
        if self.head_mixture is not None:
            logits = self.head_mixture(x, logits, arcs, self.lm_head, cache and cache.stores[-2])  # log-probs
        out = {"logits": logits, "loss": None}
        if targets is not None:
            out["loss"] = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-100)
        if induce:
            out["inducer_nll"], rows = self.inducer(idx_all, self.cfg.eos_id)  # rows: (B, T, T) posterior targets
            out["distill"] = distill_loss(arcs.P, rows)
            out["aux_loss"] = out["inducer_nll"] + self.cfg.depenc.distill_weight * out["distill"]
        if need_weights:
            out["attn"] = attn_maps
        if return_analysis and arcs is not None:
            out["dep"] = {"P": arcs.P, "g": arcs.g, "M": arcs.M, "has_cand": arcs.has_cand}
        return out

    def _alibi(self, ctx: AttnContext) -> torch.Tensor | None:
        """(1, H, Tn, L) ALiBi + causal bias of query rows start..L-1; None with learned positions."""
        if self.cfg.pos != "alibi":
            return None
        i = torch.arange(ctx.start, ctx.L, device=ctx.device).view(-1, 1)
        j = torch.arange(ctx.L, device=ctx.device).view(1, -1)
        bias = -self.alibi_slopes.view(-1, 1, 1) * (i - j).clamp(min=0).float()  # (H, Tn, L)
        return (bias + ctx.causal_mask()).unsqueeze(0)

    # ---- decoding ---------------------------------------------------------------------------
    def supports_cache(self) -> bool:
        """Cached decoding needs no gold arcs and no earlier arc rows: every configuration but ``parser=oracle``
        and the gate form (which recomputes)."""
        dep = self.cfg.depenc
        return self.encoder is None or (dep.parser != "oracle" and not (dep.dep_attention and dep.attention == "gate"))

    def new_cache(self, batch_size: int, capacity: int | None = None) -> KVCache:
        """An empty cache for ``batch_size`` sequences of at most ``capacity`` (<= block_size) positions."""
        return KVCache(len(self.blocks), batch_size, min(int(capacity or self.cfg.block_size), self.cfg.block_size))

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, eos_id: int | None = None, generator: torch.Generator | None = None,
                 use_cache: bool = True) -> torch.Tensor:
        """Ancestral sampling from prompt idx (B, T0), seeded through ``generator``; rows that produced
        ``eos_id`` stop (padded with eos). Returns (B, T0 + n) ids. With ``use_cache`` a KV cache is used
        while the sequence fits in ``block_size``; beyond it every step recomputes the last ``block_size``
        tokens (positions shift), as ``use_cache=False`` does at every step: the same tokens either way."""
        block = self.cfg.block_size
        cache = None
        if use_cache and self.supports_cache() and 0 < idx.size(1) <= block:
            cache = self.new_cache(idx.size(0), idx.size(1) + max_new_tokens)
        alive = torch.arange(idx.size(0), device=idx.device)  # rows still generating: finished ones leave the batch
        for _ in range(max_new_tokens):
            if cache is not None and idx.size(1) > cache.capacity:
                cache = None  # past the block: recompute on the cropped window
            context = idx[alive, cache.length:] if cache is not None else idx[alive, -block:]
            logits = self(context, cache=cache)["logits"][:, -1, :]  # (alive, V)
            next_id = torch.full_like(idx[:, 0], eos_id if eos_id is not None else 0)
            next_id[alive] = sample_next(logits, temperature, top_k, top_p, generator)
            idx = torch.cat([idx, next_id.unsqueeze(1)], dim=1)
            if eos_id is not None:
                going = next_id[alive] != eos_id
                if not bool(going.any()):
                    break
                if cache is not None and not bool(going.all()):
                    cache.select(going)
                alive = alive[going]
        return idx


def cache_tokens(cache: KVCache | None, idx: torch.Tensor) -> torch.Tensor:
    """(B, L) every token id so far: the cached ones and the new ``idx`` (B, Tn)."""
    return idx if cache is None else cache_append(cache.stores[-1], "idx", idx)


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
        probs = sorted_logits.softmax(dim=-1)
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p  # keep the smallest set reaching top_p
        logits = logits.masked_fill(torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted), float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)
