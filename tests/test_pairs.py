"""Minimal pairs in BLiMP's format (depenc.evaluation.pairs, ``python -m depenc.evaluate pairs``, the pairs
callback): known answers with a fake scorer, bad input, and one tiny run whose synthetic pairs are
scored by the callback, by the command line and by ``evaluate agree``."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from conftest import NO_CALLBACKS, tiny_overrides
from depenc.data import synthetic as S
from depenc.evaluate import main as evaluate
from depenc.evaluation.likelihood import score_sentences
from depenc.evaluation.pairs import PairsError, evaluate_pairs, read_pairs, table

# the run's synthetic corpus (data.synthetic overrides) and the pairs file's: the same sentences
N = {"n_train": 300, "n_validation": 30, "n_test": 50, "n_test_long": 20}


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def fake_scorer(lp: dict[str, float]):
    return lambda sentences: np.array([lp[s] for s in sentences])


# --------------------------------------------------------------------------------------------
# known answers


def test_known_accuracies_margins_and_groups(tmp_path):
    # good - bad margins: a: +1, -2, +3 ; b: +0.5 (and a tie, which is wrong: good must be more likely)
    lp = {"g1": -1.0, "b1": -2.0, "g2": -5.0, "b2": -3.0, "g3": -1.0, "b3": -4.0, "g4": -2.0, "b4": -2.5,
          "g5": -7.0, "b5": -7.0}
    rows = [{"sentence_good": f"g{i}", "sentence_bad": f"b{i}", "UID": uid, "field": "syntax", "distance": d}
            for i, uid, d in ((1, "a", 2), (2, "a", 10), (3, "a", 2), (4, "b", 10), (5, "b", 2))]
    write_jsonl(tmp_path / "x.jsonl", rows)
    pairs = read_pairs(tmp_path / "x.jsonl")
    prefix = {("p1", "w", "v"): 0.2}  # only pair 1 has one-prefix fields
    pairs.records[0].update(one_prefix_prefix="p1", one_prefix_word_good="w", one_prefix_word_bad="v")
    res = evaluate_pairs(pairs, fake_scorer(lp), lambda items: np.array([prefix[i] for i in items]),
                         by=["UID", "distance"], n_boot=200, seed=3)
    a = res["all"]
    assert res["name"] == "x" and res["n_pairs"] == a["n"] == 5
    assert a["acc"] == pytest.approx(3 / 5) and a["margin"] == pytest.approx((1 - 2 + 3 + 0.5 + 0) / 5)
    assert a["acc_lo"] <= a["acc"] <= a["acc_hi"] and a["margin_lo"] <= a["margin"] <= a["margin_hi"]
    assert a["n_prefix"] == 1 and a["prefix_acc"] == 1.0 and a["prefix_margin"] == pytest.approx(0.2)
    uid = res["groups"]["UID"]
    assert list(uid) == ["a", "b"] and uid["a"]["n"] == 3 and uid["a"]["acc"] == pytest.approx(2 / 3)
    assert uid["b"]["acc"] == 0.5 and uid["b"]["margin"] == pytest.approx(0.25) and uid["b"]["n_prefix"] == 0
    assert "prefix_acc" not in uid["b"]
    assert list(res["groups"]["distance"]) == ["2", "10"]  # numbers in numeric order
    assert res["groups"]["distance"]["2"]["acc"] == pytest.approx(2 / 3)
    assert evaluate_pairs(pairs, fake_scorer(lp), by=["UID"], n_boot=200, seed=3) \
        ["all"]["acc_lo"] == a["acc_lo"]  # seeded
    text = table(res)
    assert "x: 5 pairs" in text and "UID=a" in text and "distance=10" in text


def test_all_pairs_right_give_a_degenerate_interval(tmp_path):
    write_jsonl(tmp_path / "y.jsonl", [{"sentence_good": f"g{i}", "sentence_bad": f"b{i}"} for i in range(8)])
    lp = {**{f"g{i}": -1.0 for i in range(8)}, **{f"b{i}": -1.0 - i - 1 for i in range(8)}}
    a = evaluate_pairs(read_pairs(tmp_path / "y.jsonl"), fake_scorer(lp), n_boot=200)["all"]
    assert a["acc"] == a["acc_lo"] == a["acc_hi"] == 1.0 and a["margin"] == pytest.approx(4.5)
    assert a["margin_lo"] < 4.5 < a["margin_hi"]


def test_a_folder_is_every_jsonl_file_in_it(tmp_path):
    d = tmp_path / "blimp"
    d.mkdir()
    write_jsonl(d / "b_uid.jsonl", [{"sentence_good": "g2", "sentence_bad": "b2", "UID": "b_uid"}])
    write_jsonl(d / "a_uid.jsonl", [{"sentence_good": "g1", "sentence_bad": "b1", "UID": "a_uid"}] * 2)
    (d / "notes.txt").write_text("not pairs")
    pairs = read_pairs(d)
    assert pairs.name == "blimp" and [r["UID"] for r in pairs.records] == ["a_uid", "a_uid", "b_uid"]
    assert pairs.where == [f"{d / 'a_uid.jsonl'}:1", f"{d / 'a_uid.jsonl'}:2", f"{d / 'b_uid.jsonl'}:1"]


@pytest.mark.parametrize("content, message", [
    ('{"sentence_good": "a b"}\n', "x.jsonl:1: no 'sentence_bad'"),
    ('{"sentence_good": "a", "sentence_bad": "b"}\n\n{"sentence_good": "a", "sentence_bad": "b"\n',
     "x.jsonl:3: not JSON"),
    ('["a", "b"]\n', "x.jsonl:1: not a JSON object"),
    ('{"sentence_good": "a", "sentence_bad": 3}\n', "x.jsonl:1: 'sentence_bad' must be a non-empty string"),
    ("\n\n", "x.jsonl: no pairs (empty file)"),
])
def test_bad_input_is_a_one_line_error_naming_file_and_line(tmp_path, capsys, content, message):
    f = tmp_path / "x.jsonl"
    f.write_text(content)
    with pytest.raises(PairsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_pairs(f)
    # the command line reads the pairs before it loads the checkpoint
    assert evaluate(["pairs", "--ckpt", str(tmp_path / "none.ckpt"), "--input", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_missing_group_key_and_missing_input(tmp_path, capsys):
    write_jsonl(tmp_path / "x.jsonl", [{"sentence_good": "a", "sentence_bad": "b", "UID": "u"},
                                       {"sentence_good": "c", "sentence_bad": "d"}])
    assert evaluate(["pairs", "--ckpt", "none.ckpt", "--input", str(tmp_path / "x.jsonl"), "--by", "UID"]) == 2
    assert f"{tmp_path / 'x.jsonl'}:2: no 'UID' to group by" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    for missing, says in ((tmp_path / "nope.jsonl", "pairs file not found"),
                          (tmp_path / "empty", "a folder without .jsonl")):
        assert evaluate(["pairs", "--ckpt", "none.ckpt", "--input", str(missing)]) == 2
        assert says in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# one tiny run: the callback, the command line and evaluate agree on the synthetic pairs


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A one-step debug run with the pairs callback on the synthetic test pairs (written by
    ``python -m depenc.data.synthetic pairs`` before training)."""
    from depenc.data.synthetic.cli import main as synthetic
    from depenc.train import main as train

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("pairsrun")
    pairs_file = tmp / "syn.jsonl"
    sets = [a for k, v in N.items() if k != "n_test" for a in ("--set", f"{k}={v}")]
    assert synthetic(["pairs", "--split", "test", "--n", str(N["n_test"]), *sets, "--out", str(pairs_file)]) == 0
    over = ["trainer.max_steps=1", "trainer.val_check_interval=1", "trainer.limit_val_batches=1",
            "trainer.test_at_end=false", *NO_CALLBACKS, *(f"data.synthetic.{k}={v}" for k, v in N.items()),
            "callbacks.pairs.enabled=true", f"callbacks.pairs.files=[{pairs_file}]", "callbacks.pairs.by=[UID,field]",
            "callbacks.pairs.every_n_val=0", "callbacks.pairs.n_bootstrap=100"]
    assert train(["debug", *tiny_overrides(tmp, *over)]) == 0
    run_dir = next((tmp / "runs" / "debug").iterdir())
    return {"dir": run_dir, "ckpt": str(run_dir / "checkpoints" / "last.ckpt"), "pairs": pairs_file}


def test_synthetic_pairs_carry_blimp_fields(run):
    rows = [json.loads(line) for line in run["pairs"].read_text().splitlines()]
    pairs = S.minimal_pairs(S.make_split(S.SyntheticConfig(**N), "test"))
    assert len(rows) == len(pairs) > 50
    for r, p in zip(rows, pairs):
        assert r["sentence_good"] == r["good"] == " ".join(p.good_sentence) and r["sentence_bad"] == r["bad"]
        assert r["UID"] == f"agreement_distance_{p.distance}" and r["field"] == "syntax"
        assert r["linguistics_term"] == "subject_verb_agreement" and r["distance"] == p.distance
        assert r["one_prefix_prefix"] + " " + r["one_prefix_word_good"] == " ".join(p.good_sentence[: p.verb + 1])
        assert r["one_prefix_word_bad"] == p.bad and r["attractors"] == p.attractors


def test_cli_equals_score_agree_and_the_callback(run, capsys):
    from depenc.evaluate import load_run

    rc = evaluate(["pairs", "--ckpt", run["ckpt"], "--input", str(run["pairs"]), "--by", "distance,UID",
                   "--device", "cpu", "--bootstrap", "100"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["name"] == "syn" and out["by"] == ["distance", "UID"]
    rows = [json.loads(line) for line in run["pairs"].read_text().splitlines()]
    _, model, tok, _ = load_run(run["ckpt"], "cpu")
    lp = {r["text"]: r["logprob"] for r in score_sentences(model, tok, sorted({r[k] for r in rows for k in
                                                                              ("sentence_good", "sentence_bad")}))}
    margins = np.array([lp[r["sentence_good"]] - lp[r["sentence_bad"]] for r in rows])
    a = out["all"]
    assert a["n"] == len(rows) and a["acc"] == float(np.mean(margins > 0))  # score's full-sentence log-prob
    assert a["margin"] == pytest.approx(float(margins.mean()), abs=1e-5)
    for d, group in out["groups"]["distance"].items():
        assert group == out["groups"]["UID"][f"agreement_distance_{d}"] | {k: group[k] for k in group if "_lo" in k
                                                                         or "_hi" in k}

    # the one-prefix numbers are agree's: the verb's log-prob given the prefix
    assert evaluate(["agree", "--ckpt", run["ckpt"], "--split", "test", "--device", "cpu"]) == 0
    agree = json.loads(capsys.readouterr().out)["metrics"]
    assert a["n_prefix"] == agree["n"] and a["prefix_acc"] == agree["acc"]
    assert a["prefix_margin"] == pytest.approx(agree["margin"], abs=1e-5)

    # the callback at the end of training (the same weights as last.ckpt)
    with open(run["dir"] / "metrics.csv", newline="") as f:
        logged = {k: v for row in csv.DictReader(f) for k, v in row.items() if v}
    assert float(logged["pairs/syn/acc"]) == pytest.approx(a["acc"], abs=1e-9)
    assert float(logged["pairs/syn/margin"]) == pytest.approx(a["margin"], abs=1e-5)
    assert float(logged["pairs/syn/prefix_acc"]) == pytest.approx(agree["acc"], abs=1e-9)
    uid = next(iter(out["groups"]["UID"]))
    assert float(logged[f"pairs/syn/acc_UID_{uid}"]) == pytest.approx(out["groups"]["UID"][uid]["acc"], abs=1e-9)
    assert float(logged["pairs/syn/acc_field_syntax"]) == pytest.approx(a["acc"], abs=1e-9)
    saved = json.loads(next((run["dir"] / "pairs").glob("*.json")).read_text())
    assert saved["final"] and saved["inputs"]["syn"]["all"]["n"] == len(rows)

    rc = evaluate(["pairs", "--ckpt", run["ckpt"], "--input", str(run["pairs"]), "--format", "table",
                   "--bootstrap", "0", "--device", "cpu"])
    text = capsys.readouterr().out
    assert rc == 0 and text.splitlines()[0] == f"syn: {len(rows)} pairs" and f"{a['acc']:.3f}" in text
