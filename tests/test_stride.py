"""Sliding-window perplexity (``eval.stride``, ``evaluate ppl --stride``): every token is scored exactly
once, stride = block size is today's non-overlapping evaluation, a model that only reads the last token
scores the same at every stride, and more context lowers a trained model's perplexity. The Lightning
validation path and the ``evaluate ppl`` command with a stride: tests/test_tokenizer_file.py (one run)."""

import math

import numpy as np
import pytest
import torch

from depenc.data.datamodule import IGNORE_INDEX, EvalBlocks
from depenc.data.tokenizers import WordTokenizer
from depenc.evaluation.likelihood import perplexity


@pytest.mark.parametrize("n, T, S", [(1, 8, 3), (8, 8, 3), (9, 8, 3), (50, 8, 3), (50, 8, 1), (50, 8, 8), (47, 16, 5)])
def test_windows_score_every_token_once_with_context(n, T, S):
    stream = np.arange(100, 100 + n + 1)  # token value = 100 + its position
    blocks = EvalBlocks(stream, T, pad_id=0, stride=S)
    scored = []
    for i in range(len(blocks)):
        x, y = blocks[i]["input_ids"], blocks[i]["targets"]
        assert x.shape == y.shape == (T,)
        for p in (y != IGNORE_INDEX).nonzero().flatten().tolist():
            pos = int(y[p]) - 100
            assert int(x[p]) == 100 + pos - 1  # the input right before its target
            assert p >= min(pos - 1, T - S)  # at least T - S tokens of context (or all there is)
            scored.append(pos)
    assert sorted(scored) == list(range(1, n + 1))  # every predicted token exactly once
    assert len(blocks) == (1 + math.ceil(max(0, n - T) / S))


def test_stride_equal_to_the_block_is_the_non_overlapping_evaluation():
    stream = np.random.default_rng(0).integers(1, 50, 203)
    T = 16
    plain, strided = EvalBlocks(stream, T, pad_id=0), EvalBlocks(stream, T, pad_id=0, stride=T)
    assert len(plain) == len(strided) == math.ceil(202 / T)
    for i in range(len(plain)):
        a, b = plain[i], strided[i]
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["targets"], b["targets"])
        m = min(T, 202 - i * T)
        assert a["input_ids"][:m].tolist() == stream[i * T: i * T + m].tolist()  # block i starts at i * T
        assert (a["targets"][m:] == IGNORE_INDEX).all()
    with pytest.raises(ValueError, match="stride"):
        EvalBlocks(stream, T, stride=T + 1)


class Bigram(torch.nn.Module):
    """Logits from the current token alone: no use for context."""

    def __init__(self, vocab: int, block_size: int):
        super().__init__()
        self.cfg = type("Cfg", (), {"block_size": block_size})()
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0)))

    def forward(self, idx):
        return {"logits": self.table[idx]}


def documents(n: int, seed: int) -> list[str]:
    """Two interleaved counters mod 10 written as words: each token is the one two before it plus 1."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a, b = rng.integers(0, 10, 2)
        seq = [a, b]
        for _ in range(rng.integers(10, 30)):
            seq.append((seq[-2] + 1) % 10)
        out.append(" ".join(f"d{t}" for t in seq))
    return out


TOK = WordTokenizer.train([" ".join(f"d{i}" for i in range(10))])


def test_a_model_without_context_scores_the_same_at_every_stride():
    docs = documents(12, seed=1)
    model = Bigram(TOK.vocab_size, 16)
    ref = perplexity(model, TOK, docs, batch_size=4)
    assert ref["stride"] == 16 and ref["n_tokens"] == sum(len(d.split()) + 1 for d in docs)
    for S in (1, 5, 16):
        got = perplexity(model, TOK, docs, batch_size=4, stride=S)
        assert got["n_tokens"] == ref["n_tokens"] and got["n_bytes"] == ref["n_bytes"] and got["stride"] == S
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-6) and got["bpb"] == pytest.approx(ref["bpb"], rel=1e-6)


def test_more_context_lowers_a_trained_models_perplexity():
    from depenc.models.transformer import ModelConfig, Transformer

    torch.manual_seed(0)
    T = 16
    model = Transformer(ModelConfig(vocab_size=TOK.vocab_size, block_size=T, n_layer=1, n_head=2, n_embd=32))
    stream = [TOK.eos_id]
    for d in documents(300, seed=2):
        stream += TOK.encode(d) + [TOK.eos_id]
    train = torch.tensor(stream)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):  # enough to read the token two before (x_t = x_t-2 + 1 mod 10)
        starts = torch.randint(0, len(train) - T - 1, (32,), generator=g)
        x = torch.stack([train[s: s + T + 1] for s in starts.tolist()])
        model(x[:, :-1].contiguous(), x[:, 1:].contiguous())["loss"].backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    docs = documents(40, seed=3)
    ppl = {S: perplexity(model, TOK, docs, batch_size=16, stride=S) for S in (0, T, 8, 2)}
    assert ppl[0] == ppl[T]  # stride = block size: today's numbers, exactly
    assert len({r["n_tokens"] for r in ppl.values()}) == 1
    # a window's first token lacks the word two before it, which predicts it; with overlap none does,
    # and once every scored token has it, more overlap changes the numbers only by the model's noise
    assert ppl[T]["ppl"] > 1.05 * ppl[8]["ppl"]
    assert ppl[2]["ppl"] < 1.01 * ppl[8]["ppl"]


def test_eval_stride_is_checked_with_the_config():
    from depenc.config import ConfigError, load_config

    assert load_config("debug", ["eval.stride=8"]).eval.stride == 8
    with pytest.raises(ConfigError, match="eval.stride' must be >= 0"):
        load_config("debug", ["eval.stride=-1"])
    with pytest.raises(ConfigError, match="eval.stride=64 must be <= data.block_size=32"):
        load_config("debug", ["eval.stride=64"])
