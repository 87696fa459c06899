"""Exact probabilities of the synthetic grammar: the Bayes-optimal next-token distribution.

The generator (:mod:`.grammar`) is a probabilistic context-free grammar once its depth counter is
folded into the nonterminals: ``NP_sg@3`` is ``NP_sg`` expanded at embedding depth 3, with the
generator's rule table for that depth (the embedding rules switched off from ``max_depth`` on) and
its children at depth 3, or 4 below an embedding rule. A word is drawn uniformly from its category's
word list, so its probability given the category counts its multiplicity (``the`` is 3 of the 8
singular determiners). :func:`compile_pcfg` builds that grammar, :func:`reference_pcfg` picks it for
a config and a reference:

* ``own``: the split's own generator (``cfg.long_variant()`` for ``test_long``), depth cap included;
* ``train``: the training config's rules without the depth cap, i.e. what a model that learned the
  training rules perfectly would assign (for ``test_long``: the training rules on the long sentences).

:class:`ExactParser` is a probabilistic Earley parser (Stolcke 1995) over such a grammar. Items carry
inner probabilities; the forward probability of an item is the prediction weight of its origin times
its inner probability, and predictions are made in one step through the left-corner closure
``R_L = (I - P_L)^-1`` (and completions through the unit-production closure), both computed once per
grammar. Every position is rescaled by its prefix probability, so no probability underflows. After
any prefix it gives the exact distribution over the next category and ``<eos>`` (a row of
:meth:`ExactParser.category_probs`); the word distribution is that row times a fixed
category -> word matrix (:meth:`ExactParser.word_matrix`), over any model vocabulary.

Scoring convention (the DataModule packs ``<eos> s1 <eos> s2 <eos> ...``): every word of a sentence,
its ``.`` and its closing ``<eos>`` are predicted from ``<eos>`` + the sentence's earlier words. A
sentence of n tokens has n + 1 predicted positions, and the floor of a split is
``sum(-log P(s)) / sum(len(s) + 1)`` (:func:`floor`).

What the reference does not condition on (each is measured by :func:`floor` and the CLI):

* ``max_words``: the generator resamples sentences longer than ``max_words``. The parser ignores
  the cap; :func:`length_tail` gives P(length > max_words) exactly (a length-distribution DP); every
  sentence's exact log-probability under the capped generator is higher by -log(1 - that). At the
  defaults: 9.4e-6 (1.4e-4 for ``test_long``), i.e. under 4e-6 nats/token.
* held-out deduplication: held-out splits drop sentences already in an earlier split (in practice
  4-word ones). The reference is the generator's distribution; a predictor that memorised the earlier
  splits could do better, by -log(1 - P(earlier splits)) nats per sentence (:func:`dedup_mass`). At
  the defaults P = 0.0487 for validation, 0.0495 for test, 0 for ``test_long`` (its filter keeps
  only long sentences): 0.0031 nats/token.
* ``test_long``'s filter (an agreement at distance >= ``long_min_distance``): not conditioned on; the
  ``own`` reference of ``test_long`` is its generator before the filter. About 29% of the long
  variant's draws pass the filter, so the exactly conditioned floor would be about 0.032 nats/token
  lower (sentence level); only a predictor that knows about the filter could approach that.

Results per (config, split, reference) are cached as ``.npz`` under ``cache_dir`` (default
``.cache/depenc/exact``), keyed by a hash of the config and of this package's grammar code.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import time
from collections import deque
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .corpus import make_split
from .grammar import DEPTH_SPLITS, LEXICON, SPLITS, START, Rule, SyntheticConfig, _check_split, build_rules

__all__ = [
    "DEFAULT_CACHE_DIR",
    "EOS",
    "REFERENCES",
    "PCFG",
    "ExactParser",
    "ExactReference",
    "compile_pcfg",
    "reference_pcfg",
    "length_distribution",
    "length_tail",
    "dedup_mass",
    "floor",
]

DEFAULT_CACHE_DIR = ".cache/depenc/exact"
EOS = "<eos>"
REFERENCES = ("own", "train")
CACHE_VERSION = 1

# --------------------------------------------------------------------------------------------------
# The grammar as integer tables
# --------------------------------------------------------------------------------------------------


class PCFG:
    """A probabilistic grammar over lexical categories, in integer form.

    Symbols ``0 .. N-1`` are nonterminals, ``N .. N+C-1`` the categories; ``rules[i] = (lhs, rhs,
    p)`` with the probabilities of each lhs summing to 1. ``termination``: the probability that a
    derivation under the original weights is finite (1 unless the rules are supercritical; the rule
    probabilities here are then those conditioned on finiteness).
    """

    def __init__(self, nonterminals: Sequence[str], categories: Sequence[str],
                 rules: Sequence[tuple[int, tuple[int, ...], float]], start: int,
                 lexicon: Mapping[str, Sequence[str]]):
        self.nonterminals = list(nonterminals)
        self.categories = list(categories)
        self.rules = list(rules)
        self.start = start
        # category -> {word: P(word | category)}: uniform over the word list, multiplicities count
        self.emissions = [{w: lexicon[c].count(w) / len(lexicon[c]) for w in dict.fromkeys(lexicon[c])}
                          for c in self.categories]
        self.termination = 1.0
        z = self._partition()
        if np.any(np.abs(z - 1.0) > 1e-12):
            self.termination = float(z[start])
            self.rules = [(a, rhs, p * _prod(z, rhs) / z[a]) for a, rhs, p in self.rules]

    @property
    def n_nt(self) -> int:
        return len(self.nonterminals)

    def counting(self) -> "PCFG":
        """The same grammar with every rule and word weight 1: a parser over it gives the number
        of derivations instead of the probability (``exp(sentence_logprob)``)."""
        out = copy.copy(self)
        out.rules = [(a, rhs, 1.0) for a, rhs, _ in self.rules]
        out.emissions = [dict.fromkeys(e, 1.0) for e in self.emissions]
        return out

    def _partition(self) -> np.ndarray:
        """Z[A]: probability that a derivation from A terminates (least fixed point, iterated)."""
        z = np.zeros(self.n_nt)
        for _ in range(100_000):
            new = np.zeros(self.n_nt)
            for a, rhs, p in self.rules:
                new[a] += p * _prod(z, rhs)
            if np.max(np.abs(new - z)) < 1e-16:
                return new
            z = new
        return z


def _prod(z: np.ndarray, rhs: tuple[int, ...]) -> float:
    out = 1.0
    for x in rhs:
        if x < len(z):
            out *= z[x]
    return out


def compile_pcfg(rules: Sequence[Rule], lexicon: Mapping[str, Sequence[str]], start: str = START,
                 max_depth: int | None = None) -> PCFG:
    """The generator's distribution as a PCFG over (nonterminal, depth).

    Mirrors :meth:`Grammar._compile_generator` and ``_sample_once``: a symbol is a category iff it is
    in ``lexicon``; at depth >= ``max_depth`` only the rules that do not embed are used (all of them
    if none is left); children of an embedding rule are one deeper (depths above ``max_depth`` behave
    like ``max_depth``, so they are merged). ``max_depth=None``: no cap, one copy per nonterminal.
    """
    by_lhs: dict[str, list[Rule]] = {}
    for r in rules:
        if r.weight > 0:
            by_lhs.setdefault(r.lhs, []).append(r)
    used = {s for rs in by_lhs.values() for r in rs for s in r.rhs if s in lexicon}
    categories = [c for c in lexicon if c in used]
    cat_id = {c: i for i, c in enumerate(categories)}
    nt_id: dict[tuple[str, int], int] = {}
    queue: deque[tuple[str, int]] = deque()

    def nt(sym: str, depth: int) -> int:
        if sym not in by_lhs:
            raise ValueError(f"symbol {sym} has neither rules nor words")
        key = (sym, depth)
        if key not in nt_id:
            nt_id[key] = len(nt_id)
            queue.append(key)
        return nt_id[key]

    raw: list[tuple[int, tuple[tuple[bool, int], ...], float]] = []
    nt(start, 0)
    while queue:
        sym, depth = queue.popleft()
        options = by_lhs[sym]
        if max_depth is not None and depth >= max_depth:
            options = [r for r in options if not r.embeds] or options
        total = sum(r.weight for r in options)
        for r in options:
            d = depth
            if max_depth is not None and r.embeds:
                d = min(depth + 1, max_depth)
            rhs = tuple((True, cat_id[s]) if s in lexicon else (False, nt(s, d)) for s in r.rhs)
            raw.append((nt_id[(sym, depth)], rhs, r.weight / total))
    n = len(nt_id)
    names = [f"{s}@{d}" if max_depth is not None else s for (s, d) in nt_id]
    int_rules = [(a, tuple(n + i if is_cat else i for is_cat, i in rhs), p) for a, rhs, p in raw]
    return PCFG(names, categories, int_rules, 0, lexicon)


def reference_pcfg(cfg: SyntheticConfig | None = None, reference: str = "own",
                   split: str | None = None) -> PCFG:
    """The grammar of a reference for one split: ``own`` is the split's generator (the long variant
    for ``test_long``), ``train`` the training config's rules without a depth cap."""
    cfg = cfg or SyntheticConfig()
    if reference not in REFERENCES:
        raise ValueError(f"unknown reference {reference!r}; expected one of {', '.join(REFERENCES)}")
    if split is not None:
        _check_split(split)
    if reference == "train" or split in DEPTH_SPLITS:  # a depth split's own generator has no depth cap
        return compile_pcfg(build_rules(cfg), LEXICON, START, None)
    gen = cfg.long_variant() if split == "test_long" else cfg
    return compile_pcfg(build_rules(gen), LEXICON, START, gen.max_depth)


def length_distribution(pcfg: PCFG, max_len: int) -> np.ndarray:
    """(max_len + 1,) P(a sentence has m words) for m = 0 .. max_len, by a DP over lengths.

    ``dist[A, m]``: P(A yields m words). At each m, a rule's first t children are convolved from the
    values at lengths < m (no rule yields 0 words), then unit productions close over the same m."""
    n = pcfg.n_nt
    dist = np.zeros((n + 1, max_len + 1))  # row n: any category (always one word)
    dist[n, 1] = 1.0
    unit = np.zeros((n, n))  # A -> B
    terminal_unit = np.zeros(n)  # A -> c
    groups: dict[int, list[tuple[int, tuple[int, ...], float]]] = {}
    for a, rhs, p in pcfg.rules:
        if len(rhs) > 1:
            groups.setdefault(len(rhs), []).append((a, tuple(min(x, n) for x in rhs), p))
        elif rhs[0] < n:
            unit[a, rhs[0]] += p
        else:
            terminal_unit[a] += p
    unit_inv = np.linalg.inv(np.eye(n) - unit)
    # per arity >= 2: children (R, arity), lhs, prob, and the partial convolutions of t children
    multi = []
    for arity, rules in groups.items():
        kids = np.array([r[1] for r in rules])
        multi.append((kids, np.array([r[0] for r in rules]), np.array([r[2] for r in rules]),
                      [np.zeros((len(rules), max_len + 1)) for _ in range(arity - 1)]))
    for m in range(1, max_len + 1):
        base = terminal_unit.copy() if m == 1 else np.zeros(n)
        for kids, lhs, prob, partial in multi:
            prev = dist[kids[:, 0]]
            for t in range(1, kids.shape[1]):
                partial[t - 1][:, m] = (prev[:, 1:m] * dist[kids[:, t], m - 1:0:-1]).sum(axis=1)
                prev = partial[t - 1]
            np.add.at(base, lhs, prob * prev[:, m])
        dist[:n, m] = unit_inv @ base
    return dist[pcfg.start]


def length_tail(pcfg: PCFG, max_words: int) -> float:
    """P(a sentence has more than ``max_words`` words): 1 - the exact P(length <= max_words)."""
    return float(max(0.0, 1.0 - length_distribution(pcfg, max_words).sum()))


# --------------------------------------------------------------------------------------------------
# Probabilistic Earley parser
# --------------------------------------------------------------------------------------------------


class _Position:
    """The chart after k tokens. Items are (state, origin) with an inner probability stored
    unscaled; ``scale`` turns it into the value relative to this position's prefix probability."""

    __slots__ = ("beta", "waits", "scans", "scale", "row", "logp")

    def __init__(self, beta, waits, scans, scale, row, logp):
        self.beta = beta  # list over nonterminals: prediction weight at this position (scaled)
        self.waits = waits  # nonterminal -> [(state, origin, inner)]: items with the dot before it
        self.scans = scans  # category -> [(state, origin, inner)]: items with the dot before it
        self.scale = scale  # 1 / (prefix probability of this position / of the previous one)
        self.row = row  # (C + 1,) next category distribution, last entry <eos>
        self.logp = logp  # log prefix probability


class ExactParser:
    """Exact next-token distributions of a :class:`PCFG` (probabilistic Earley, Stolcke 1995)."""

    def __init__(self, pcfg: PCFG):
        self.pcfg = pcfg
        n, cats = pcfg.n_nt, pcfg.categories
        self.n_nt, self.n_cat = n, len(cats)
        self.categories = list(cats) + [EOS]
        self.start = pcfg.start
        # dotted states with the dot after >= 1 symbol: state s + 1 is s with the dot advanced
        nxt: list[int] = []
        lhs: list[int] = []
        p_left = np.zeros((n, n))  # P_L[B, X]: B -> X ... (left-corner step)
        p_unit = np.zeros((n, n))  # P_U[B, A]: B -> A (unit production)
        first_cat = np.zeros((n, self.n_cat))  # B -> c ...
        self.after_nt: list[list[tuple[int, int, float]]] = [[] for _ in range(n)]
        self.after_cat: list[list[tuple[int, int, float]]] = [[] for _ in range(self.n_cat)]
        for a, rhs, p in pcfg.rules:
            state = len(nxt)
            for t in range(1, len(rhs) + 1):
                nxt.append(rhs[t] if t < len(rhs) else -1)
                lhs.append(a)
            x = rhs[0]
            if x >= n:
                first_cat[a, x - n] += p
                self.after_cat[x - n].append((a, state, p))
            else:
                p_left[a, x] += p
                if len(rhs) == 1:
                    p_unit[a, x] += p
                else:
                    self.after_nt[x].append((a, state, p))
        self.nxt, self.lhs, self.n_states = nxt, lhs, len(nxt)
        self.r_left = np.linalg.inv(np.eye(n) - p_left)  # (N, N) left-corner closure
        self.lc_cat = self.r_left @ first_cat  # (N, C) first category below a predicted B
        unit_star = np.linalg.inv(np.eye(n) - p_unit) - np.eye(n)  # chains of >= 1 unit rules
        self.unit_up = [[(b, float(unit_star[b, a])) for b in np.nonzero(unit_star[:, a] > 0)[0]]
                        for a in range(n)]
        # word -> [(category, P(word | category))]
        self.word_cats: dict[str, list[tuple[int, float]]] = {}
        for c, emission in enumerate(pcfg.emissions):
            for w, pw in emission.items():
                self.word_cats.setdefault(w, []).append((c, pw))
        self._initial = self._start()
        self._vocab_key: tuple[str, ...] | None = None  # the last vocabulary's word matrix
        self._vocab_matrix = np.zeros((0, 0))

    # ------------------------------------------------------------------ chart steps
    def _start(self) -> _Position:
        masses = self.lc_cat[self.start]
        total = float(masses.sum())
        beta = (self.r_left[self.start] / total).tolist()
        return _Position(beta, {}, {}, 1.0 / total, np.append(masses, 0.0) / total, math.log(total))

    def _advance(self, chart: list[_Position], word: str) -> _Position | None:
        """The position after ``word``; None if no sentence continues the prefix with it."""
        cats = self.word_cats.get(word)
        if not cats:
            return None
        k = len(chart)
        prev = chart[-1]
        nxt, lhs, n_states = self.nxt, self.lhs, self.n_states
        items: dict[int, float] = {}  # origin * n_states + state -> inner (dot before a symbol)
        done: dict[int, dict[int, float]] = {}  # origin -> completed nonterminal -> inner

        def add(state: int, origin: int, inner: float) -> None:
            if nxt[state] < 0:
                d = done.setdefault(origin, {})
                a = lhs[state]
                d[a] = d.get(a, 0.0) + inner
            else:
                key = origin * n_states + state
                items[key] = items.get(key, 0.0) + inner

        # scan: advance the items waiting for one of the word's categories, and the predictions
        beta_prev = prev.beta
        for c, pw in cats:
            for s, o, g in prev.scans.get(c, ()):
                add(s + 1, o, g * prev.scale * pw)
            for b, s, p in self.after_cat[c]:
                if beta_prev[b] > 0.0:
                    add(s, k - 1, p * pw)
        # complete, latest origin first: a completion only creates items with an origin <= its own
        eos = 0.0
        for j in range(k - 1, -1, -1):
            d = done.pop(j, None)
            if d is None:
                continue
            pos = chart[j]
            beta_j, scale_j, waits_j = pos.beta, pos.scale, pos.waits
            for a, g in list(d.items()):  # unit productions B -> A predicted at j
                for b, w in self.unit_up[a]:
                    if beta_j[b] > 0.0:
                        d[b] = d.get(b, 0.0) + w * g
            for a, g in d.items():
                for s, o, gw in waits_j.get(a, ()):
                    add(s + 1, o, gw * scale_j * g)
                for b, s, p in self.after_nt[a]:
                    if beta_j[b] > 0.0:
                        add(s, j, p * g)
            if j == 0:  # a whole sentence: the start symbol's own (top-level) prediction weight
                eos = scale_j * d.get(self.start, 0.0)
        return self._position(chart, items, eos, prev.logp)

    def _position(self, chart: list[_Position], items: dict[int, float], eos: float,
                  logp_prev: float) -> _Position | None:
        n, n_states, nxt, lhs = self.n_nt, self.n_states, self.nxt, self.lhs
        waiting: dict[int, float] = {}  # forward mass of the items waiting for a nonterminal
        masses = [0.0] * self.n_cat  # forward mass of the items waiting for each category
        waits: dict[int, list] = {}
        scans: dict[int, list] = {}
        for key, g in items.items():
            o, s = divmod(key, n_states)
            y = nxt[s]
            alpha = chart[o].beta[lhs[s]] * g
            if y < n:
                waits.setdefault(y, []).append((s, o, g))
                waiting[y] = waiting.get(y, 0.0) + alpha
            else:
                scans.setdefault(y - n, []).append((s, o, g))
                masses[y - n] += alpha
        ys = list(waiting)  # the few nonterminals waited for: rows of the closures
        w = np.array([waiting[y] for y in ys])  # (Y,)
        cat_mass = np.array(masses) + w @ self.lc_cat[ys]  # (C,)
        total = float(cat_mass.sum()) + eos
        if not total > 0.0:
            return None
        beta = (w @ self.r_left[ys] / total).tolist()  # (N,)
        row = np.append(cat_mass, eos) / total
        return _Position(beta, waits, scans, 1.0 / total, row, logp_prev + math.log(total))

    def _walk(self, chart: list[_Position], words: Sequence[str], start: int) -> None:
        """Extend ``chart`` (positions 0 .. start) over ``words[start:]``."""
        for i in range(start, len(words)):
            pos = self._advance(chart, words[i])
            if pos is None:
                raise ValueError(f"{' '.join(words[:i + 1])!r}: token {i} ({words[i]!r}) "
                                 f"continues no sentence of the grammar")
            chart.append(pos)

    # ------------------------------------------------------------------ public API
    def category_probs(self, words: Sequence[str]) -> np.ndarray:
        """(len(words) + 1, C + 1): row k = P(next category or <eos> | words[:k]); columns are
        :attr:`categories` (the grammar's categories, then ``<eos>``). ValueError if ``words`` is no
        valid prefix."""
        chart = [self._initial]
        self._walk(chart, words, 0)
        return np.stack([p.row for p in chart])

    def _charts(self, sentences: Sequence[Sequence[str]]):
        """Yield (index, chart) for every sentence, in sorted order so that sentences with a common
        prefix share the chart of that prefix."""
        chart = [self._initial]
        prev: Sequence[str] = ()
        for i in sorted(range(len(sentences)), key=lambda i: tuple(sentences[i])):
            words = sentences[i]
            shared = 0
            while shared < min(len(prev), len(words)) and prev[shared] == words[shared]:
                shared += 1
            del chart[shared + 1:]
            self._walk(chart, words, shared)
            yield i, chart
            prev = words

    def many_category_probs(self, sentences: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """:meth:`category_probs` of many sentences, sharing the charts of common prefixes."""
        out: list[np.ndarray] = [np.zeros(0)] * len(sentences)
        for i, chart in self._charts(sentences):
            out[i] = np.stack([p.row for p in chart[:len(sentences[i]) + 1]])
        return out

    def many_logprobs(self, sentences: Sequence[Sequence[str]]) -> np.ndarray:
        """(S,) :meth:`sentence_logprob` of many sentences (ValueError if one is no valid prefix)."""
        out = np.zeros(len(sentences))
        for i, chart in self._charts(sentences):
            out[i] = _complete_logprob(chart[len(sentences[i])])
        return out

    def word_matrix(self, vocab: Sequence[str]) -> np.ndarray:
        """(C + 1, V): P(token | category) over a model vocabulary; ``<eos>`` maps to itself and
        tokens the grammar never produces (``<unk>``, ...) get probability 0."""
        key = tuple(vocab)
        if key != self._vocab_key:
            self._vocab_key, self._vocab_matrix = key, self._word_matrix(key)
        return self._vocab_matrix

    def _word_matrix(self, vocab: tuple[str, ...]) -> np.ndarray:
        col = {w: i for i, w in enumerate(vocab)}
        if EOS not in col:
            raise ValueError(f"the vocabulary has no {EOS!r} token")
        missing = sorted(w for w in self.word_cats if w not in col)
        if missing:
            raise ValueError(f"grammar words missing from the vocabulary: {missing[:10]}")
        m = np.zeros((self.n_cat + 1, len(vocab)))
        for w, cats in self.word_cats.items():
            for c, pw in cats:
                m[c, col[w]] += pw
        m[self.n_cat, col[EOS]] = 1.0
        return m

    def next_token_logprobs(self, words: Sequence[str], vocab: Sequence[str]) -> np.ndarray:
        """(len(words) + 1, V) float64: row k = log P(next token | <eos>, words[:k]) over ``vocab``
        (token strings in id order); impossible tokens get -inf."""
        return _log(self.category_probs(words) @ self.word_matrix(vocab))

    def surprisals(self, words: Sequence[str]) -> np.ndarray:
        """(len(words) + 1,) nats of each word and of the closing <eos>."""
        return _surprisals(self.category_probs(words), words, self.word_cats)

    def sentence_logprob(self, words: Sequence[str]) -> float:
        """log P(words + <eos>) in nats (-inf if the grammar cannot produce the sentence)."""
        chart = [self._initial]
        try:
            self._walk(chart, words, 0)
        except ValueError:
            return -math.inf
        return _complete_logprob(chart[-1])


def _complete_logprob(pos: _Position) -> float:
    """log P(the prefix of this position is a whole sentence)."""
    eos = pos.row[-1]
    return pos.logp + math.log(eos) if eos > 0 else -math.inf


def _log(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(p)


def _surprisals(rows: np.ndarray, words: Sequence[str],
                word_cats: Mapping[str, list[tuple[int, float]]]) -> np.ndarray:
    """-log P of each word and of the closing <eos> from a sentence's category rows."""
    probs = [sum(rows[k, c] * pw for c, pw in word_cats.get(w, ())) for k, w in enumerate(words)]
    probs.append(rows[len(words), -1])
    return -_log(np.array(probs))


# --------------------------------------------------------------------------------------------------
# References for the splits, cached on disk
# --------------------------------------------------------------------------------------------------


def _code_fingerprint() -> str:
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in ("grammar.py", "corpus.py", "exact.py"):
        h.update((here / name).read_bytes())
    return h.hexdigest()


class ExactReference(ExactParser):
    """The exact optimum for one config, reference and split (see the module docstring).

    ``split`` picks the generator of ``own`` (``test_long``: the long variant) and the sentences
    :meth:`split_category_probs` computes (and caches under ``cache_dir``; None = no disk cache).
    Sentences of a held-out split are looked up in that table; others are parsed on the spot.
    """

    def __init__(self, cfg: SyntheticConfig | None = None, reference: str = "own",
                 split: str | None = None, cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR):
        self.cfg = cfg or SyntheticConfig()
        self.reference = reference
        self.split = split
        self.cache_dir = cache_dir
        super().__init__(reference_pcfg(self.cfg, reference, split))
        self._table: dict[tuple[str, ...], np.ndarray] | None = None
        self.cache_hit = False  # whether the last split_category_probs read the disk cache

    def category_probs(self, words: Sequence[str]) -> np.ndarray:
        if self.split is not None and self.split != "train" and self._table is None:
            self.split_category_probs()
        if self._table is not None:
            rows = self._table.get(tuple(words))
            if rows is not None:
                return rows.copy()
        return super().category_probs(words)

    def cache_key(self) -> str:
        config = dataclasses.asdict(self.cfg)
        if self.split != "train":  # a held-out split depends on the train split only through the dedup pool
            config["n_train"] = self.cfg.dedup_pool
            config.pop("dedup_train")
        payload = {"version": CACHE_VERSION, "config": config,
                   "split": self.split, "reference": self.reference, "code": _code_fingerprint()}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def split_category_probs(self) -> list[np.ndarray]:
        """:meth:`category_probs` of every sentence of the split, in order (cached on disk)."""
        if self.split is None:
            raise ValueError("ExactReference(split=None) has no split")
        sentences = [s.tokens for s in make_split(self.cfg, self.split)]
        path = None
        if self.cache_dir is not None:
            path = Path(self.cache_dir) / f"{self.split}-{self.reference}-{self.cache_key()[:16]}.npz"
        rows = _load_rows(path) if path is not None and path.exists() else None
        self.cache_hit = rows is not None and len(rows) == len(sentences)
        if not self.cache_hit:
            rows = self.many_category_probs(sentences)
            if path is not None:
                _save_rows(path, rows, self.categories)
        self._table = {tuple(w): r for w, r in zip(sentences, rows)}
        return rows

    def split_logprobs(self) -> np.ndarray:
        """(S,) log P(s + <eos>) of every sentence of the split."""
        rows = self.split_category_probs()
        sents = make_split(self.cfg, self.split)
        return np.array([-_surprisals(r, s.tokens, self.word_cats).sum() for r, s in zip(rows, sents)])


def _save_rows(path: Path, rows: list[np.ndarray], categories: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
    np.savez_compressed(tmp, probs=np.concatenate(rows), lengths=lengths,
                        categories=np.array(categories))
    os.replace(tmp, path)


def _load_rows(path: Path) -> list[np.ndarray] | None:
    try:
        with np.load(path) as z:
            probs, lengths = z["probs"], z["lengths"]
    except (OSError, ValueError, KeyError):
        return None  # unreadable or half-written: recompute
    return np.split(probs, np.cumsum(lengths)[:-1])


# --------------------------------------------------------------------------------------------------
# Floors
# --------------------------------------------------------------------------------------------------


def dedup_mass(cfg: SyntheticConfig, split: str, reference: str = "own", max_len: int = 8) -> float:
    """P(a sentence drawn for ``split`` is dropped by the held-out dedup): the reference's mass of
    the distinct earlier-split sentences the split could have drawn (for ``test_long``: those that
    pass its filter). Sums exact probabilities over sentences of at most ``max_len`` words; at the
    defaults lengths 9 to 12 add 5e-9 to validation's 0.0487, longer ones less."""
    _check_split(split)
    min_dist = cfg.long_min_distance if split == "test_long" else None
    earlier = {tuple(s.tokens) for sp in SPLITS[:SPLITS.index(split)] for s in make_split(cfg, sp)
               if len(s.tokens) <= max_len
               and (min_dist is None or any(a.distance >= min_dist for a in s.agreement))}
    if not earlier:
        return 0.0
    parser = ExactParser(reference_pcfg(cfg, reference, split))
    return float(np.exp(parser.many_logprobs(sorted(earlier))).sum())


def floor(cfg: SyntheticConfig | None = None, split: str = "validation", reference: str = "own",
          cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR, dedup: bool = False) -> dict:
    """The entropy floor of a split: ``sum(-log P(s)) / sum(len(s) + 1)`` under the reference.

    Returns ``nats_per_token``, ``ppl``, ``n_tokens``, ``n_sentences``, ``seconds`` (getting the
    distributions), ``cached`` (read from the disk cache); for ``own`` also ``p_too_long`` = P(length > max_words) and
    ``length_shift``, the nats/token by which conditioning on the length cap moves the floor; with
    ``dedup`` also ``dedup_mass`` (:func:`dedup_mass`) and ``dedup_shift``, the same for the dedup.
    """
    cfg = cfg or SyntheticConfig()
    sentences = make_split(cfg, split)  # generated before the clock starts
    t0 = time.perf_counter()
    ref = ExactReference(cfg, reference, split, cache_dir)
    logps = ref.split_logprobs()
    seconds = time.perf_counter() - t0
    n_sent = len(logps)
    n_tokens = sum(len(s.tokens) + 1 for s in sentences)
    nats = float(-logps.sum() / max(n_tokens, 1))
    out = {"split": split, "reference": reference, "nats_per_token": nats, "ppl": math.exp(nats),
           "n_tokens": n_tokens, "n_sentences": n_sent, "seconds": seconds, "cached": ref.cache_hit}
    if reference == "own":
        gen = cfg.long_variant() if split == "test_long" else cfg.depth_variant() if split in DEPTH_SPLITS else cfg
        out["p_too_long"] = length_tail(ref.pcfg, gen.max_words)
        out["length_shift"] = n_sent * math.log1p(-out["p_too_long"]) / max(n_tokens, 1)
    if dedup:
        out["dedup_mass"] = dedup_mass(cfg, split, reference)
        out["dedup_shift"] = n_sent * math.log1p(-out["dedup_mass"]) / max(n_tokens, 1) + 0.0
    return out
