"""The shared transformer and the dependency encoder: causality, the encoder's support, exact
equivalence with the baseline when DepEnc's switches are off, gradient flow, generation."""

import pytest
import torch

from depenc.models.attention import explicit_attention
from depenc.schema import DepEncConfig, ModelConfig
from depenc.models.transformer import Transformer, sample_next
from depenc.train import matched_mlp_hidden

V, T = 40, 24


def make(depenc: dict | None = None, **kw) -> Transformer:
    """The baseline (depenc None) or DepEnc with the shipped defaults and the given changes."""
    torch.manual_seed(0)
    kind = "baseline" if depenc is None else "depenc"
    cfg = ModelConfig(kind=kind, vocab_size=V, block_size=32, n_layer=3, n_head=2, n_embd=32,
                      depenc=DepEncConfig(**(depenc or {})), **kw)
    return Transformer(cfg).eval()


def tokens(seed=0, B=2):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(1, V, (B, T), generator=g)
    idx[:, 0] = 0  # <eos> as beginning of sequence
    idx[1, 10] = 0  # a document boundary inside the block
    return idx


def make_trained_like(depenc):
    """A DepEnc model whose zero-initialised paths are switched on, so causality is really tested."""
    m = make(depenc)
    with torch.no_grad():
        if m.encoder is not None and m.encoder.w_struct is not None:
            torch.nn.init.normal_(m.encoder.w_struct.weight, std=0.1)
        for b in m.blocks:
            if getattr(b.attn, "dep_gamma", None) is not None:
                b.attn.dep_gamma.fill_(0.0)
            if getattr(b.attn, "dep_beta", None) is not None:
                b.attn.dep_beta.fill_(1.0)
    return m


VARIANTS = [
    None,
    {},  # the shipped default: biaffine, target next, bias form
    {"target": "self"},
    {"attention": "mix"},
    {"parser": "distance"},
    {"parser_layer": 2, "structured_encoding": False},
    {"output": "head_mixture"},
    {"attention": "gate"},
    {"attention": "gate", "target": "self"},
]


@pytest.mark.parametrize("depenc", VARIANTS)
def test_causality_logits_and_encoder(depenc):
    m = make_trained_like(depenc)
    idx = tokens()
    t = 12
    changed = idx.clone()
    changed[:, t + 1 :] = torch.randint(1, V, changed[:, t + 1 :].shape)
    a = m(idx, return_analysis=True)
    b = m(changed, return_analysis=True)
    torch.testing.assert_close(a["logits"][:, : t + 1], b["logits"][:, : t + 1])
    assert not torch.allclose(a["logits"][:, t + 1 :], b["logits"][:, t + 1 :])
    if depenc is not None:
        for key in ("P", "M"):
            torch.testing.assert_close(a["dep"][key][:, : t + 1], b["dep"][key][:, : t + 1])
        torch.testing.assert_close(a["dep"]["g"][:, : t + 1], b["dep"]["g"][:, : t + 1])


@pytest.mark.parametrize("target", ["self", "next"])
def test_parser_support(target):
    m = make_trained_like({"target": target})
    idx = tokens()
    dep = m(idx, return_analysis=True)["dep"]
    P, g = dep["P"], dep["g"]
    allowed_diag = 0 if target == "next" else -1  # next: token i+1 may attach to word i
    upper = torch.ones(T, T, dtype=torch.bool).triu(allowed_diag + 1)
    assert (P[:, upper] == 0).all(), "mass above the allowed diagonal"
    assert (P[:, :, 0] == 0).all(), "mass on the beginning-of-sequence column"
    assert (P[1, :, 10] == 0).all(), "<eos> chosen as a head"
    assert (P[1, 10:, :10] == 0).all(), "an arc into the previous document"
    sums = P.sum(-1)
    has = dep["has_cand"]
    torch.testing.assert_close(sums[has], torch.ones_like(sums[has]))
    assert (sums[~has] == 0).all() and (g[~has] == 0).all()
    assert not has[:, 0].any()  # nothing before the first token
    if target == "self":
        assert not has[:, 1].any()  # token 1 has only BOS before it
    assert ((g > 0) & (g < 1))[has].all()
    torch.testing.assert_close(dep["M"], g.unsqueeze(-1) * P)


def test_depenc_switched_off_equals_baseline():
    base = make()
    dep = make({"structured_encoding": False, "dep_attention": False})
    missing, unexpected = dep.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("encoder.") for k in missing)
    idx = tokens()
    torch.testing.assert_close(dep(idx)["logits"], base(idx)["logits"], rtol=0, atol=0)


@pytest.mark.parametrize("attention", ["bias", "mix"])
def test_zero_gate_and_zero_lambda_ablations_remove_the_encoder_effect(attention):
    base = make()
    on = make_trained_like({"attention": attention})
    on.load_state_dict(base.state_dict(), strict=False)
    idx = tokens()
    full = on(idx)["logits"]
    assert not torch.allclose(full, base(idx)["logits"])
    on.ablate("zero_lambda")  # dependency-weighted attention skipped: only the structured term is left
    no_lambda = on(idx)["logits"]
    assert not torch.allclose(no_lambda, full) and not torch.allclose(no_lambda, base(idx)["logits"])
    on.ablate("zero_gate")  # and M = 0: the structured term vanishes too
    torch.testing.assert_close(on(idx)["logits"], base(idx)["logits"])
    with pytest.raises(ValueError, match="unknown ablation"):
        on.ablate("zero_everything")
    with pytest.raises(ValueError, match="needs a DepEnc model"):
        base.ablate("zero_gate")


@pytest.mark.parametrize("attention,weight", [("bias", "dep_beta"), ("mix", "dep_gamma")])
def test_gradients_reach_the_encoder_from_lm_loss(attention, weight):
    # at init W_s = 0 (and beta = 0): only W_s and the attention's dependency weight get a gradient
    m = make({"attention": attention}).train()
    idx = tokens()
    m(idx, idx)["loss"].backward()
    assert m.encoder.w_struct.weight.grad.abs().sum() > 0
    assert all(getattr(b.attn, weight).grad.abs().sum() > 0 for b in m.blocks[1:])
    assert not hasattr(m.blocks[0].attn, weight)  # below the encoder: plain attention
    # once they moved, the gate and the parser learn from the LM loss through both paths
    m = make_trained_like({"attention": attention}).train()
    m(idx, idx)["loss"].backward()
    enc = dict(m.encoder.named_parameters())
    for name in ("w_gate.weight", "parser.w_head.weight", "parser.w_dep.weight", "distance_bias"):
        assert enc[name].grad.abs().sum() > 0, name


def test_every_attention_path_equals_the_explicit_formula():
    """SDPA (is_causal), SDPA with a bias, the lean CPU function and analysis mode (weights) agree."""
    from depenc.kernels import lean_biased, sdpa_biased

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8) for _ in range(3))
    causal = torch.full((7, 7), float("-inf")).triu(1)
    ref, w = explicit_attention(q, k, v, causal)
    assert w.shape == (2, 3, 7, 7) and torch.allclose(w.sum(-1), torch.ones(2, 3, 7)) and (w.triu(1) == 0).all()
    torch.testing.assert_close(torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True), ref)
    beta, log_M = torch.randn(3), torch.log(torch.rand(2, 1, 7, 7) + 1e-2)
    ref_dep, _ = explicit_attention(q, k, v, causal + beta.view(1, 3, 1, 1) * log_M)
    for fn in (sdpa_biased, lean_biased):
        torch.testing.assert_close(fn(q, k, v, causal, beta, log_M), ref_dep)
    m = make_trained_like({})
    idx = tokens()
    out = m(idx, need_weights=True)
    torch.testing.assert_close(out["logits"], m(idx)["logits"], atol=1e-5, rtol=1e-5)
    assert len(out["attn"]) == 3 and out["attn"][2].shape == (2, 2, T, T)


def test_generation_seeded_and_stops_at_eos():
    m = make()
    prompt = torch.zeros(3, 1, dtype=torch.long)
    a = m.generate(prompt, 20, top_k=10, generator=torch.Generator().manual_seed(1))
    b = m.generate(prompt, 20, top_k=10, generator=torch.Generator().manual_seed(1))
    c = m.generate(prompt, 20, top_k=10, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # an output layer that always prefers <eos>: every row stops after one token, and generation ends
    eos_logits = torch.full((V,), -10.0)
    eos_logits[0] = 10.0
    m.lm_head.forward = lambda h: eos_logits.expand(*h.shape[:-1], V)
    out = m.generate(prompt, 50, eos_id=0, temperature=0.0)
    assert out.shape == (3, 2) and (out[:, 1] == 0).all()


def test_sampling_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, top_k=2, generator=g)) for _ in range(200)}
    assert draws == {2, 3}
    draws = {int(sample_next(logits, top_p=0.5, generator=g)) for _ in range(200)}
    assert draws == {3}  # p(3) = 0.64 >= 0.5 alone
    assert int(sample_next(logits, temperature=0.0)) == 3


def test_alibi_baseline_is_causal_and_positionless():
    m = make(pos="alibi")
    assert m.wpe is None
    idx = tokens()
    changed = idx.clone()
    changed[:, 15:] = 1
    torch.testing.assert_close(m(idx)["logits"][:, :15], m(changed)["logits"][:, :15])


def test_matched_mlp_width_within_one_percent():
    dep = ModelConfig(kind="depenc", vocab_size=200, block_size=64, n_layer=4, n_head=4, n_embd=64)
    target = Transformer(dep).num_params()
    base = ModelConfig(vocab_size=200, block_size=64, n_layer=4, n_head=4, n_embd=64)
    base.mlp_hidden = matched_mlp_hidden(base, target)
    n = Transformer(base).num_params()
    assert abs(n - target) / target < 0.01 and base.mlp_hidden > 4 * 64


@pytest.mark.parametrize("pair", [("depenc_small", "baseline_matched_small"), ("depenc_brown", "baseline_matched_brown")])
def test_shipped_matched_baselines_within_one_percent(pair):
    from depenc.config import load_config
    from depenc.data.synthetic import SyntheticConfig, vocabulary
    from depenc.train import build_model_config

    class Vocab:  # the tokenizer facts build_model_config needs
        def __init__(self, size):
            self.vocab_size, self.eos_id = size, 0

        def token_to_id(self, token):
            return 1

    counts = []
    for exp in pair:
        cfg = load_config(exp)
        size = (len(vocabulary(SyntheticConfig.from_dict(dict(cfg.data.synthetic)))) + 2
                if cfg.data.source == "synthetic" else cfg.data.vocab_size)
        counts.append(Transformer(ModelConfig.from_dict(build_model_config(cfg, Vocab(size)))).num_params())
    dep, matched = counts
    assert abs(matched - dep) / dep < 0.01, counts


def test_gold_arcs_left_relatives_by_target():
    from depenc.data.gold import GoldArcs, left_relatives, sentence_gold_matrix

    # "the dog runs ." : the->dog, dog->runs (root), .->runs
    heads = [2, 3, 0, 3]
    assert left_relatives(heads) == [[], [0], [1], [2]]
    M = sentence_gold_matrix(heads, "self")  # input [BOS] the dog runs .
    expected = torch.zeros(5, 5)
    expected[2, 1] = expected[3, 2] = expected[4, 3] = 1.0
    torch.testing.assert_close(M, expected)
    M_next = sentence_gold_matrix(heads, "next")  # row i describes word i+1
    torch.testing.assert_close(M_next[:-1], expected[1:])
    # a block that starts inside a sentence keeps only arcs within the block
    arcs = GoldArcs([heads], [1], 6, "self")
    torch.testing.assert_close(arcs.matrix(2, 3), torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]]))


def test_oracle_parser_uses_gold_matrix():
    from depenc.data.gold import sentence_gold_matrix

    m = make({"parser": "oracle"})
    heads = [2, 3, 0, 3]
    idx = torch.tensor([[0, 5, 6, 7, 8]])
    gold = sentence_gold_matrix(heads, "next").unsqueeze(0)
    dep = m(idx, gold_M=gold, return_analysis=True)["dep"]
    torch.testing.assert_close(dep["M"], gold)
    with pytest.raises(ValueError, match="gold arcs"):
        m(idx)


def test_dependency_bias_attention_matches_autograd_reference():
    """The hand-written CPU attention for the bias form: outputs and all gradients equal plain autograd."""
    from depenc.kernels import _LeanDepBias

    torch.manual_seed(0)
    B, H, T, D = 2, 3, 9, 4
    q, k, v = (torch.randn(B, H, T, D, dtype=torch.float64, requires_grad=True) for _ in range(3))
    beta = torch.randn(H, dtype=torch.float64, requires_grad=True)
    log_M = torch.log(torch.rand(B, 1, T, T, dtype=torch.float64) + 1e-2).requires_grad_()
    base = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)
    out = _LeanDepBias.apply(q, k, v, beta, log_M, base)  # in float64, so the gradients compare tightly
    scores = q @ k.transpose(-2, -1) / D**0.5 + base + beta.view(1, H, 1, 1) * log_M
    ref = scores.softmax(-1) @ v
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v, beta, log_M), g)
    ref_grads = torch.autograd.grad(ref, (q, k, v, beta, log_M), g)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


def test_checkpoints_of_study_v1_load_and_removed_options_are_refused():
    """A model dict and state dict in the layout before the study-v1 cleanup (``depenc.enabled``, hops,
    ``encoder.w_head``, dep_gamma of shape (H, 1)) load into today's model; one that used a removed option
    (frontier parser) is refused with a pointer to the tag."""
    from depenc.lightning import upgrade_model_config, upgrade_state_dict

    new = make({"attention": "mix"})
    old_dep = {"enabled": True, **DepEncConfig(attention="mix").__dict__, "hops": 1, "second_order": False,
               "recency_prior": True, "freeze_parser": False, "within_document": True, "exclude_ids": [],
               "zero_gate": False, "zero_lambda": False}
    old_dep.pop("embedding_init")
    old = {k: v for k, v in new.cfg.to_dict().items() if k not in ("kind", "attention_impl", "compile", "depenc")}
    old.update(flex_attention=False, depenc=old_dep)
    state = {k.replace("encoder.parser.", "encoder."): (v.view(-1, 1) if k.endswith("dep_gamma") else v)
             for k, v in new.state_dict().items()}
    upgrade_state_dict(state)
    rebuilt = Transformer(ModelConfig.from_dict(upgrade_model_config(old, "depenc")))
    rebuilt.load_state_dict(state)  # strict: every name and shape matches
    idx = tokens()
    torch.testing.assert_close(rebuilt.eval()(idx)["logits"], new(idx)["logits"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="study-v1"):
        upgrade_model_config({**old, "depenc": {**old_dep, "parser": "frontier"}}, "depenc")


def test_head_mixture_is_a_distribution_and_the_explicit_mixture():
    """log-probabilities that sum to one, equal to (1 - g_i) p_lm(h_i) + sum_j M_ij q(h_j) written out;
    the zero_gate ablation leaves the plain LM head's distribution exactly."""
    m = make_trained_like({"output": "head_mixture"})
    idx = tokens()
    out = m(idx, return_analysis=True, need_weights=False)
    logp = out["logits"]  # (B, T, V)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(logp.shape[:2]), atol=1e-5, rtol=0)
    # the explicit formula, from the model's own pieces
    h = {}
    hook = m.ln_f.register_forward_hook(lambda mod, inp, o: h.update(x=inp[0]))  # the final states
    m(idx)
    hook.remove()
    x, M = h["x"], out["dep"]["M"]
    p_lm = torch.softmax(m.lm_head(m.ln_f(x)), -1)
    q = torch.softmax(m.lm_head(m.head_mixture.ln_q(m.head_mixture.w_q(x))), -1)
    want = torch.zeros_like(p_lm)
    B, T_, _ = M.shape
    for b in range(B):
        for i in range(T_):  # row i mixes the heads j <= i only (M is causal)
            want[b, i] = (1 - M[b, i].sum()) * p_lm[b, i] + sum(M[b, i, j] * q[b, j] for j in range(i + 1))
    torch.testing.assert_close(logp.exp(), want, atol=1e-5, rtol=1e-4)
    assert (M.sum(-1) > 0.1).any()  # the mixture is really exercised
    m.ablate("zero_gate")  # M = 0 everywhere (the states change too: no structured term, no arc bias)
    hook = m.ln_f.register_forward_hook(lambda mod, inp, o: h.update(x=inp[0]))
    plain = m(idx)["logits"]
    hook.remove()
    torch.testing.assert_close(plain.exp(), torch.softmax(m.lm_head(m.ln_f(h["x"])), -1), atol=1e-5, rtol=1e-4)


def test_head_mixture_needs_the_next_word_target():
    from depenc.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="head_mixture .* needs model.depenc.target=next"):
        load_config("depenc_small", ["model.depenc.output=head_mixture", "model.depenc.target=self"])


def test_right_frontier_oracle_rows():
    """target=frontier: row i = the words a later word may still attach to, from the prefix's gold arcs only."""
    from depenc.config import ConfigError, load_config
    from depenc.data.gold import right_frontiers, sentence_gold_matrix

    # the dog that the cat sees runs .   heads (1-based): the->dog, dog->runs, that->sees, the->cat,
    # cat->sees, sees->dog, runs->root, .->runs
    heads = [2, 7, 6, 5, 6, 2, 0, 7]
    assert right_frontiers(heads) == [[0], [1], [1, 2], [1, 2, 3], [1, 2, 4], [1, 5], [6], [6, 7]]
    M = sentence_gold_matrix(heads, "frontier")  # input [BOS] + sentence: row i+1 = frontier after word i
    assert M.shape == (9, 9) and M[0].sum() == 0  # after BOS nothing to attach to
    assert M[3, 2:4].tolist() == [0.5, 0.5] and M[3].sum() == pytest.approx(1.0)
    # what the next word is never changes a row: the row after word i sees the arcs among words <= i only
    other = list(heads)
    other[7] = 0  # a different attachment of the last word
    torch.testing.assert_close(sentence_gold_matrix(other, "frontier")[:8], M[:8])
    with pytest.raises(ConfigError, match="target=frontier is the gold right-frontier oracle"):
        load_config("depenc_small", ["model.depenc.target=frontier"])
    load_config("depenc_small", ["model.depenc.target=frontier", "model.depenc.parser=oracle"])


@pytest.mark.parametrize("target", ["next", "self"])
def test_gate_attention_is_attention_times_structure_not_renormalised(target):
    """attention=gate: out = (A * (I + R)) V with R the token's own soft arcs (M's row i-1 for next, i
    for self); the rows' mass is < 1 wherever the parse leaves relatives out; no KV cache (recomputes)."""
    from depenc.models.attention import DepGateAttention, explicit_attention, structure_of

    m = make_trained_like({"attention": "gate", "target": target})
    idx = tokens()
    out = m(idx, return_analysis=True, need_weights=True)
    M = out["dep"]["M"]
    S = structure_of(M, target == "self")
    if target == "next":
        torch.testing.assert_close(S[:, 5, :5], M[:, 4, :5])  # token 5's arcs = row 4's
    else:
        torch.testing.assert_close(S[:, 5, :5], M[:, 5, :5])
    assert torch.all(torch.diagonal(S, dim1=1, dim2=2) == 1)
    top = m.blocks[-1].attn
    assert isinstance(top, DepGateAttention)
    w = out["attn"][-1]  # (B, H, T, T) of the top block: the gated weights
    assert (w.sum(-1) < 0.999).any() and (w.sum(-1) <= 1 + 1e-5).all()
    # the top block's weights = its plain causal softmax times S
    h = {}
    hook = m.blocks[-1].ln_1.register_forward_hook(lambda mod, inp, o: h.update(x=o))
    m(idx)
    hook.remove()
    B, T_, C = h["x"].shape
    q, k, v = (t.view(B, T_, 2, C // 2).transpose(1, 2) for t in top.c_attn(h["x"]).split(C, dim=2))
    causal = torch.full((T_, T_), float("-inf")).triu(1)
    _, A = explicit_attention(q, k, v, causal)
    torch.testing.assert_close(w, A * S.unsqueeze(1), atol=1e-6, rtol=1e-5)
    assert not m.supports_cache()
    g = torch.Generator().manual_seed(0)
    a = m.generate(idx[:, :5], 6, temperature=1.0, generator=g, use_cache=True)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(a, m.generate(idx[:, :5], 6, temperature=1.0, generator=g, use_cache=False))
