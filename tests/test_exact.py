"""Tests of the exact probabilities of the synthetic grammar (depenc.data.synthetic.exact).

Known answers: brute-force enumeration of the derivations of a tiny recursive grammar, the
generator's own derivation probabilities (recorded while sampling), and the ungrammaticality of the
wrong verb form in every minimal pair.
"""

from __future__ import annotations

import dataclasses
import math
import random
import subprocess
import sys

import numpy as np
import pytest

from depenc.data.synthetic import (SyntheticConfig, get_grammar, make_split, minimal_pairs,
                                   vocabulary)
from depenc.data.synthetic.corpus import _split_keys, _split_seed
from depenc.data.synthetic.exact import (EOS, ExactParser, ExactReference, compile_pcfg, floor,
                                         length_distribution, reference_pcfg)
from depenc.data.synthetic.grammar import Rule

SMALL = SyntheticConfig(seed=3, n_train=2000, n_validation=300, n_test=300, n_test_long=40)

# ------------------------------------------------------------------ a tiny grammar, brute force

# recursion (NP -> D N PP -> P NP), an embedding depth cap, unit productions (VP -> VB, VB -> V,
# NP -> NAME), PP attachment ambiguity (to the object or to the VP), a word in two categories
# ("a": D and NAME) and a word with multiplicity ("the" is 2 of the 3 determiners)
TINY_RULES = [
    Rule("S", ("NP", "VP", "END"), 1.0, 1, ("nsubj", None, "punct")),
    Rule("NP", ("D", "N"), 0.5, 1, ("det", None)),
    Rule("NP", ("D", "N", "PP"), 0.2, 1, ("det", None, "nmod"), embeds=True),
    Rule("NP", ("NAME",), 0.3),
    Rule("VP", ("VB",), 0.6),
    Rule("VP", ("VB", "PP"), 0.4, 0, (None, "obl"), embeds=True),
    Rule("VB", ("V",), 0.5),
    Rule("VB", ("V", "NP"), 0.5, 0, (None, "obj")),
    Rule("PP", ("P", "NP"), 1.0, 1, ("case", None)),
]
TINY_LEXICON = {"D": ("the", "the", "a"), "N": ("dog", "cat"), "NAME": ("kim", "a"),
                "V": ("sees", "sees", "likes"), "P": ("near",), "END": (".",)}
TINY_WORDS = sorted({w for ws in TINY_LEXICON.values() for w in ws})
MAX_WORDS = 8


def _options(sym: str, depth: int, max_depth: int | None):
    """The generator's table for (sym, depth), written out again independently of exact.py."""
    rules = [r for r in TINY_RULES if r.lhs == sym]
    if max_depth is not None and depth >= max_depth:
        rules = [r for r in rules if not r.embeds] or rules
    total = sum(r.weight for r in rules)
    return [(r.rhs, r.weight / total, depth + 1 if r.embeds and max_depth is not None else depth)
            for r in rules]


def _brute_next(prefix: tuple[str, ...], max_depth: int | None) -> tuple[float, dict[str, float]]:
    """(P(prefix), mass of each next token or <eos>), summed over the leftmost partial derivations
    of the prefix (the rest of a derivation sums to 1), each expanded up to its next word."""
    mass, nxt = [0.0], {}

    def go(stack: tuple, i: int, p: float, counted: bool) -> None:
        if i == len(prefix) and not counted:
            mass[0] += p
            counted = True
        if not stack:
            if i == len(prefix):
                nxt[EOS] = nxt.get(EOS, 0.0) + p
            return
        (sym, d), rest = stack[0], stack[1:]
        if sym in TINY_LEXICON:
            words = TINY_LEXICON[sym]
            if i == len(prefix):  # the next word
                for w in dict.fromkeys(words):
                    nxt[w] = nxt.get(w, 0.0) + p * words.count(w) / len(words)
            elif prefix[i] in words:
                go(rest, i + 1, p * words.count(prefix[i]) / len(words), False)
            return
        for rhs, q, cd in _options(sym, d, max_depth):
            go(tuple((s, cd) for s in rhs) + rest, i, p * q, counted)

    go((("S", 0),), 0, 1.0, False)
    return mass[0], nxt


def _brute_sentences(max_depth: int | None) -> dict[tuple[str, ...], list]:
    """Every sentence of at most MAX_WORDS words: [probability, number of derivations]."""
    out: dict[tuple[str, ...], list] = {}

    def go(stack: tuple, words: tuple, p: float) -> None:
        if not stack:
            entry = out.setdefault(words, [0.0, 0])
            entry[0] += p
            entry[1] += 1
            return
        if len(words) + len(stack) > MAX_WORDS:
            return
        (sym, d), rest = stack[0], stack[1:]
        if sym in TINY_LEXICON:
            ws = TINY_LEXICON[sym]
            for w in dict.fromkeys(ws):
                go(rest, words + (w,), p * ws.count(w) / len(ws))
            return
        for rhs, q, cd in _options(sym, d, max_depth):
            go(tuple((s, cd) for s in rhs) + rest, words, p * q)

    go((("S", 0),), (), 1.0)
    return out


@pytest.fixture(scope="module", params=[2, None], ids=["max_depth=2", "no_cap"])
def tiny(request):
    max_depth = request.param
    parser = ExactParser(compile_pcfg(TINY_RULES, TINY_LEXICON, "S", max_depth))
    return max_depth, parser, _brute_sentences(max_depth)


def test_tiny_sentence_probabilities_and_lengths(tiny):
    max_depth, parser, sentences = tiny
    assert len(sentences) > 100
    for words, (p, _) in sentences.items():
        assert math.isclose(parser.sentence_logprob(words), math.log(p), rel_tol=0, abs_tol=1e-10)
    by_len = np.zeros(MAX_WORDS + 1)
    for words, (p, _) in sentences.items():
        by_len[len(words)] += p
    np.testing.assert_allclose(length_distribution(parser.pcfg, MAX_WORDS), by_len, atol=1e-14)
    counting = ExactParser(parser.pcfg.counting())
    for words, (_, n) in sentences.items():
        assert math.exp(counting.sentence_logprob(words)) == pytest.approx(n, rel=1e-9)
    ambiguous = ("kim", "sees", "the", "dog", "near", "kim", ".")  # PP on the object or the VP
    assert sentences[ambiguous][1] == 2


def test_tiny_next_token_distributions_equal_brute_force(tiny):
    max_depth, parser, sentences = tiny
    vocab = [EOS, "<unk>"] + TINY_WORDS
    prefixes = {w[:k] for w in sentences for k in range(len(w))}  # every next-token position
    assert len(prefixes) > 100
    for prefix in sorted(prefixes):
        mass, nxt = _brute_next(prefix, max_depth)
        assert sum(nxt.values()) == pytest.approx(mass, rel=1e-12)  # the grammar is tight
        want = np.array([nxt.get(w, 0.0) for w in vocab]) / mass
        got = np.exp(parser.next_token_logprobs(prefix, vocab)[-1])
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-14, err_msg=" ".join(prefix))
        assert got.sum() == pytest.approx(1.0, abs=1e-12)


def test_tiny_depth_cap_changes_the_answer():
    capped = ExactParser(compile_pcfg(TINY_RULES, TINY_LEXICON, "S", 1))
    free = ExactParser(compile_pcfg(TINY_RULES, TINY_LEXICON, "S", None))
    deep = ("the", "dog", "near", "the", "cat", "near", "kim", "sees", ".")  # PP inside a PP
    assert capped.sentence_logprob(deep) == -math.inf
    assert free.sentence_logprob(deep) > -math.inf
    with pytest.raises(ValueError, match="token 5"):
        capped.category_probs(deep)


def test_supercritical_left_recursive_grammar_is_conditioned_on_termination():
    # S -> S S (0.6) | a (0.4) terminates with probability 2/3; conditioned on that it is
    # S -> S S (0.4) | a (0.6), and "a" * n has Catalan(n - 1) derivations
    rules = [Rule("S", ("S", "S"), 0.6, 0, (None, "x")), Rule("S", ("A",), 0.4)]
    pcfg = compile_pcfg(rules, {"A": ("a",)}, "S", None)
    assert pcfg.termination == pytest.approx(2 / 3, abs=1e-12)
    assert sorted(p for _, _, p in pcfg.rules) == pytest.approx([0.4, 0.6], abs=1e-12)
    parser = ExactParser(pcfg)
    for n in range(1, 7):
        catalan = math.comb(2 * n - 2, n - 1) // n
        want = math.log(catalan) + (n - 1) * math.log(0.4) + n * math.log(0.6)
        assert parser.sentence_logprob(["a"] * n) == pytest.approx(want, abs=1e-9)
        rows = parser.category_probs(["a"] * n)  # columns: 'A', <eos>
        np.testing.assert_allclose(rows.sum(axis=1), 1.0, atol=1e-12)


# ------------------------------------------------------------------ the default grammar


def _replay(cfg: SyntheticConfig, split: str) -> tuple[list, list[float]]:
    """The split's sentences again, with the log-probability of each one's generated derivation."""
    grammar = get_grammar(cfg)
    rng = random.Random(_split_seed(cfg, split))
    taken = _split_keys(cfg, "train")
    sents, logps = [], []
    while len(sents) < cfg.split_size(split):
        trace: list[float] = []
        s = grammar.sample(rng, trace)
        if s.text not in taken:
            sents.append(s)
            logps.append(sum(trace))
    assert [s.tokens for s in sents] == [s.tokens for s in make_split(cfg, split)]
    return sents, logps


def test_single_derivations_equal_generator_probability():
    cfg = SyntheticConfig()
    grammar = get_grammar(cfg)
    own = ExactParser(reference_pcfg(cfg, "own"))
    count = ExactParser(own.pcfg.counting())
    rng = random.Random(4)
    n_single = n_ambiguous = 0
    for _ in range(300):
        trace: list[float] = []
        words = grammar.sample(rng, trace).tokens
        exact, derivation = own.sentence_logprob(words), sum(trace)
        n = round(math.exp(count.sentence_logprob(words)))
        assert n >= 1
        if n == 1:
            n_single += 1
            assert exact == pytest.approx(derivation, abs=1e-9), " ".join(words)
        else:  # the other derivations add probability
            n_ambiguous += 1
            assert exact > derivation + 1e-6, " ".join(words)
    assert n_single > 250 and n_ambiguous > 5  # measured: 271 and 29


def test_distributions_sum_to_one_and_match_surprisals():
    cfg = SyntheticConfig()
    ref = ExactReference(cfg, "own", cache_dir=None)
    vocab = [EOS, "<unk>"] + vocabulary(cfg)
    for s in get_grammar(cfg).generate(30, seed=9):
        logp = ref.next_token_logprobs(s.tokens, vocab)  # (n + 1, V)
        assert logp.shape == (len(s) + 1, len(vocab))
        np.testing.assert_allclose(np.exp(logp).sum(axis=1), 1.0, atol=1e-12)
        assert np.all(logp[:, 1] == -np.inf)  # <unk>
        assert np.all(logp[:-1, 0] == -np.inf) and logp[-1, 0] == 0.0  # <eos> only after '.'
        ids = [vocab.index(w) for w in s.tokens] + [0]
        surprisal = ref.surprisals(s.tokens)
        np.testing.assert_allclose(surprisal, -logp[np.arange(len(ids)), ids], rtol=1e-12)
        assert ref.sentence_logprob(s.tokens) == pytest.approx(-surprisal.sum(), rel=1e-12)


def test_train_reference_is_own_without_depth_cap():
    # a sentence whose words all sit above the cap was generated by the same rule choices under
    # both references; a word at the cap was emitted by a capped table, so its probability differs
    cfg = SyntheticConfig(max_depth=2)
    sents = get_grammar(cfg).generate(200, seed=2)
    assert all(len(s.depths) == len(s) and max(s.depths) <= 2 for s in sents)
    shallow = [s.tokens for s in sents if max(s.depths) < 2]
    deep = [s.tokens for s in sents if max(s.depths) == 2]
    assert len(shallow) > 100 and len(deep) > 10
    train = ExactParser(reference_pcfg(cfg, "train"))
    own = ExactParser(reference_pcfg(cfg, "own"))
    np.testing.assert_allclose(train.many_logprobs(shallow), own.many_logprobs(shallow), rtol=1e-12)
    assert np.all(np.abs(train.many_logprobs(deep) - own.many_logprobs(deep)) > 1e-6)
    # test_long's own reference is the long variant's generator
    long_own = reference_pcfg(SyntheticConfig(), "own", "test_long")
    assert max(int(name.split("@")[1]) for name in long_own.nonterminals) == 9


def test_floor_matches_sampled_estimate_small():
    sents, derivation = _replay(SMALL, "validation")
    res = floor(SMALL, "validation", "own", cache_dir=None)
    n_tokens = sum(len(s) + 1 for s in sents)
    sampled = -sum(derivation) / n_tokens
    assert res["n_tokens"] == n_tokens and res["n_sentences"] == len(sents)
    # exact <= the derivation-based estimate (ambiguity only adds probability), and close to it
    assert sampled - 0.02 < res["nats_per_token"] <= sampled + 1e-12
    assert res["ppl"] == pytest.approx(math.exp(res["nats_per_token"]))
    assert 0 < res["p_too_long"] < 1e-4 and abs(res["length_shift"]) < 1e-5


def test_optimum_prefers_correct_verb_in_minimal_pairs():
    sents = make_split(SMALL, "test")
    pairs = minimal_pairs(sents, SMALL)
    ref = ExactReference(SMALL, "own", "test", cache_dir=None)
    vocab = [EOS] + vocabulary(SMALL)
    assert len(pairs) > len(sents)
    for p in pairs:
        row = ref.next_token_logprobs(p.good_sentence, vocab)[p.verb]  # after p.prefix
        assert row[vocab.index(p.good)] > row[vocab.index(p.bad)] == -np.inf


def test_split_cache(tmp_path):
    a = floor(SMALL, "validation", "own", cache_dir=tmp_path)
    files = list(tmp_path.glob("validation-own-*.npz"))
    assert len(files) == 1 and not a["cached"]
    b = floor(SMALL, "validation", "own", cache_dir=tmp_path)
    assert b["cached"] and b["nats_per_token"] == a["nats_per_token"]
    ref = ExactReference(SMALL, "own", "validation", cache_dir=tmp_path)
    words = make_split(SMALL, "validation")[7].tokens
    np.testing.assert_array_equal(ref.category_probs(words),
                                  ExactParser(ref.pcfg).category_probs(words))
    files[0].write_bytes(b"not an npz")  # a broken cache file is recomputed
    c = floor(SMALL, "validation", "own", cache_dir=tmp_path)
    assert not c["cached"] and c["nats_per_token"] == a["nats_per_token"]
    other = dataclasses.replace(SMALL, p_adj=0.3)
    assert ExactReference(other, "own", "validation").cache_key() != ref.cache_key()
    floor(SMALL, "validation", "train", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("validation-*.npz"))) == 2


def test_bad_reference_and_split():
    with pytest.raises(ValueError, match="reference"):
        ExactReference(SMALL, "model")
    with pytest.raises(ValueError, match="split"):
        ExactReference(SMALL, "own", "dev")


def _cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "depenc.data.synthetic", "floor", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_cli_floor(tmp_path):
    res = _cli("--split", "validation", "--n", "50", "--seed", "3", "--set", "n_train=500",
               "--cache-dir", str(tmp_path), "--dedup")
    assert res.returncode == 0, res.stderr
    cfg = SyntheticConfig(seed=3, n_train=500, n_validation=50)
    want = floor(cfg, "validation", "own", cache_dir=None)
    assert f"{want['nats_per_token']:.6f} nats/token" in res.stdout
    assert f"ppl {want['ppl']:.4f}" in res.stdout and "P(sentence in an earlier split)" in res.stdout
    for bad in (["--split", "dev"], ["--reference", "model"], ["--set", "bogus=1"], ["--n", "0"]):
        res = _cli(*bad, "--no-cache")
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, (bad, res.stderr)
        assert "Traceback" not in res.stderr


# ------------------------------------------------------------------ full default splits


@pytest.mark.slow
def test_floor_validation_matches_sampled_estimate():
    cfg = SyntheticConfig()
    sents, derivation = _replay(cfg, "validation")
    lengths = np.array([len(s) + 1 for s in sents])
    nll = -np.array(derivation)
    sampled = nll.sum() / lengths.sum()
    assert sampled == pytest.approx(2.9695, abs=5e-5)  # the 19.48 ppl
    ratio = nll / lengths.mean() - sampled * lengths / lengths.mean()
    se = ratio.std(ddof=1) / math.sqrt(len(sents))  # standard error of the ratio estimate
    exact = floor(cfg, "validation", "own", cache_dir=None)["nats_per_token"]
    assert sampled - 2 * se < exact <= sampled  # measured: 2.96375 (19.37 ppl), se 0.0044


@pytest.mark.slow
def test_optimum_prefers_correct_verb_full_test_split():
    cfg = SyntheticConfig()
    ref = ExactReference(cfg, "own", "test", cache_dir=None)
    vocab = [EOS] + vocabulary(cfg)
    for p in minimal_pairs(make_split(cfg, "test"), cfg):
        row = ref.next_token_logprobs(p.good_sentence, vocab)[p.verb]
        assert row[vocab.index(p.good)] > row[vocab.index(p.bad)] == -np.inf
