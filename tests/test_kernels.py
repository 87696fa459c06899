"""The FlexAttention backend of the bias form (depenc.kernels): its score modifier and causal block mask
against the reference (SDPA with the materialised bias), outputs and gradients, and when it falls back.

PyTorch's FlexAttention has no CPU backward, and compiling it costs ~15 s on CPU; the fast tests run the
score modifier through FlexAttention's unfused reference implementation (the same higher-order op and
autograd rule the compiled kernel implements), with the CPU check that refuses a backward lifted. The
compiled kernel is checked in tests/test_scale.py (slow, forward on CPU) and scripts/gpu_check.sh (GPU).
"""

import pytest
import torch

from depenc.kernels import (FLEX_BLOCK, BIASED_BACKENDS, bias_score_mod, causal_block_mask, flex_applies,
                            flex_biased, lean_biased, sdpa_biased)


def alibi_base(H: int, T: int) -> torch.Tensor:
    """(1, H, T, T) ALiBi + causal, as Transformer._alibi builds it."""
    i, j = torch.arange(T).view(-1, 1), torch.arange(T).view(1, -1)
    slopes = torch.tensor([2 ** (-8 * (h + 1) / H) for h in range(H)]).view(-1, 1, 1)
    causal = torch.full((T, T), float("-inf")).triu(1)
    return (-slopes * (i - j).clamp(min=0).float() + causal).unsqueeze(0)


def inputs(B=2, H=3, T=24, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
    beta = torch.rand(H, generator=g) + 0.3
    M = torch.rand(B, T, T, generator=g).tril() * 0.9  # a soft arc matrix: causal, rows of mass < 1
    log_M = torch.log(M + 0.01).unsqueeze(1)  # (B, 1, T, T)
    return q, k, v, beta, log_M


VARIANTS = {"dep": (True, False), "dep_alibi": (True, True), "alibi": (False, True), "causal": (False, False)}


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("name", list(VARIANTS))
def test_flex_score_mod_equals_sdpa_outputs_and_gradients(name, monkeypatch):
    import torch.nn.attention.flex_attention as fa

    monkeypatch.setattr(fa, "_validate_device", lambda *a: None)  # the unfused reference has a CPU backward
    dep, alibi = VARIANTS[name]
    q, k, v, beta, log_M = inputs()
    T = q.size(2)
    base = alibi_base(q.size(1), T) if alibi else torch.full((T, T), float("-inf")).triu(1)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, beta, log_M)]
    results = []
    for run in ("flex", "sdpa"):
        qq, kk, vv, bb, ll = (t.detach().clone().requires_grad_() for t in leaves)
        args = (bb, ll) if dep else (None, None)
        if run == "flex":
            y = fa.flex_attention(qq, kk, vv, score_mod=bias_score_mod(base, *args), block_mask=causal_block_mask(T, q.device))
        else:
            y = sdpa_biased(qq, kk, vv, base, *args)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()  # every output weighs differently
        results.append((y, [t.grad for t in (qq, kk, vv, *((bb, ll) if dep else ()))]))
    (y_flex, g_flex), (y_ref, g_ref) = results
    torch.testing.assert_close(y_flex, y_ref, atol=1e-5, rtol=1e-5)
    for what, a, b in zip(("q", "k", "v", "beta", "log_M"), g_flex, g_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda s: f"grad of {what}: {s}")
    if dep:  # the dependency term is really read: beta and log_M get a gradient, log_M's causal part only
        assert g_flex[3].abs().min() > 0 and g_flex[4].abs().sum() > 0
        assert g_flex[4][..., torch.ones(T, T).triu(1).bool()].abs().max() == 0


def test_flex_applies_where_flex_can_run():
    cpu = torch.zeros(1, 2, FLEX_BLOCK, 4)
    meta = torch.empty(1, 2, FLEX_BLOCK, 4, device="meta")  # stands in for a GPU tensor (no CPU rule)
    one_row = torch.zeros(1, 2, 1, 4)
    with torch.no_grad():
        assert flex_applies(cpu, cpu)  # CPU inference at a multiple of the tile
        assert not flex_applies(cpu[:, :, :48], cpu[:, :, :48])  # an odd length without gradients: SDPA
        assert not flex_applies(one_row, cpu)  # cached decoding: new rows against longer keys
        assert not flex_applies(meta, meta, dropout_p=0.1)  # FlexAttention has no attention dropout
    assert not flex_applies(cpu, cpu)  # gradients on CPU: no FlexAttention backward there
    assert flex_applies(meta, meta) and flex_applies(meta[:, :, :48], meta[:, :, :48])  # training, any length


def test_flex_falls_back_to_the_reference_exactly_with_gradients_on_cpu():
    q, k, v, beta, log_M = inputs(T=FLEX_BLOCK)
    T = q.size(2)
    base = torch.full((T, T), float("-inf")).triu(1)
    got = flex_biased(q.requires_grad_(), k, v, base, beta, log_M)  # no compile: the reference runs
    assert torch.equal(got, sdpa_biased(q, k, v, base, beta, log_M))
    got.sum().backward()
    assert q.grad is not None


def test_auto_is_lean_on_cpu_and_sdpa_with_dropout():
    from depenc.models.attention import resolve_attention_impl
    from depenc.schema import ModelConfig

    assert resolve_attention_impl(ModelConfig(kind="depenc")) == "auto"
    assert resolve_attention_impl(ModelConfig(kind="depenc", dropout=0.1)) == "sdpa"
    assert resolve_attention_impl(ModelConfig(kind="depenc", attention_impl="flex", dropout=0.1)) == "flex"
    q, k, v, beta, log_M = inputs()
    T = q.size(2)
    base = torch.full((T, T), float("-inf")).triu(1)
    assert torch.equal(BIASED_BACKENDS["auto"](q, k, v, base, beta, log_M), lean_biased(q, k, v, base, beta, log_M))


@pytest.mark.slow  # compiles FlexAttention and two tiny models for training on CPU (~2 min)
def test_gpu_check_script_runs_every_part_in_tiny_mode(tmp_path):
    """scripts/gpu_check.sh --tiny on this machine: the script a GPU session runs is known to work."""
    import json
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--tiny"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(report["parts"]) == {"flex", "train", "bench"} and all(p["ok"] for p in report["parts"].values())
    flex = report["parts"]["flex"]
    assert flex["kernels"][0]["out_rel_err"] <= 1e-4 and flex["model"]["attention_impl"] == "flex"
    for run in report["parts"]["train"]["runs"].values():
        assert run["end_loss"] < run["start_loss"] and len(run["curve"]) == 4
    rows = report["parts"]["bench"]["bench_sdpa"]["train"]
    assert {r["attention_impl"] for r in rows} == {"sdpa"} and {r["model"] for r in rows} == {"depenc"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench", "bench_sdpa", "gpu_check.json", "gpu_check.md", "log.txt"]
