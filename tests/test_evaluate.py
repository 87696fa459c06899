"""The evaluation CLI (python -m depenc.evaluate) on the checkpoint of one tiny debug run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO, tiny_overrides
from depenc.data import synthetic as S
from depenc.evaluate import main
from depenc.metrics.alignment import chain_edges, gold_edges


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny model: one intra-op thread (on a small shared CPU, waiting OpenMP threads slow tiny ops a lot)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread):
    """One debug DepEnc run (callbacks off: they are tested in test_callbacks.py)."""
    from depenc.train import main as train

    tmp = tmp_path_factory.mktemp("evalrun")
    rc = train(["debug", *tiny_overrides(tmp, "model.kind=depenc", "callbacks.alignment.enabled=false",
                                         "callbacks.generation.enabled=false", "callbacks.agreement.enabled=false",
                                         "trainer.test_at_end=false")])
    assert rc == 0
    run_dir = next((tmp / "runs" / "debug").iterdir())
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=True)
    scfg = S.SyntheticConfig.from_dict(cfg["data"]["synthetic"])
    return {"dir": run_dir, "ckpt": str(run_dir / "checkpoints" / "last.ckpt"), "scfg": scfg,
            "summary": json.loads((run_dir / "summary.json").read_text())}


def call(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_ppl_matches_the_validation_of_the_run(run, tmp_path, capsys):
    docs = [s.text for s in S.make_split(run["scfg"], "validation")]
    text = tmp_path / "val.txt"
    text.write_text("\n".join(docs) + "\n")
    rc, out, _ = call(capsys, "ppl", "--ckpt", run["ckpt"], "--text", text, "--device", "cpu")
    assert rc == 0
    res = json.loads(out)
    assert res["n_docs"] == len(docs) and res["n_tokens"] == sum(len(d.split()) + 1 for d in docs)
    # the same blocks as the run's last validation, with the same (final) weights
    assert res["ppl"] == pytest.approx(run["summary"]["val/validation/ppl"], rel=1e-4)
    assert res["bpb"] == pytest.approx(run["summary"]["val/validation/bpb"], rel=1e-4)
    assert res["word_ppl"] == pytest.approx(res["ppl"], rel=1e-6)  # word tokenizer: one token per word


def test_score_gives_sentence_logprobs(run, tmp_path, capsys):
    from depenc.lightning import load_lm

    sents = [s.text for s in S.make_split(run["scfg"], "test")[:3]]
    long = " ".join(["the dog that the cats see runs ."] * 6)  # longer than the 32-token context
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(sents + ["", long]) + "\n")
    rc, out, _ = call(capsys, "score", "--ckpt", run["ckpt"], "--input", inp)
    assert rc == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in rows] == sents + ["", long]  # one row per input line
    assert rows[3] == {"text": "", "logprob": None, "n_tokens": 0, "reason": "empty line"}
    rows = rows[:3] + rows[4:]
    assert all(r["n_tokens"] == len(r["text"].split()) + 1 and r["logprob"] < 0 for r in rows)
    assert rows[-1].get("windowed") and not rows[0].get("windowed")
    # direct computation for the first sentence: [eos] + tokens -> tokens + [eos]
    model = load_lm(run["ckpt"]).model.eval()
    from depenc.data.tokenizers import load_tokenizer

    tok = load_tokenizer(run["dir"] / "tokenizer.json")
    ids = [0] + tok.encode(sents[0]) + [0]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids[:-1]]))["logits"][0], -1)
    direct = float(logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum())
    assert rows[0]["logprob"] == pytest.approx(direct, abs=1e-3)


def test_align_on_synthetic_and_on_a_conllu_file(run, tmp_path, capsys):
    rc, out, _ = call(capsys, "align", "--ckpt", run["ckpt"], "--treebank", "synthetic:test",
                      "--select", "synthetic:validation", "--max-sentences", 30, "--select-max-sentences", 20)
    assert rc == 0
    res = json.loads(out)
    assert set(res["sources"]) == {"parser", "attn_mean", "attn_best", "chain", "random"}
    assert res["n_used"] + res["n_skipped"] == res["n_total"] == 30
    assert res["best_head"]["selected_on"].startswith("selection:")
    for r in res["sources"].values():
        assert 0 <= r["uuas"] <= 1 and any(k.startswith("uuas_len_") for k in r) and "recall_arc_1" in r
    sents = S.make_split(run["scfg"], "test")[:12]
    conllu = tmp_path / "tb.conllu"
    conllu.write_text("".join(S.to_conllu(s, str(i)) for i, s in enumerate(sents)))
    rc, out, _ = call(capsys, "align", "--ckpt", run["ckpt"], "--treebank", conllu, "--n-examples", 2)
    assert rc == 0
    res = json.loads(out)
    assert "attn_best" not in res["sources"] and res["best_head"] is None and len(res["examples"]) == 2
    used = [s for s in sents if len(s.tokens) + 1 <= 32]
    assert res["n_used"] == len(used)
    shared = sum(len(gold_edges(s.heads) & set(chain_edges(len(s.tokens)))) for s in used)
    assert res["sources"]["chain"]["uuas"] == pytest.approx(shared / sum(len(s.tokens) - 1 for s in used))
    rc, _, err = call(capsys, "align", "--ckpt", run["ckpt"], "--treebank", conllu, "--select", conllu)
    assert rc == 2 and "--select" in err


def test_generate_writes_seeded_jsonl(run, tmp_path, capsys):
    outs = []
    for name in ("a.jsonl", "b.jsonl"):
        rc, out, _ = call(capsys, "generate", "--ckpt", run["ckpt"], "--n", 5, "--seed", 1, "--out", tmp_path / name,
                          "--max-new-tokens", 20)
        assert rc == 0
        outs.append((tmp_path / name).read_text())
        summary = json.loads(out)
        assert {"grammatical", "distinct_1", "mean_sent_len"} <= set(summary["metrics"])
    assert outs[0] == outs[1]
    rows = [json.loads(line) for line in outs[0].splitlines()]
    assert len(rows) == 5 and all("text" in r and "grammatical" in r and r["n_tokens"] <= 20 for r in rows)


def test_errors_are_one_line_and_exit_2(run, tmp_path, capsys):
    missing = tmp_path / "nope.ckpt"
    for argv in (["ppl", "--ckpt", missing, "--text", __file__],
                 ["ppl", "--ckpt", run["ckpt"], "--text", tmp_path / "none.txt"],
                 ["score", "--ckpt", run["ckpt"], "--input", tmp_path / "none.txt"],
                 ["align", "--ckpt", run["ckpt"], "--treebank", tmp_path / "none.conllu"],
                 ["generate", "--ckpt", missing, "--n", 2, "--out", tmp_path / "x.jsonl"]):
        rc, out, err = call(capsys, *argv)
        assert rc == 2 and out == "", argv
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "Traceback" not in err, err
    # through the real entry point: exit code 2, no traceback
    proc = subprocess.run([sys.executable, "-m", "depenc.evaluate", "ppl", "--ckpt", str(missing), "--text", __file__],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: checkpoint not found")


def test_agree_matches_the_callback_and_ablations_change_the_model(run, capsys):
    from depenc.evaluation.agreement import evaluate_pairs, load_pairs
    from depenc.evaluate import load_run

    rc, out, _ = call(capsys, "agree", "--ckpt", run["ckpt"], "--split", "test", "--max-pairs", "40", "--device", "cpu")
    assert rc == 0
    res = json.loads(out)
    _, model, tok, _ = load_run(run["ckpt"], "cpu")
    direct, _ = evaluate_pairs(model, tok, load_pairs(run["scfg"], "test", 40))
    assert res["metrics"]["n"] == direct["n"] == 40 and res["ablate"] == []
    assert res["metrics"]["margin"] == pytest.approx(direct["margin"], abs=1e-5)
    # zero_gate removes M (and with it the structured term): the margins must move
    rc, out, _ = call(capsys, "agree", "--ckpt", run["ckpt"], "--split", "test", "--max-pairs", "40",
                      "--device", "cpu", "--ablate", "zero_gate")
    assert rc == 0
    ablated = json.loads(out)
    assert ablated["ablate"] == ["zero_gate"] and ablated["metrics"]["margin"] != pytest.approx(direct["margin"])
    rc, _, err = call(capsys, "agree", "--ckpt", run["ckpt"], "--split", "nope")
    assert rc == 2 and "unknown split 'nope'" in err and len(err.strip().splitlines()) == 1
