"""Sentence-aligned blocks and the excess loss over the synthetic grammar's optimum, with known answers:
hand-built blocks, a model that outputs the reference's own log-probabilities (excess 0, KL 0), a
uniform model (KL = log V - entropy), the callback in a tiny training run and the CLI on its checkpoint."""

from __future__ import annotations

import json
import math
from itertools import pairwise
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY_COMPARE_ARGS, tiny_overrides

from depenc.data import synthetic as S
from depenc.data.aligned import (
    AlignedBlocks,
    pack_sentences,
    sentences_of_stream,
    stream_of,
)
from depenc.data.tokenizers import WordTokenizer
from depenc.evaluation import excess as E

SCFG = S.SyntheticConfig(n_train=200, n_validation=60, n_test=80, n_test_long=10)


@pytest.fixture(scope="module")
def tok() -> WordTokenizer:
    return WordTokenizer(["<eos>", "<unk>"] + S.vocabulary(SCFG))


class BigramReference:
    """A stand-in for ExactReference with the same API: a fixed random bigram model over the words
    (so each row depends on the prefix only), all mass on <eos> after '.', <eos> and <unk> impossible
    elsewhere. Every word keeps positive probability, so both verb forms do (finite margins)."""

    def __init__(self, scfg=None, reference: str = "own", split: str | None = None):
        self.reference, self.split = reference, split

    def next_token_logprobs(self, words, vocab) -> np.ndarray:
        V = len(vocab)
        table = np.random.default_rng(0).normal(size=(V, V)) * 2.0  # (previous id, next id)
        index = {w: i for i, w in enumerate(vocab)}
        out = np.full((len(words) + 1, V), -np.inf)
        for k, prev in enumerate(["<eos>"] + list(words)):
            if prev == ".":
                out[k, index["<eos>"]] = 0.0
                continue
            logits = table[index[prev]].copy()
            logits[[index["<eos>"], index["<unk>"]]] = -np.inf
            out[k] = logits - np.logaddexp.reduce(logits[np.isfinite(logits)])
        return out


@pytest.fixture
def bigram(monkeypatch):
    monkeypatch.setattr(E, "exact_reference", lambda scfg, split, reference, cache_dir: BigramReference(scfg, reference, split))


class ReferenceModel(torch.nn.Module):
    """Logits = the reference's log-probabilities after the prefix since the last <eos> (zeros where
    the prefix is not a whole sentence start, e.g. padding)."""

    def __init__(self, reference, tokenizer, block_size: int):
        super().__init__()
        self.ref, self.tok = reference, tokenizer
        self.vocab = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
        self.cfg = SimpleNamespace(block_size=block_size, vocab_size=tokenizer.vocab_size)
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the model a device
        self.encoder = None  # no dependency encoder (so no oracle arcs)

    def forward(self, idx, **kw):
        out = torch.zeros(*idx.shape, len(self.vocab), dtype=torch.float64)
        eos = self.tok.eos_id
        for b, row in enumerate(idx.tolist()):
            starts = [t for t, i in enumerate(row) if i == eos] + [len(row)]
            for o, e in pairwise(starts):
                if e - o > 1:  # <eos> w1 .. wm: rows 0..m of the reference for that sentence
                    words = [self.vocab[i] for i in row[o + 1:e]]
                    out[b, o:e] = torch.from_numpy(self.ref.next_token_logprobs(words, self.vocab)[: e - o])
        return {"logits": out}


class UniformModel(ReferenceModel):
    def forward(self, idx, **kw):
        return {"logits": torch.zeros(*idx.shape, len(self.vocab))}


# --------------------------------------------------------------------------------------------
# aligned blocks


def test_hand_built_aligned_blocks():
    sents = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    P, I = 0, -100  # <eos> padding input, ignored target
    ds = AlignedBlocks(sents, block_size=8, eos_id=0)
    assert ds.blocks == [[0, 1], [2]] and ds.n_predicted == 4 + 3 + 5
    assert ds[0]["input_ids"].tolist() == [0, 5, 6, 7, 0, 8, 9, P]
    assert ds[0]["targets"].tolist() == [5, 6, 7, 0, 8, 9, 0, I]
    assert ds[0]["sentence"].tolist() == [0, 0, 0, 0, 1, 1, 1, -1]
    assert ds[0]["position"].tolist() == [0, 1, 2, 3, 0, 1, 2, -1]
    assert ds[1]["input_ids"].tolist() == [0, 10, 11, 12, 13, P, P, P]
    assert ds[1]["targets"].tolist() == [10, 11, 12, 13, 0, I, I, I]
    # a sentence that exactly fills a block (4 tokens + closing <eos> = 5 targets) and one that cannot
    assert pack_sentences([4, 4, 1], 5) == [[0], [1], [2]]
    with pytest.raises(ValueError, match="sentence 1 has 5 tokens.*at most 4 tokens"):
        pack_sentences([2, 5], 5)


def test_aligned_blocks_predict_every_token_once_from_its_eos(tok):
    sents = [tok.encode(s.text) for s in S.make_split(SCFG, "validation")]
    sents = [s for s in sents if len(s) < 32]
    ds = AlignedBlocks(sents, block_size=32, eos_id=tok.eos_id)
    seen = {}
    for b in range(len(ds)):
        item = ds[b]
        x, y = item["input_ids"].tolist(), item["targets"].tolist()
        for t, (i, k) in enumerate(zip(item["sentence"].tolist(), item["position"].tolist())):
            if i < 0:
                assert y[t] == -100
                continue
            assert (i, k) not in seen
            seen[i, k] = y[t]
            o = t - k  # the sentence's opening <eos>: its whole start is in context
            assert x[o] == tok.eos_id and x[o + 1 : t + 1] == sents[i][:k]
    assert seen == {(i, k): (s + [tok.eos_id])[k] for i, s in enumerate(sents) for k in range(len(s) + 1)}
    assert ds.n_predicted == len(seen) and len(ds) < len(sents)  # several sentences per block


@pytest.mark.parametrize("target", ["self", "next"])
def test_aligned_gold_arcs_are_each_sentences_own(tok, target):
    """Oracle models: a block's gold matrix holds each sentence's own matrix at its offset, nothing else."""
    from depenc.data.gold import sentence_gold_matrix

    sents = [s for s in S.make_split(SCFG, "test")[:12] if len(s.tokens) < 24]
    ds = AlignedBlocks([tok.encode(s.text) for s in sents], 24, tok.eos_id, [s.heads for s in sents], target)
    for b, block in enumerate(ds.blocks):
        expected = torch.zeros(24, 24)
        for i in block:
            o, n = int(ds.offsets[i]), len(sents[i].tokens)
            expected[o : o + n + 1, o : o + n + 1] = sentence_gold_matrix(sents[i].heads, target, n + 1)
        assert torch.equal(ds[b]["gold_M"], expected)


def test_stream_round_trip_is_the_datamodule_stream(tmp_path):
    from depenc.data.datamodule import LMDataModule

    dm = LMDataModule({"synthetic": {"n_train": 100, "n_validation": 30, "n_test": 30, "n_test_long": 5},
                       "block_size": 16, "cache_dir": str(tmp_path)})
    dm.setup()
    stream = np.asarray(dm.stream("validation"), dtype=np.int64)
    sents = sentences_of_stream(stream, dm.doc_offsets("validation"))
    assert [dm.tokenizer.decode(s) for s in sents] == [s.text for s in S.make_split(dm_scfg(dm), "validation")]
    assert np.array_equal(stream_of(sents, dm.tokenizer.eos_id), stream)
    plain, today = E.plain_blocks(sents, 16, dm.tokenizer.eos_id), dm.eval_dataset("validation")
    assert len(plain) == len(today) and all(
        torch.equal(plain[b][k], today[b][k]) for b in range(len(today)) for k in ("input_ids", "targets"))


def dm_scfg(dm) -> S.SyntheticConfig:
    return S.SyntheticConfig.from_dict(dm.cfg["synthetic"])


# --------------------------------------------------------------------------------------------
# excess loss with known answers


@pytest.mark.parametrize("split,reference", [("test", "own"), ("test_long", "train"), ("test_long", "own")])
def test_exact_model_has_zero_excess_and_kl(tok, split, reference):
    from depenc.data.synthetic.exact import ExactReference

    model = ReferenceModel(ExactReference(SCFG, reference, split, cache_dir=None), tok, block_size=128)
    metrics, result = E.evaluate_excess(model, tok, SCFG, split, reference, batch_size=4)
    pre = f"excess/{split}"
    assert result["n_skipped"] == 0 and result["n_opt_impossible"] == 0
    assert result["n_positions"] == sum(len(s.tokens) + 1 for s in S.make_split(SCFG, split))
    assert metrics[f"{pre}/excess"] == pytest.approx(0.0, abs=1e-9)
    assert metrics[f"{pre}/kl"] == pytest.approx(0.0, abs=1e-9)
    assert metrics[f"{pre}/opt_nll"] > 0.5  # a real distribution, not a degenerate one
    for cat in E.CATEGORIES:
        if result["cat"][cat]["n"]:
            assert abs(metrics[f"{pre}/cat/{cat}/kl"]) < 1e-9 and abs(metrics[f"{pre}/cat/{cat}/excess"]) < 1e-9
    # the grammar rules out the other-number form at every verb: infinite optimal margin
    assert result["agree"]["n"] > 0 and result["agree"]["opt_inf_share"] == 1 == result["agree"]["opt_acc"]
    assert result["agree"]["acc"] == 1 and math.isnan(result["agree"]["opt_margin"])


def test_model_margin_is_the_optimal_margin(tok, bigram):
    """With a reference that allows both verb forms, the margins are finite and match verb by verb."""
    metrics, result = E.evaluate_excess(ReferenceModel(BigramReference(), tok, 48), tok, SCFG, "test")
    assert metrics["excess/test/kl"] == pytest.approx(0.0, abs=1e-9)
    assert result["agree"]["n"] > 0 and result["agree"]["opt_inf_share"] == 0
    assert metrics["excess/test/agree/margin"] == pytest.approx(metrics["excess/test/agree/opt_margin"], abs=1e-9)
    for label, stats in result["dist"].items():
        if stats["n"]:
            assert stats["margin"] == pytest.approx(stats["opt_margin"], abs=1e-9), label


def test_uniform_model_kl_is_log_v_minus_entropy(tok):
    model = UniformModel(None, tok, block_size=48)
    targets = E.prepare_targets(SCFG, "validation", tok, 48)
    metrics, _ = E.evaluate_excess(model, tok, SCFG, "validation", targets=targets)
    p = np.exp(targets.opt_logp)
    assert np.allclose(p.sum(axis=1), 1.0)
    entropy = -np.sum(p * np.where(p > 0, targets.opt_logp, 0.0), axis=1)  # (N,)
    log_v = math.log(tok.vocab_size)
    assert metrics["excess/validation/kl"] == pytest.approx(log_v - entropy.mean(), rel=1e-9)
    assert metrics["excess/validation/nll"] == pytest.approx(log_v, rel=1e-9)
    assert metrics["excess/validation/excess"] == pytest.approx(log_v - targets.opt_nll.mean(), rel=1e-9)
    assert metrics["excess/validation/agree/margin"] == 0 and metrics["excess/validation/agree/acc"] == 0
    # the plain blocks cut the same sentences; a uniform model does not care where
    assert metrics["excess/validation/plain_ppl"] == pytest.approx(tok.vocab_size, rel=1e-9)


def test_bucket_counts_add_up(tok):
    sents = [s for s in S.make_split(SCFG, "test") if len(s.tokens) < 40]
    targets = E.prepare_targets(SCFG, "test", tok, 40)
    result = E.summarize(targets, E.score_model(UniformModel(None, tok, 40), targets))
    n = result["n_positions"]
    assert n == sum(len(s.tokens) + 1 for s in sents) and result["n_skipped"] == SCFG.n_test - len(sents) > 0
    assert sum(b["n"] for b in result["cat"].values()) == n == sum(b["n"] for b in result["depth"].values())
    assert sum(b["share"] for b in result["cat"].values() if b["n"]) == pytest.approx(1.0)
    assert result["depth"]["0"]["n"] >= 2 * len(sents) and set(result["depth"]) == {
        str(d) for s in sents for d in s.depths}  # '.' and <eos> are at depth 0
    n_verbs = sum(len(s.agreement) for s in sents)
    assert result["cat"]["verb"]["n"] == n_verbs == result["agree"]["n"]
    assert sum(b["n"] for b in result["dist"].values()) == n_verbs == sum(b["n"] for b in result["attr"].values())
    assert result["cat"]["eos"]["n"] == result["cat"]["period"]["n"] == len(sents)
    that = sum(s.tokens.count("that") for s in sents)
    assert result["cat"]["rel_that"]["n"] + result["cat"]["comp_that"]["n"] == that
    assert result["cat"]["noun"]["n"] == sum(t.startswith("N_") for s in sents for t in s.tags)


def test_category_of_every_lexical_tag():
    assert {E.category_of(tag) for tag in S.LEXICON} == set(E.CATEGORIES) - {"eos"}
    assert E.category_of("RPRON") == "rel_that" and E.category_of("CTHAT") == "comp_that"
    assert E.category_of("TV_pl") == "verb" and E.category_of("PUNCT") == "period"


def test_kl_rows_known_values():
    with np.errstate(divide="ignore"):  # log 0 = -inf: impossible tokens
        p = np.log(np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]))
    q = np.log(np.array([[0.25, 0.25, 0.5], [0.5, 0.25, 0.25]]))
    assert E.kl_rows(p, q) == pytest.approx([math.log(2), math.log(2)])


# --------------------------------------------------------------------------------------------
# the callback in a training run, and the CLI on its checkpoint


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny debug run with the excess callback alone (every validation, and all sentences at the end)."""
    from depenc.train import main as train

    tmp = tmp_path_factory.mktemp("excessrun")
    rc = train(["debug", *tiny_overrides(tmp, *TINY_COMPARE_ARGS, "callbacks.alignment.enabled=false",
                                         "callbacks.generation.enabled=false", "callbacks.agreement.enabled=false",
                                         "callbacks.excess.enabled=true", "callbacks.excess.every_n_val=1",
                                         "callbacks.excess.max_sentences=20", "trainer.test_at_end=false")])
    assert rc == 0
    return next((tmp / "runs" / "debug").iterdir())


def test_callback_logs_to_summary_and_writes_json(tiny_run):
    run_dir = tiny_run
    summary = json.loads((run_dir / "summary.json").read_text())
    for split in ("validation", "test", "test_long"):
        for name in ("excess", "kl", "ppl", "opt_ppl", "plain_ppl", "n_skipped", "cat/noun/excess",
                     "cat/eos/kl", "depth/0/kl", "dist/0-3/excess", "attr/0/kl", "agree/margin"):
            assert f"excess/{split}/{name}" in summary, f"excess/{split}/{name}"
    assert summary["excess/time_s"] > 0
    step3 = json.loads((run_dir / "excess" / "3.json").read_text())  # validation at step 3: max_sentences
    final = json.loads((run_dir / "excess" / "6.json").read_text())  # end of training: all sentences
    assert not step3["final"] and final["final"] and step3["max_sentences"] == 20
    sizes = {"validation": 60, "test": 60, "test_long": 40}
    for split, r in final["splits"].items():
        assert r["n_sentences"] + r["n_skipped"] == sizes[split]
        assert r["reference"] == ("train" if split == "test_long" else "own")
    assert summary["excess/test/excess"] == pytest.approx(final["splits"]["test"]["overall"]["excess"], rel=1e-6)
    assert list((run_dir.parents[2] / "cache" / "exact").glob("*.npz"))  # cached next to the run's token caches


def test_cli_prints_the_function_numbers(tiny_run, capsys):
    from depenc.evaluate import load_run, main

    run_dir = tiny_run
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    assert main(["excess", "--ckpt", ckpt, "--split", "test", "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    _, model, tok, run_config = load_run(ckpt, "cpu")
    scfg = S.SyntheticConfig.from_dict(run_config["data"]["synthetic"])
    metrics, _ = E.evaluate_excess(model, tok, scfg, "test")
    assert printed["metrics"].keys() == metrics.keys()
    for k, v in metrics.items():
        assert printed["metrics"][k] == (None if not math.isfinite(v) else pytest.approx(v, rel=1e-9)), k
    summary = json.loads((run_dir / "summary.json").read_text())  # the callback's final evaluation: the same
    assert printed["metrics"]["excess/test/kl"] == pytest.approx(summary["excess/test/kl"], rel=1e-6)


def test_cli_errors_are_one_line_exit_2(tiny_run, capsys, monkeypatch):
    import depenc.evaluate as ev

    run_dir = tiny_run
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    assert ev.main(["excess", "--ckpt", ckpt, "--split", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown split 'nope'" in err
    lm, model, tok, cfg = ev.load_run(ckpt, "cpu")
    monkeypatch.setattr(ev, "load_run", lambda *a: (lm, model, tok, {**cfg, "data": {"source": "text"}}))
    assert ev.main(["excess", "--ckpt", ckpt, "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "synthetic grammar" in err and "'text'" in err
