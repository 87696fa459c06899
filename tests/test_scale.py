"""Scale switches (DESIGN 8) at smoke level on CPU: DDP with two processes (gloo) through the real entry
point, bf16 mixed precision, torch.compile, and the optional FlexAttention path."""

import csv
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import REPO, tiny_overrides
from depenc.train import main

QUIET = ["callbacks.alignment.enabled=false", "callbacks.agreement.enabled=false",
         "callbacks.generation.enabled=false", "trainer.test_at_end=false"]


def run_dirs(tmp_path: Path, exp: str = "debug") -> list[Path]:
    root = tmp_path / "runs" / exp
    return sorted(root.iterdir()) if root.is_dir() else []


def metric_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def train_cli(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "depenc.train", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def check_rank_zero_outputs(run_dir: Path, last_step: int, n_samples: int) -> None:
    rows = metric_rows(run_dir)
    per_step = Counter(int(float(r["step"])) for r in rows if r.get("train/loss"))
    assert per_step and max(per_step.values()) == 1, f"duplicate train/loss rows: {per_step}"
    assert max(per_step) == last_step - 1 or max(per_step) == last_step, per_step
    samples = sorted((run_dir / "samples").glob("*.jsonl"))
    steps = [int(p.stem) for p in samples]
    assert len(steps) == len(set(steps)) and samples, samples
    for path in samples:  # written once, by one rank
        assert len(path.read_text().splitlines()) == n_samples, path
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == last_step


@pytest.mark.slow
def test_ddp_two_cpu_processes_rank_zero_outputs_and_resume(tmp_path):
    ddp = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]
    args = ["debug", *tiny_overrides(tmp_path, *ddp, "model.kind=depenc", "trainer.max_steps=6",
                                     "trainer.val_check_interval=3", "trainer.checkpoint_every_n_steps=3",
                                     "trainer.log_every_n_steps=1", "trainer.test_at_end=false")]
    out = train_cli(args)
    dirs = run_dirs(tmp_path)
    assert len(dirs) == 1, f"one run folder expected, got {dirs}"
    run_dir = dirs[0]
    assert out.stdout.count("run folder:") == 1  # the final report comes from rank zero only
    check_rank_zero_outputs(run_dir, 6, n_samples=10)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["global_step"] == 6
    assert summary["tokens_seen"] == 6 * 8 * 32 * 2  # both ranks' tokens
    info = json.loads((run_dir / "run.json").read_text())
    assert len(info["commands"]) == 1

    train_cli(["--resume", str(run_dir), *ddp, "trainer.max_steps=9"])
    assert run_dirs(tmp_path) == [run_dir]
    check_rank_zero_outputs(run_dir, 9, n_samples=10)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["global_step"] == 9
    assert summary["tokens_seen"] == 9 * 8 * 32 * 2
    steps = sorted({int(float(r["step"])) for r in metric_rows(run_dir) if r.get("train/loss")})
    # history before the resume kept and continued; a row counts the optimizer steps done
    assert steps == list(range(1, 10)), steps
    info = json.loads((run_dir / "run.json").read_text())
    assert len(info["commands"]) == 2
    assert not (run_dir / "metrics.before_resume.csv").exists()


@pytest.mark.slow
def test_ddp_validation_equals_one_process(tmp_path):
    """Two gloo processes share the validation blocks unevenly (the split has an odd number of them), with no
    block repeated or left out: the logged loss equals one process's over the whole split to 1e-6, and bits
    per byte and word perplexity are logged."""
    from depenc.data.datamodule import LMDataModule
    from depenc.evaluate import load_run
    from depenc.evaluation.likelihood import nll_of_blocks

    ddp = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "trainer.dist_timeout_s=120"]
    train_cli(["debug", *tiny_overrides(tmp_path, *ddp, *QUIET, "callbacks.excess.enabled=false", "run.name=d",
                                        "trainer.max_steps=4", "trainer.val_check_interval=4")])
    run_dir = run_dirs(tmp_path)[0]
    (row,) = [r for r in metric_rows(run_dir) if r.get("val/validation/loss")]
    assert row["val/validation/bpb"] and row["val/validation/word_ppl"]
    _, model, _, run_config = load_run(str(run_dir / "checkpoints" / "last.ckpt"), "cpu")
    dm = LMDataModule(run_config["data"], seed=run_config["seed"])
    dm.setup()
    blocks = dm.eval_dataset("validation")
    assert len(blocks) % 2 == 1
    nll, n = nll_of_blocks(model.eval(), blocks, batch_size=8)
    assert n == dm.split_stats["validation"]["n_tokens"]
    assert abs(float(row["val/validation/loss"]) - nll / n) < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["baseline", "depenc"])
def test_bf16_mixed_precision_on_cpu(tmp_path, kind):
    assert main(["debug", *tiny_overrides(tmp_path, f"model.kind={kind}", "trainer.accelerator=cpu",
                                          "trainer.precision=bf16-mixed", "trainer.max_steps=4", "trainer.log_every_n_steps=1",
                                          "trainer.val_check_interval=4", *QUIET)]) == 0
    (run_dir,) = run_dirs(tmp_path)
    losses = [float(r["train/loss"]) for r in metric_rows(run_dir) if r.get("train/loss")]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 4


@pytest.mark.slow
def test_torch_compile_on_cpu(tmp_path):
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("torch.compile on CPU needs a C compiler")
    assert main(["debug", *tiny_overrides(tmp_path, "model.kind=depenc", "model.compile=true",
                                          "trainer.accelerator=cpu", "trainer.max_steps=3",
                                          "trainer.val_check_interval=3", *QUIET)]) == 0
    (run_dir,) = run_dirs(tmp_path)
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 3
    from depenc.lightning import load_lm

    try:  # analysis / evaluation rebuild the plain model from the checkpoint
        lm = load_lm(str(run_dir / "checkpoints" / "last.ckpt"))
    except RuntimeError as exc:
        pytest.fail("a model.compile=true checkpoint does not load (state_dict keys carry '_orig_mod.'): "
                    f"train.py should compile in place with lm.model.compile(), not torch.compile(lm.model): {exc!s:.200}")
    assert lm.model.num_params() > 0


# ---- FlexAttention ------------------------------------------------------------------------------
FLEX_VARIANTS = {
    "depenc_bias": ("depenc", {}, {}),
    "alibi": ("baseline", {}, {"pos": "alibi"}),
    "alibi_depenc_bias_self": ("depenc", {"target": "self"}, {"pos": "alibi"}),
}


def flex_pair(name: str, device: str):
    from depenc.schema import DepEncConfig, ModelConfig
    from depenc.models.transformer import Transformer

    kind, dep, kw = FLEX_VARIANTS[name]
    torch.manual_seed(0)
    cfg = ModelConfig(kind=kind, vocab_size=50, block_size=128, n_layer=3, n_head=2, n_embd=32,
                      depenc=DepEncConfig(**dep), attention_impl="sdpa", **kw)
    sdpa = Transformer(cfg).to(device)
    with torch.no_grad():
        for b in sdpa.blocks:
            if getattr(b.attn, "dep_beta", None) is not None:
                b.attn.dep_beta.uniform_(0.3, 1.0)  # beta starts at 0: make the bias matter
    flex = Transformer(ModelConfig.from_dict({**cfg.to_dict(), "attention_impl": "flex"})).to(device)
    flex.load_state_dict(sdpa.state_dict())
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(1, 50, (2, 128), generator=g)  # a multiple of FlexAttention's tile: no SDPA fallback
    idx[:, 0] = 0
    return sdpa, flex, idx.to(device)


def _needs_compiler():
    if shutil.which("cc") is None and shutil.which("gcc") is None and not torch.cuda.is_available():
        pytest.skip("FlexAttention is compiled (torch.compile); no C compiler for the CPU backend here")


@pytest.mark.slow  # compiles FlexAttention (~20 s per variant on CPU)
@pytest.mark.parametrize("name", list(FLEX_VARIANTS))
def test_flex_attention_inference_equals_sdpa(name, monkeypatch):
    """Runs wherever FlexAttention does: on CPU (PyTorch 2.13) forward only, so without gradients."""
    _needs_compiler()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sdpa, flex, idx = flex_pair(name, device)
    sdpa.eval(), flex.eval()
    with torch.no_grad():
        ref = sdpa(idx)["logits"]
        monkeypatch.setattr("depenc.kernels.sdpa_biased", no_fallback)
        got = flex(idx)["logits"]
        torch.testing.assert_close(got, ref, atol=2e-4, rtol=2e-4)
        if name == "depenc_bias":  # FlexAttention inside a compiled model (model.compile=true)
            flex.compile()
            torch.testing.assert_close(flex(idx)["logits"], ref, atol=2e-4, rtol=2e-4)


def no_fallback(*args, **kwargs):
    raise AssertionError("attention_impl=flex fell back to SDPA")


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="FlexAttention has no backward pass on CPU in PyTorch 2.13 (training path needs CUDA); "
                           "CPU training keeps the SDPA path")
@pytest.mark.parametrize("name", list(FLEX_VARIANTS))
def test_flex_attention_training_equals_sdpa_on_gpu(name):
    sdpa, flex, idx = flex_pair(name, "cuda")
    sdpa.train(), flex.train()
    a, b = sdpa(idx, idx), flex(idx, idx)
    torch.testing.assert_close(b["logits"], a["logits"], atol=2e-3, rtol=2e-3)
    a["loss"].backward()
    b["loss"].backward()
    grads = dict(flex.named_parameters())
    for n, p in sdpa.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[n].grad, p.grad, atol=2e-3, rtol=2e-2, msg=lambda s: f"{n}: {s}")


def test_flex_attention_cpu_training_keeps_sdpa():
    """With gradients on CPU the flag falls back to SDPA (no FlexAttention backward there)."""
    _, flex, idx = flex_pair("depenc_bias", "cpu")
    if torch.cuda.is_available():
        pytest.skip("CPU-only behaviour")
    flex.train()
    flex(idx, idx)["loss"].backward()  # FlexAttention would raise here (no CPU backward)
    assert all(b.attn.dep_beta.grad is not None for b in flex.blocks[1:])


# ---- block-causal matmul (CPU fast path of the mix form and the structured encoding) -------------
@pytest.mark.parametrize("with_y", [True, False])
def test_causal_matmul_add_equals_plain_product(with_y):
    from depenc.kernels import CAUSAL_CHUNK, causal_matmul_add

    torch.manual_seed(0)
    B, T, C = 2, 3 * CAUSAL_CHUNK + 22, 8  # several row blocks, the last one partial
    M0 = torch.randn(B, T, T).tril()  # causal, diagonal included (target=next)
    X0, y0, g = torch.randn(B, T, C), torch.randn(B, T, C), torch.randn(B, T, C)
    leaves = [t.clone().requires_grad_() for t in (M0, X0, y0)]
    M, X, y = leaves
    out = causal_matmul_add(y if with_y else None, M, X)
    ref_leaves = [t.clone().requires_grad_() for t in (M0, X0, y0)]
    Mr, Xr, yr = ref_leaves
    ref = (yr + Mr @ Xr) if with_y else Mr @ Xr
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-5)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(M.grad.tril(), Mr.grad.tril(), atol=1e-4, rtol=1e-5)  # M is zero above
    torch.testing.assert_close(X.grad, Xr.grad, atol=1e-4, rtol=1e-5)
    if with_y:
        torch.testing.assert_close(y.grad, yr.grad)


def test_model_with_block_causal_path_equals_plain_path(monkeypatch):
    """DepEnc (mix form, structured encoding) at T > the block size: logits and gradients of the
    block-causal CPU path equal those of one plain batched matmul."""
    import depenc.kernels as kernels
    from depenc.schema import DepEncConfig, ModelConfig
    from depenc.models.transformer import Transformer

    def run():
        torch.manual_seed(0)
        m = Transformer(ModelConfig(kind="depenc", vocab_size=50, block_size=160, n_layer=3, n_head=2, n_embd=32,
                                    depenc=DepEncConfig(attention="mix")))
        with torch.no_grad():
            torch.nn.init.normal_(m.encoder.w_struct.weight, std=0.1)
        idx = torch.randint(1, 50, (2, 150), generator=torch.Generator().manual_seed(1))
        idx[:, 0] = 0
        out = m(idx, idx)
        out["loss"].backward()
        return out["logits"].detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    logits, grads = run()
    monkeypatch.setattr(kernels, "CAUSAL_CHUNK", 10_000)  # one plain matmul
    ref_logits, ref_grads = run()
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, atol=1e-5, rtol=1e-4, msg=lambda s: f"{name}: {s}")


@pytest.mark.parametrize("alibi", [False, True])
def test_dep_bias_attention_equals_sdpa_with_bias(alibi):
    """The lean CPU training path of the bias form: outputs and gradients (q, k, v, beta, log M) equal
    SDPA with the materialised bias causal (+ ALiBi) + beta_h log(M + eps)."""
    import torch.nn.functional as F

    from depenc.kernels import lean_biased
    from depenc.models.transformer import alibi_slopes

    torch.manual_seed(0)
    B, H, T, D = 2, 3, 37, 8
    base = torch.full((T, T), float("-inf")).triu(1)
    if alibi:
        pos = torch.arange(T)
        base = (-alibi_slopes(H).view(-1, 1, 1) * (pos.view(-1, 1) - pos.view(1, -1)).clamp(min=0) + base).unsqueeze(0)
    M = torch.rand(B, T, T).tril() * (torch.rand(B, T, T) > 0.5)
    leaves = [torch.randn(B, H, T, D), torch.randn(B, H, T, D), torch.randn(B, H, T, D),
              torch.rand(H) + 0.2, torch.log(M + 0.01).unsqueeze(1)]
    a = [t.clone().requires_grad_() for t in leaves]
    b = [t.clone().requires_grad_() for t in leaves]
    out = lean_biased(a[0], a[1], a[2], base, a[3], a[4])
    ref = F.scaled_dot_product_attention(b[0], b[1], b[2], attn_mask=torch.addcmul(base, b[3].view(1, -1, 1, 1), b[4]))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    for name, x, y in zip(["q", "k", "v", "beta", "log_M"], a, b):
        torch.testing.assert_close(x.grad, y.grad, atol=1e-4, rtol=1e-4, msg=lambda s: f"{name}: {s}")


def test_ddp_gets_the_process_group_timeout_of_the_config():
    from datetime import timedelta
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DDPStrategy

    from depenc.train import strategy_of

    def trainer(**kw):
        return SimpleNamespace(**{"strategy": "auto", "devices": 1, "num_nodes": 1, "accelerator": "cpu",
                                  "dist_timeout_s": 90, **kw})

    assert strategy_of(trainer()) == "auto" and strategy_of(trainer(strategy="fsdp", devices=2)) == "fsdp"
    for kw in ({"devices": 2}, {"strategy": "ddp", "devices": "0,1"}, {"num_nodes": 2}):
        strategy = strategy_of(trainer(**kw))
        assert isinstance(strategy, DDPStrategy) and strategy._timeout == timedelta(seconds=90), kw
