"""The depenc model in lm-evaluation-harness (depenc.harness) and ``python -m depenc.evaluate harness``:
the LM methods on a tiny model against ``evaluate score``'s log-probs (fast), and simple_evaluate on
local YAML tasks with a tiny trained checkpoint (slow)."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from conftest import NO_CALLBACKS, tiny_overrides
from depenc.data import synthetic as S
from depenc.data.tokenizers import WordTokenizer
from depenc.evaluation.likelihood import score_sentences
from depenc.models.transformer import Transformer
from depenc.schema import DepEncConfig, ModelConfig

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402

from depenc.harness import DepEncLM, spans  # noqa: E402

SCFG = S.SyntheticConfig(n_train=300, n_validation=30, n_test=40, n_test_long=10)
BLOCK = 16


@pytest.fixture(scope="module")
def tiny():
    """(harness model, plain model, tokenizer, test sentences) of a random DepEnc model, block 16."""
    torch.set_num_threads(1)
    tok = WordTokenizer(["<eos>", "<unk>"] + S.vocabulary(SCFG))
    torch.manual_seed(0)
    model = Transformer(ModelConfig(kind="depenc", vocab_size=tok.vocab_size, block_size=BLOCK, n_layer=2, n_head=2,
                                    n_embd=32, depenc=DepEncConfig())).eval()
    return DepEncLM.from_model(model, tok, batch_size=4), model, tok, [s.text for s in S.make_split(SCFG, "test")]


def req(kind: str, *args) -> Instance:
    return Instance(kind, {}, tuple(args), 0)


def test_rolling_equals_score_for_sentences_that_fit(tiny):
    lm, model, tok, sents = tiny
    scored = score_sentences(model, tok, sents, 8)
    fit = [(s, r["logprob"]) for s, r in zip(sents, scored) if r["n_tokens"] <= BLOCK]
    assert len(fit) >= 20
    rolling = lm.loglikelihood_rolling([req("loglikelihood_rolling", s) for s, _ in fit])
    assert rolling == pytest.approx([lp for _, lp in fit], rel=1e-6)  # same tokens, same <eos> conditioning


def test_long_documents_use_the_harness_rolling_windows(tiny):
    lm, model, tok, sents = tiny
    doc = " ".join(sents[:6])
    ids = tok.encode(doc) + [tok.eos_id]
    assert len(ids) > 3 * BLOCK
    # the harness's windows as model inputs: (context, continuation) -> (inputs, targets)
    theirs = [((c + t)[-(BLOCK + 1):][:-1], t) for c, t in
              map(make_disjoint_window, get_rolling_token_windows(ids, tok.eos_id, BLOCK, 1))]
    assert spans([tok.eos_id], ids, BLOCK) == theirs
    expected = 0.0
    with torch.no_grad():
        for inp, tgt in theirs:
            logp = torch.log_softmax(model(torch.tensor([inp]))["logits"][0], -1)[-len(tgt):]
            expected += float(logp.gather(-1, torch.tensor(tgt).unsqueeze(-1)).sum())
    assert lm.loglikelihood_rolling([req("loglikelihood_rolling", doc)])[0] == pytest.approx(expected, rel=1e-6)


def test_loglikelihood_conditions_on_eos_and_splits_at_the_context(tiny):
    lm, model, tok, sents = tiny
    s = next(s for s in sents if len(s.split()) + 1 <= BLOCK)
    (score,) = [r["logprob"] for r in score_sentences(model, tok, [s])]
    words = s.split()
    ctx, cont = " ".join(words[:3]), " " + " ".join(words[3:])
    res = lm.loglikelihood([req("loglikelihood", "", f" {s} <eos>"),  # "<eos>" is the word tokenizer's token 0
                            req("loglikelihood", ctx, cont), req("loglikelihood", "", " " + ctx),
                            req("loglikelihood", s, " <eos>"), req("loglikelihood", ctx + " ", cont.lstrip())])
    assert res[0][0] == pytest.approx(score, rel=1e-6)
    assert res[2][0] + res[1][0] + res[3][0] == pytest.approx(score, rel=1e-5)  # the chain rule
    assert res[4][0] == pytest.approx(res[1][0], rel=1e-6)  # a context's trailing space moves to the continuation


def test_greedy_generation_is_greedy_for_loglikelihood(tiny):
    lm, _, tok, sents = tiny
    ctx = " ".join(sents[0].split()[:4])
    (gen,) = lm.generate_until([req("generate_until", ctx, {"until": [], "max_gen_toks": 3})])
    words = gen.split()
    assert gen.startswith(" ") and 1 <= len(words) <= 3  # greedy (no do_sample); <eos> may end it early
    other = next(w for w in tok.tokens[2:] if w != words[-1])
    (lp_g, greedy), (lp_o, not_greedy) = lm.loglikelihood(
        [req("loglikelihood", ctx, gen), req("loglikelihood", ctx, " " + " ".join(words[:-1] + [other]))])
    assert greedy and not not_greedy and lp_g > lp_o


def test_generate_until_stops_before_the_stop_string(tiny):
    lm, _, _, sents = tiny
    kw = {"until": [], "max_gen_toks": 40, "do_sample": True, "temperature": 1.0}
    ctx = [req("generate_until", sents[1], kw), req("generate_until", sents[2], kw)]
    free = lm.generate_until(ctx)
    words = free[0].split()
    stop = next(w for k, w in enumerate(words) if k and w not in words[:k])  # a word after another one
    cut = free[0].find(" " + stop)
    assert cut > 0
    stopped = lm.generate_until([req("generate_until", sents[1], {**kw, "until": [" " + stop, "@@"]}),
                                 req("generate_until", sents[2], {**kw, "until": "@@"})])
    assert stopped == [free[0][:cut], free[1]]  # seeded: the same samples, cut before the stop string
    with pytest.raises(ValueError, match="unsupported generation arguments"):
        lm.generate_until([req("generate_until", "x", {"until": [], "num_beams": 2})])


def test_bad_construction(tiny):
    _, model, tok, _ = tiny
    with pytest.raises(ValueError, match="positive integer"):
        DepEncLM.from_model(model, tok, batch_size="auto")
    oracle = Transformer(ModelConfig(kind="depenc", vocab_size=tok.vocab_size, block_size=BLOCK, n_layer=2, n_head=2,
                                     n_embd=32, depenc=DepEncConfig(parser="oracle")))
    with pytest.raises(ValueError, match="oracle"):
        DepEncLM.from_model(oracle, tok)


def test_harness_without_lm_eval_is_a_one_line_error(monkeypatch, capsys):
    from depenc.evaluate import main

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval raises ImportError
    assert main(["harness", "--ckpt", "nope.ckpt", "--tasks", "wikitext"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install -e ".[eval]"' in err


# --------------------------------------------------------------------------------------------
# end to end: simple_evaluate on local tasks (slow: the harness builds its task index)

MC_YAML = """task: tiny_pairs
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: ""
doc_to_target: 0
doc_to_choice: "{choices}"
metric_list:
  - metric: acc
"""
ROLLING_YAML = """task: tiny_docs
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: loglikelihood_rolling
test_split: test
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
"""


@pytest.mark.slow
def test_simple_evaluate_on_local_tasks_matches_score(tmp_path, capsys, monkeypatch):
    from lm_eval.tasks import TaskManager

    from depenc.evaluate import load_run, main as evaluate
    from depenc.train import main as train

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    over = ["trainer.max_steps=4", "trainer.val_check_interval=4", "trainer.test_at_end=false",
            "data.synthetic.n_train=300", "data.synthetic.n_validation=30", "data.synthetic.n_test=40",
            "data.synthetic.n_test_long=10", *NO_CALLBACKS]
    assert train(["debug", *tiny_overrides(tmp_path, *over)]) == 0
    ckpt = next((tmp_path / "runs" / "debug").iterdir()) / "checkpoints" / "last.ckpt"
    _, model, tok, run_config = load_run(str(ckpt), "cpu")
    scfg = S.SyntheticConfig.from_dict(run_config["data"]["synthetic"])
    block = int(model.cfg.block_size)
    sents = [s for s in S.make_split(scfg, "test") if len(s.tokens) + 1 <= block]  # score does not window them
    pairs = [p for p in S.minimal_pairs(sents, scfg)][:30]
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "pairs.jsonl").write_text("".join(json.dumps({"sentence_good": " ".join(p.good_sentence),
                                                           "sentence_bad": " ".join(p.bad_sentence)}) + "\n"
                                               for p in pairs))
    (tasks / "docs.jsonl").write_text("".join(json.dumps({"text": s.text}) + "\n" for s in sents))
    # choices closed by "<eos>" (the word tokenizer's token 0): the log-prob of evaluate score
    (tasks / "mc.yaml").write_text(MC_YAML.format(data=tasks / "pairs.jsonl",
                                                  choices="{{[sentence_good + ' <eos>', sentence_bad + ' <eos>']}}"))
    (tasks / "rolling.yaml").write_text(ROLLING_YAML.format(data=tasks / "docs.jsonl"))

    texts = sorted({p_ for p in pairs for p_ in (" ".join(p.good_sentence), " ".join(p.bad_sentence))}
                   | {s.text for s in sents})
    score = {r["text"]: r["logprob"] for r in score_sentences(model, tok, texts, 16)}
    want_acc = sum(score[" ".join(p.good_sentence)] > score[" ".join(p.bad_sentence)] for p in pairs) / len(pairs)
    want_wppl = math.exp(-sum(score[s.text] for s in sents) / sum(len(s.text.split()) for s in sents))

    lm = DepEncLM(str(ckpt), batch_size=8, device="cpu")
    res = lm_eval.simple_evaluate(model=lm, tasks=["tiny_pairs", "tiny_docs"], bootstrap_iters=0,
                                  task_manager=TaskManager(include_path=str(tasks), include_defaults=False))
    assert res["results"]["tiny_pairs"]["acc,none"] == want_acc
    assert res["results"]["tiny_docs"]["word_perplexity,none"] == pytest.approx(want_wppl, rel=1e-6)
    for sample in res["samples"]["tiny_docs"]:  # every document's log-likelihood is score's
        assert sample["resps"][0][0] == pytest.approx(score[sample["doc"]["text"]], rel=1e-6)

    # the command line: the same numbers (the harness's built-in tasks are indexed too)
    out = tmp_path / "res.json"
    assert evaluate(["harness", "--ckpt", str(ckpt), "--tasks", "tiny_pairs,tiny_docs", "--include-path", str(tasks),
                     "--device", "cpu", "--batch-size", "8", "--limit", "10", "--out", str(out)]) == 0
    cli = json.loads(out.read_text())
    assert cli["ckpt"] == str(ckpt) and cli["n-samples"]["tiny_pairs"]["effective"] == 10
    want10 = sum(score[" ".join(p.good_sentence)] > score[" ".join(p.bad_sentence)] for p in pairs[:10]) / 10
    assert cli["results"]["tiny_pairs"]["acc,none"] == want10
    assert evaluate(["harness", "--ckpt", str(ckpt), "--tasks", "tiny_pairs,no_such_task", "--include-path",
                     str(tasks)]) == 2
    assert "unknown task no_such_task" in capsys.readouterr().err
