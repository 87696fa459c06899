"""End to end through the real entry points (`make train`, `python -m depenc.train`): run folder,
resume, W&B offline, kill-and-resume."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import CALLBACKS_AT_END, NO_CALLBACKS, REPO, tiny_overrides
from depenc.train import main

RUN_FILES = ["config.yaml", "run.json", "metrics.csv", "summary.json", "tokenizer.json",
             "checkpoints/last.ckpt", "checkpoints/best.ckpt"]


def only_run_dir(tmp_path: Path, exp: str = "debug") -> Path:
    runs = sorted((tmp_path / "runs" / exp).iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def steps_in_metrics(run_dir: Path) -> list[int]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return sorted({int(float(r["step"])) for r in csv.DictReader(f) if r["step"]})


def test_make_train_debug_writes_the_run_folder(tmp_path):
    if not (REPO / ".venv" / ".installed").is_file():
        pytest.skip("`make train` needs the project's .venv (created by `make setup` / `make test`)")
    args = " ".join(tiny_overrides(tmp_path, *CALLBACKS_AT_END))
    proc = subprocess.run(["make", "-s", "train", "EXP=debug", f"ARGS={args}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), f"missing {name}"
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ["n_params", "global_step", "tokens_seen", "wall_time_s", "train/loss",
                "val/validation/ppl", "val/validation/bpb", "val/validation/word_ppl",
                "test/test/ppl", "test/test_long/ppl"]:
        assert key in summary, key
    assert summary["global_step"] == 20
    assert summary["tokens_seen"] == 20 * 8 * 32
    assert 1 < summary["val/validation/ppl"] < 500
    # bits per byte and word perplexity are consistent with the token perplexity (word tokenizer:
    # one token per word, so word_ppl == ppl)
    assert summary["val/validation/word_ppl"] == pytest.approx(summary["val/validation/ppl"], rel=1e-4)
    config = (run_dir / "config.yaml").read_text()
    assert "max_steps: 20" in config
    info = json.loads((run_dir / "run.json").read_text())
    assert info["exp"] == "debug" and info["wandb_id"]


def test_loss_falls_for_both_models(tmp_path):
    for kind in ("baseline", "depenc"):
        assert main(["debug", *tiny_overrides(tmp_path / kind, f"model.kind={kind}", "trainer.max_steps=30", *NO_CALLBACKS,
                                              "trainer.val_check_interval=30", "trainer.test_at_end=false")]) == 0
        with open(only_run_dir(tmp_path / kind) / "metrics.csv", newline="") as f:
            losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
        assert losses[-1] < losses[0] - 0.5, (kind, losses)


def test_resume_continues_step_count_and_run(tmp_path):
    assert main(["debug", *tiny_overrides(tmp_path, "trainer.max_steps=10", "trainer.test_at_end=false", *NO_CALLBACKS)]) == 0
    run_dir = only_run_dir(tmp_path)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 10
    wandb_id = json.loads((run_dir / "run.json").read_text())["wandb_id"]
    assert main(["--resume", str(run_dir), "trainer.max_steps=20"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["global_step"] == 20
    assert summary["tokens_seen"] == 20 * 8 * 32  # counted across both sessions
    steps = steps_in_metrics(run_dir)
    assert min(steps) < 10 and max(steps) >= 19, steps  # history from before the resume is kept
    info = json.loads((run_dir / "run.json").read_text())
    assert info["wandb_id"] == wandb_id and len(info["commands"]) == 2
    assert len(list((tmp_path / "runs" / "debug").iterdir())) == 1


def test_resume_rejects_a_folder_without_checkpoint(tmp_path, capsys):
    assert main(["--resume", str(tmp_path)]) == 2
    assert "no config.yaml" in capsys.readouterr().err


def test_wandb_offline_run_holds_the_metric_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    overrides = [o for o in tiny_overrides(tmp_path, *NO_CALLBACKS) if not o.startswith("logger.wandb")]
    assert main(["debug", *overrides, "logger.wandb.mode=offline"]) == 0
    run_dir = only_run_dir(tmp_path)
    wandb_id = json.loads((run_dir / "run.json").read_text())["wandb_id"]
    offline = list((run_dir / "wandb").glob(f"offline-run-*-{wandb_id}"))
    assert offline, f"no offline W&B run for id {wandb_id} in {run_dir / 'wandb'}"
    log_file = next(offline[0].glob("*.wandb"))
    wanted = {"train/loss", "val/validation/ppl", "val/validation/bpb", "trainer/global_step"}
    # wandb's core process may still be flushing the log when finish() returns on a loaded machine
    deadline = time.time() + 30
    while not wanted <= (keys := read_wandb_history_keys(log_file)) and time.time() < deadline:
        time.sleep(0.5)
    kinds = Counter(rec.WhichOneof("record_type") for rec in wandb_records(log_file))
    assert wanted <= keys, (sorted(wanted - keys), sorted(keys)[:40], dict(kinds), log_file.stat().st_size)


def wandb_records(path: Path):
    """Protobuf records of an offline ``.wandb`` file: a 7-byte header (':W&B', magic, version) then
    LevelDB-log framing (32 KiB blocks; records of crc32(4) length(2) type(1) + payload)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer too short for a header: skip to the next block
            pos += block - pos % block
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        if pos + 7 + length > len(data):  # a record still being written
            break
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending += payload
        if kind in (1, 4):  # FULL or LAST fragment
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pending)
            pending = b""
            yield rec


def read_wandb_history_keys(path: Path) -> set[str]:
    keys = set()
    for rec in wandb_records(path):
        if rec.WhichOneof("record_type") == "history":
            keys |= {item.key or "/".join(item.nested_key) for item in rec.history.item}
    return keys


@pytest.mark.slow
def test_killed_run_resumes_from_last_checkpoint(tmp_path):
    """kill -9 at any moment, resumed from last.ckpt: the same losses as an uninterrupted run, bit for bit."""
    args = ["trainer.max_steps=400", "trainer.checkpoint_every_n_steps=10", "trainer.val_check_interval=100",
            "trainer.test_at_end=false", "trainer.deterministic=true"]
    assert main(["debug", *tiny_overrides(tmp_path / "u", "run.name=u", *args)]) == 0
    cmd = [sys.executable, "-m", "depenc.train", "debug", *tiny_overrides(tmp_path, *args)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    last = None
    while time.time() < deadline:
        found = list((tmp_path / "runs" / "debug").glob("*/checkpoints/last.ckpt"))
        if found and found[0].stat().st_size > 0:
            last = found[0]
            time.sleep(2)  # let it get past the first checkpoint
            break
        time.sleep(0.2)
    assert last is not None, "no checkpoint written"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run_dir = last.parents[1]
    step_at_kill = torch.load(last, weights_only=True)["global_step"]
    assert 0 < step_at_kill < 400
    assert main(["--resume", str(run_dir)]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["global_step"] == 400
    uninterrupted = tmp_path / "u" / "runs" / "debug" / "u"
    assert summary["val/validation/loss"] == json.loads((uninterrupted / "summary.json").read_text())["val/validation/loss"]

    def losses(d: Path, key: str) -> dict[int, str]:
        with open(d / "metrics.csv", newline="") as f:
            return {int(float(r["step"])): r[key] for r in csv.DictReader(f) if r.get(key)}

    for key in ("train/loss", "val/validation/loss"):
        assert losses(run_dir, key) == losses(uninterrupted, key), key
