"""KV-cached incremental decoding (``Transformer(idx, cache=...)`` / ``generate(use_cache=True)``): at every
step the cached logits equal a full recomputation, for the baseline and every DepEnc variant (the
dependency encoder's rows and structured encoding included); greedy generation gives the same tokens
with and without the cache, also past ``block_size`` (where it falls back to recomputation)."""

import pytest
import torch

from depenc.schema import DepEncConfig, ModelConfig
from depenc.models.transformer import Transformer

V, BLOCK = 40, 32

VARIANTS = {  # (depenc changes or None for the baseline, model changes)
    "baseline": (None, {}),
    "baseline_alibi": (None, {"pos": "alibi"}),
    "bias_next": ({}, {}),
    "bias_self_alibi": ({"target": "self"}, {"pos": "alibi"}),
    "mix_next": ({"attention": "mix"}, {}),
    "mix_self": ({"attention": "mix", "target": "self"}, {}),
    "distance": ({"parser": "distance"}, {}),
    "parser_layer2": ({"parser_layer": 2}, {}),
    "alibi_depenc": ({}, {"pos": "alibi"}),
    "sdpa_backend": ({}, {"attention_impl": "sdpa"}),
    "head_mixture": ({"output": "head_mixture"}, {}),
}


def make(depenc: dict | None, **kw) -> Transformer:
    """A small model whose zero-initialised paths (W_s, gamma, beta, gate) are switched on with random
    values, so every cached term is really exercised."""
    torch.manual_seed(0)
    cfg = ModelConfig(kind="baseline" if depenc is None else "depenc", vocab_size=V, block_size=BLOCK, n_layer=3,
                      n_head=2, n_embd=32, depenc=DepEncConfig(**(depenc or {})), **kw)
    m = Transformer(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
        for b in m.blocks:
            if getattr(b.attn, "dep_gamma", None) is not None:
                b.attn.dep_gamma.copy_(torch.randn(b.attn.dep_gamma.shape, generator=g))
            if getattr(b.attn, "dep_beta", None) is not None:
                b.attn.dep_beta.copy_(torch.rand(b.attn.dep_beta.shape, generator=g) + 0.5)
    return m


def tokens(B=3, T=BLOCK, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(1, V, (B, T), generator=g)
    idx[:, 0] = 0  # <eos> as beginning of sequence
    idx[1 % B, 9] = 0  # a document boundary inside the prompt
    idx[2 % B, 17] = 0  # ... and one among the decoded tokens
    return idx


@pytest.mark.parametrize("name", list(VARIANTS))
def test_cached_logits_equal_full_recomputation_at_every_step(name):
    depenc, kw = VARIANTS[name]
    m = make(depenc, **kw)
    idx = tokens()
    B, T = idx.shape
    prompt = 6
    cache = m.new_cache(B)
    with torch.no_grad():
        got = m(idx[:, :prompt], cache=cache)["logits"]  # prefill: the prompt in one call
        torch.testing.assert_close(got, m(idx[:, :prompt])["logits"], atol=2e-5, rtol=1e-4)
        t = prompt
        while t < T:
            n = 3 if t == 14 else 1  # one chunk of several tokens after the prefill
            got = m(idx[:, t : t + n], cache=cache)["logits"]
            full = m(idx[:, : t + n])["logits"][:, -n:]
            torch.testing.assert_close(got, full, atol=2e-5, rtol=1e-4, msg=lambda s: f"{name} at position {t}: {s}")
            t += n
    assert cache.length == T == cache.capacity
    with pytest.raises(ValueError, match="cache holds"):
        m(idx[:, :1], cache=cache)


@pytest.mark.parametrize("name", ["baseline", "bias_next", "mix_self", "alibi_depenc"])
def test_greedy_generation_same_tokens_with_and_without_cache(name):
    depenc, kw = VARIANTS[name]
    m = make(depenc, **kw)
    prompt = tokens(B=3)[:, :5]
    # 40 new tokens from a 5-token prompt cross block_size=32: the cached steps, then the fallback
    cached = m.generate(prompt, 40, temperature=0.0, use_cache=True)
    plain = m.generate(prompt, 40, temperature=0.0, use_cache=False)
    assert cached.shape == plain.shape == (3, 45)
    assert torch.equal(cached, plain)


def test_sampled_generation_same_tokens_with_and_without_cache():
    m = make({"attention": "mix"})
    prompt = torch.zeros(4, 1, dtype=torch.long)
    a = m.generate(prompt, 25, top_k=10, generator=torch.Generator().manual_seed(3), use_cache=True)
    b = m.generate(prompt, 25, top_k=10, generator=torch.Generator().manual_seed(3), use_cache=False)
    assert torch.equal(a, b)


def test_generation_with_eos_and_long_prompt():
    m = make({})
    long_prompt = torch.cat([tokens(B=2), tokens(B=2, seed=1)[:, :4]], dim=1)  # longer than the block: recomputation throughout
    out = m.generate(long_prompt, 3, temperature=0.0)
    assert torch.equal(out, m.generate(long_prompt, 3, temperature=0.0, use_cache=False))
    with torch.no_grad():  # make <eos> near-certain: rows stop, padded with eos
        m.lm_head.weight.data[0] += 3.0
    out = m.generate(torch.zeros(2, 1, dtype=torch.long), 10, eos_id=0, temperature=0.0)
    assert out.shape[1] <= 11


def test_cache_select_keeps_rows():
    """``KVCache.select`` drops finished sequences (as the generation callback does with its batch)."""
    m = make({"target": "self"})
    idx = tokens()
    with torch.no_grad():
        cache = m.new_cache(3)
        m(idx[:, :10], cache=cache)
        cache.select(torch.tensor([True, False, True]))
        got = m(idx[[0, 2], 10:11], cache=cache)["logits"][:, -1]
        full = m(idx[[0, 2], :11])["logits"][:, -1]
    torch.testing.assert_close(got, full, atol=2e-5, rtol=1e-4)
    assert cache.batch_size == 2


def test_oracle_parser_has_no_cache():
    m = make({"parser": "oracle"})
    assert not m.supports_cache()
    with pytest.raises(ValueError, match="gold arcs"):
        m(tokens()[:, :4], cache=m.new_cache(3))
