"""The prepared GPU check (``scripts/gpu_check.sh``; under 8 minutes on one H200), to run whenever a GPU is lent:

a. ``flex``: FlexAttention against the reference (SDPA with the materialised bias) for the bias form:
   outputs and the gradients of q, k, v, beta and log M in float32 and bfloat16 (kernel level, T=1024),
   and a DepEnc model's loss and parameter gradients with ``attention_impl`` auto (Flex) against sdpa;
b. ``train``: 200 steps of DepEnc and of the baseline on the synthetic grammar with bf16-mixed precision and
   ``model.compile=true`` (a small GPU config through overrides): the loss curve, start and end loss;
c. ``bench``: peak memory and tokens/s at T=1024 and 2048 of baseline, DepEnc and GPT-2 (GPT-2 small sizes,
   bf16; ``python -m depenc.bench``), and DepEnc again with ``attention_impl=sdpa`` (the materialised bias).

``python -m depenc.gpu_check [--out DIR] [--parts flex train bench] [--tiny]`` writes ``gpu_check.json`` and
``gpu_check.md`` (and the bench reports) to DIR ($OUT if set); a part that fails is recorded and the others
still run; the exit code is 1 if any check failed. ``--tiny`` runs every part at tiny sizes on whatever device
there is (the CPU here: FlexAttention forward only, as PyTorch has no CPU backward for it), so the script is
known to work before a GPU is lent.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

PARTS = ("flex", "train", "bench")
# relative error bounds (|a - b| / |b|, norms over the whole tensor) of FlexAttention against the reference
TOLERANCE = {"float32": {"out": 1e-4, "grad": 1e-3}, "bfloat16": {"out": 2e-2, "grad": 5e-2}}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def device_and_sizes(tiny: bool) -> tuple[torch.device, dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if tiny:
        return device, {"B": 2, "H": 2, "T": 128, "D": 16}
    return device, {"B": 4, "H": 12, "T": 1024, "D": 64}


# ---- a. FlexAttention against the reference ----------------------------------------------------
def bias_inputs(B, H, T, D, device, dtype, seed=0):
    """q, k, v (dtype), beta (H,) and log M (B, 1, T, T) of a soft arc matrix (float32, as the encoder gives)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, generator=g).to(device, dtype) for _ in range(3))
    beta = (torch.rand(H, generator=g) + 0.5).to(device)
    scores = torch.randn(B, T, T, generator=g).masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
    M = torch.softmax(scores * 3, dim=-1) * 0.9
    return q, k, v, beta, torch.log(M + 0.01).unsqueeze(1).to(device)


def kernel_check(device, sizes: dict, dtype: torch.dtype) -> dict:
    """flex_biased vs sdpa_biased on one input; gradients where FlexAttention has a backward (CUDA)."""
    from depenc.kernels import flex_applies, flex_biased, sdpa_biased

    T = sizes["T"]
    base = torch.full((T, T), float("-inf"), device=device).triu(1)
    backward = device.type == "cuda"
    results, grads = {}, {}
    for name, fn in (("flex", flex_biased), ("sdpa", sdpa_biased)):
        leaves = [t.requires_grad_(backward) for t in bias_inputs(**sizes, device=device, dtype=dtype)]
        with torch.set_grad_enabled(backward):
            if name == "flex" and not flex_applies(leaves[0], leaves[1]):
                raise RuntimeError("FlexAttention would not run here (the check would compare SDPA with itself)")
            y = fn(leaves[0], leaves[1], leaves[2], base, leaves[3], leaves[4])
            if backward:
                (y.float() * torch.linspace(-1, 1, y.numel(), device=device).view_as(y)).sum().backward()
        results[name] = y.detach()
        grads[name] = {n: t.grad for n, t in zip(("q", "k", "v", "beta", "log_M"), leaves) if t.grad is not None}
    tol = TOLERANCE[str(dtype).replace("torch.", "")]
    out = {"dtype": str(dtype).replace("torch.", ""), **sizes, "out_rel_err": rel_err(results["flex"], results["sdpa"]),
           "grad_rel_err": {n: rel_err(grads["flex"][n], g) for n, g in grads["sdpa"].items()}, "tolerance": tol}
    out["ok"] = out["out_rel_err"] <= tol["out"] and all(e <= tol["grad"] for e in out["grad_rel_err"].values())
    return out


def model_check(device, tiny: bool) -> dict:
    """A DepEnc model (attention_impl auto: Flex on CUDA) against the same weights with sdpa: loss, logits and
    every parameter gradient (the encoder's through log M, beta's through the score modifier). Without CUDA:
    attention_impl=flex, forward only."""
    from depenc.models.transformer import ModelConfig, Transformer

    T = 128 if tiny else 256
    cfg = ModelConfig(kind="depenc", vocab_size=512, block_size=T, n_layer=3, n_head=4, n_embd=64 if tiny else 256,
                      attention_impl="sdpa")
    torch.manual_seed(0)
    ref = Transformer(cfg).to(device)
    with torch.no_grad():
        for b in ref.blocks:
            if hasattr(b.attn, "dep_beta"):
                b.attn.dep_beta.uniform_(0.5, 1.5)  # beta starts at 0: make the dependency term count
    impl = "auto" if device.type == "cuda" else "flex"
    auto = Transformer(ModelConfig.from_dict({**cfg.to_dict(), "attention_impl": impl})).to(device)
    auto.load_state_dict(ref.state_dict())
    idx = torch.randint(1, 512, (4, T), generator=torch.Generator().manual_seed(0)).to(device)
    idx[:, 0] = 0
    backward = device.type == "cuda"
    outs = {}
    for name, model in (("auto", auto), ("sdpa", ref)):
        with torch.set_grad_enabled(backward):
            out = model(idx, idx)
            if backward:
                out["loss"].backward()
        outs[name] = out
    grads = {n: rel_err(p.grad, dict(ref.named_parameters())[n].grad) for n, p in auto.named_parameters()
             if p.grad is not None} if backward else {}
    worst = max(grads.items(), key=lambda kv: kv[1]) if grads else (None, 0.0)
    res = {"T": T, "attention_impl": impl,
           "loss": [float(outs["auto"]["loss"]), float(outs["sdpa"]["loss"])],
           "logits_rel_err": rel_err(outs["auto"]["logits"], outs["sdpa"]["logits"]),
           "worst_grad": {"param": worst[0], "rel_err": worst[1]}, "n_grads": len(grads)}
    res["ok"] = res["logits_rel_err"] <= 1e-4 and worst[1] <= 2e-3
    return res


def part_flex(device, tiny: bool) -> dict:
    _, sizes = device_and_sizes(tiny)
    dtypes = [torch.float32] if device.type != "cuda" else [torch.float32, torch.bfloat16]
    kernels = [kernel_check(device, sizes, dt) for dt in dtypes]
    model = model_check(device, tiny)
    return {"kernels": kernels, "model": model, "ok": all(k["ok"] for k in kernels) and model["ok"]}


# ---- b. bf16 + compile loss curves -------------------------------------------------------------
def train_overrides(root: Path, kind: str, steps: int, tiny: bool, device) -> list[str]:
    size = (["model.n_layer=2", "model.n_head=2", "model.n_embd=32", "data.block_size=32", "data.batch_size=8",
             "data.synthetic.n_train=600"] if tiny else
            ["model.n_layer=6", "model.n_head=8", "model.n_embd=256", "data.block_size=256", "data.batch_size=32",
             "data.synthetic.n_train=20000"])
    return [f"run.root={root / 'runs'}", f"data.cache_dir={root / 'cache'}", f"run.name={kind}",
            "logger.wandb.mode=disabled", f"model.kind={kind}", "model.compile=true",
            "trainer.precision=bf16-mixed", f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
            f"trainer.max_steps={steps}", f"trainer.val_check_interval={max(1, steps // 2)}",
            f"trainer.checkpoint_every_n_steps={steps}", "trainer.limit_val_batches=8", "trainer.test_at_end=false",
            f"trainer.log_every_n_steps={max(1, steps // 20)}", f"optim.warmup_steps={max(1, steps // 10)}",
            "data.synthetic.n_validation=300", "data.synthetic.n_test=100", "data.synthetic.n_test_long=50",
            *size,
            *(f"callbacks.{c}.enabled=false" for c in ("alignment", "generation", "agreement", "excess"))]


def loss_curve(metrics_csv: Path) -> tuple[list[list[float]], dict]:
    """[(step, train loss)] and the last validation numbers of a run's metrics.csv."""
    curve, val = [], {}
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("train/loss"):
                curve.append([float(row.get("step") or len(curve)), float(row["train/loss"])])
            val.update({k: float(v) for k, v in row.items() if k.startswith("val/validation/") and v})
    return curve, val


def part_train(device, tiny: bool, steps: int) -> dict:
    from depenc.train import main as train

    root = Path(tempfile.mkdtemp(prefix="gpu_check_runs_"))  # not under $OUT: a run folder has many files
    runs = {}
    for kind in ("depenc", "baseline"):
        t0 = time.time()
        code = train(["debug", *train_overrides(root, kind, steps, tiny, device)])
        run_dir = root / "runs" / "debug" / kind
        curve, val = loss_curve(run_dir / "metrics.csv") if (run_dir / "metrics.csv").is_file() else ([], {})
        runs[kind] = {"exit_code": code, "wall_s": time.time() - t0, "curve": curve, "val": val,
                      "start_loss": curve[0][1] if curve else None, "end_loss": curve[-1][1] if curve else None}
        print(f"[train] {kind}: exit {code}, loss {runs[kind]['start_loss']} -> {runs[kind]['end_loss']} "
              f"in {runs[kind]['wall_s']:.0f} s", flush=True)
    ok = all(r["exit_code"] == 0 and r["curve"] and r["end_loss"] < r["start_loss"] for r in runs.values())
    return {"steps": steps, "runs": runs, "ok": ok}


# ---- c. bench -----------------------------------------------------------------------------------
def part_bench(device, tiny: bool, out: Path) -> dict:
    from depenc.bench import main as bench

    if tiny:
        common = ["--quick", "--memory", "none", "--device", device.type, "--reps", "1", "--warmup", "1"]
        runs = {"bench": [*common], "bench_sdpa": [*common, "--attention-impl", "sdpa", "--models", "depenc"]}
    else:
        common = ["--preset", "gpt2-small", "--lengths", "1024", "2048", "--precision", "bf16", "--reps", "2",
                  "--gen-new-tokens", "16", "--device", "cuda"]
        runs = {"bench": [*common], "bench_sdpa": [*common, "--attention-impl", "sdpa", "--models", "depenc"]}
    result = {}
    for name, argv in runs.items():
        code = bench([*argv, "--out", str(out / name)])
        records = json.loads((out / name / "bench.json").read_text()) if code == 0 else []
        result[name] = {"exit_code": code, "argv": argv, "train": [
            {k: r.get(k) for k in ("model", "seq_len", "batch_size", "tokens_per_s", "peak_mem_mb", "attention_impl")}
            for r in records if r["task"] == "train"]}
    result["ok"] = all(r["exit_code"] == 0 and r["train"] for r in result.values())
    return result


# ---- report ---------------------------------------------------------------------------------------
def write_report(out: Path, report: dict) -> str:
    lines = ["# GPU check", "", f"- device: {report['device']}; torch {report['torch']}; "
             f"{'tiny' if report['tiny'] else 'full'} mode; wall {report['wall_s']:.0f} s", ""]
    for part in PARTS:
        r = report["parts"].get(part)
        if r is None:
            continue
        lines.append(f"## {part}: {'PASS' if r.get('ok') else 'FAIL'} ({r.get('wall_s', 0):.0f} s)")
        if "error" in r:
            lines += ["", "```", r["error"][-3000:], "```"]
        elif part == "flex":
            for k in r["kernels"]:
                lines.append(f"- kernel {k['dtype']} B={k['B']} H={k['H']} T={k['T']} D={k['D']}: out rel err "
                             f"{k['out_rel_err']:.2e}, grads " + ", ".join(f"{n} {e:.2e}" for n, e in k["grad_rel_err"].items()))
            m = r["model"]
            lines.append(f"- model T={m['T']} (attention_impl {m['attention_impl']} vs sdpa): loss {m['loss'][0]:.6f} / "
                         f"{m['loss'][1]:.6f}, logits rel err {m['logits_rel_err']:.2e}, worst of {m['n_grads']} grads "
                         f"{m['worst_grad']['rel_err']:.2e} ({m['worst_grad']['param']})")
        elif part == "train":
            for kind, run in r["runs"].items():
                lines.append(f"- {kind}: exit {run['exit_code']}, train loss {run['start_loss']} -> {run['end_loss']} "
                             f"({len(run['curve'])} points, {run['wall_s']:.0f} s), val {run['val']}")
        elif part == "bench":
            lines += ["", "| run | model | T | batch | tokens/s | peak memory (MB) |", "| --- | --- | ---: | ---: | ---: | ---: |"]
            for name in ("bench", "bench_sdpa"):
                for rec in r[name]["train"]:
                    mem = f"{rec['peak_mem_mb']:.0f}" if rec["peak_mem_mb"] is not None else "n/a"
                    lines.append(f"| {name} | {rec['model']} ({rec['attention_impl'] or 'HF'}) | {rec['seq_len']} | "
                                 f"{rec['batch_size']} | {rec['tokens_per_s']:.0f} | {mem} |")
        lines.append("")
    text = "\n".join(lines)
    (out / "gpu_check.md").write_text(text)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m depenc.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "reports/gpu_check", help="output folder (default $OUT)")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--steps", type=int, default=None, help="training steps of part train (default 200; tiny 4)")
    p.add_argument("--tiny", action="store_true", help="tiny sizes on any device (the CPU: forward-only Flex)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device, _ = device_and_sizes(args.tiny)
    if device.type != "cuda" and not args.tiny:
        print("no CUDA device: run with --tiny to check the script on this machine", file=sys.stderr)
        return 2
    # one process compiles FlexAttention for many (length, dtype, gradient) cases; past dynamo's default of 8
    # it would run the unfused fallback and the bench would measure that
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    t_start = time.time()
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
              "tiny": args.tiny, "parts": {}}
    steps = args.steps or (4 if args.tiny else 200)
    for part in args.parts:
        t0 = time.time()
        print(f"[{part}] ...", flush=True)
        try:
            if part == "flex":
                res = part_flex(device, args.tiny)
            elif part == "train":
                res = part_train(device, args.tiny, steps)
            else:
                res = part_bench(device, args.tiny, out)
        except Exception:  # one part's failure is a result; the others still run
            res = {"ok": False, "error": traceback.format_exc()}
        res["wall_s"] = time.time() - t0
        report["parts"][part] = res
        gc.collect()  # nothing of one part stays allocated into the next one's peak memory
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(f"[{part}] {'PASS' if res['ok'] else 'FAIL'} in {res['wall_s']:.0f} s", flush=True)
    report["wall_s"] = time.time() - t_start
    print(write_report(out, report))
    return 0 if all(r["ok"] for r in report["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
