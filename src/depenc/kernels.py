"""Attention kernels that earn their place by a benchmark (``make bench``, docs/bench.md): the
backends of causal attention with an additive bias (SDPA, a lean CPU function for the dependency bias
form, FlexAttention) and a block-causal ``M @ X``. Each is numerically the plain formula; tests check it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class _LeanDepBias(torch.autograd.Function):
    """softmax(q k^T / sqrt(d) + base + beta_h log_M) v, keeping one (B, H, Tn, L) tensor (the
    probabilities) for the backward where SDPA with a bias that needs a gradient keeps five on CPU. The
    softmax backward's row sums come from the outputs (rowsum(dP * P) = dy . y); the gradients of beta
    and log_M are contractions, never materialised products. base: (Tn, L) or (1, H, Tn, L)."""

    @staticmethod
    def forward(ctx, q, k, v, beta, log_M, base):
        B, H, Tn, D = q.shape
        L = k.size(2)
        scale = 1.0 / math.sqrt(D)
        q3, k3, v3 = q.reshape(B * H, Tn, D), k.reshape(B * H, L, D), v.reshape(B * H, L, D)
        S = torch.addcmul(base, beta.view(1, H, 1, 1), log_M).view(B * H, Tn, L)  # the bias, then the scores
        S.baddbmm_(q3, k3.transpose(1, 2), alpha=scale)
        P = torch.softmax(S, dim=-1)
        del S
        y = torch.bmm(P, v3)
        ctx.save_for_backward(q3, k3, v3, P, y, beta, log_M)
        ctx.dims = (B, H, Tn, L, D, scale)
        return y.view(B, H, Tn, D)

    @staticmethod
    def backward(ctx, dy):
        q3, k3, v3, P, y, beta, log_M = ctx.saved_tensors
        B, H, Tn, L, D, scale = ctx.dims
        dy3 = dy.reshape(B * H, Tn, D)
        dv = torch.bmm(P.transpose(1, 2), dy3)
        rows = (dy3 * y).sum(-1, keepdim=True)  # (BH, Tn, 1) = rowsum(dP * P)
        dS = torch.bmm(dy3, v3.transpose(1, 2)).sub_(rows).mul_(P)  # softmax backward, in place
        dq = torch.bmm(dS, k3).mul_(scale)
        dk = torch.bmm(dS.transpose(1, 2), q3).mul_(scale)
        dS4 = dS.view(B, H, Tn * L)
        d_beta = d_log_M = None
        if ctx.needs_input_grad[3]:  # sum over b, i, j of dS * log_M, per head
            d_beta = torch.bmm(dS4, log_M.reshape(B, Tn * L, 1)).sum(0).view(H)
        if ctx.needs_input_grad[4]:  # sum over heads of beta_h dS_h
            d_log_M = torch.bmm(beta.to(dS.dtype).view(1, 1, H).expand(B, 1, H), dS4).view(B, 1, Tn, L)
        return dq.view(B, H, Tn, D), dk.view(B, H, L, D), dv.view(B, H, L, D), d_beta, d_log_M, None


def sdpa_biased(q, k, v, base, beta=None, log_M=None, dropout_p=0.0):
    """SDPA with the whole additive bias materialised: base (+ beta_h log_M)."""
    bias = base if log_M is None else torch.addcmul(base, beta.view(1, -1, 1, 1), log_M)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout_p)


def lean_biased(q, k, v, base, beta=None, log_M=None, dropout_p=0.0):
    """The dependency bias form through :class:`_LeanDepBias` (float32 without autocast or dropout; otherwise,
    and for a bias without the dependency term, SDPA: the same function)."""
    if (log_M is None or dropout_p > 0 or q.dtype != torch.float32 or log_M.dtype != torch.float32
            or torch.is_autocast_enabled(q.device.type)):
        return sdpa_biased(q, k, v, base, beta, log_M, dropout_p)
    return _LeanDepBias.apply(q, k, v, beta, log_M, base)


# ---- FlexAttention -----------------------------------------------------------------------------
# What the bias form keeps per layer for the backward, B=16, T=1024, H=12, bf16, 11 layers above the encoder:
# - SDPA: the bias base + beta_h log_M as a (B, H, T, T) mask, 16*12*1024^2*2 B = 384 MiB a layer, 4.1 GiB
#   for 11 layers (66 GiB at T=4096); and with a float mask SDPA has no flash kernel.
# - Flex: the score modifier reads log_M (B, 1, T, T), built once per forward by the encoder and shared by
#   every layer (float32: 64 MiB; 1 GiB at T=4096), beta (H,) and, with ALiBi, the (1, H, T, T) position bias
#   (one per forward, not per batch row); per layer only what any fused attention keeps (q, k, v, output and
#   the (B, H, T) log-sum-exp, 0.75 MiB). The backward writes one transient (B, T, T) gradient of log_M a layer.
FLEX_BLOCK = 128  # FlexAttention's tile; without gradients, lengths that are not a multiple go through SDPA
_FLEX: dict = {}


def _causal(b, h, i, j):
    return i >= j


def flex_kernel():
    """flex_attention, compiled once (one kernel per length and score modifier); inside a compiled model the
    plain function, which the outer compilation fuses."""
    from torch.nn.attention.flex_attention import flex_attention

    if torch.compiler.is_compiling():
        return flex_attention
    if "fn" not in _FLEX:
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    return _FLEX["fn"]


def causal_block_mask(L: int, device: torch.device):
    """The (L, L) causal BlockMask (built once per length and device): tiles above the diagonal are skipped."""
    from torch.nn.attention.flex_attention import create_block_mask

    key = (L, str(device))
    if key not in _FLEX:
        _FLEX[key] = create_block_mask(_causal, None, None, L, L, device=device)
    return _FLEX[key]


def bias_score_mod(base, beta=None, log_M=None):
    """The score modifier of the additive bias, read by (b, h, q, kv) index: ALiBi from ``base`` when it is the
    (1, H, T, T) position bias (a (T, T) ``base`` is the causal mask, which the block mask holds), plus
    beta_h log_M[b, q, kv]; nothing of size (B, H, T, T) is built."""
    pos = base if base.dim() == 4 else None
    dep = log_M.squeeze(1) if log_M is not None else None  # (B, T, T)

    def score_mod(score, b, h, i, j):
        if pos is not None:
            score = score + pos[0, h, i, j]
        if dep is not None:
            score = score + beta[h] * dep[b, i, j]
        return score

    return score_mod


def flex_applies(q, k, dropout_p: float = 0.0) -> bool:
    """Whether FlexAttention can run this call; otherwise the reference (SDPA with the materialised bias):
    - the new rows of cached decoding (Tn != L; the score modifier's indices are those of a square block),
    - attention dropout (FlexAttention has none),
    - gradients on CPU (PyTorch's FlexAttention has no CPU backward),
    - without gradients, a length that is not a multiple of FLEX_BLOCK: evaluation blocks have the training
      length, while the odd lengths of analysis batches would each compile a kernel of their own."""
    Tn, L = q.size(2), k.size(2)
    if Tn != L or dropout_p > 0:
        return False
    if torch.is_grad_enabled():
        return q.device.type != "cpu"
    return L % FLEX_BLOCK == 0


def flex_biased(q, k, v, base, beta=None, log_M=None, dropout_p=0.0):
    """FlexAttention (compiled), the bias as a score modifier instead of a materialised (B, H, T, T) tensor;
    the reference where :func:`flex_applies` says FlexAttention cannot run."""
    if not flex_applies(q, k, dropout_p):
        return sdpa_biased(q, k, v, base, beta, log_M, dropout_p)
    return flex_kernel()(q, k, v, score_mod=bias_score_mod(base, beta, log_M),
                         block_mask=causal_block_mask(k.size(2), q.device))


def auto_biased(q, k, v, base, beta=None, log_M=None, dropout_p=0.0):
    """``attention_impl: auto`` without dropout, by device: FlexAttention on CUDA, the lean function on CPU."""
    fn = flex_biased if q.device.type == "cuda" else lean_biased
    return fn(q, k, v, base, beta, log_M, dropout_p)


BIASED_BACKENDS = {"auto": auto_biased, "sdpa": sdpa_biased, "lean": lean_biased, "flex": flex_biased}


# causal_matmul_add on CPU: at most CAUSAL_BLOCKS row blocks (37.5% fewer flops with 4), each at least
# CAUSAL_CHUNK rows (more blocks save a little more but cost more kernel calls)
CAUSAL_BLOCKS = 4
CAUSAL_CHUNK = 64


class _CausalMatmulAdd(torch.autograd.Function):
    """y + M @ X for a causal (lower-triangular) square M in row blocks: block r only multiplies the
    columns up to its last row, so the zero blocks above the diagonal are never multiplied (backward too)."""

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
    """y + M @ X (y None: M @ X) for M (B, Tn, L), X (B, L, C). A square causal M on CPU in float32 skips
    its zero blocks; everything else (GPU, autocast, short T, the new rows of cached decoding) is one bmm."""
    T = M.size(1)
    if (M.device.type != "cpu" or T <= CAUSAL_CHUNK or M.size(2) != T or torch.is_autocast_enabled("cpu")
            or not (M.dtype == X.dtype == torch.float32 and (y is None or y.dtype == torch.float32))):
        return M @ X if y is None else torch.baddbmm(y, M.to(y.dtype), X.to(y.dtype))
    return _CausalMatmulAdd.apply(y, M, X, max(CAUSAL_CHUNK, -(-T // CAUSAL_BLOCKS)))
