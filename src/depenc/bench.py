"""Training throughput and peak memory (DESIGN 6): baseline vs DepEnc vs a peer implementation.

``python -m depenc.bench [--out reports/bench] [--lengths 128 256 512 1024 2048] [--tokens-per-batch 8192]
[--reps N] [--preset gpt2-small] [--precision bf16] [--attention-impl auto] [--quick]``

Measures training steps (forward, loss, backward, AdamW step) of

* ``baseline``: the shared transformer,
* ``depenc``: the same backbone with the default dependency encoder of ``experiments/base.yaml``
  (``model.kind=depenc``; ``--depenc-set key=value`` changes it, e.g. ``attention=bias``),
* ``peer``: Hugging Face ``transformers.GPT2LMHeadModel`` of the same width, depth, heads and
  vocabulary (``n_positions`` = the longest length, dropout 0, SDPA attention),

at several sequence lengths with the same number of tokens per batch (batch = tokens / T), all in one
process and interleaved: after warm-up, every repetition runs each model once, the order rotating.
Sizes: d=256, 4 layers and heads, vocabulary 8000 by default; ``--preset gpt2-small`` is GPT-2 small
(d=768, 12 layers and heads, vocabulary 50257) at T=1024 with 16384 tokens per batch; ``--quick`` is tiny
(tests). ``--precision bf16`` runs the steps under bfloat16 autocast (what ``trainer.precision=bf16-mixed``
trains with); ``--attention-impl`` sets ``model.attention_impl`` of baseline and DepEnc.
The median step time gives tokens/s. Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` after a
reset; on CPU each (model, length) runs in a fresh subprocess that reports the growth of its peak
resident set size (VmHWM) over its own baseline after imports (parameters, optimizer state, activations
and gradients of one training step). Generation tokens/s with and without the KV cache is measured for baseline and
DepEnc. Writes ``<out>/bench.json`` (a list of records) and ``<out>/bench.md`` (table, ratios,
targets, machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from depenc.evaluation.memory import peak_rss_mb

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS = ("baseline", "depenc", "peer")

TARGETS_TEXT = [
    "baseline >= peer (tokens/s) at every length",
    "DepEnc step time at T=256 <= 1.3x baseline",
    "DepEnc peak memory at T=512 <= 1.3x baseline",
]


# ---- models ---------------------------------------------------------------------------------
def default_depenc_config(overrides: list[str] | None = None) -> dict:
    """``model.depenc`` of experiments/base.yaml (what ``model.kind=depenc`` trains), with ``--depenc-set``
    (plain YAML: the section has no interpolations, and the bench then needs no OmegaConf)."""
    from depenc.schema import DepEncConfig

    base = REPO_ROOT / "experiments" / "base.yaml"
    dep = dict(yaml.safe_load(base.read_text())["model"]["depenc"]) if base.is_file() else {}
    for item in overrides or []:
        key, _, value = item.partition("=")
        if key not in DepEncConfig.__dataclass_fields__:
            raise SystemExit(f"--depenc-set: unknown key {key!r}")
        dep[key] = yaml.safe_load(value)
    DepEncConfig(**dep)  # unknown keys fail early
    return dep


def build_model(name: str, args) -> torch.nn.Module:
    max_len = max(args.lengths)
    if name == "peer":
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(vocab_size=args.vocab, n_positions=max_len, n_embd=args.n_embd, n_layer=args.n_layer,
                         n_head=args.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                         bos_token_id=0, eos_token_id=0, use_cache=False)
        return GPT2LMHeadModel._from_config(cfg, attn_implementation="sdpa")
    from depenc.schema import DepEncConfig, ModelConfig
    from depenc.models.transformer import Transformer

    cfg = ModelConfig(kind=name, vocab_size=args.vocab, block_size=max_len, n_layer=args.n_layer, n_head=args.n_head,
                      n_embd=args.n_embd, dropout=0.0, eos_id=0, attention_impl=args.attention_impl,
                      depenc=DepEncConfig(**default_depenc_config(args.depenc_set)))
    return Transformer(cfg)


def batch_for(T: int, args, device) -> torch.Tensor:
    B = max(1, args.tokens_per_batch // T)
    g = torch.Generator().manual_seed(T)
    idx = torch.randint(1, args.vocab, (B, T), generator=g)
    idx[:, 0] = 0  # <eos> opens every block, as in the packed training data
    idx[:, 1::97] = 0  # and a document boundary now and then
    return idx.to(device)


def make_step(name: str, model: torch.nn.Module, opt: torch.optim.Optimizer, idx: torch.Tensor,
              precision: str = "32"):
    if name == "peer":
        def loss():
            return model(input_ids=idx, labels=idx, use_cache=False).loss
    else:
        def loss():
            return model(idx, idx)["loss"]

    def step():
        with torch.autocast(idx.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            value = loss()
        value.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- peak memory ------------------------------------------------------------------------------

def probe_memory(args) -> dict:
    """In a fresh process: peak RSS growth over the after-imports baseline for one (model, length)."""
    name, T = args.probe[0], int(args.probe[1])
    if name == "peer":
        import transformers  # noqa: F401  (imported before the baseline is taken)
    base = peak_rss_mb()
    device = torch.device("cpu")
    model = build_model(name, args).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():  # allocate the optimizer state first (what every later step holds) ...
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    make_step(name, model, opt, batch_for(T, args, device), args.precision)()  # ... then one full training step
    return {"model": name, "seq_len": T, "peak_mem_mb": peak_rss_mb() - base, "rss_after_imports_mb": base}


def memory_in_subprocess(name: str, T: int, argv: list[str]) -> float | None:
    cmd = [sys.executable, "-m", "depenc.bench", *argv, "--probe", name, str(T)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        print(f"  memory probe {name} T={T} failed: {proc.stderr[-500:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_mem_mb"]


# ---- generation -------------------------------------------------------------------------------
@torch.no_grad()
def generation_records(models: dict, args, device) -> list[dict]:
    records = []
    n_new = min(args.gen_new_tokens, max(args.lengths) - 1)
    prompt = torch.zeros(args.gen_batch, 1, dtype=torch.long, device=device)
    for name in ("baseline", "depenc"):
        if name not in models:
            continue
        model = models[name][0]
        model.eval()
        for use_cache in (True, False):
            times = []
            for _ in range(args.gen_reps):
                g = torch.Generator(device=device).manual_seed(0)
                sync(device)
                t0 = time.perf_counter()
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                    model.generate(prompt, n_new, top_k=50, generator=g, use_cache=use_cache)
                sync(device)
                times.append(time.perf_counter() - t0)
            t = statistics.median(times)
            records.append({"task": "generate", "model": name, "use_cache": use_cache, "batch_size": args.gen_batch,
                            "seq_len": 1 + n_new, "new_tokens": n_new, "time_s": t,
                            "tokens_per_s": args.gen_batch * n_new / t, "peak_mem_mb": None})
            print(f"  generate {name:8s} cache={use_cache!s:5s} {args.gen_batch * n_new / t:10.1f} tokens/s")
        model.train()
    return records


# ---- report -----------------------------------------------------------------------------------
def machine_info(device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "device": str(device), "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def ratios(records: list[dict]) -> dict:
    train = {(r["model"], r["seq_len"]): r for r in records if r.get("task") == "train"}
    lengths = sorted({T for _, T in train})
    out = {"depenc_over_baseline_step_time": {}, "baseline_over_peer_tokens_per_s": {},
           "depenc_over_baseline_peak_mem": {}}
    for T in lengths:
        b, d, p = train.get(("baseline", T)), train.get(("depenc", T)), train.get(("peer", T))
        if b and d:
            out["depenc_over_baseline_step_time"][T] = d["step_ms"] / b["step_ms"]
            if b.get("peak_mem_mb") and d.get("peak_mem_mb") is not None:
                out["depenc_over_baseline_peak_mem"][T] = d["peak_mem_mb"] / b["peak_mem_mb"]
        if b and p:
            out["baseline_over_peer_tokens_per_s"][T] = b["tokens_per_s"] / p["tokens_per_s"]
    return out


def targets(rat: dict) -> list[tuple[str, str, str]]:
    rows = []
    peer = rat["baseline_over_peer_tokens_per_s"]
    if peer:
        worst = min(peer.values())
        rows.append((TARGETS_TEXT[0], f"min baseline/peer = {worst:.2f}", "PASS" if worst >= 1.0 else "FAIL"))
    else:
        rows.append((TARGETS_TEXT[0], "peer not measured", "n/a"))
    t = rat["depenc_over_baseline_step_time"].get(256)
    rows.append((TARGETS_TEXT[1], f"{t:.2f}x" if t else "T=256 not measured", ("PASS" if t <= 1.3 else "FAIL") if t else "n/a"))
    m = rat["depenc_over_baseline_peak_mem"].get(512)
    rows.append((TARGETS_TEXT[2], f"{m:.2f}x" if m else "T=512 not measured", ("PASS" if m <= 1.3 else "FAIL") if m else "n/a"))
    return rows


def fmt_ratio_line(values: dict) -> str:
    return ", ".join(f"T={T}: {v:.2f}" for T, v in sorted(values.items())) or "n/a"


def write_report(out: Path, records: list[dict], meta: dict) -> str:
    rat = ratios(records)
    lines = ["# Training throughput and peak memory", "",
             f"Equal tokens per batch ({meta['tokens_per_batch']}; batch = tokens / T), training steps (forward, "
             f"loss, backward, AdamW step), {meta['warmup']} warm-up step(s) then {meta['reps']} interleaved "
             "repetitions (each model once per repetition, order rotated); median step time. "
             f"Model: d={meta['n_embd']}, {meta['n_layer']} layers, {meta['n_head']} heads, vocabulary {meta['vocab']}"
             f"{' (' + meta['preset'] + ')' if meta.get('preset') else ''}; precision {meta.get('precision', '32')}, "
             f"attention_impl {meta.get('attention_impl', 'auto')}. Peak memory: {meta['peak_mem_method']}.", "",
             "| T | batch | model | params | step (ms) | tokens/s | peak memory (MB) | memory / baseline |",
             "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    train = [r for r in records if r["task"] == "train"]
    base_mem = {r["seq_len"]: r.get("peak_mem_mb") for r in train if r["model"] == "baseline"}
    for r in sorted(train, key=lambda r: (r["seq_len"], MODELS.index(r["model"]))):
        mem = f"{r['peak_mem_mb']:.1f}" if r.get("peak_mem_mb") is not None else "n/a"
        b = base_mem.get(r["seq_len"])
        rel = f"{r['peak_mem_mb'] / b:.2f}" if b and r.get("peak_mem_mb") is not None else "n/a"
        lines.append(f"| {r['seq_len']} | {r['batch_size']} | {r['model']} | {r['n_params'] / 1e6:.2f}M | "
                     f"{r['step_ms']:.0f} | {r['tokens_per_s']:.0f} | {mem} | {rel} |")
    lines += ["",
              f"- Ratio DepEnc/baseline (time per step): {fmt_ratio_line(rat['depenc_over_baseline_step_time'])}",
              f"- Ratio baseline/peer (tokens/s): {fmt_ratio_line(rat['baseline_over_peer_tokens_per_s'])}",
              f"- Ratio DepEnc/baseline (peak memory): {fmt_ratio_line(rat['depenc_over_baseline_peak_mem'])}",
              "", "## Targets", "", "| target | measured | |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in targets(rat)]
    gen = [r for r in records if r["task"] == "generate"]
    if gen:
        lines += ["", "## Generation (sampling, top-k 50)", "",
                  f"Batch {gen[0]['batch_size']}, {gen[0]['new_tokens']} new tokens from a one-token prompt.", "",
                  "| model | KV cache | tokens/s | time (s) |", "| --- | --- | ---: | ---: |"]
        lines += [f"| {r['model']} | {'yes' if r['use_cache'] else 'no (recompute)'} | {r['tokens_per_s']:.0f} | "
                  f"{r['time_s']:.2f} |" for r in gen]
    m = meta["machine"]
    lines += ["", "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in m.items()]
    lines += [f"- load average (1 min) at start / end: {meta['load_start']} / {meta['load_end']}",
              f"- wall time: {meta['wall_s']:.0f} s",
              f"- DepEnc config: `{json.dumps(meta['depenc_config'], sort_keys=True)}`",
              f"- command: `{meta['command']}`", ""]
    text = "\n".join(lines)
    (out / "bench.md").write_text(text)
    return text


# ---- main -------------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m depenc.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="reports/bench", help="output folder (bench.json, bench.md)")
    p.add_argument("--lengths", type=int, nargs="+", default=None, help="sequence lengths (default 128 256 512 1024)")
    p.add_argument("--tokens-per-batch", type=int, default=None, help="tokens per batch (default 8192)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per model and length (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per model and length")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--n-embd", type=int, default=None)
    p.add_argument("--n-layer", type=int, default=None)
    p.add_argument("--n-head", type=int, default=None)
    p.add_argument("--vocab", type=int, default=None)
    p.add_argument("--depenc-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="change the DepEnc config (model.depenc keys), e.g. attention=bias hops=2")
    p.add_argument("--memory", choices=["auto", "none"], default="auto",
                   help="auto: CUDA peak allocation, or on CPU one subprocess per (model, length); none: skip")
    p.add_argument("--gen-batch", type=int, default=None, help="generation batch (default 8)")
    p.add_argument("--gen-new-tokens", type=int, default=None, help="generated tokens (default 64)")
    p.add_argument("--gen-reps", type=int, default=1)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--precision", choices=["32", "bf16"], default="32",
                   help="32: float32; bf16: bfloat16 autocast (as trainer.precision=bf16-mixed)")
    p.add_argument("--attention-impl", choices=["auto", "sdpa", "lean", "flex"], default="auto",
                   help="model.attention_impl of baseline and DepEnc (auto: flex on CUDA, lean on CPU)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="model and batch sizes (single options given override it); default: d=256, 4 layers")
    p.add_argument("--quick", action="store_true", help="tiny sizes (tests): lengths 16 32, 256 tokens, d=32")
    p.add_argument("--probe", nargs=2, metavar=("MODEL", "T"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sizes = PRESETS["quick" if args.quick else (args.preset or "default")]
    for key, value in sizes.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


PRESETS = {
    "quick": {"lengths": [16, 32], "tokens_per_batch": 256, "reps": 2, "n_embd": 32, "n_layer": 2, "n_head": 2,
              "vocab": 100, "gen_batch": 2, "gen_new_tokens": 8},
    "default": {"lengths": [128, 256, 512, 1024, 2048], "tokens_per_batch": 8192, "reps": 3, "n_embd": 256,
                "n_layer": 4, "n_head": 4, "vocab": 8000, "gen_batch": 8, "gen_new_tokens": 64},
    "gpt2-small": {"lengths": [1024], "tokens_per_batch": 16384, "reps": 3, "n_embd": 768, "n_layer": 12,
                   "n_head": 12, "vocab": 50257, "gen_batch": 8, "gen_new_tokens": 64},
}


def model_argv(args) -> list[str]:
    """The options a memory probe needs to rebuild the same models and batches."""
    argv = ["--lengths", *map(str, args.lengths), "--tokens-per-batch", str(args.tokens_per_batch),
            "--n-embd", str(args.n_embd), "--n-layer", str(args.n_layer), "--n-head", str(args.n_head),
            "--vocab", str(args.vocab), "--precision", args.precision, "--attention-impl", args.attention_impl]
    if args.depenc_set:
        argv += ["--depenc-set", *args.depenc_set]
    if args.threads > 0:
        argv += ["--threads", str(args.threads)]
    return argv


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.probe:
        torch.manual_seed(0)
        print(json.dumps(probe_memory(args)))
        return 0
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    names = list(args.models)
    if "peer" in names:
        try:
            import transformers  # noqa: F401
        except ImportError:
            print("transformers is not installed: the peer model is skipped", file=sys.stderr)
            names.remove("peer")
    t_start = time.time()
    load_start = round(os.getloadavg()[0], 2)
    torch.manual_seed(0)
    models = {}
    for name in names:
        model = build_model(name, args).to(device).train()
        models[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
    records = []
    for T in args.lengths:
        idx = batch_for(T, args, device)
        steps = {name: make_step(name, m, o, idx, args.precision) for name, (m, o) in models.items()}
        for name in names:
            for _ in range(args.warmup):
                steps[name]()
        times = {name: [] for name in names}
        peak = {}
        for rep in range(args.reps):
            order = names[rep % len(names):] + names[: rep % len(names)]
            for name in order:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                sync(device)
                t0 = time.perf_counter()
                steps[name]()
                sync(device)
                times[name].append(time.perf_counter() - t0)
                if device.type == "cuda":
                    peak[name] = max(peak.get(name, 0.0), torch.cuda.max_memory_allocated(device) / 2**20)
        for name in names:
            med = statistics.median(times[name])
            rec = {"task": "train", "model": name, "seq_len": T, "batch_size": idx.size(0),
                   "tokens_per_batch": idx.numel(), "step_ms": med * 1000, "step_ms_all": [t * 1000 for t in times[name]],
                   "tokens_per_s": idx.numel() / med, "peak_mem_mb": peak.get(name),
                   "n_params": sum(p.numel() for p in models[name][0].parameters()), "device": str(device),
                   "precision": args.precision, "attention_impl": args.attention_impl if name != "peer" else None}
            records.append(rec)
            print(f"T={T:5d} {name:8s} {med * 1000:9.1f} ms/step {idx.numel() / med:10.1f} tokens/s", flush=True)
    records += generation_records(models, args, device)
    if device.type == "cuda":
        method = "torch.cuda.max_memory_allocated during the timed steps"
    elif args.memory == "none":
        method = "not measured"
    else:
        method = ("peak RSS growth (VmHWM) over the after-imports baseline, one fresh process per (model, "
                  "length): parameters, AdamW state, one training step")
        del models, steps  # the probes run alone
        for rec in [r for r in records if r["task"] == "train"]:
            rec["peak_mem_mb"] = memory_in_subprocess(rec["model"], rec["seq_len"], model_argv(args))
            print(f"T={rec['seq_len']:5d} {rec['model']:8s} peak {rec['peak_mem_mb']} MB", flush=True)
    for rec in records:
        rec["peak_mem_method"] = method if rec["task"] == "train" else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(records, indent=2))
    meta = {"tokens_per_batch": args.tokens_per_batch, "warmup": args.warmup, "reps": args.reps,
            "n_embd": args.n_embd, "n_layer": args.n_layer, "n_head": args.n_head, "vocab": args.vocab,
            "preset": "quick" if args.quick else args.preset, "precision": args.precision,
            "attention_impl": args.attention_impl, "peak_mem_method": method, "machine": machine_info(device), "load_start": load_start,
            "load_end": round(os.getloadavg()[0], 2), "wall_s": time.time() - t_start,
            "depenc_config": default_depenc_config(args.depenc_set),
            "command": "python -m depenc.bench " + " ".join(sys.argv[1:] if argv is None else argv)}
    text = write_report(out, records, meta)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
