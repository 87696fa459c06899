"""Fault injection (issue 13): every bad input stops before any work with one line on stderr and exit
code 2, leaves no run folder behind and changes nothing in an existing one; resume never loses history;
loading a checkpoint never runs code from it."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, tiny_overrides
from depenc import evaluate, train
from depenc.lightning import CheckpointError, load_lm

# smaller than `debug`: 4 steps, a checkpoint and a validation every 2, no evaluation callbacks
TINY = ["trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.checkpoint_every_n_steps=2",
        "trainer.log_every_n_steps=1", "trainer.limit_val_batches=2", "trainer.test_at_end=false",
        "data.synthetic.n_train=400", "data.synthetic.n_validation=60", "data.synthetic.n_test=60",
        "data.synthetic.n_test_long=40", *(f"callbacks.{c}.enabled=false" for c in
                                            ("alignment", "generation", "agreement", "excess", "efficiency"))]


def folder_state(root: Path) -> dict[str, tuple[int, int]]:
    """relative path -> (size, mtime_ns) of every file under ``root`` (empty if it does not exist)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """One finished 4-step run of `debug` (a few seconds); tests copy it before changing it."""
    tmp = tmp_path_factory.mktemp("reliability")
    assert train.main(["debug", *tiny_overrides(tmp, "run.name=r", *TINY)]) == 0
    return tmp / "runs" / "debug" / "r"


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    dst = tmp_path / "runs" / "debug" / "r"
    shutil.copytree(tiny_run, dst)
    return dst


def write_evil_checkpoint(path: Path, marker: Path) -> None:
    """A pickle whose loading would create ``marker`` (the shape of a checkpoint around it)."""
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"hyper_parameters": {"kind": "baseline"}, "state_dict": Evil()}, path)


# ---- training: bad config and data, before any run folder exists ------------------------------------
BAD_TRAIN = [
    (["data.block_size=0"], "data.block_size"),
    (["data.batch_size=0"], "data.batch_size"),
    (["trainer.val_check_interval=0"], "trainer.val_check_interval"),
    (["optim.lr=-1"], "optim.lr"),
    (["optim.betas=[0.9,1.5]"], "optim.betas.1"),
    (["model.dropout=1.5"], "model.dropout"),
    (["data.synthetic.p_pp=1.2"], "data.synthetic.p_pp"),
    (["callbacks.generation.top_p=0"], "callbacks.generation.top_p"),
    (["callbacks.generation.temperature=-1"], "callbacks.generation.temperature"),
    (["trainer.limit_val_batches=1.5"], "trainer.limit_val_batches"),
    (["trainer.max_stepz=5"], "did you mean trainer.max_steps"),
]


@pytest.mark.parametrize("overrides, needle", BAD_TRAIN, ids=[o[0] for o, _ in BAD_TRAIN])
def test_bad_config_value_stops_before_the_run_folder(tmp_path, capsys, overrides, needle):
    rc = train.main(["debug", *tiny_overrides(tmp_path, *overrides)])
    assert_one_line_error(rc, capsys.readouterr().err, needle)
    assert not (tmp_path / "runs").exists()


def text_files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "latin1.txt").write_bytes("the caf\xe9 is open\n".encode("latin-1"))
    (tmp_path / "binary.txt").write_bytes(b"ab\x00\x01\x02")
    (tmp_path / "folder").mkdir()
    return {name: tmp_path / name for name in ("empty.txt", "latin1.txt", "binary.txt", "folder", "missing.txt")}


BAD_TEXT = [("empty.txt", "is empty (0 bytes)"), ("latin1.txt", "not UTF-8 text: byte 7 (0xe9)"),
            ("binary.txt", "NUL byte at byte 2"), ("folder", "is a folder"), ("missing.txt", "file not found")]


@pytest.mark.parametrize("name, needle", BAD_TEXT, ids=[n for n, _ in BAD_TEXT])
def test_bad_text_file_stops_before_the_run_folder(tmp_path, capsys, name, needle):
    path = text_files(tmp_path)[name]
    rc = train.main(["debug", *tiny_overrides(tmp_path, "data.source=text", f"data.text.train={path}")])
    assert_one_line_error(rc, capsys.readouterr().err, needle)
    assert not (tmp_path / "runs").exists()


BAD_YAML = [("model:\n  n_layer: [1\n", "line 3, column 1: invalid YAML"),
            ("model:\n  n_layer: 2\n  n_layer: 3\n", "line 3, column 3: invalid YAML: found duplicate key n_layer"),
            ("- model\n- data\n", "expected a mapping")]


@pytest.mark.parametrize("text, needle", BAD_YAML, ids=["syntax", "duplicate", "list"])
def test_bad_experiment_yaml_names_file_and_line(tmp_path, capsys, monkeypatch, text, needle):
    root = tmp_path / "experiments"
    root.mkdir()
    shutil.copy(REPO / "experiments" / "base.yaml", root / "base.yaml")
    (root / "bad.yaml").write_text(text)
    monkeypatch.setattr("depenc.config.EXPERIMENTS_DIR", root)
    rc = train.main(["bad", *tiny_overrides(tmp_path)])
    assert_one_line_error(rc, capsys.readouterr().err, "experiments/bad.yaml", needle)
    assert not (tmp_path / "runs").exists()


# ---- resume: refused before anything in the folder changes -----------------------------------------
def test_resume_refuses_a_shape_change_and_leaves_the_folder(run_copy, capsys):
    before = folder_state(run_copy)
    for bad in (["model.n_layer=3"], ["optim.lr=0.1"], ["seed=3"]):
        rc = train.main(["--resume", str(run_copy), *bad])
        assert_one_line_error(rc, capsys.readouterr().err, f"'{bad[0].split('=')[0]}' cannot change on a resume")
    assert folder_state(run_copy) == before


@pytest.mark.parametrize("damage", ["truncated", "random", "evil"])
def test_resume_with_a_bad_checkpoint_leaves_the_folder(run_copy, tmp_path, capsys, damage):
    last = run_copy / "checkpoints" / "last.ckpt"
    marker = tmp_path / "PWNED"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[:2000])
    elif damage == "random":
        last.write_bytes(os.urandom(4000))
    else:
        write_evil_checkpoint(last, marker)
    before = folder_state(run_copy)
    rc = train.main(["--resume", str(run_copy), "trainer.max_steps=6"])
    assert_one_line_error(rc, capsys.readouterr().err, "cannot load checkpoint")
    assert folder_state(run_copy) == before and not marker.exists()


def test_resume_refuses_a_checkpoint_that_does_not_fit(run_copy, tmp_path, capsys):
    """config.yaml edited by hand to another width: the weights do not fit; nothing changes."""
    config = run_copy / "config.yaml"
    config.write_text(config.read_text().replace("n_embd: 32", "n_embd: 48"))
    before = folder_state(run_copy)
    rc = train.main(["--resume", str(run_copy)])
    assert_one_line_error(rc, capsys.readouterr().err, "does not fit the run's config", "(96,) in the checkpoint, (144,) in the model")
    assert folder_state(run_copy) == before


# ---- resume: history, segments, wall time ----------------------------------------------------------
def rows(*steps: int, col: str = "train/loss") -> list[dict]:
    return [{"step": str(s), col: str(s / 10)} for s in steps]


def test_metrics_history_survives_two_interrupted_resumes(tmp_path):
    """Segment A logs 0..13 then is killed (checkpoint at 10); B resumes at 10, logs to 18, killed
    (checkpoint at 15); C resumes at 15 and finishes at 20: metrics.csv holds every step once."""
    run_dir = tmp_path
    train.write_rows(run_dir / "metrics.csv", rows(*range(0, 14)))  # A, killed
    previous = train.set_aside_metrics(run_dir)
    train.write_rows(run_dir / "metrics.csv", rows(*range(10, 19)))  # B, killed
    assert train.set_aside_metrics(run_dir) == previous and not (run_dir / "metrics.csv").exists()
    train.write_rows(run_dir / "metrics.csv", rows(*range(15, 21)))  # C, finished
    train.merge_metrics(run_dir, previous)
    merged = train.read_rows(run_dir / "metrics.csv")
    assert [int(r["step"]) for r in merged] == list(range(21))
    assert not previous.exists()


def test_resumed_twice_keeps_history_segments_and_time(run_copy):
    first = json.loads((run_copy / "run.json").read_text())
    assert train.main(["--resume", str(run_copy), "trainer.max_steps=6"]) == 0
    assert train.main(["--resume", str(run_copy), "trainer.max_steps=8"]) == 0
    with open(run_copy / "metrics.csv", newline="") as f:
        steps = sorted({int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")})
    assert steps == list(range(1, 9)), steps  # a row counts the optimizer steps done
    info = json.loads((run_copy / "run.json").read_text())
    segments = info["segments"]
    assert [s["overrides"] for s in segments[1:]] == [["trainer.max_steps=6"], ["trainer.max_steps=8"]]
    assert [s["status"] for s in segments] == ["done"] * 3 and len(info["commands"]) == 3
    assert info["wall_time_s"] == pytest.approx(sum(s["wall_time_s"] for s in segments), abs=0.02)
    assert info["wall_time_s"] > first["wall_time_s"] and info["wandb_id"] == first["wandb_id"]
    assert json.loads((run_copy / "summary.json").read_text())["global_step"] == 8
    assert "max_steps: 8" in (run_copy / "config.yaml").read_text()


def test_a_crashed_run_marks_itself_failed(tmp_path, monkeypatch):
    from depenc.lightning import LMBase

    def boom(self, batch, batch_idx):
        raise RuntimeError("injected")

    monkeypatch.setattr(LMBase, "training_step", boom)
    with pytest.raises(RuntimeError, match="injected"):
        train.main(["debug", *tiny_overrides(tmp_path, "run.name=f", *TINY)])
    info = json.loads((tmp_path / "runs" / "debug" / "f" / "run.json").read_text())
    assert info["segments"][-1]["status"] == "failed: RuntimeError"


# ---- safe loading ----------------------------------------------------------------------------------
def test_load_lm_refuses_a_pickle_that_runs_code(tmp_path):
    marker = tmp_path / "PWNED"
    write_evil_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(CheckpointError, match="nothing of it was run"):
        load_lm(str(tmp_path / "evil.ckpt"))
    assert not marker.exists()


def test_load_lm_rebuilds_the_trained_model(tiny_run):
    lm = load_lm(str(tiny_run / "checkpoints" / "last.ckpt"))
    state = torch.load(tiny_run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for key, value in lm.state_dict().items():
        torch.testing.assert_close(value, state[key])


@pytest.mark.slow
def test_evaluate_cli_refuses_an_evil_checkpoint(tmp_path):
    marker = tmp_path / "PWNED"
    write_evil_checkpoint(tmp_path / "evil.ckpt", marker)
    (tmp_path / "t.txt").write_text("the dog .\n")
    proc = subprocess.run([sys.executable, "-m", "depenc.evaluate", "ppl", "--ckpt", str(tmp_path / "evil.ckpt"),
                           "--text", str(tmp_path / "t.txt")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc.returncode, proc.stderr, "nothing of it was run")
    assert not marker.exists()


# ---- evaluation: bad inputs and nothing silently wrong ---------------------------------------------
def conllu(*heads_per_sentence: list[int]) -> str:
    out = []
    for heads in heads_per_sentence:
        out += [f"{i}\tthe\t_\tDET\tDT\t_\t{h}\tdep\t_\t_" for i, h in enumerate(heads, start=1)] + [""]
    return "\n".join(out) + "\n"


BAD_EVALUATE = [
    (["generate", "--n", "2", "--out", "{tmp}/s.jsonl", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["generate", "--n", "2", "--out", "{tmp}/s.jsonl", "--temperature", "-1"], "--temperature must be >= 0"),
    (["generate", "--n", "0", "--out", "{tmp}/s.jsonl"], "--n must be positive"),
    (["ppl", "--text", "{tmp}/latin1.txt", "--batch-size", "0"], "--batch-size must be positive"),
    (["ppl", "--text", "{tmp}/latin1.txt"], "not UTF-8 text: byte 7 (0xe9)"),
    (["ppl", "--text", "{tmp}/folder"], "is a folder"),
    (["ppl", "--text", "{tmp}/missing.txt"], "not found"),
    (["ppl", "--text", "{tmp}/empty.txt"], "no non-empty line"),
    (["align", "--treebank", "{tmp}/empty.conllu"], "holds no sentences"),
    (["align", "--treebank", "{tmp}/noroot.conllu"], "sentence 2 (ending line 6): not a tree with one root (no word"),
    (["align", "--treebank", "{tmp}/tworoots.conllu"], "sentence 1 (ending line 3): not a tree with one root (words 1, 2"),
    (["align", "--treebank", "{tmp}/cycle.conllu"], "word 2's heads form a cycle (2 -> 3 -> 2)"),
    (["align", "--treebank", "{tmp}/range.conllu"], "word 2 has invalid head 7"),
]


@pytest.mark.parametrize("args, needle", BAD_EVALUATE, ids=[" ".join(a[:1] + a[3:4] + a[-1:]) for a, _ in BAD_EVALUATE])
def test_bad_evaluate_input_gives_one_line(tiny_run, tmp_path, capsys, args, needle):
    text_files(tmp_path)
    for name, trees in {"empty": [], "noroot": [[0, 1], [2, 1]], "tworoots": [[0, 0]],
                        "cycle": [[0, 3, 2]], "range": [[0, 7]]}.items():
        (tmp_path / f"{name}.conllu").write_text(conllu(*trees) if trees else "")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    rc = evaluate.main([argv[0], "--ckpt", str(tiny_run / "checkpoints" / "last.ckpt"), *argv[1:]])
    assert_one_line_error(rc, capsys.readouterr().err, needle)


@pytest.mark.parametrize("damage", ["truncated", "evil"])
def test_evaluate_refuses_a_bad_checkpoint(tiny_run, tmp_path, capsys, damage):
    ckpt, marker = tmp_path / "x.ckpt", tmp_path / "PWNED"
    if damage == "truncated":
        ckpt.write_bytes((tiny_run / "checkpoints" / "last.ckpt").read_bytes()[:3000])
    else:
        write_evil_checkpoint(ckpt, marker)
    (tmp_path / "t.txt").write_text("the dog .\n")
    rc = evaluate.main(["ppl", "--ckpt", str(ckpt), "--text", str(tmp_path / "t.txt")])
    assert_one_line_error(rc, capsys.readouterr().err, "cannot load checkpoint")
    assert not marker.exists()


def test_score_writes_one_line_per_input_line(tiny_run, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("the dog .\n\nthe cat .\n   \nthe dog .\n")
    assert evaluate.main(["score", "--ckpt", str(tiny_run / "checkpoints" / "last.ckpt"),
                          "--input", str(tmp_path / "in.txt")]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(out) == 5
    assert [r["logprob"] is None for r in out] == [False, True, False, True, False]
    assert out[1]["reason"] == "empty line" and out[0]["logprob"] == pytest.approx(out[4]["logprob"])


def test_ppl_reports_the_unknown_rate_and_warns(tiny_run, tmp_path, capsys):
    from depenc.data.tokenizers import load_tokenizer

    tok = load_tokenizer(tiny_run / "tokenizer.json")
    known = [tok.id_to_token(i) for i in range(2, 5)]  # ids 0 and 1 are <eos> and <unk>
    (tmp_path / "t.txt").write_text(" ".join(known) + " qqqzzz\n")  # 1 unknown of 4 tokens
    assert evaluate.main(["ppl", "--ckpt", str(tiny_run / "checkpoints" / "last.ckpt"),
                          "--text", str(tmp_path / "t.txt")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["unk_rate"] == 0.25
    assert captured.err.startswith("warning: 25.0% of the tokens") and len(captured.err.splitlines()) == 1


def test_damaged_cache_is_rebuilt(tmp_path):
    from depenc.config import load_config
    from depenc.data.datamodule import LMDataModule

    cfg = load_config("debug", [f"data.cache_dir={tmp_path}", *TINY[6:10]])
    first = LMDataModule(cfg.data, seed=0)
    first.setup("fit")
    chunk = next((Path(first.cache_path) / "train").glob("chunk-*.bin"))
    chunk.write_bytes(chunk.read_bytes()[:500])
    again = LMDataModule(cfg.data, seed=0)
    again.setup("fit")
    assert not again.cache_hit and len(again.stream("train")) == first.split_stats["train"]["n_tokens"] + 1


# ---- kill -9 twice, resumed each time (slow) -------------------------------------------------------
def kill_after_checkpoint(cmd: list[str], last: Path, step_at_least: int) -> int:
    """Start ``cmd``, kill -9 it once ``last`` holds a checkpoint at ``step_at_least`` or later; its step."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if last.is_file():
                try:
                    step = torch.load(last, weights_only=True)["global_step"]
                except Exception:  # being written
                    step = -1
                if step >= step_at_least:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return step
            time.sleep(0.3)
    finally:
        if proc.poll() is None:
            proc.kill()
    raise AssertionError(f"no checkpoint at step >= {step_at_least} in time")


@pytest.mark.slow
def test_killed_twice_and_resumed_matches_an_uninterrupted_run(tmp_path):
    """kill -9 at two checkpoints (the train split is 23 batches: the run crosses epochs, before and after
    each resume), resumed each time: every logged loss equals the uninterrupted run's, bit for bit (the
    loader's position is in the checkpoint)."""
    args = ["trainer.max_steps=120", "trainer.checkpoint_every_n_steps=20", "trainer.val_check_interval=40",
            "trainer.log_every_n_steps=5", "trainer.test_at_end=false", "trainer.deterministic=true", *TINY[4:]]
    assert train.main(["debug", *tiny_overrides(tmp_path / "a", "run.name=u", *args)]) == 0
    run_dir = tmp_path / "b" / "runs" / "debug" / "k"
    last = run_dir / "checkpoints" / "last.ckpt"
    cmd = [sys.executable, "-m", "depenc.train", "debug", *tiny_overrides(tmp_path / "b", "run.name=k", *args)]
    first = kill_after_checkpoint(cmd, last, 20)
    second = kill_after_checkpoint([sys.executable, "-m", "depenc.train", "--resume", str(run_dir)], last, first + 20)
    assert 0 < first < second < 120
    assert train.main(["--resume", str(run_dir)]) == 0

    def losses(d: Path, key: str) -> dict[int, str]:
        return {int(r["step"]): r[key] for r in train.read_rows(d / "metrics.csv") if r.get(key)}

    uninterrupted = tmp_path / "a" / "runs" / "debug" / "u"
    for key in ("train/loss", "val/validation/loss"):
        assert losses(run_dir, key) == losses(uninterrupted, key), key
    assert sorted(losses(run_dir, "train/loss")) == list(range(5, 121, 5))
    assert sorted(losses(run_dir, "val/validation/loss")) == [40, 80, 120]
    info = json.loads((run_dir / "run.json").read_text())
    assert [s["status"] for s in info["segments"]] == ["running", "running", "done"]
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 120


# ---- a run people can watch --------------------------------------------------------------------
def test_watched_run_bar_best_checkpoint_and_one_step_column(tmp_path, capsys):
    """One tiny run: the progress bar counts steps against max_steps, the run folder is printed first,
    none of Lightning's known harmless messages show, best.ckpt exists although no validation ran inside
    fit, and every row of metrics.csv counts optimizer steps done (train, val, perf alike)."""
    overrides = ["trainer.max_steps=6", "trainer.val_check_interval=8", "trainer.log_every_n_steps=2",
                 "trainer.limit_val_batches=2", "trainer.test_at_end=false", "trainer.progress=bar",
                 "callbacks.efficiency.log_every_n_steps=2", *(o for o in TINY if o.startswith("data."))]
    nocb = [f"callbacks.{c}.enabled=false" for c in ("alignment", "generation", "agreement", "excess")]
    assert train.main(["debug", *tiny_overrides(tmp_path, "run.name=w", *overrides, *nocb)]) == 0
    out, err = capsys.readouterr()
    run_dir = tmp_path / "runs" / "debug" / "w"
    assert out.splitlines()[0] == f"run folder: {run_dir}"
    assert "6/6" in err and "loss" in err and "tok/s" in err, err
    assert "step 6: validation ppl" in err
    for noise in train.HARMLESS_MESSAGES:
        assert noise not in out + err, noise
    best = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["global_step"] == 6
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    steps = {kind: sorted({int(r["step"]) for r in rows if any(k.startswith(kind) and v for k, v in r.items())})
             for kind in ("train/", "val/", "perf/")}
    assert steps == {"train/": [2, 4, 6], "val/": [6], "perf/": [2, 4, 6]}, steps


def test_progress_lines_when_not_a_terminal():
    """log mode: one line per N steps with step/total, loss, tokens/s and eta; a validation line."""
    import io
    from types import SimpleNamespace

    from depenc.callbacks.progress import Progress, format_duration

    stream = io.StringIO()  # not a terminal: auto means lines
    progress = Progress("auto", every_n_steps=2, stream=stream)
    assert progress.mode == "log"
    trainer = SimpleNamespace(max_steps=4, global_step=0, is_global_zero=True, world_size=1, sanity_checking=False,
                              callback_metrics={"train/loss": torch.tensor(2.5)})
    progress.on_train_start(trainer, None)
    batch = {"input_ids": torch.zeros(2, 8, dtype=torch.long)}
    for step in range(1, 5):
        trainer.global_step = step
        progress.on_train_batch_end(trainer, None, None, batch, step - 1)
    trainer.callback_metrics["val/validation/ppl"] = torch.tensor(12.3456)
    progress.on_validation_end(trainer, None)
    lines = stream.getvalue().splitlines()
    assert [line.split(" |")[0] for line in lines[:2]] == ["step 2/4 (50%)", "step 4/4 (100%)"], lines
    assert all("loss 2.5000" in line and "tok/s" in line and "eta" in line for line in lines[:2])
    assert lines[2] == "step 4: validation ppl 12.346"
    assert Progress("none", stream=stream).mode == "none"
    assert [format_duration(s) for s in (5, 62, 3725)] == ["5s", "1m02s", "1h02m"]


def test_wandb_without_a_reachable_server_goes_offline_in_one_line(tmp_path, monkeypatch, capsys):
    """An online W&B start that fails (no network, bad key) falls back to an offline run of the same id
    and says so in one line with the sync command; no traceback."""
    import wandb

    modes = []

    def fake_init(**kwargs):
        modes.append((kwargs["mode"], kwargs.get("settings") and kwargs["settings"].init_timeout))
        if kwargs["mode"] == "online":
            raise wandb.errors.CommError("Run initialization has timed out after 15.0 sec.\nmore detail")
        return "offline-run"

    monkeypatch.setattr(wandb, "init", fake_init)
    monkeypatch.setattr(wandb, "teardown", lambda: None)
    monkeypatch.delenv("WANDB_INIT_TIMEOUT", raising=False)
    run = train.start_wandb_run({"id": "abc", "project": "p"}, tmp_path, "online")
    assert run == "offline-run" and modes == [("online", 15.0), ("offline", None)]
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "within 15 s" in err and "wandb sync" in err, err


@pytest.mark.slow
def test_wandb_key_and_no_server_trains_offline(tmp_path):
    """End to end: a key, a server that refuses connections, WANDB_INIT_TIMEOUT=3: the run goes offline
    after the timeout, trains to the end and its offline run holds the history."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    env.update(WANDB_API_KEY="a" * 40, WANDB_BASE_URL="http://127.0.0.1:9", WANDB_INIT_TIMEOUT="3")
    cmd = [sys.executable, "-m", "depenc.train", "debug",
           *[o for o in tiny_overrides(tmp_path, "run.name=o", *TINY) if not o.startswith("logger.wandb")],
           "logger.wandb.mode=auto"]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no W&B server reachable within 3 s" in proc.stderr and "Traceback" not in proc.stderr
    offline = list((tmp_path / "runs" / "debug" / "o" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and next(offline[0].glob("*.wandb")).stat().st_size > 0
    assert time.time() - t0 < 120


# ---- budgets in tokens (issue 15) ------------------------------------------------------------------
def test_token_budget_derives_steps_and_accumulation(tmp_path, capsys):
    from depenc.config import load_config

    cfg = load_config("debug", ["data.batch_size=4", "data.block_size=32", "trainer.global_batch_tokens=256",
                                "trainer.max_tokens=2560", "optim.warmup_tokens=512"])
    assert train.accumulation(cfg) == 2
    train.apply_token_budget(cfg)
    assert (cfg.trainer.max_steps, cfg.optim.warmup_steps) == (10, 2)
    cfg = load_config("debug", ["trainer.devices=2", "data.batch_size=4", "data.block_size=32",
                                "trainer.global_batch_tokens=256", "trainer.max_tokens=2500"])
    assert train.accumulation(cfg) == 1 and (train.apply_token_budget(cfg) or cfg.trainer.max_steps) == 10
    rc = train.main(["debug", *tiny_overrides(tmp_path, "data.batch_size=4", "data.block_size=32",
                                              "trainer.global_batch_tokens=200")])
    assert_one_line_error(rc, capsys.readouterr().err, "trainer.global_batch_tokens=200", "use 256")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_accumulation_trains_like_the_whole_batch(tmp_path):
    """The same tokens per step in two micro-batches (accumulation 2) or one batch: the same losses
    (the shuffled order does not depend on the batch size)."""
    base = ["trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
            "trainer.global_batch_tokens=512", "data.block_size=32", "optim.warmup_steps=0", "model.dropout=0",
            *TINY[5:]]  # all of validation: limit_val_batches would count batches of different sizes
    losses = {}
    for batch in (16, 8):
        assert train.main(["debug", *tiny_overrides(tmp_path / str(batch), "run.name=a", f"data.batch_size={batch}",
                                                    *base)]) == 0
        rows = train.read_rows(tmp_path / str(batch) / "runs" / "debug" / "a" / "metrics.csv")
        losses[batch] = ([float(r["train/loss"]) for r in rows if r.get("train/loss")],
                         [float(r["val/validation/loss"]) for r in rows if r.get("val/validation/loss")])
    summary = json.loads((tmp_path / "8" / "runs" / "debug" / "a" / "summary.json").read_text())
    assert summary["global_step"] == 4 and summary["tokens_seen"] == 4 * 512
    assert len(losses[8][1]) == 2  # validation every 2 optimizer steps, not every 2 micro-batches
    assert losses[8][1] == pytest.approx(losses[16][1], abs=1e-5), losses


@pytest.mark.slow
def test_early_stopping_stops_at_the_first_validation_without_improvement(tmp_path, capsys):
    """patience 1 and an improvement no run can make (10 nats): the first validation sets the best, the
    second stops the run; best.ckpt holds the weights of the lower of the two validation losses."""
    args = ["trainer.max_steps=20", "trainer.val_check_interval=2", "trainer.early_stopping_patience=1",
            "trainer.early_stopping_min_delta=10", "trainer.progress=log", *TINY[4:]]
    assert train.main(["debug", *tiny_overrides(tmp_path, "run.name=e", *args)]) == 0
    run_dir = tmp_path / "runs" / "debug" / "e"
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 4
    val = {int(r["step"]): float(r["val/validation/loss"]) for r in train.read_rows(run_dir / "metrics.csv")
           if r.get("val/validation/loss")}
    assert sorted(val) == [2, 4]
    best_step = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)["global_step"]
    assert best_step == min(val, key=val.get)
    assert "stopped at step 4 of 20 (early stopping)" in capsys.readouterr().err
