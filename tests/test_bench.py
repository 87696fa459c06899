"""The throughput/memory benchmark (``python -m depenc.bench``, DESIGN 6) in --quick mode on tiny sizes."""

import json
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow  # a subprocess per model and length (~20 s); `make test-all`
def test_bench_quick_writes_json_and_report(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "-m", "depenc.bench", "--quick", "--lengths", "16", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads((out / "bench.json").read_text())
    assert isinstance(records, list) and records
    train = [r for r in records if r["task"] == "train"]
    assert {r["model"] for r in train} == {"baseline", "depenc", "peer"}
    for r in records:
        for key in ("model", "seq_len", "tokens_per_s", "peak_mem_mb"):
            assert key in r, (key, r)
        assert isinstance(r["seq_len"], int) and r["tokens_per_s"] > 0
    for r in train:
        assert r["seq_len"] == 16 and r["batch_size"] == 16 and r["tokens_per_batch"] == 256
        assert isinstance(r["peak_mem_mb"], (int, float)), r  # measured (subprocess probe on CPU)
        assert len(r["step_ms_all"]) == 2 and r["n_params"] > 0
    gen = [r for r in records if r["task"] == "generate"]
    assert {(r["model"], r["use_cache"]) for r in gen} == {(m, c) for m in ("baseline", "depenc") for c in (True, False)}
    md = (out / "bench.md").read_text()
    assert "Ratio DepEnc/baseline (time per step): T=16:" in md
    assert "Ratio baseline/peer (tokens/s): T=16:" in md
    for target in ("baseline >= peer", "DepEnc step time at T=256", "DepEnc peak memory at T=512"):
        assert target in md
    assert "load average" in md and "| 16 | 16 | depenc |" in md and "| memory / baseline |" in md


def test_bench_report_ratios_and_targets(tmp_path):
    from depenc.bench import ratios, targets, write_report

    def rec(model, T, ms, mem):
        return {"task": "train", "model": model, "seq_len": T, "batch_size": 8192 // T, "step_ms": ms,
                "tokens_per_s": 8192 / ms * 1000, "peak_mem_mb": mem, "n_params": 1_000_000}

    records = [rec("baseline", 256, 100, 500), rec("depenc", 256, 125, 600), rec("peer", 256, 110, 520),
               rec("baseline", 512, 100, 500), rec("depenc", 512, 140, 700), rec("peer", 512, 90, 520)]
    r = ratios(records)
    assert r["depenc_over_baseline_step_time"] == {256: 1.25, 512: 1.4}
    assert r["baseline_over_peer_tokens_per_s"][256] == pytest.approx(1.1)
    assert [t[2] for t in targets(r)] == ["FAIL", "PASS", "FAIL"]  # peer faster at 512; memory 1.4x at 512
    meta = {"tokens_per_batch": 8192, "warmup": 1, "reps": 3, "n_embd": 256, "n_layer": 4, "n_head": 4,
            "vocab": 8000, "peak_mem_method": "test", "machine": {"device": "cpu"}, "load_start": 0.1,
            "load_end": 0.2, "wall_s": 1.0, "depenc_config": {}, "command": "test"}
    md = write_report(tmp_path, records, meta)
    assert "T=256: 1.25, T=512: 1.40" in md and (tmp_path / "bench.md").is_file()
    assert "| 256 | 32 | depenc | 1.00M | 125 | 65536 | 600.0 | 1.20 |" in md  # peak memory over the baseline's
    assert "| 512 | 16 | baseline | 1.00M | 100 | 81920 | 500.0 | 1.00 |" in md


def test_bench_presets_and_single_options():
    from depenc.bench import parse_args

    a = parse_args(["--preset", "gpt2-small"])
    assert (a.n_embd, a.n_layer, a.n_head, a.vocab, a.lengths, a.tokens_per_batch) == (768, 12, 12, 50257, [1024], 16384)
    a = parse_args(["--preset", "gpt2-small", "--lengths", "1024", "2048", "--tokens-per-batch", "2048"])
    assert (a.n_embd, a.lengths, a.tokens_per_batch) == (768, [1024, 2048], 2048)  # a single option wins
    a = parse_args([])
    assert a.n_embd == 256 and a.lengths[-1] == 2048 and a.precision == "32" and a.attention_impl == "auto"
    assert parse_args(["--quick", "--preset", "gpt2-small"]).n_embd == 32
