"""Tests of the embedded synthetic grammar: generator, gold trees, recogniser, splits, CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import subprocess
import sys

import pytest

from conftest import has_cycle

from depenc.data.synthetic import (
    LEXICON,
    SPLITS,
    Grammar,
    SyntheticConfig,
    accepts,
    Sentence,
    chain_uuas,
    first_invalid,
    get_grammar,
    make_split,
    minimal_pairs,
    split_stats,
    vocabulary,
)

CFG = SyntheticConfig()
SMALL = SyntheticConfig(seed=3, n_train=2000, n_validation=300, n_test=300, n_test_long=60)
LABELS = {"det", "amod", "nsubj", "obj", "obl", "case", "nmod", "acl:relcl", "ccomp", "mark",
          "conj", "cc", "advmod", "punct", "root"}
NOUN_TAGS = {"N_sg", "N_pl"}


@pytest.fixture(scope="module")
def grammar() -> Grammar:
    return get_grammar(CFG)


@pytest.fixture(scope="module")
def corpus(grammar) -> list:
    return grammar.generate(2000, seed=11)


def _is_projective(heads: list[int]) -> bool:
    arcs = [(min(i + 1, h), max(i + 1, h)) for i, h in enumerate(heads) if h > 0]
    for a, b in arcs:
        for c, d in arcs:
            if a < c < b < d:
                return False
    return True


# ------------------------------------------------------------------ config and lexicon


def test_config_from_dict_and_hashable():
    cfg = SyntheticConfig.from_dict({"seed": 5, "n_train": 10})
    assert cfg.seed == 5 and cfg.n_train == 10
    assert hash(cfg) == hash(SyntheticConfig(seed=5, n_train=10))
    with pytest.raises(ValueError, match="bogus"):
        SyntheticConfig.from_dict({"seed": 1, "bogus": 2})
    with pytest.raises(ValueError):
        SyntheticConfig(p_rc=1.5)
    with pytest.raises(ValueError):
        SyntheticConfig(p_pp=0.6, p_rc=0.6)


def test_lexicon_and_vocabulary():
    assert len(LEXICON["N_sg"]) >= 40 and len(LEXICON["N_pl"]) == len(LEXICON["N_sg"])
    verbs_sg = [w for c in ("IV_sg", "TV_sg", "CV_sg") for w in LEXICON[c]]
    verbs_pl = [w for c in ("IV_pl", "TV_pl", "CV_pl") for w in LEXICON[c]]
    assert len(set(verbs_sg)) >= 30 and len(set(verbs_pl)) == len(set(verbs_sg))
    assert not set(verbs_sg) & set(verbs_pl)
    assert {"says", "thinks", "knows"} <= set(LEXICON["CV_sg"])
    vocab = vocabulary()
    assert vocab == sorted(set(vocab)) and "." in vocab and "that" in vocab and "and" in vocab
    assert all(w == w.lower() and " " not in w for w in vocab)


# ------------------------------------------------------------------ trees


def test_trees_well_formed(corpus):
    for s in corpus:
        n = len(s.tokens)
        assert len(s.heads) == len(s.deprels) == len(s.tags) == n
        assert s.heads.count(0) == 1
        root = s.heads.index(0)
        assert s.deprels[root] == "root" and s.tags[root][:2] in ("IV", "TV", "CV")
        assert sum(1 for h in s.heads if h > 0) == n - 1
        assert all(0 <= h <= n and h != i + 1 for i, h in enumerate(s.heads))
        assert not has_cycle(s.heads)
        assert _is_projective(s.heads)
        assert set(s.deprels) <= LABELS
        assert s.tokens[-1] == "." and s.tokens.count(".") == 1
        assert s.heads[-1] == root + 1 and s.deprels[-1] == "punct"


# (base tags of the pattern, expected 1-based heads, expected deprels)
HAND_CHECKED = [
    # the dog runs .
    ("DET N IV PUNCT", [2, 3, 0, 3], "det nsubj root punct"),
    # the big dog sees the cats .
    ("DET ADJ N TV DET N PUNCT", [3, 3, 4, 0, 6, 4, 4], "det amod nsubj root det obj punct"),
    # the dog that sees the cats runs .
    ("DET N RPRON TV DET N IV PUNCT", [2, 7, 4, 2, 6, 4, 0, 7],
     "det nsubj nsubj acl:relcl det obj root punct"),
    # the dog that the cats see runs .
    ("DET N RPRON DET N TV IV PUNCT", [2, 7, 6, 5, 6, 2, 0, 7],
     "det nsubj obj det nsubj acl:relcl root punct"),
    # the man says that the dogs run .
    ("DET N CV CTHAT DET N IV PUNCT", [2, 3, 0, 7, 6, 7, 3, 3],
     "det nsubj root mark det nsubj ccomp punct"),
    # the dog runs and sees a cat .
    ("DET N IV CC TV DET N PUNCT", [2, 3, 0, 5, 3, 7, 5, 3],
     "det nsubj root cc conj det obj punct"),
    # the dog near the cats runs .
    ("DET N P DET N IV PUNCT", [2, 6, 5, 5, 2, 0, 6], "det nsubj case det nmod root punct"),
    # the dog runs near the cat .
    ("DET N IV P DET N PUNCT", [2, 3, 0, 6, 6, 3, 3], "det nsubj root case det obl punct"),
    # the dog often runs .
    ("DET N ADV IV PUNCT", [2, 4, 4, 0, 4], "det nsubj advmod root punct"),
]


def _sample_pattern(grammar, pattern: str):
    """The first sentence (seeded) whose tags without number are ``pattern``."""
    want = pattern.split()
    rng = random.Random(7)
    for _ in range(200_000):
        s = grammar.sample(rng)
        if [t.split("_")[0] for t in s.tags] == want:
            return s
    pytest.fail(f"pattern {pattern} not generated")


@pytest.mark.parametrize("pattern,heads,deprels", HAND_CHECKED)
def test_hand_checked_conventions(grammar, pattern, heads, deprels):
    s = _sample_pattern(grammar, pattern)
    assert s.heads == heads, s.text
    assert s.deprels == deprels.split(), s.text
    # every finite verb has exactly one agreement record, with the right subject
    verbs = [i for i, t in enumerate(s.tags) if t[:2] in ("IV", "TV", "CV")]
    assert sorted(a.verb for a in s.agreement) == verbs
    for a in s.agreement:
        subj_rel = s.deprels[a.subject]
        assert s.tags[a.subject] in NOUN_TAGS and subj_rel in ("nsubj", "obj", "nmod", "obl")
    if pattern == "DET N RPRON DET N TV IV PUNCT":  # the dog that the cats see runs .
        got = {(a.subject, a.verb, a.distance) for a in s.agreement}
        assert got == {(1, 6, 4), (4, 5, 0)}
    if pattern == "DET N IV CC TV DET N PUNCT":  # coordinated verbs agree with one subject
        assert {(a.subject, a.verb, a.distance) for a in s.agreement} == {(1, 2, 0), (1, 4, 2)}


# (base tags of the pattern, expected embedding depth of every word)
DEPTH_CHECKED = [
    ("DET N IV PUNCT", [0, 0, 0, 0]),
    ("DET N P DET N IV PUNCT", [0, 0, 1, 1, 1, 0, 0]),  # the dog near the cats runs .
    ("DET N IV P DET N PUNCT", [0, 0, 0, 1, 1, 1, 0]),  # the dog runs near the cat .
    ("DET N RPRON DET N TV IV PUNCT", [0, 0, 1, 1, 1, 1, 0, 0]),  # object relative
    ("DET N CV CTHAT DET N IV PUNCT", [0, 0, 0, 1, 1, 1, 1, 0]),  # complement clause
    ("DET N CV CTHAT DET N P DET N IV PUNCT", [0, 0, 0, 1, 1, 1, 2, 2, 2, 1, 0]),
]


@pytest.mark.parametrize("pattern,depths", DEPTH_CHECKED)
def test_depths_hand_checked(grammar, pattern, depths):
    s = _sample_pattern(grammar, pattern)
    assert s.depths == depths, s.text


def test_depths_within_cap(corpus):
    assert all(len(s.depths) == len(s.tokens) for s in corpus)
    assert max(max(s.depths) for s in corpus) == CFG.max_depth  # reached, never exceeded
    long = make_split(SMALL, "test_long")
    assert max(max(s.depths) for s in long) <= SMALL.long_max_depth


def test_agreement_records_consistent(corpus):
    n_records = 0
    for s in corpus:
        verbs = [i for i, t in enumerate(s.tags) if t[:2] in ("IV", "TV", "CV")]
        assert sorted(a.verb for a in s.agreement) == verbs
        for a in s.agreement:
            n_records += 1
            assert s.tags[a.subject] == f"N_{a.number}" and s.tags[a.verb].endswith(a.number)
            assert a.distance == abs(a.verb - a.subject) - 1
            lo, hi = sorted((a.subject, a.verb))
            other = "N_pl" if a.number == "sg" else "N_sg"
            assert a.attractors == sum(t == other for t in s.tags[lo + 1:hi])
    assert n_records > len(corpus)


# ------------------------------------------------------------------ recogniser


def test_recogniser_accepts_generated(grammar, corpus):
    long = make_split(SMALL, "test_long")
    for s in corpus + long:
        assert grammar.accepts(s.tokens), s.text
        assert grammar.first_invalid(s.tokens) is None, s.text


def test_recogniser_rejects_corruptions(grammar, corpus):
    rng = random.Random(5)
    swap = dele = adj = n_adj = 0
    for s in corpus:
        t = s.tokens
        a = rng.choice(s.agreement)
        b = list(t)
        b[a.verb] = grammar.other_form(b[a.verb])
        swap += not grammar.accepts(b)
        i = rng.randrange(len(t))
        dele += not grammar.accepts(t[:i] + t[i + 1:])
        i = rng.randrange(len(t) - 1)
        if t[i] != t[i + 1]:
            b = list(t)
            b[i], b[i + 1] = b[i + 1], b[i]
            adj += not grammar.accepts(b)
            n_adj += 1
    n = len(corpus)
    # measured on this seed: swap 1.000, deletion 0.91, adjacent swap 0.96
    assert swap == n  # the other number form of any verb is always ungrammatical
    assert dele / n >= 0.85  # deleting an adjective or adverb can stay grammatical
    assert adj / n_adj >= 0.90


@pytest.mark.parametrize("text,expected,ok", [
    ("the dog runs .", None, True),
    ("the dogs that the cat sees run and sleep .", None, True),
    ("the dog runs", None, False),  # valid but incomplete
    ("the dog runs and", None, False),
    ("", None, False),
    ("the dog run .", 2, False),
    ("dog runs .", 0, False),
    ("the the dog", 1, False),
    ("a dogs run .", 1, False),
    ("the dogs that sees", 3, False),
    ("the dog that the cats sees", 5, False),
    ("the dogs near the cat runs .", 5, False),  # attractor
    ("the dog sees .", 3, False),  # transitive verb without object
    ("the dog says the cats run .", 3, False),  # complement needs 'that'
    ("the dog runs . the", 4, False),  # continues after the final '.'
    ("the dog runs . .", 4, False),
    ("the dog zzz runs .", 2, False),  # unknown word
    ("The dog runs .", 0, False),  # lower case only
    ("the dog runs and sleep .", 4, False),  # conjunct agrees with the same subject
])
def test_prefix_checker_hand_cases(text, expected, ok):
    toks = text.split()
    assert first_invalid(toks) == expected
    assert accepts(toks) is ok


def test_recogniser_accepts_a_thousand_corpus_sentences(grammar, corpus):
    """Every generated sentence is accepted, with no first invalid token (no timed assert: ~0.1 s)."""
    for s in corpus[:1000]:
        assert grammar.accepts(s.tokens)
        assert grammar.first_invalid(s.tokens) is None


# ------------------------------------------------------------------ generation and splits


def test_generation_deterministic(grammar):
    a = grammar.generate(10_000, seed=1)  # ~0.4 s; speed is not asserted
    assert len(a) == 10_000
    b = Grammar(CFG).generate(200, seed=1)
    c = grammar.generate(200, seed=2)
    assert [s.tokens for s in a[:200]] == [s.tokens for s in b]
    assert [s.heads for s in a[:200]] == [s.heads for s in b]
    assert [s.tokens for s in a[:200]] != [s.tokens for s in c]
    rng = random.Random(0)
    random.seed(123)  # global state must not matter
    x = grammar.sample(rng).tokens
    random.seed(456)
    assert x == grammar.sample(random.Random(0)).tokens


def test_length_distribution(grammar):
    lengths = [len(s.tokens) for s in grammar.generate(5000, seed=0)]
    mean = sum(lengths) / len(lengths)
    assert 12 <= mean <= 18
    assert sum(l > 20 for l in lengths) / len(lengths) >= 0.15
    assert sum(l > 40 for l in lengths) / len(lengths) >= 0.02
    assert max(lengths) <= CFG.max_words


def test_splits_sizes_and_disjoint():
    splits = {sp: make_split(SMALL, sp) for sp in SPLITS}
    for sp, sents in splits.items():
        assert len(sents) == SMALL.split_size(sp)
    assert make_split(SMALL, "test") is splits["test"]  # cached
    keys = {sp: {s.text for s in sents} for sp, sents in splits.items()}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            assert not keys[a] & keys[b], (a, b)
    # prefix-stable: a larger split starts with the same sentences
    bigger = make_split(dataclasses.replace(SMALL, n_test=400), "test")
    assert [s.tokens for s in bigger[:300]] == [s.tokens for s in splits["test"]]
    with pytest.raises(ValueError):
        make_split(SMALL, "dev")


def test_splits_bit_identical():
    # other code caches token arrays of the splits: a change to the generator's random stream
    # must be deliberate (digest of the tokens and heads of every SMALL split, recorded at the
    # split of synthetic.py into a package)
    h = hashlib.sha256()
    for sp in SPLITS:
        for s in make_split(SMALL, sp):
            h.update((" ".join(s.tokens) + "|" + " ".join(map(str, s.heads)) + "\n").encode())
    assert h.hexdigest()[:16] == "4929513c646ae5de"


def test_test_long_is_long():
    sents = make_split(SMALL, "test_long")
    assert all(any(a.distance >= SMALL.long_min_distance for a in s.agreement) for s in sents)
    # every test_long sentence has such a record, so the default split holds >= 1,000 of them
    assert CFG.n_test_long >= 1000 and CFG.long_min_distance > 12
    long_recs = [a for s in sents for a in s.agreement if a.distance > 12]
    assert sum(a.attractors >= 2 for a in long_recs) / len(long_recs) > 0.5
    st = split_stats(sents)
    assert st["mean_words"] > 25


def test_minimal_pairs(corpus, grammar):
    pairs = minimal_pairs(corpus)
    assert len(pairs) == sum(len(s.agreement) for s in corpus)  # none dropped: no ambiguity
    for p in pairs[:3000]:
        diff = [i for i, (x, y) in enumerate(zip(p.good_sentence, p.bad_sentence)) if x != y]
        assert len(p.good_sentence) == len(p.bad_sentence) and diff == [len(p.prefix)]
        assert p.good_sentence[:len(p.prefix)] == p.prefix
        assert p.good_sentence[len(p.prefix)] == p.good and p.bad_sentence[len(p.prefix)] == p.bad
        assert grammar.accepts(p.good_sentence)
        assert not grammar.accepts(p.bad_sentence)
        assert grammar.first_invalid(p.bad_sentence) == len(p.prefix)


def test_chain_uuas(corpus):
    # known answers: "the dog runs ." (the->dog, dog->runs, .->runs) is a chain; in "the dog sees a cat ."
    # the chain shares the-dog, dog-sees, a-cat, cat-. is wrong (. -> sees) and sees-a is wrong (a -> cat)
    chain = Sentence(["the", "dog", "runs", "."], [2, 3, 0, 3], ["det", "nsubj", "root", "punct"], [],
                     ["DET_sg", "N_sg", "IV_sg", "PUNCT"])
    obj = Sentence(["the", "dog", "sees", "a", "cat", "."], [2, 3, 0, 5, 3, 3],
                   ["det", "nsubj", "root", "det", "obj", "punct"], [], ["DET_sg", "N_sg", "TV_sg", "DET_sg", "N_sg", "PUNCT"])
    assert chain_uuas([chain]) == 1.0
    assert chain_uuas([obj]) == pytest.approx(3 / 5)
    assert chain_uuas([chain, obj]) == pytest.approx(6 / 8)
    # the fixed corpus of this module (2,000 sentences, seed 11): its known value
    assert chain_uuas(corpus) == pytest.approx(0.400827, abs=1e-6)


# ------------------------------------------------------------------ CLI


def _cli(*args, cwd=None) -> subprocess.CompletedProcess:
    small = ["--set", "n_train=500", "--set", "n_validation=100", "--seed", "3"]
    cmd = [sys.executable, "-m", "depenc.data.synthetic", *args]
    if args[0] != "check":
        cmd += small
    return subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=cwd, timeout=120)


def test_cli_export(tmp_path):
    out = tmp_path / "test.conllu"
    _cli("export", "--split", "test", "--n", "50", "--out", str(out))
    blocks = [b for b in out.read_text().split("\n\n") if b.strip()]
    assert len(blocks) == 50
    cfg = dataclasses.replace(SyntheticConfig(seed=3, n_train=500, n_validation=100), n_test=50)
    sents = make_split(cfg, "test")
    n_agree = 0
    for block, s in zip(blocks, sents):
        lines = block.split("\n")
        assert any(l == f"# text = {s.text}" for l in lines)
        rows = [l.split("\t") for l in lines if not l.startswith("#")]
        assert all(len(r) == 10 for r in rows)
        assert [r[1] for r in rows] == s.tokens
        assert [int(r[6]) for r in rows] == s.heads
        assert [r[7] for r in rows] == s.deprels
        for r in rows:
            if r[9].startswith("Agree="):
                n_agree += 1
                fields = dict(kv.split("=") for kv in r[9].split("|"))
                assert fields["Agree"].startswith("subj:") and fields["Number"] in ("Sing", "Plur")
                int(fields["Dist"]), int(fields["Attr"])
    assert n_agree == sum(len(s.agreement) for s in sents)


def test_cli_pairs(tmp_path):
    out = tmp_path / "pairs.jsonl"
    _cli("pairs", "--split", "test", "--n", "40", "--out", str(out))
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert rows
    for r in rows:
        assert {"good", "bad", "distance", "attractors"} <= set(r)
        g, b = r["good"].split(), r["bad"].split()
        assert sum(x != y for x, y in zip(g, b)) == 1 and len(g) == len(b)


def test_cli_check(tmp_path):
    f = tmp_path / "s.txt"
    f.write_text("the dog runs .\nthe dog run .\nthe dogs that the cat sees\n"
                 "the dog runs . the\n\n")
    res = _cli("check", str(f))
    assert res.stdout.splitlines() == ["OK", "BAD 2", "BAD 6", "BAD 4", "BAD 0"]


def test_cli_stats():
    res = _cli("stats", "--split", "validation")
    keys = {l.split(":")[0] for l in res.stdout.splitlines()}
    assert {"sentences", "tokens", "share_gt20", "share_gt40", "agreement_distance",
            "chain_uuas"} <= keys
    assert "sentences: 100" in res.stdout
