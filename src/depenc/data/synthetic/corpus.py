"""The corpus built from the grammar: splits, agreement minimal pairs, tree utilities, CoNLL-U, statistics."""

from __future__ import annotations

import dataclasses
import functools
import random
from collections import Counter
from typing import Iterable, Sequence

from depenc.metrics.buckets import find_bucket

from .grammar import (DEPTH_SPLITS, LEXICON, SPLITS, _UPOS, _VERB_CATS, MinimalPair, Sentence,
                      SyntheticConfig, _check_split, get_grammar, split_depth_range)

# --------------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------------


def _split_seed(cfg: SyntheticConfig, split: str) -> int:
    return cfg.seed * 1000 + SPLITS.index(split)


@functools.lru_cache(maxsize=32)
def _split_keys(cfg: SyntheticConfig, split: str) -> frozenset[str]:
    if split == "train":  # the dedup pool: the first max(n_train, dedup_train) train sentences
        cfg = dataclasses.replace(cfg, n_train=cfg.dedup_pool, dedup_train=0)
    return frozenset(s.text for s in make_split(cfg, split))


def _held_out_source(cfg: SyntheticConfig, split: str):
    """(grammar, keep) of a held-out split: the generator it samples and the filter its draws pass."""
    if split == "test_long":
        min_dist = cfg.long_min_distance
        return get_grammar(cfg.long_variant()), lambda s: any(a.distance >= min_dist for a in s.agreement)
    if split in DEPTH_SPLITS:
        lo, hi = split_depth_range(split)
        return get_grammar(cfg.depth_variant()), lambda s: s.depth >= lo and (hi is None or s.depth <= hi)
    return get_grammar(cfg), lambda s: True


@functools.lru_cache(maxsize=32)
def make_split(cfg: SyntheticConfig, split: str) -> list[Sentence]:
    """The sentences of one split (cached per (cfg, split): treat the result as read-only)."""
    _check_split(split)
    n = cfg.split_size(split)
    rng = random.Random(_split_seed(cfg, split))
    if split == "train":
        return get_grammar(cfg).generate(n, _split_seed(cfg, split))
    # disjoint from the earlier splits (the depth splits are disjoint from each other by depth)
    taken = [_split_keys(cfg, s) for s in SPLITS[:SPLITS.index(split)] if s not in DEPTH_SPLITS]
    grammar, keep = _held_out_source(cfg, split)
    out: list[Sentence] = []
    while len(out) < n:
        s = grammar.sample(rng)
        if not keep(s):
            continue
        text = s.text
        if any(text in t for t in taken):
            continue
        out.append(s)
    return out


# --------------------------------------------------------------------------------------------------
# Minimal pairs
# --------------------------------------------------------------------------------------------------


def minimal_pairs(sentences: Iterable[Sentence], cfg: SyntheticConfig | None = None,
                  strict: bool = True) -> list[MinimalPair]:
    """One pair per agreement record: the sentence with the verb in the other number.

    A pair is kept only if the bad sentence is rejected by the recogniser; with ``strict`` (the
    default) the bad verb must be the first invalid token, i.e. already ``prefix + [bad]`` is no
    valid prefix. With these rules no record is dropped (the tests check it); the filter guards
    against rule changes that make some wrong form grammatical under another attachment.
    """
    g = get_grammar(cfg or SyntheticConfig())
    out: list[MinimalPair] = []
    for s in sentences:
        for a in s.agreement:
            v = a.verb
            good = s.tokens[v]
            bad = g.other_form(good)
            bad_sentence = list(s.tokens)
            bad_sentence[v] = bad
            fi, ok = g.check(bad_sentence)
            if ok or (strict and fi != v):
                continue
            out.append(MinimalPair(list(s.tokens[:v]), good, bad, a.distance, a.attractors,
                                   list(s.tokens), bad_sentence, a.number, v))
    return out


def pair_record(p: MinimalPair, pair_id: int) -> dict:
    """One pair as a line of BLiMP's JSONL (``sentence_good``, ``sentence_bad``, ``field``,
    ``linguistics_term``, ``UID`` = ``agreement_distance_<words between subject and verb>``, ``pairID`` and
    the one-prefix fields, the verb being the word after the prefix), followed by the grammar's own
    fields (``distance``, ``attractors``, ``number``, ...): ``python -m depenc.evaluate pairs`` reads it."""
    good, bad, prefix = " ".join(p.good_sentence), " ".join(p.bad_sentence), " ".join(p.prefix)
    return {"sentence_good": good, "sentence_bad": bad, "field": "syntax", "linguistics_term": "subject_verb_agreement",
            "UID": f"agreement_distance_{p.distance}", "simple_LM_method": True, "one_prefix_method": True,
            "two_prefix_method": False, "lexically_identical": False, "pairID": str(pair_id),
            "one_prefix_prefix": prefix, "one_prefix_word_good": p.good, "one_prefix_word_bad": p.bad,
            "good": good, "bad": bad, "distance": p.distance, "attractors": p.attractors, "prefix": prefix,
            "good_verb": p.good, "bad_verb": p.bad, "number": p.number}


# --------------------------------------------------------------------------------------------------
# Tree utilities, CoNLL-U, statistics
# --------------------------------------------------------------------------------------------------


def undirected_edges(heads: Sequence[int]) -> set[frozenset[int]]:
    """Gold edges as unordered 0-based pairs (the root attachment is not an edge)."""
    return {frozenset((i, h - 1)) for i, h in enumerate(heads) if h > 0}


def chain_uuas(sentences: Iterable[Sentence]) -> float:
    """UUAS of the adjacent-word chain: shared undirected edges / gold edges, over a corpus."""
    shared = total = 0
    for s in sentences:
        gold = undirected_edges(s.heads)
        total += len(gold)
        shared += sum(1 for i in range(len(s.tokens) - 1) if frozenset((i, i + 1)) in gold)
    return shared / max(total, 1)


def _lemma(word: str, tag: str) -> str:
    if tag == "N_pl":
        return LEXICON["N_sg"][LEXICON["N_pl"].index(word)]
    if tag in _VERB_CATS:
        return LEXICON[tag[:2] + "_pl"][LEXICON[tag].index(word)]
    return word


def to_conllu(s: Sentence, sent_id: str | None = None) -> str:
    """A CoNLL-U block (ending with a blank line); agreement records in the verb's MISC."""
    by_verb = {a.verb: a for a in s.agreement}
    lines = []
    if sent_id is not None:
        lines.append(f"# sent_id = {sent_id}")
    lines.append(f"# text = {s.text}")
    for i, (w, h, rel) in enumerate(zip(s.tokens, s.heads, s.deprels)):
        tag = s.tags[i] if s.tags else "_"
        base = tag.split("_")[0]
        upos = _UPOS.get(base, "_")
        feats = "_"
        if tag.endswith("_sg"):
            feats = "Number=Sing"
        elif tag.endswith("_pl"):
            feats = "Number=Plur"
        lemma = _lemma(w, tag) if s.tags else "_"
        misc = "_"
        a = by_verb.get(i)
        if a is not None:
            misc = (f"Agree=subj:{a.subject + 1}|Number={'Sing' if a.number == 'sg' else 'Plur'}"
                    f"|Dist={a.distance}|Attr={a.attractors}")
        lines.append("\t".join((str(i + 1), w, lemma, upos, tag, feats, str(h), rel, "_", misc)))
    return "\n".join(lines) + "\n\n"


AGREEMENT_DISTANCE_BUCKETS = ((0, 0), (1, 2), (3, 5), (6, 12), (13, None))


def split_stats(sentences: Sequence[Sentence]) -> dict:
    lengths = [len(s.tokens) for s in sentences]
    n = max(len(lengths), 1)
    dist = Counter(find_bucket(a.distance, AGREEMENT_DISTANCE_BUCKETS) for s in sentences for a in s.agreement)
    attr = Counter(min(a.attractors, 4) for s in sentences for a in s.agreement
                   if a.distance > 12)
    return {
        "sentences": len(sentences),
        "tokens": sum(lengths),
        "mean_words": sum(lengths) / n,
        "max_words": max(lengths, default=0),
        "share_gt20": sum(l > 20 for l in lengths) / n,
        "share_gt40": sum(l > 40 for l in lengths) / n,
        "agreement_records": sum(dist.values()),
        "agreement_distance": {k: dist.get(k, 0) for k in ("0", "1-2", "3-5", "6-12", ">12")},
        "attractors_at_distance_gt12": {("4+" if k == 4 else str(k)): v
                                        for k, v in sorted(attr.items())},
        "chain_uuas": chain_uuas(sentences),
    }

