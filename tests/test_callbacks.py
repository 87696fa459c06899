"""Evaluation callbacks: alignment, generation, agreement, efficiency (core functions on tiny models,
rigged models for known answers), and one end-to-end run through depenc.train."""

from __future__ import annotations

import csv
import json
import math
import time

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO, tiny_overrides
from depenc.callbacks.efficiency import EfficiencyMonitor
from depenc.data import synthetic as S
from depenc.data.tokenizers import CharTokenizer, WordTokenizer
from depenc.evaluation.agreement import (
    _score_slow,
    agreement_metrics,
    attr_label,
    bootstrap_ci,
    dist_label,
    evaluate_pairs,
    load_pairs,
    score_pairs,
)
from depenc.evaluation.alignment import (
    encode_treebank,
    evaluate_alignment,
    flat_metrics,
    select_best_head,
    synthetic_gold,
)
from depenc.evaluation.generation import generate_samples, judge_synthetic, sample_metrics, write_samples
from depenc.metrics.alignment import chain_edges, gold_edges
from depenc.models.transformer import Transformer
from depenc.schema import DepEncConfig, ModelConfig

SCFG = S.SyntheticConfig(n_train=300, n_validation=60, n_test=80, n_test_long=20)
BASE = OmegaConf.load(REPO / "experiments" / "base.yaml")  # every callback setting with its default


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one intra-op thread. On a small shared CPU, OpenMP threads waiting for a busy core
    make every tiny op ~100x slower; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok() -> WordTokenizer:
    return WordTokenizer(["<eos>", "<unk>"] + S.vocabulary(SCFG))


def make_model(vocab: int, depenc: dict | None = None, block: int = 64, seed: int = 0) -> Transformer:
    """A baseline (``depenc=None``) or DepEnc model with the given ``model.depenc`` options."""
    torch.manual_seed(seed)
    cfg = ModelConfig(kind="baseline" if depenc is None else "depenc", vocab_size=vocab, block_size=block,
                      n_layer=2, n_head=2, n_embd=32, depenc=DepEncConfig(**(depenc or {})))
    return Transformer(cfg).eval()


def treebank(tok, split="test", n=40, block=64, name=None):
    return encode_treebank(name or f"syn_{split}", synthetic_gold(SCFG, split, n), tok, block)


# --------------------------------------------------------------------------------------------
# alignment


def test_alignment_keys_references_and_selection(tok):
    model = make_model(tok.vocab_size, {})
    report, other = treebank(tok, "test", 40), treebank(tok, "test_long", 20)
    sel = treebank(tok, "validation", 30, name="sel")
    res = evaluate_alignment(model, [report, other], sel, batch_size=8, n_examples=5)
    best = res["selection"]
    assert best["selected_on"] == "sel" and len(best["per_head"]) == 2 and len(best["per_head"][0]) == 2
    assert best["uuas"] == max(max(r) for r in best["per_head"])
    tb = res["treebanks"]["syn_test"]
    assert set(tb["sources"]) == {"parser", "attn_mean", "attn_best", "chain", "random"}
    assert tb["best_head"]["selected_on"] == "sel"
    for src, r in tb["sources"].items():
        assert 0 <= r["uuas"] <= 1 and 0 <= r["left_arc"] <= 1, src
        assert any(k.startswith("uuas_len_") for k in r) and any(k.startswith("recall_arc_") for k in r)
    # chain reference = the chain UUAS computed directly over the same sentences
    shared = total = 0
    for e in report.encoded:
        g = gold_edges(e.sentence.heads)
        shared += len(g & set(chain_edges(len(e.sentence.words))))
        total += len(g)
    assert tb["sources"]["chain"]["uuas"] == pytest.approx(shared / total)
    assert tb["n_used"] + tb["n_skipped"] == tb["n_total"] == 40
    assert len(tb["examples"]) == 5 and set(tb["examples"][0]["pred"]) == {"parser", "attn_mean", "attn_best"}
    # attn_best on the report set is the chosen head's score there (not re-chosen on it)
    direct = select_best_head(model, report, batch_size=8)["per_head"][best["layer"]][best["head"]]
    assert tb["sources"]["attn_best"]["uuas"] == pytest.approx(direct)


def test_attn_best_is_never_reported_on_its_selection_set(tok):
    model = make_model(tok.vocab_size)  # baseline: no parser source
    a, b = treebank(tok, "test", 30, name="a"), treebank(tok, "validation", 30, name="b")
    res = evaluate_alignment(model, [a, b], selection=a, batch_size=8)
    assert res["selection"]["selected_on"] == "a"
    assert "attn_best" not in res["treebanks"]["a"]["sources"] and res["treebanks"]["a"]["best_head"] is None
    assert "attn_best" in res["treebanks"]["b"]["sources"]
    assert "parser" not in res["treebanks"]["b"]["sources"]
    assert "attn_best" not in evaluate_alignment(model, [a], None)["treebanks"]["a"]["sources"]


def _gold_token_matrix(e, target: str) -> np.ndarray:
    """(t+1, t+1) matrix over [BOS] + words holding every gold left arc, in the target's layout."""
    n = len(e.sentence.words)
    M = np.zeros((n + 1, n + 1), dtype=np.float32)
    for a, b in gold_edges(e.sentence.heads):  # a < b: word b's left relative a
        row = b + 1 if target == "self" else b  # next: the row before word b says where b attaches
        M[row, a + 1] = 1.0
    return M


@pytest.mark.parametrize("target", ["self", "next"])
def test_oracle_parser_scores_perfectly(tok, target, monkeypatch):
    model = make_model(tok.vocab_size, {"target": target})
    tb = treebank(tok, "test", 40)
    gold = {tuple(e.ids): _gold_token_matrix(e, target) for e in tb.encoded}
    original = model.forward

    def rigged(idx, *args, **kw):
        out = original(idx, *args, **kw)
        M = torch.zeros_like(out["dep"]["M"])
        for b in range(idx.size(0)):
            ids = idx[b].tolist()
            while len(ids) > 1 and ids[-1] == tok.eos_id:
                ids.pop()
            G = torch.from_numpy(gold[tuple(ids)])
            M[b, : G.size(0), : G.size(1)] = G
        out["dep"]["M"] = M
        return out

    monkeypatch.setattr(model, "forward", rigged)
    res = evaluate_alignment(model, [tb], None, batch_size=7)
    parser = res["treebanks"][tb.name]["sources"]["parser"]
    assert parser["uuas"] == 1.0 and parser["left_arc"] == 1.0
    assert all(v == 1.0 for k, v in parser.items() if k.startswith(("uuas_len_", "recall_arc_")))


@pytest.mark.parametrize("target", ["self", "next"])
def test_oracle_models_read_gold_arcs(tok, target):
    """depenc.parser=oracle: alignment and agreement feed the gold arcs; generation is skipped."""
    from depenc.callbacks.generation import GenerationCallback

    model = make_model(tok.vocab_size, {"parser": "oracle", "target": target}, block=128)
    tb = treebank(tok, "test", 30, block=128)
    res = evaluate_alignment(model, [tb], treebank(tok, "validation", 10, block=128, name="sel"))
    parser = res["treebanks"][tb.name]["sources"]["parser"]
    assert parser["uuas"] == 1.0 and parser["left_arc"] == 1.0
    m, _ = evaluate_pairs(model, tok, load_pairs(SCFG, "test", 20), n_boot=50)
    assert m["n"] == 20 and math.isfinite(m["margin"])
    assert GenerationCallback(BASE.callbacks.generation, tok).check_model(model) is not None


def test_alignment_skips_and_counts_long_sentences(tok):
    gold = synthetic_gold(SCFG, "test", 40)
    tb = encode_treebank("x", gold, tok, block_size=12)
    assert tb.skipped.get("too_long", 0) == sum(1 + len(s.words) > 12 for s in gold) > 0
    assert tb.n_used + tb.n_skipped == 40
    res = evaluate_alignment(make_model(tok.vocab_size, block=12), [tb], None)
    assert res["treebanks"]["x"]["n_skipped"] == tb.n_skipped


def test_alignment_with_a_subword_tokenizer(tok):
    gold = synthetic_gold(SCFG, "test", 20)
    ctok = CharTokenizer.train([" ".join(s.words) for s in synthetic_gold(SCFG, "train", 300)])
    tb = encode_treebank("chars", gold, ctok, block_size=256)
    e = tb.encoded[0]
    assert len(e.ids) - 1 == len(" ".join(e.sentence.words)) and max(e.word_of_token) == len(e.sentence.words) - 1
    res = evaluate_alignment(make_model(ctok.vocab_size, {}, block=256), [tb], None, batch_size=4)
    src = res["treebanks"]["chars"]["sources"]
    assert {"parser", "attn_mean", "chain"} <= set(src) and 0 <= src["parser"]["uuas"] <= 1


# --------------------------------------------------------------------------------------------
# agreement


def test_bootstrap_ci_contains_the_mean():
    rng = np.random.default_rng(1)
    x = rng.normal(0.3, 1.0, size=300)
    lo, hi = bootstrap_ci(x, 1000, seed=0)
    assert lo < x.mean() < hi and hi - lo < 0.5
    assert bootstrap_ci(x, 1000, seed=0) == (lo, hi)  # seeded
    m = agreement_metrics(x, rng.integers(0, 20, 300), rng.integers(0, 5, 300), n_boot=200)
    for key in ("", "_dist_0-3", "_dist_>12", "_attr_0", "_attr_3+"):
        if m[f"n{key}"]:
            assert m[f"acc{key}_lo"] <= m[f"acc{key}"] <= m[f"acc{key}_hi"]
            assert m[f"margin{key}_lo"] <= m[f"margin{key}"] <= m[f"margin{key}_hi"]
    assert [dist_label(d) for d in (0, 3, 4, 8, 12, 13, 40)] == ["0-3", "0-3", "4-7", "8-12", "8-12", ">12", ">12"]
    assert [attr_label(a) for a in (0, 1, 2, 3, 7)] == ["0", "1", "2", "3+", "3+"]


def _rig(model, pairs, tok, correct: bool, monkeypatch):
    """Logits that put +10 on the correct (or wrong) form right after each pair's prefix."""
    want = {}
    for p in pairs:
        key = tuple([tok.eos_id] + tok.encode(" ".join(p.sentence[: p.verb])))
        # a set: two sentences may share a prefix (with another verb of the same number)
        want.setdefault(key, set()).add((tok.token_to_id(p.good if correct else p.bad),
                                         tok.token_to_id(p.bad if correct else p.good)))
    original = model.forward

    def rigged(idx, *args, **kw):
        out = original(idx, *args, **kw)
        logits = torch.zeros_like(out["logits"])
        for b in range(idx.size(0)):
            ids = idx[b].tolist()
            for pos in range(len(ids)):
                for up, down in want.get(tuple(ids[: pos + 1]), ()):
                    logits[b, pos, up], logits[b, pos, down] = 10.0, -10.0
        out["logits"] = logits
        return out

    monkeypatch.setattr(model, "forward", rigged)


@pytest.mark.parametrize("correct", [True, False])
def test_agreement_of_a_rigged_model(tok, correct, monkeypatch):
    pairs = load_pairs(SCFG, "test", 60)
    assert len(pairs) == 60 and all(p.sentence[p.verb] == p.good for p in pairs)
    model = make_model(tok.vocab_size, block=128)
    _rig(model, pairs, tok, correct, monkeypatch)
    m, details = evaluate_pairs(model, tok, pairs, batch_size=16, n_boot=200)
    assert m["n"] == 60 and m["n_skipped"] == 0 and len(details["items"]) == 60
    assert m["acc"] == (1.0 if correct else 0.0) and m["acc_lo"] == m["acc_hi"] == m["acc"]
    assert m["margin"] == pytest.approx(20.0 if correct else -20.0)
    assert sum(m[f"n_dist_{b}"] for b in ("0-3", "4-7", "8-12", ">12")) == 60


def test_agreement_fast_and_general_paths_agree(tok):
    pairs = load_pairs(SCFG, "test_long", 30)
    model = make_model(tok.vocab_size, {}, block=128)
    fast, ok = score_pairs(model, tok, pairs, batch_size=8)
    slow = _score_slow(model, tok, pairs, 8, 128, "cpu", tok.eos_id)
    assert ok.all() and np.allclose(fast, slow, atol=1e-4)
    short = make_model(tok.vocab_size, block=16)
    _, ok16 = score_pairs(short, tok, pairs)
    assert (~ok16).sum() == sum(p.verb + 1 > 16 for p in pairs) > 0


# --------------------------------------------------------------------------------------------
# generation


def test_generation_writes_jsonl_and_judges_grammaticality(tok, tmp_path):
    model = make_model(tok.vocab_size, {})
    samples = generate_samples(model, tok, 6, seed=3, batch_size=4, max_new_tokens=12)
    again = generate_samples(model, tok, 6, seed=3, batch_size=4, max_new_tokens=12)
    assert [s["text"] for s in samples] == [s["text"] for s in again]  # seeded
    assert all(s["n_tokens"] <= 12 and (s["ended"] or s["n_tokens"] == 12) for s in samples)
    grammar = S.get_grammar(SCFG)
    metrics = sample_metrics(samples, [s.text for s in S.make_split(SCFG, "validation")], grammar)
    for key in ("distinct_1", "distinct_2", "distinct_3", "mattr", "rep4", "mean_sent_len", "len_w1", "len_js",
                "grammatical", "valid_prefix"):
        assert key in metrics, key
    path = write_samples(tmp_path / "samples" / "0.jsonl", samples)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 6 and all({"text", "grammatical", "first_invalid"} <= set(r) for r in rows)
    # the grammar's own sentences are grammatical
    own = [{"text": s.text, "n_tokens": len(s.tokens), "ended": True} for s in S.make_split(SCFG, "test")[:30]]
    m = sample_metrics(own, None, grammar)
    assert m["grammatical"] == 1.0 and m["valid_prefix"] == 1.0 and math.isnan(m["first_invalid_pos"])
    bad = judge_synthetic("the dog runs . the the dog", grammar)
    assert not bad["grammatical"] and bad["first_invalid"] == 5
    assert [x["first_invalid"] for x in bad["sentences"]] == [None, 1]


def test_generation_matches_model_generate_row_by_row(tok):
    model = make_model(tok.vocab_size)
    samples = generate_samples(model, tok, 3, seed=7, batch_size=1, max_new_tokens=10)
    gen = torch.Generator().manual_seed(7)
    for s in samples:
        out = model.generate(torch.zeros(1, 1, dtype=torch.long), 10, eos_id=tok.eos_id, generator=gen)[0, 1:].tolist()
        ids = out[: out.index(0)] if 0 in out else out
        assert s["text"] == tok.decode(ids)


# --------------------------------------------------------------------------------------------
# efficiency


class _Pauses:
    """A tiny LightningModule and callbacks that sleep known times: 20 ms per training batch, 0.1 s per
    validation batch, 0.8 s in on_validation_end (where the evaluation callbacks run)."""

    @staticmethod
    def module():
        import lightning as L

        class Sleepy(L.LightningModule):
            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.zeros(1))

            def training_step(self, batch, batch_idx):
                time.sleep(0.02)
                return self.w.sum() * 0.0

            def validation_step(self, batch, batch_idx):
                time.sleep(0.1)

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        return Sleepy()

    @staticmethod
    def callback():
        import lightning as L

        class SlowEvaluation(L.Callback):
            def on_validation_end(self, trainer, pl_module):
                time.sleep(0.8)

        return SlowEvaluation()


def _rows_logger():
    from lightning.pytorch.loggers.logger import Logger

    class Rows(Logger):
        def __init__(self):
            super().__init__()
            self.rows = []

        name = "rows"
        version = 0

        def log_hyperparams(self, *args, **kwargs):
            pass

        def log_metrics(self, metrics, step=None):
            self.rows.append((step, dict(metrics)))

    return Rows()


def test_efficiency_reports_throughput_and_memory_without_validation_pauses():
    import lightning as L

    from torch.utils.data import DataLoader

    items = [{"input_ids": torch.zeros(16, dtype=torch.long)}] * 24
    batches = DataLoader(items, batch_size=4)  # 6 batches of (4, 16) tokens
    monitor, logger = EfficiencyMonitor(log_every_n_steps=2), _rows_logger()
    trainer = L.Trainer(max_steps=6, val_check_interval=3, limit_val_batches=1, num_sanity_val_steps=0,
                        log_every_n_steps=1, logger=logger, callbacks=[monitor, _Pauses.callback()],
                        accelerator="cpu", devices=1, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(_Pauses.module(), train_dataloaders=batches, val_dataloaders=batches)
    perf = [(step, m) for step, m in logger.rows if "perf/peak_mem_mb" in m]
    assert [step for step, _ in perf] == [2, 4, 6, 6]  # every 2 steps, then the whole-run averages
    final = perf[-1][1]
    assert final["perf/measured_steps"] == 5 and final["perf/peak_mem_mb"] > 0  # the first batch is not measured
    # 20 ms per batch plus Lightning's overhead; the 0.9 s around the validation at step 3 would add 180 ms
    # (the stock ThroughputMonitor leaves out the validation batches but not on_validation_end: +160 ms)
    assert 20 < final["perf/step_time_ms"] < 120
    assert final["perf/tokens_per_s"] == pytest.approx(64 * 5 / final["perf/train_time_s"])
    window = perf[1][1]  # batches 3 and 4: the validation pause lies between them
    assert 20 < window["perf/step_time_ms"] < 120 and "perf/tokens_per_s" not in perf[0][1]  # step 2: window not full


# --------------------------------------------------------------------------------------------
# helpers of the evaluation layer


def test_json_output_turns_nan_into_null(tmp_path):
    from depenc.evaluation.io import nan_to_none, write_json

    assert nan_to_none({"a": float("nan"), "b": [1.0, float("inf"), (np.float32("nan"), 2)]}) == {
        "a": None, "b": [1.0, None, [None, 2]]}
    path = write_json(tmp_path / "x" / "r.json", {"n": np.int64(3), "v": np.array([0.5, np.nan]), "s": {2, 1}})
    assert json.loads(path.read_text()) == {"n": 3, "v": [0.5, None], "s": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary file left


def test_gold_matrices_for_oracle_inputs():
    from depenc.data.gold import gold_matrices

    # "dogs bark": word 1 depends on word 2 (root); the input is [BOS] dogs bark
    M = gold_matrices([[2, 0]], "self", 4)  # (1, 4, 4), padded
    expected = torch.zeros(4, 4)
    expected[2, 1] = 1.0  # at "bark" (position 2) the left relative is "dogs" (position 1)
    assert torch.equal(M[0], expected)
    # target=next, cut to 2 positions: row 1 ("dogs") says where the next word "bark" attaches: to "dogs"
    assert torch.equal(gold_matrices([[2, 0]], "next", 2)[0], torch.tensor([[0.0, 0.0], [0.0, 1.0]]))


def test_eval_size_and_treebank_specs():
    from depenc.callbacks import eval_size
    from depenc.callbacks.alignment import treebank_specs

    assert [eval_size(400, 0, False), eval_size(400, 0, True), eval_size(400, -1, True), eval_size(400, 50, True)] == [
        400, 0, 400, 50]
    c = BASE.callbacks.alignment
    synthetic, text = OmegaConf.create({"source": "synthetic"}), OmegaConf.create({"source": "text"})
    assert treebank_specs(c, synthetic) == ({"synthetic": "synthetic:test"}, "synthetic:validation")
    files = OmegaConf.merge(c, {"treebanks": {"wsj": "w.dp", "ewt": "e.conllu"}})
    assert treebank_specs(files, text) == ({"wsj": "w.dp", "ewt": "e.conllu"}, "wsj")
    assert treebank_specs(OmegaConf.merge(files, {"selection": "none"}), text)[1] is None
    assert treebank_specs(c, text) == ({}, None)
    with pytest.raises(ValueError, match="at least two treebanks"):
        treebank_specs(OmegaConf.merge(c, {"selection": "cross"}), synthetic)


def test_peak_rss_is_at_least_the_current_rss():
    from depenc.evaluation.memory import peak_memory_mb, peak_rss_mb

    with open("/proc/self/status") as f:
        rss = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
    assert peak_rss_mb() >= rss > 0 and peak_memory_mb(torch.device("cpu")) >= rss


# --------------------------------------------------------------------------------------------
# end to end through depenc.train


def test_end_to_end_callbacks_through_train(tmp_path):
    from depenc.train import main

    rc = main(["debug", *tiny_overrides(tmp_path, "model.kind=depenc")])
    assert rc == 0
    run_dir = next((tmp_path / "runs" / "debug").iterdir())
    with open(run_dir / "metrics.csv", newline="") as f:
        columns = set(csv.DictReader(f).fieldnames)
    summary = json.loads((run_dir / "summary.json").read_text())
    keys = ["align/synthetic/parser/uuas", "align/synthetic/attn_mean/uuas", "align/synthetic/attn_best/uuas",
            "align/synthetic/chain/uuas", "align/synthetic/random/uuas", "align/synthetic/parser/left_arc",
            "align/synthetic/chain/uuas_len_1-10", "align/synthetic/chain/recall_arc_1", "align/synthetic/n_skipped",
            "gen/distinct_1", "gen/distinct_2", "gen/distinct_3", "gen/mattr", "gen/rep4", "gen/mean_sent_len",
            "gen/len_w1", "gen/len_js", "gen/grammatical", "gen/valid_prefix",
            "agree/test/acc", "agree/test/acc_lo", "agree/test/acc_hi", "agree/test/margin", "agree/test/margin_lo",
            "agree/test/acc_dist_0-3", "agree/test/margin_attr_0", "agree/test_long/acc",
            "perf/tokens_per_s", "perf/step_time_ms", "perf/peak_mem_mb"]
    for key in keys:
        assert key in columns, f"{key} not in metrics.csv"
        assert key in summary, f"{key} not in summary.json"
    assert summary["perf/tokens_per_s"] > 0 and 0 <= summary["align/synthetic/parser/uuas"] <= 1
    for folder, pattern in (("alignment", "*.json"), ("samples", "*.jsonl"), ("agreement", "*.json")):
        assert list((run_dir / folder).glob(pattern)), folder
    final = json.loads((run_dir / "alignment" / "20.json").read_text())
    assert final["final"] and final["selection"]["selected_on"] == "synthetic_validation"
    assert final["treebanks"]["synthetic"]["examples"]
    agree = json.loads((run_dir / "agreement" / "20.json").read_text())
    assert set(agree["splits"]) == {"test", "test_long"}
    # the validation at step 10 evaluated too; the one at the last step is left to the final evaluation
    assert (run_dir / "alignment" / "10.json").is_file() and (run_dir / "samples" / "10.jsonl").is_file()


def test_cross_selection_reports_each_treebank_with_the_head_chosen_on_the_other(tok):
    model = make_model(tok.vocab_size)
    a, b = treebank(tok, "test", 30, name="a"), treebank(tok, "test_long", 20, name="b")
    res = evaluate_alignment(model, [a, b], selection="cross", batch_size=8)
    assert res["selection"] is None
    cross = res["cross_selection"]
    assert cross["a"]["selected_on"] == "b" and cross["b"]["selected_on"] == "a"
    for name, other in (("a", b), ("b", a)):
        pick = select_best_head(model, other, batch_size=8)
        assert (cross[name]["layer"], cross[name]["head"]) == (pick["layer"], pick["head"])
        tb = {"a": a, "b": b}[name]
        direct = select_best_head(model, tb, batch_size=8)["per_head"][pick["layer"]][pick["head"]]
        assert res["treebanks"][name]["sources"]["attn_best"]["uuas"] == pytest.approx(direct)
    flat = flat_metrics(res)
    assert flat["align/a/best_head/layer"] == cross["a"]["layer"] and "align/best_head/layer" not in flat
    with pytest.raises(ValueError, match="at least two treebanks"):
        evaluate_alignment(model, [a], selection="cross")
    with pytest.raises(ValueError, match="selection must be"):
        evaluate_alignment(model, [a, b], selection="wsj")
