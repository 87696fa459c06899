"""Tests for depenc.metrics.alignment and depenc.metrics.text."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from depenc.metrics.alignment import (
    ARC_BUCKETS,
    LENGTH_BUCKETS,
    AlignmentAccumulator,
    arc_bucket,
    chain_edges,
    gold_edges,
    left_arc_attachment,
    length_bucket,
    max_spanning_tree,
    next_target_left_arcs,
    random_tree_edges,
    renormalise_rows_drop_first_and_diag,
    score_edges,
    score_reference,
    shift_next_to_self,
    uuas,
    word_scores_from_tokens,
)
from depenc.metrics.buckets import bucket_label, find_bucket
from depenc.metrics.text import (
    distinct_n,
    jensen_shannon,
    length_histogram,
    mattr,
    repeated_ngram_rate,
    sentence_lengths,
    split_sentences,
    text_statistics,
    wasserstein1,
)

# --------------------------------------------------------------------------------------------
# helpers


def prufer_decode(seq: tuple[int, ...], n: int) -> list[tuple[int, int]]:
    """Plain O(n^2) Prüfer decoding, independent of the module's heap version."""
    degree = [1] * n
    for x in seq:
        degree[x] += 1
    edges = []
    for x in seq:
        leaf = min(i for i in range(n) if degree[i] == 1)
        edges.append((min(leaf, x), max(leaf, x)))
        degree[leaf] -= 1
        degree[x] -= 1
    u, v = [i for i in range(n) if degree[i] == 1]
    edges.append((u, v))
    return sorted(edges)


def all_spanning_trees(n: int) -> list[list[tuple[int, int]]]:
    if n == 1:
        return [[]]
    if n == 2:
        return [[(0, 1)]]
    return [prufer_decode(seq, n) for seq in itertools.product(range(n), repeat=n - 2)]


def is_spanning_tree(edges: list[tuple[int, int]], n: int) -> bool:
    if len(edges) != n - 1:
        return False
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra == rb:
            return False
        parent[ra] = rb
    return True


# --------------------------------------------------------------------------------------------
# spanning trees


def test_brute_force_enumeration_counts() -> None:
    # Cayley: n^(n-2) labelled trees, all distinct and valid
    for n in range(2, 7):
        trees = all_spanning_trees(n)
        assert len({tuple(t) for t in trees}) == n ** (n - 2)
        assert all(is_spanning_tree(t, n) for t in trees)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_mst_matches_brute_force(n: int) -> None:
    rng = np.random.default_rng(n)
    trees = all_spanning_trees(n)
    for _ in range(20):
        X = rng.normal(size=(n, n))
        S = X + X.T
        got = max_spanning_tree(S)
        assert is_spanning_tree(got, n) if n > 1 else got == []
        weights = [sum(S[a, b] for a, b in t) for t in trees]
        best = trees[int(np.argmax(weights))]
        assert got == best  # continuous weights: the maximum is unique


def test_mst_edges_normalised_and_deterministic_on_ties() -> None:
    S = np.ones((5, 5))
    t1 = max_spanning_tree(S)
    assert t1 == max_spanning_tree(S.copy())
    assert is_spanning_tree(t1, 5)
    assert all(a < b for a, b in t1)
    # all-equal scores: Prim's from vertex 0 joins everything to 0
    assert t1 == [(0, 1), (0, 2), (0, 3), (0, 4)]


def test_mst_recovers_planted_tree() -> None:
    n = 8
    tree = random_tree_edges(n, np.random.default_rng(3))
    S = np.zeros((n, n))
    for a, b in tree:
        S[a, b] = S[b, a] = 1.0
    assert max_spanning_tree(S) == sorted(tree)


def test_gold_edges() -> None:
    # "the dog barks": the->dog, dog->barks, barks root
    assert gold_edges([2, 3, 0]) == {(0, 1), (1, 2)}
    assert gold_edges([0]) == set()
    assert gold_edges([0, 1, 1]) == {(0, 1), (0, 2)}
    with pytest.raises(ValueError):
        gold_edges([5, 0])


def test_random_tree_is_tree_and_uniform() -> None:
    rng = np.random.default_rng(0)
    assert random_tree_edges(1, rng) == []
    assert random_tree_edges(2, rng) == [(0, 1)]
    counts: dict[tuple, int] = {}
    n, draws = 4, 6400
    for _ in range(draws):
        t = random_tree_edges(n, rng)
        assert is_spanning_tree(t, n)
        counts[tuple(t)] = counts.get(tuple(t), 0) + 1
    assert len(counts) == 16
    expected = draws / 16
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 40  # 15 d.o.f.; p ~ 5e-4 at 40


def test_chain_edges() -> None:
    assert chain_edges(0) == [] and chain_edges(1) == []
    assert chain_edges(4) == [(0, 1), (1, 2), (2, 3)]


# --------------------------------------------------------------------------------------------
# UUAS


def test_uuas_perfect_and_partial() -> None:
    heads = [2, 0, 2, 3]  # edges (0,1), (1,2), (2,3): a chain
    g = gold_edges(heads)
    assert uuas(sorted(g), g) == 1.0
    assert uuas(chain_edges(4), g) == 1.0
    # star from word 0: (0,1),(0,2),(0,3) shares only (0,1)
    assert uuas([(0, 1), (0, 2), (0, 3)], g) == pytest.approx(1 / 3)
    # edge direction is irrelevant
    assert uuas([(1, 0), (2, 1), (3, 1)], g) == pytest.approx(2 / 3)
    s = score_edges([(0, 1), (0, 2), (0, 3)], g)
    assert (s.shared, s.gold, s.predicted) == (1, 3, 3)
    assert math.isnan(uuas([], set()))


def test_chain_on_chain_shaped_gold_scores_one() -> None:
    heads = [0, 1, 2, 3, 4]  # each word headed by the previous one
    r = score_reference("chain", [heads])
    assert r["uuas"] == 1.0
    assert r["left_arc"] == 1.0
    assert r["recall_arc_1"] == 1.0
    assert "recall_arc_2" not in r  # absent bucket omitted, not 0


def test_accumulator_hand_case() -> None:
    # 5 words, gold: 1->2 (root 2), 3->2, 4->5, 5->2 ; edges (0,1),(1,2),(3,4),(1,4)
    heads = [2, 0, 2, 5, 2]
    assert gold_edges(heads) == {(0, 1), (1, 2), (3, 4), (1, 4)}
    M = np.zeros((5, 5))
    M[1, 0] = 1.0  # 1 -> 0   correct
    M[2, 1] = 1.0  # 2 -> 1   correct
    M[3, 2] = 1.0  # 3 -> 2   wrong (gold 3-4)
    M[4, 3] = 1.0  # 4 -> 3   correct
    acc = AlignmentAccumulator()
    pred = acc.add(M, heads)
    assert pred == [(0, 1), (1, 2), (2, 3), (3, 4)]
    r = acc.result()
    assert r["uuas"] == pytest.approx(3 / 4)
    assert r["uuas_len_1-10"] == pytest.approx(3 / 4)
    assert "uuas_len_11-20" not in r
    assert r["recall_arc_1"] == 1.0  # (0,1),(1,2),(3,4)
    assert r["recall_arc_3-4"] == 0.0  # (1,4) missed: present bucket, reported as 0
    assert "recall_arc_2" not in r
    # left-arc: words with earlier gold relatives: 1{0}, 2{1}, 4{1,3}; word 3 has none.
    # argmax: 1->0 hit, 2->1 hit, 4->3 hit
    assert r["left_arc"] == 1.0 and r["n_left_arc_words"] == 3
    assert r["n_sentences"] == 1


def test_accumulator_micro_average_and_buckets() -> None:
    acc = AlignmentAccumulator()
    short = [0, 1, 2]  # chain, 2 edges
    long_heads = [0] + [1] * 11  # star on word 0, 12 words, 11 edges
    acc.add_edges(chain_edges(3), short)
    acc.add_edges(chain_edges(12), long_heads)  # shares only (0,1)
    r = acc.result()
    assert r["uuas"] == pytest.approx((2 + 1) / (2 + 11))
    assert r["uuas_len_1-10"] == 1.0
    assert r["uuas_len_11-20"] == pytest.approx(1 / 11)
    assert "left_arc" not in r  # no left_choice given
    assert r["recall_arc_>8"] == 0.0


def test_drop_punct() -> None:
    # "dogs bark ." : dogs->bark, bark root, .->bark
    heads = [2, 0, 2]
    M = np.zeros((3, 3))
    M[1, 0] = 1.0
    M[2, 0] = 1.0  # the period looks at "dogs": wrong, but dropped
    acc = AlignmentAccumulator(drop_punct=True)
    with pytest.raises(ValueError):
        acc.add(M, heads)
    pred = acc.add(M, heads, punct_mask=[False, False, True])
    assert pred == [(0, 1)]
    r = acc.result()
    assert r["uuas"] == 1.0 and r["n_gold_edges"] == 1
    # index-set form is equivalent
    acc2 = AlignmentAccumulator(drop_punct=True)
    acc2.add(M, heads, punct_mask={2})
    assert acc2.result() == r
    # kept by default
    acc3 = AlignmentAccumulator()
    acc3.add(M, heads)
    assert acc3.result()["uuas"] == pytest.approx(1 / 2)


def test_chain_reference_with_punct_skips_punctuation() -> None:
    # "a , b": a->b, ,->b ; without punctuation the chain links a-b directly
    heads = [3, 3, 0]
    r = score_reference("chain", [heads], punct_masks=[[False, True, False]])
    assert r["uuas"] == 1.0 and r["n_gold_edges"] == 1
    assert r["left_arc"] == 1.0


def test_random_reference_deterministic() -> None:
    heads_list = [[2, 0, 2, 3, 2], [0, 1, 1, 3], [3, 3, 0, 3, 6, 3]]
    r1 = score_reference("random", heads_list, seed=7)
    r2 = score_reference("random", heads_list, seed=7)
    assert r1 == r2
    assert 0.0 <= r1["uuas"] <= 1.0 and 0.0 <= r1["left_arc"] <= 1.0
    with pytest.raises(ValueError):
        score_reference("nope", heads_list)


def test_buckets() -> None:
    assert [bucket_label(b) for b in LENGTH_BUCKETS] == ["1-10", "11-20", "21-40", ">40"]
    assert [bucket_label(b) for b in ARC_BUCKETS] == ["1", "2", "3-4", "5-8", ">8"]
    assert length_bucket(10) == "1-10" and length_bucket(11) == "11-20"
    assert length_bucket(40) == "21-40" and length_bucket(41) == ">40"
    assert [arc_bucket(k) for k in (1, 2, 3, 4, 5, 8, 9, 50)] == [
        "1", "2", "3-4", "3-4", "5-8", "5-8", ">8", ">8",
    ]
    assert find_bucket(0, LENGTH_BUCKETS) is None and find_bucket(7, [(0, 0), (3, None)], open_style="+") == "3+"
    assert bucket_label((0, 0), open_style="+") == "0" and bucket_label((13, None)) == ">12"


# --------------------------------------------------------------------------------------------
# left-arc attachment


def test_left_arc_hand_case() -> None:
    # "the big dog barks loudly": the->dog, big->dog, dog->barks, barks root, loudly->barks
    heads = [3, 3, 4, 0, 4]
    # earlier gold relatives: big{} , dog{the,big}, barks{dog}, loudly{barks}; word 1 has none
    S = np.zeros((5, 5))
    S[1, 0] = 1.0  # big -> the: word 1 does not count
    S[2, 0] = 0.2
    S[2, 1] = 0.8  # dog -> big: hit
    S[3, 0] = 0.9  # barks -> the: miss
    S[3, 2] = 0.1
    S[4, 3] = 0.5  # loudly -> barks: hit
    assert left_arc_attachment(S, heads) == (2, 3)
    # chain-style scores (previous word) -> argmax is previous word
    chain = np.eye(5, k=-1)
    assert left_arc_attachment(chain, heads) == (3, 3)


def test_next_target_shift() -> None:
    heads = [3, 3, 4, 0, 4]
    targets = next_target_left_arcs(heads)
    assert targets == [[], [0, 1], [2], [3]]
    # model at word i predicting where word i+1 attaches (support 0..i)
    M_next = np.zeros((5, 5))
    M_next[0, 0] = 1.0
    M_next[1, 0] = 1.0  # word 2 -> word 0: hit
    M_next[2, 2] = 1.0  # word 3 -> word 2: hit
    M_next[3, 1] = 1.0  # word 4 -> word 1: miss
    M_next[4, 4] = 1.0  # beyond the sentence: dropped
    M_self = shift_next_to_self(M_next)
    assert np.all(M_self[0] == 0)
    assert np.array_equal(M_self[1:], M_next[:-1])
    assert np.all(np.triu(M_self) == 0)
    assert left_arc_attachment(M_self, heads) == (2, 3)


# --------------------------------------------------------------------------------------------
# attention maps -> word scores


def test_renormalise_drops_bos_and_diagonal() -> None:
    A = np.array(
        [
            [1.0, 0.0, 0.0, 0.0],
            [0.5, 0.5, 0.0, 0.0],
            [0.4, 0.2, 0.4, 0.0],
            [0.1, 0.3, 0.1, 0.5],
        ]
    )
    R = renormalise_rows_drop_first_and_diag(A)
    assert R.shape == (3, 3)
    expected = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.75, 0.25, 0.0]])
    np.testing.assert_allclose(R, expected)
    # a row whose earlier weight is all on BOS stays zero
    A2 = A.copy()
    A2[2] = [0.6, 0.0, 0.4, 0.0]
    assert np.all(renormalise_rows_drop_first_and_diag(A2)[1] == 0)
    # batched input (layers, heads, t, t)
    batched = np.broadcast_to(A, (2, 3, 4, 4))
    np.testing.assert_allclose(renormalise_rows_drop_first_and_diag(batched)[1, 2], expected)


def test_word_aggregation_subwords() -> None:
    # words: w0 = t0, w1 = t1 t2, w2 = t3
    word_of_token = [0, 1, 1, 2]
    T = np.array(
        [
            [0.0, 0.0, 0.0, 0.0],
            [1.0, 0.0, 0.0, 0.0],
            [0.6, 0.4, 0.0, 0.0],
            [0.2, 0.3, 0.1, 0.4],  # diagonal weight would be dropped anyway; tests aggregation
        ]
    )
    W = word_scores_from_tokens(T, word_of_token, 3)
    expected = np.zeros((3, 3))
    expected[1, 0] = (1.0 + 0.6) / 2  # mean over w1's tokens of weight on w0's tokens
    expected[2, 0] = 0.2
    expected[2, 1] = 0.3 + 0.1  # summed over w1's tokens
    np.testing.assert_allclose(W, expected)
    # tokens not in a word (-1) are ignored
    W2 = word_scores_from_tokens(np.pad(T, ((0, 1), (0, 1))), word_of_token + [-1], 3)
    np.testing.assert_allclose(W2, expected)


def test_attention_pipeline_recovers_tree() -> None:
    # attention over [BOS] + 4 tokens; words: w0=t0, w1=t1 t2, w2=t3 ; gold: w0->w1, w2->w1
    heads = [2, 0, 2]
    A = np.zeros((5, 5))
    A[0, 0] = 1
    A[1] = [0.9, 0.1, 0, 0, 0]
    A[2] = [0.5, 0.4, 0.1, 0, 0]  # t1 -> t0
    A[3] = [0.5, 0.3, 0.1, 0.1, 0]  # t2 -> t0 mostly
    A[4] = [0.2, 0.1, 0.3, 0.3, 0.1]  # t3 -> w1's tokens
    T = renormalise_rows_drop_first_and_diag(A)
    W = word_scores_from_tokens(T, [0, 1, 1, 2], 3)
    acc = AlignmentAccumulator()
    assert acc.add(W, heads) == [(0, 1), (1, 2)]
    assert acc.result()["uuas"] == 1.0
    assert acc.result()["left_arc"] == 1.0


def test_alignment_accumulates_many_sentences() -> None:
    """2,000 random 20-word sentences: UUAS is the shared undirected edges of the returned trees and the
    gold ones, summed over all sentences (speed is `make bench`'s business, not a timed assert)."""
    rng = np.random.default_rng(0)
    acc = AlignmentAccumulator()
    shared = gold_edges = 0
    for _ in range(2000):
        n = 20
        heads = [0] + [int(rng.integers(1, i + 1)) for i in range(1, n)]  # 1-based heads, 0 = root
        pred = acc.add(np.tril(rng.random((n, n)), -1), heads)
        gold = {frozenset((d, h - 1)) for d, h in enumerate(heads) if h > 0}
        shared += len(gold & {frozenset(e) for e in pred})
        gold_edges += len(gold)
    result = acc.result()
    assert result["n_sentences"] == 2000
    assert result["uuas"] == pytest.approx(shared / gold_edges)
    assert 0.0 < result["uuas"] < 1.0  # random scores: neither every edge nor none


# --------------------------------------------------------------------------------------------
# text statistics


def test_split_sentences() -> None:
    assert split_sentences("a b . c d ! e ?") == [["a", "b", "."], ["c", "d", "!"], ["e", "?"]]
    # trailing fragment is a sentence; empty sentences dropped
    assert split_sentences("a . . b c") == [["a", "."], ["."], ["b", "c"]]
    assert split_sentences(["x", "...", "y"]) == [["x", "..."], ["y"]]
    assert split_sentences("") == []
    # attached punctuation is not a terminal token
    assert split_sentences("Mr. Smith left .") == [["Mr.", "Smith", "left", "."]]


def test_sentence_lengths_count_terminal() -> None:
    assert sentence_lengths(["a b . c", "d e f !"]) == [3, 1, 4]


def test_length_histogram() -> None:
    counts, edges = length_histogram([1, 2, 2, 4])
    np.testing.assert_array_equal(counts, [1, 2, 0, 1])
    np.testing.assert_allclose(edges, [0.5, 1.5, 2.5, 3.5, 4.5])
    counts, edges = length_histogram([1, 2, 2, 4], bins=[0, 2, 5])
    np.testing.assert_array_equal(counts, [1, 3])


def test_wasserstein_and_js() -> None:
    a = [3, 5, 5, 8, 10]
    assert wasserstein1(a, a) == 0.0
    assert wasserstein1([1, 2, 3], [3, 4, 5]) == pytest.approx(2.0)
    assert jensen_shannon(a, list(reversed(a))) == pytest.approx(0.0)
    assert jensen_shannon([1, 2, 2], [5, 6]) == pytest.approx(1.0)
    # half overlap: p = (1/2, 1/2, 0), q = (0, 1/2, 1/2) -> JS = 0.5
    assert jensen_shannon([1, 2], [2, 3]) == pytest.approx(0.5)
    # explicit edges clip outliers into the end bins
    assert jensen_shannon([1, 100], [1, 5], bins=[0, 2, 10]) == pytest.approx(0.0)
    assert 0.0 <= jensen_shannon([1, 2, 3, 9], [2, 2, 7], bins=4) <= 1.0
    assert math.isnan(jensen_shannon([], [1]))
    assert math.isnan(wasserstein1([1], []))


def test_distinct_n() -> None:
    toks = [["a", "b", "a", "b"], ["a", "c"]]
    assert distinct_n(toks, 1) == pytest.approx(3 / 6)
    # bigrams: ab, ba, ab | ac  -> 3 unique / 4
    assert distinct_n(toks, 2) == pytest.approx(3 / 4)
    assert distinct_n(toks, 3) == pytest.approx(2 / 2)
    assert math.isnan(distinct_n([["a"]], 2))


def test_mattr() -> None:
    assert mattr(["a", "b", "a"], window=50) == pytest.approx(2 / 3)
    # windows of 2 over a a b b: {a,a}=1/2, {a,b}=1, {b,b}=1/2 -> mean 2/3
    assert mattr(["a", "a", "b", "b"], window=2) == pytest.approx(2 / 3)
    toks = [str(i % 7) for i in range(120)]
    brute = np.mean([len(set(toks[i : i + 50])) / 50 for i in range(len(toks) - 49)])
    assert mattr(toks, 50) == pytest.approx(brute)
    assert math.isnan(mattr([]))


def test_repeated_ngram_rate() -> None:
    assert repeated_ngram_rate(["a b c d a b c d".split()], 4) == pytest.approx(2 / 5)
    assert repeated_ngram_rate(["a b c d e".split()], 4) == 0.0
    # repeats across texts do not count
    assert repeated_ngram_rate(["a b c d".split(), "a b c d".split()], 4) == 0.0
    assert repeated_ngram_rate(["x x x x x".split()], 4) == 1.0
    assert math.isnan(repeated_ngram_rate([["a"]], 4))


def test_text_statistics() -> None:
    texts = ["the cat sat . the cat sat .", "a dog ran"]
    ref = ["the cat sat .", "a dog ran"]
    s = text_statistics(texts)
    assert set(s) >= {"distinct_1", "distinct_2", "distinct_3", "mattr", "rep4", "mean_sent_len"}
    assert "len_w1" not in s
    assert s["mean_sent_len"] == pytest.approx((4 + 4 + 3) / 3)
    assert s["distinct_1"] == pytest.approx(7 / 11)
    s2 = text_statistics(texts, reference=ref)
    assert s2["len_w1"] == pytest.approx(wasserstein1([4, 4, 3], [4, 3]))
    assert 0.0 <= s2["len_js"] <= 1.0
    assert text_statistics(ref, reference=ref)["len_js"] == 0.0
