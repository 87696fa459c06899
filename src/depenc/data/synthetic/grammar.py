"""The grammar: configuration, lexicon, the rule table, and the generator and recogniser built on it.

One rule table (:func:`build_rules`) drives everything: the generator samples from it (seeded,
``random.Random``, never global state) and builds the gold dependency tree and the agreement records
while it generates; the recogniser is an Earley parser over the same rules with the weights dropped;
:mod:`depenc.data.synthetic.exact` computes the generator's exact probabilities from the same rules.
The language and the annotation conventions are described in :mod:`depenc.data.synthetic`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
from dataclasses import dataclass, field
from typing import Sequence

# depth generalisation: the training rules without the depth cap, filtered to one embedding depth
# (test_depth6 holds depth >= 6); built only with n_test_depth > 0
DEPTH_SPLITS = ("test_depth3", "test_depth4", "test_depth5", "test_depth6")
SPLITS = ("train", "validation", "test", "test_long") + DEPTH_SPLITS
NUMBERS = ("sg", "pl")

# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticConfig:
    """All knobs of the synthetic corpus. Frozen (hashable), so splits can be cached on it."""

    seed: int = 0
    # split sizes in sentences (train ~ 1M tokens at the default length distribution)
    n_train: int = 68_000
    n_validation: int = 2_000
    n_test: int = 2_000
    n_test_long: int = 2_000
    n_test_depth: int = 0  # sentences in each of test_depth3..6 (0 = no depth splits)
    # held-out splits are kept disjoint from the first max(n_train, dedup_train) train sentences: set it
    # to the largest n_train of a data-size grid and every size gets the same validation and test sets
    dedup_train: int = 0
    # recursion and length limits of the generator (the recogniser is unbounded)
    max_depth: int = 7
    max_words: int = 100
    # rule probabilities
    p_plural: float = 0.5  # number of every freely chosen noun phrase / clause subject
    p_adj: float = 0.25  # one more stacked adjective (geometric)
    p_pp: float = 0.24  # a noun takes a PP modifier
    p_rc: float = 0.24  # a noun takes a relative clause (p_pp + p_rc <= 1)
    p_obj_rel: float = 0.45  # share of relative clauses that are object relatives
    p_coord: float = 0.12  # a VP is two coordinated verb phrases
    p_adv_pre: float = 0.07  # pre-verbal adverb
    p_adv_post: float = 0.07  # post-verbal adverb
    # verb frames (relative weights)
    w_intransitive: float = 0.30
    w_transitive: float = 0.42
    w_ccomp: float = 0.20
    w_obl: float = 0.12  # intransitive verb + PP
    # test_long: a recursion-heavy variant, filtered to long agreement dependencies
    long_min_distance: int = 13  # keep sentences with an agreement record at distance >= this
    long_max_depth: int = 9
    long_max_words: int = 120
    long_p_pp: float = 0.30
    long_p_rc: float = 0.35
    long_p_obj_rel: float = 0.6
    long_p_adj: float = 0.25

    def __post_init__(self) -> None:
        probs = [f.name for f in dataclasses.fields(self) if f.name.startswith(("p_", "long_p_"))]
        for name in probs:
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"SyntheticConfig.{name}={v} is not a probability")
        if self.p_pp + self.p_rc > 1.0 or self.long_p_pp + self.long_p_rc > 1.0:
            raise ValueError("SyntheticConfig: p_pp + p_rc must be <= 1 (also for long_p_*)")
        if self.p_adv_pre + self.p_adv_post > 1.0:
            raise ValueError("SyntheticConfig: p_adv_pre + p_adv_post must be <= 1")
        if self.p_adj >= 1.0 or self.long_p_adj >= 1.0:
            raise ValueError("SyntheticConfig: p_adj must be < 1 (stacking would never stop)")
        frames = (self.w_intransitive, self.w_transitive, self.w_ccomp, self.w_obl)
        if min(frames) < 0 or self.w_intransitive + self.w_transitive <= 0:
            raise ValueError("SyntheticConfig: verb frame weights must be >= 0 and "
                             "w_intransitive + w_transitive > 0")
        for name in ("n_train", "n_validation", "n_test", "n_test_long", "n_test_depth", "dedup_train", "max_depth"):
            if getattr(self, name) < 0:
                raise ValueError(f"SyntheticConfig.{name} must be >= 0")
        if self.max_words < 3 or self.long_max_words < 3:
            raise ValueError("SyntheticConfig: max_words must be >= 3")

    @classmethod
    def from_dict(cls, d: dict | None) -> "SyntheticConfig":
        """Build from a mapping (e.g. an omegaconf node); unknown keys raise ValueError."""
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown SyntheticConfig keys: {', '.join(map(str, unknown))} "
                             f"(known: {', '.join(sorted(known))})")
        return cls(**d)

    def long_variant(self) -> "SyntheticConfig":
        """The recursion-heavy configuration that ``test_long`` is sampled from."""
        return dataclasses.replace(
            self, p_pp=self.long_p_pp, p_rc=self.long_p_rc, p_obj_rel=self.long_p_obj_rel,
            p_adj=self.long_p_adj, max_depth=self.long_max_depth, max_words=self.long_max_words)

    def depth_variant(self) -> "SyntheticConfig":
        """The training rules without the depth cap (what the ``test_depth*`` splits are sampled from): a
        depth cap of ``max_words`` never binds, since every embedding adds at least one word."""
        return dataclasses.replace(self, max_depth=max(self.max_depth, self.max_words))

    def split_size(self, split: str) -> int:
        _check_split(split)
        if split in DEPTH_SPLITS:
            return self.n_test_depth
        return getattr(self, f"n_{split}")

    @property
    def dedup_pool(self) -> int:
        """How many train sentences the held-out splits are kept disjoint from."""
        return max(self.n_train, self.dedup_train)


def split_depth_range(split: str) -> tuple[int, int | None]:
    """(lowest, highest or None) sentence embedding depth of a ``test_depth*`` split."""
    k = int(split.removeprefix("test_depth"))
    return (k, None) if split == DEPTH_SPLITS[-1] else (k, k)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


# --------------------------------------------------------------------------------------------------
# Annotations
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Agreement:
    subject: int  # 0-based index of the controlling noun
    verb: int  # 0-based index of the agreeing verb
    number: str  # 'sg' | 'pl'
    distance: int  # words strictly between subject and verb
    attractors: int  # nouns of the other number strictly between them


@dataclass(slots=True)
class Sentence:
    tokens: list[str]
    heads: list[int]  # 1-based head per token, 0 = root
    deprels: list[str]
    agreement: list[Agreement]
    tags: list[str] = field(default_factory=list)  # lexical category per token (e.g. 'N_pl')
    # embedding depth per token: how many embedded phrases (PP, relative or complement clause)
    # contain the word, i.e. the generator's depth counter at the rule that emitted it
    depths: list[int] = field(default_factory=list)

    @property
    def depth(self) -> int:
        """The sentence's embedding depth: the deepest word's."""
        return max(self.depths, default=0)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def text(self) -> str:
        return " ".join(self.tokens)


@dataclass(frozen=True, slots=True)
class MinimalPair:
    prefix: list[str]  # tokens before the verb
    good: str  # correct verb form
    bad: str  # verb form of the other number
    distance: int
    attractors: int
    good_sentence: list[str]
    bad_sentence: list[str]
    number: str = "sg"  # number of the correct form
    verb: int = 0  # 0-based index of the verb (== len(prefix))


# --------------------------------------------------------------------------------------------------
# Lexicon
# --------------------------------------------------------------------------------------------------

_NOUNS = [
    ("dog", "dogs"), ("cat", "cats"), ("man", "men"), ("woman", "women"), ("child", "children"),
    ("teacher", "teachers"), ("student", "students"), ("doctor", "doctors"),
    ("farmer", "farmers"), ("king", "kings"), ("queen", "queens"), ("bird", "birds"),
    ("horse", "horses"), ("girl", "girls"), ("boy", "boys"), ("friend", "friends"),
    ("pilot", "pilots"), ("writer", "writers"), ("lawyer", "lawyers"), ("baker", "bakers"),
    ("singer", "singers"), ("painter", "painters"), ("senator", "senators"), ("judge", "judges"),
    ("nurse", "nurses"), ("soldier", "soldiers"), ("sailor", "sailors"), ("mouse", "mice"),
    ("fox", "foxes"), ("wolf", "wolves"), ("lion", "lions"), ("tiger", "tigers"),
    ("rabbit", "rabbits"), ("neighbor", "neighbors"), ("guard", "guards"),
    ("player", "players"), ("poet", "poets"), ("chef", "chefs"), ("guest", "guests"),
    ("customer", "customers"), ("manager", "managers"), ("clerk", "clerks"),
    ("visitor", "visitors"), ("baby", "babies"), ("scientist", "scientists"),
    ("minister", "ministers"),
]
# (singular, plural) finite forms
_INTRANSITIVE = [
    ("runs", "run"), ("sleeps", "sleep"), ("laughs", "laugh"), ("smiles", "smile"),
    ("waits", "wait"), ("falls", "fall"), ("sings", "sing"), ("swims", "swim"),
    ("arrives", "arrive"), ("cries", "cry"), ("jumps", "jump"), ("works", "work"),
    ("sits", "sit"), ("dances", "dance"),
]
_TRANSITIVE = [
    ("sees", "see"), ("likes", "like"), ("chases", "chase"), ("helps", "help"),
    ("follows", "follow"), ("admires", "admire"), ("visits", "visit"), ("meets", "meet"),
    ("loves", "love"), ("finds", "find"), ("watches", "watch"), ("calls", "call"),
    ("praises", "praise"), ("trusts", "trust"), ("hates", "hate"), ("greets", "greet"),
]
_CLAUSAL = [
    ("says", "say"), ("thinks", "think"), ("knows", "know"), ("believes", "believe"),
    ("hopes", "hope"), ("claims", "claim"), ("fears", "fear"), ("suspects", "suspect"),
    ("remembers", "remember"),
]
_ADJECTIVES = [
    "big", "small", "grey", "young", "happy", "sad", "tall", "clever", "quiet", "grumpy", "brave",
    "lazy", "hungry", "friendly", "proud", "kind",
]
_PREPOSITIONS = ["near", "with", "behind", "beside", "under", "from", "without", "above"]
_ADVERBS = ["often", "quickly", "never", "rarely", "usually", "slowly", "always", "sometimes"]

# category -> words; duplicates weight the sampling ("the" is the most frequent determiner)
LEXICON: dict[str, tuple[str, ...]] = {
    "DET_sg": ("the", "the", "the", "a", "a", "every", "each", "this"),
    "DET_pl": ("the", "the", "the", "some", "many", "these", "those", "several", "two"),
    "ADJ": tuple(_ADJECTIVES),
    "N_sg": tuple(s for s, _ in _NOUNS),
    "N_pl": tuple(p for _, p in _NOUNS),
    "IV_sg": tuple(s for s, _ in _INTRANSITIVE),
    "IV_pl": tuple(p for _, p in _INTRANSITIVE),
    "TV_sg": tuple(s for s, _ in _TRANSITIVE),
    "TV_pl": tuple(p for _, p in _TRANSITIVE),
    "CV_sg": tuple(s for s, _ in _CLAUSAL),
    "CV_pl": tuple(p for _, p in _CLAUSAL),
    "P": tuple(_PREPOSITIONS),
    "ADV": tuple(_ADVERBS),
    "RPRON": ("that",),  # relativiser
    "CTHAT": ("that",),  # complementiser
    "CC": ("and",),
    "PUNCT": (".",),
}
_VERB_CATS = frozenset(f"{v}_{n}" for v in ("IV", "TV", "CV") for n in NUMBERS)
_NOUN_CATS = frozenset(("N_sg", "N_pl"))
_UPOS = {"DET": "DET", "ADJ": "ADJ", "N": "NOUN", "IV": "VERB", "TV": "VERB", "CV": "VERB",
         "P": "ADP", "ADV": "ADV", "RPRON": "PRON", "CTHAT": "SCONJ", "CC": "CCONJ",
         "PUNCT": "PUNCT"}


def _check_lexicon() -> None:
    # a word may be in several categories only where the grammar is meant to be ambiguous
    owner: dict[str, set[str]] = {}
    for cat, words in LEXICON.items():
        for w in words:
            owner.setdefault(w, set()).add(cat)
    allowed = {frozenset({"DET_sg", "DET_pl"}), frozenset({"RPRON", "CTHAT"})}
    for w, cats in owner.items():
        if len(cats) > 1 and frozenset(cats) not in allowed:
            raise AssertionError(f"lexicon word {w!r} is in several categories: {sorted(cats)}")


_check_lexicon()

# --------------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """``lhs -> rhs`` with a weight and the dependency/agreement annotation of the construction.

    ``head``: index of the head child; every other child's head word attaches to the head child's
    head word with ``labels[i]``. ``agree=(c, t)``: the finite verbs still waiting for a controller
    inside child ``t`` agree with the head word of child ``c`` (records are made here; unconsumed
    verbs propagate upwards). ``embeds``: the rule embeds a phrase or clause (depth + 1 below it).
    """

    lhs: str
    rhs: tuple[str, ...]
    weight: float
    head: int = 0
    labels: tuple[str | None, ...] = (None,)
    agree: tuple[int, int] | None = None
    embeds: bool = False

    def __post_init__(self) -> None:
        assert len(self.labels) == len(self.rhs) and self.labels[self.head] is None, self


def build_rules(cfg: SyntheticConfig) -> list[Rule]:
    """The grammar as data: the single definition the generator and the recogniser share.

    The first conjunct of a coordinated VP is a *simple* verb phrase (``VBS``: no relative or
    complement clause inside, so its noun phrases are ``NPS``/``PPS``). That keeps every
    agreement unambiguous: ``and`` + verb can only coordinate with the last finite verb before
    it, so the other-number form of any verb is never grammatical.
    """
    pl = cfg.p_plural
    num_w = {"sg": 1.0 - pl, "pl": pl}
    R: list[Rule] = []
    add = R.append
    frames = cfg.w_intransitive + cfg.w_transitive + cfg.w_ccomp + cfg.w_obl
    simple_frames = cfg.w_intransitive + cfg.w_transitive + cfg.w_obl
    bare = 1.0 - cfg.p_adj
    plain_adv = 1.0 - cfg.p_adv_pre - cfg.p_adv_post
    for m in NUMBERS:
        add(Rule("S", (f"CL_{m}", "PUNCT"), num_w[m], 0, (None, "punct")))
        add(Rule("RELO", ("RPRON", f"NP_{m}", f"TVG_{m}"), num_w[m], 2, ("obj", "nsubj", None),
                 agree=(1, 2)))
        add(Rule("COMP", ("CTHAT", f"CL_{m}"), num_w[m], 1, ("mark", None)))
        add(Rule("PP", ("P", f"NP_{m}"), num_w[m], 1, ("case", None)))
        add(Rule("PPS", ("P", f"NPS_{m}"), num_w[m], 1, ("case", None)))
    for n in NUMBERS:
        add(Rule(f"CL_{n}", (f"NP_{n}", f"VP_{n}"), 1.0, 1, ("nsubj", None), agree=(0, 1)))
        # noun phrases
        add(Rule(f"NP_{n}", (f"DET_{n}", f"NOM_{n}"), 1.0, 1, ("det", None)))
        add(Rule(f"NOM_{n}", ("ADJ", f"NOM_{n}"), cfg.p_adj, 1, ("amod", None)))
        add(Rule(f"NOM_{n}", (f"N_{n}",), bare * (1.0 - cfg.p_pp - cfg.p_rc)))
        add(Rule(f"NOM_{n}", (f"N_{n}", "PP"), bare * cfg.p_pp, 0, (None, "nmod"), embeds=True))
        add(Rule(f"NOM_{n}", (f"N_{n}", f"RC_{n}"), bare * cfg.p_rc, 0, (None, "acl:relcl"),
                 agree=(0, 1), embeds=True))
        add(Rule(f"NPS_{n}", (f"DET_{n}", f"NOMS_{n}"), 1.0, 1, ("det", None)))
        add(Rule(f"NOMS_{n}", ("ADJ", f"NOMS_{n}"), cfg.p_adj, 1, ("amod", None)))
        add(Rule(f"NOMS_{n}", (f"N_{n}",), bare * (1.0 - cfg.p_pp)))
        add(Rule(f"NOMS_{n}", (f"N_{n}", "PPS"), bare * cfg.p_pp, 0, (None, "nmod"),
                 embeds=True))
        # relative clauses
        add(Rule(f"RC_{n}", (f"RELS_{n}",), 1.0 - cfg.p_obj_rel))
        add(Rule(f"RC_{n}", ("RELO",), cfg.p_obj_rel))
        add(Rule(f"RELS_{n}", ("RPRON", f"VP_{n}"), 1.0, 1, ("nsubj", None)))
        add(Rule(f"TVG_{n}", (f"TV_{n}",), 1.0 - cfg.p_adv_pre))
        add(Rule(f"TVG_{n}", ("ADV", f"TV_{n}"), cfg.p_adv_pre, 1, ("advmod", None)))
        # verb phrases
        add(Rule(f"VP_{n}", (f"VB_{n}",), 1.0 - cfg.p_coord))
        add(Rule(f"VP_{n}", (f"VBS_{n}", f"CONJ_{n}"), cfg.p_coord, 0, (None, "conj")))
        add(Rule(f"CONJ_{n}", ("CC", f"VB_{n}"), 1.0, 1, ("cc", None)))
        for vb, vb0 in ((f"VB_{n}", f"VB0_{n}"), (f"VBS_{n}", f"VBS0_{n}")):
            add(Rule(vb, (vb0,), plain_adv))
            add(Rule(vb, ("ADV", vb0), cfg.p_adv_pre, 1, ("advmod", None)))
            add(Rule(vb, (vb0, "ADV"), cfg.p_adv_post, 0, (None, "advmod")))
        for vb0, np, pp, total in ((f"VB0_{n}", "NP", "PP", frames),
                                   (f"VBS0_{n}", "NPS", "PPS", simple_frames)):
            add(Rule(vb0, (f"IV_{n}",), cfg.w_intransitive / total))
            add(Rule(vb0, (f"IV_{n}", pp), cfg.w_obl / total, 0, (None, "obl"), embeds=True))
            for m in NUMBERS:
                add(Rule(vb0, (f"TV_{n}", f"{np}_{m}"), cfg.w_transitive / total * num_w[m], 0,
                         (None, "obj")))
        add(Rule(f"VB0_{n}", (f"CV_{n}", "COMP"), cfg.w_ccomp / frames, 0, (None, "ccomp"),
                 embeds=True))
    return R


START = "S"

# --------------------------------------------------------------------------------------------------
# Earley recogniser (no epsilon rules, so completions never have origin == current position)
# --------------------------------------------------------------------------------------------------


class _Earley:
    """Earley recogniser over lexical categories, with prediction closures cached per position.

    Items are (dotted-rule state, origin). Predicted items (dot 0, origin j) are not stored one by
    one: position j keeps the set of nonterminals predicted there, and a cached table per such set
    maps a completed nonterminal / scanned category to the dot-1 states it advances.
    """

    def __init__(self, rules: Sequence[tuple[str, tuple[str, ...]]], start: str,
                 lexicon: dict[str, Sequence[str]]):
        nts = sorted({lhs for lhs, _ in rules})
        terms = sorted({s for _, rhs in rules for s in rhs if s not in set(nts)})
        missing = [t for t in terms if t not in lexicon]
        if missing:
            raise ValueError(f"grammar symbols with neither rules nor words: {missing}")
        self.nt_id = {s: i for i, s in enumerate(nts)}
        self.n_nt = len(nts)
        sym_id = dict(self.nt_id)
        for t in terms:
            sym_id[t] = len(sym_id)
        self.sym_id = sym_id
        nxt: list[int] = []
        lhs_of: list[int] = []
        first_states: dict[int, list[int]] = {}
        for lhs, rhs in rules:
            base = len(nxt)
            first_states.setdefault(sym_id[lhs], []).append(base)
            for s in rhs:
                nxt.append(sym_id[s])
                lhs_of.append(sym_id[lhs])
            nxt.append(-1)
            lhs_of.append(sym_id[lhs])
        self.nxt = nxt
        self.lhs_of = lhs_of
        self.first_states = first_states
        self.n_states = len(nxt)
        self.start = sym_id[start]
        self.accept_states = frozenset(s for s in range(len(nxt))
                                       if nxt[s] == -1 and lhs_of[s] == self.start)
        self.word_cats: dict[str, tuple[int, ...]] = {}
        for cat, words in lexicon.items():
            if cat not in sym_id:
                continue
            for w in words:
                cur = self.word_cats.get(w, ())
                if sym_id[cat] not in cur:
                    self.word_cats[w] = cur + (sym_id[cat],)
        self._tables: dict[frozenset, tuple[dict, dict]] = {}

    def _table(self, needed: frozenset) -> tuple[dict, dict]:
        tab = self._tables.get(needed)
        if tab is not None:
            return tab
        n_nt, nxt = self.n_nt, self.nxt
        closure = set(needed)
        stack = list(needed)
        while stack:
            a = stack.pop()
            for s in self.first_states.get(a, ()):
                b = nxt[s]
                if b < n_nt and b not in closure:
                    closure.add(b)
                    stack.append(b)
        after_nt: dict[int, list[int]] = {}
        after_t: dict[int, list[int]] = {}
        for a in closure:
            for s in self.first_states.get(a, ()):
                b = nxt[s]
                (after_nt if b < n_nt else after_t).setdefault(b, []).append(s + 1)
        tab = (after_nt, after_t)
        self._tables[needed] = tab
        return tab

    def run(self, tokens: Sequence[str]) -> tuple[int | None, bool]:
        """Return (index of the first token that is not a valid prefix continuation or None,
        whether the whole sequence is a sentence)."""
        nxt, lhs_of, n_nt = self.nxt, self.lhs_of, self.n_nt
        word_cats = self.word_cats
        waits: list[dict[int, list[tuple[int, int]]]] = []
        tabs: list[dict[int, list[int]]] = []
        agenda: list[tuple[int, int]] = []
        n = len(tokens)
        for j in range(n + 1):
            seen = set(agenda)
            wait_j: dict[int, list[tuple[int, int]]] = {}
            term_j: dict[int, list[tuple[int, int]]] = {}
            k = 0
            while k < len(agenda):
                item = agenda[k]
                k += 1
                s, o = item
                sym = nxt[s]
                if sym < 0:  # completed: advance everything in set o waiting for lhs
                    a = lhs_of[s]
                    for it in waits[o].get(a, ()):
                        if it not in seen:
                            seen.add(it)
                            agenda.append(it)
                    for s2 in tabs[o].get(a, ()):
                        it = (s2, o)
                        if it not in seen:
                            seen.add(it)
                            agenda.append(it)
                elif sym < n_nt:
                    lst = wait_j.get(sym)
                    if lst is None:
                        wait_j[sym] = [(s + 1, o)]
                    else:
                        lst.append((s + 1, o))
                else:
                    lst = term_j.get(sym)
                    if lst is None:
                        term_j[sym] = [(s + 1, o)]
                    else:
                        lst.append((s + 1, o))
            needed = frozenset(wait_j) if j else frozenset((self.start,))
            after_nt, after_t = self._table(needed)
            waits.append(wait_j)
            tabs.append(after_nt)
            if j == n:
                accepted = any(o == 0 and s in self.accept_states for s, o in agenda)
                return None, accepted
            new: list[tuple[int, int]] = []
            for c in word_cats.get(tokens[j], ()):
                new.extend(term_j.get(c, ()))
                new.extend((s2, j) for s2 in after_t.get(c, ()))
            if not new:
                return j, False
            agenda = list(dict.fromkeys(new))
        raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------------
# Grammar: generator + recogniser
# --------------------------------------------------------------------------------------------------


def _rule_key(r: Rule) -> tuple[str, tuple[str, ...]]:
    return (r.lhs, r.rhs)


class Grammar:
    """Generator and recogniser built from :func:`build_rules` of one config."""

    def __init__(self, cfg: SyntheticConfig | None = None):
        self.cfg = cfg = cfg or SyntheticConfig()
        self.rules = build_rules(cfg)
        self.lexicon = LEXICON
        self._compile_generator()
        # recogniser: rules with positive weight here or in the test_long variant, pruned to
        # productive ones (so that a nonempty Earley set always means a valid prefix)
        structural: dict[tuple[str, tuple[str, ...]], None] = {}
        for r in self.rules + build_rules(cfg.long_variant()):
            if r.weight > 0:
                structural[_rule_key(r)] = None
        self.recogniser_rules = _prune_unproductive(list(structural), set(LEXICON))
        self._earley = _Earley(self.recogniser_rules, START, LEXICON)
        # verb -> other-number form
        self._flip: dict[str, str] = {}
        for v in ("IV", "TV", "CV"):
            for a, b in zip(LEXICON[f"{v}_sg"], LEXICON[f"{v}_pl"]):
                self._flip[a] = b
                self._flip[b] = a

    # ---------------------------------------------------------------- generator
    def _compile_generator(self) -> None:
        by_lhs: dict[str, list[Rule]] = {}
        for r in self.rules:
            by_lhs.setdefault(r.lhs, []).append(r)
        nts = set(by_lhs)
        for r in self.rules:
            for s in r.rhs:
                if s not in nts and s not in LEXICON:
                    raise ValueError(f"symbol {s} has neither rules nor words")

        def table(rules: list[Rule]) -> tuple:
            rules = [r for r in rules if r.weight > 0]
            total = sum(r.weight for r in rules)
            out, acc = [], 0.0
            for r in rules:
                acc += r.weight / total
                # compiled rule: (children, head, labels, agree, embeds); a child is
                # (is_terminal, symbol, words)
                kids = tuple((s in LEXICON, s, LEXICON.get(s, ())) for s in r.rhs)
                out.append((acc, (kids, r.head, r.labels, r.agree, r.embeds), r.weight / total))
            if out:  # guard against rounding: the last threshold is exactly 1
                out[-1] = (2.0, *out[-1][1:])
            return tuple(out)

        self._gen_free: dict[str, tuple] = {}
        self._gen_limited: dict[str, tuple] = {}
        for a, rules in by_lhs.items():
            free = table(rules)
            if not free:
                raise ValueError(f"nonterminal {a} has no rule with positive weight")
            limited = table([r for r in rules if not r.embeds])
            self._gen_free[a] = free
            self._gen_limited[a] = limited or free

    def sample(self, rng: random.Random, trace: list[float] | None = None) -> Sentence:
        """One sentence with its gold tree and agreement records (resampled above max_words).

        ``trace`` (tests): filled with the log-probability of every rule and word choice of the
        returned sentence's derivation (a word's probability counts its lexicon multiplicity).
        """
        while True:
            if trace is not None:
                trace.clear()
            s = self._sample_once(rng, trace)
            if len(s.tokens) <= self.cfg.max_words:
                return s

    def generate(self, n: int, seed: int) -> list[Sentence]:
        rng = random.Random(seed)
        return [self.sample(rng) for _ in range(n)]

    def _sample_once(self, rng: random.Random, trace: list[float] | None = None) -> Sentence:
        rand = rng.random
        free, limited = self._gen_free, self._gen_limited
        max_depth = self.cfg.max_depth
        tokens: list[str] = []
        tags: list[str] = []
        depths: list[int] = []
        heads: list[int] = []
        deprels: list[str] = []
        records: list[tuple[int, int]] = []  # (subject, verb)
        verb_cats = _VERB_CATS

        def expand(sym: str, depth: int) -> tuple[int, list[int]]:
            # returns (head position, finite verbs waiting for a controller)
            opts = free[sym] if depth < max_depth else limited[sym]
            r = rand()
            for thr, rule, prob in opts:
                if r < thr:
                    break
            if trace is not None:
                trace.append(math.log(prob))
            kids, head, labels, agree, embeds = rule
            d = depth + 1 if embeds else depth
            pos: list[int] = []
            pend: list[list[int]] = []
            for is_term, s, words in kids:
                if is_term:
                    p = len(tokens)
                    w = words[int(rand() * len(words))]
                    if trace is not None:
                        trace.append(math.log(words.count(w) / len(words)))
                    tokens.append(w)
                    tags.append(s)
                    depths.append(depth)
                    heads.append(0)
                    deprels.append("")
                    pos.append(p)
                    pend.append([p] if s in verb_cats else [])
                else:
                    p, pv = expand(s, d)
                    pos.append(p)
                    pend.append(pv)
            hp = pos[head] + 1
            for i, lab in enumerate(labels):
                if lab is not None:
                    heads[pos[i]] = hp
                    deprels[pos[i]] = lab
            if agree is not None:
                c, t = agree
                subj = pos[c]
                for v in pend[t]:
                    records.append((subj, v))
                pend[t] = []
            if len(pend) == 1:
                return pos[head], pend[0]
            out: list[int] = []
            for pv in pend:
                out.extend(pv)
            return pos[head], out

        root, pending = expand(START, 0)
        assert not pending, "finite verb without a controller"
        deprels[root] = "root"
        heads[root] = 0
        agreement = []
        for subj, v in records:
            number = tags[subj][2:]
            other = "N_pl" if number == "sg" else "N_sg"
            lo, hi = (subj, v) if subj < v else (v, subj)
            attr = sum(1 for t in tags[lo + 1:hi] if t == other)
            agreement.append(Agreement(subj, v, number, hi - lo - 1, attr))
        agreement.sort(key=lambda a: a.verb)
        return Sentence(tokens, heads, deprels, agreement, tags, depths)

    # ---------------------------------------------------------------- recogniser
    def check(self, tokens: Sequence[str]) -> tuple[int | None, bool]:
        """(first invalid index or None, accepted) in one pass."""
        return self._earley.run(tokens)

    def accepts(self, tokens: Sequence[str]) -> bool:
        return self._earley.run(tokens)[1]

    def first_invalid(self, tokens: Sequence[str]) -> int | None:
        """0-based index of the first token at which ``tokens`` stops being a valid prefix of a
        sentence; None if every prefix is valid (complete sentence or valid incomplete prefix)."""
        return self._earley.run(tokens)[0]

    def vocabulary(self) -> list[str]:
        return sorted({w for words in LEXICON.values() for w in words})

    def other_form(self, verb: str) -> str:
        """The other-number form of a finite verb."""
        return self._flip[verb]


def _prune_unproductive(rules: list[tuple[str, tuple[str, ...]]],
                        terminals: set[str]) -> list[tuple[str, tuple[str, ...]]]:
    productive = set(terminals)
    changed = True
    while changed:
        changed = False
        for lhs, rhs in rules:
            if lhs not in productive and all(s in productive for s in rhs):
                productive.add(lhs)
                changed = True
    if START not in productive:
        raise ValueError("grammar derives no sentence with these weights")
    return [(lhs, rhs) for lhs, rhs in rules if all(s in productive for s in rhs)]


@functools.lru_cache(maxsize=16)
def get_grammar(cfg: SyntheticConfig | None = None) -> Grammar:
    return Grammar(cfg or SyntheticConfig())


def accepts(tokens: Sequence[str], cfg: SyntheticConfig | None = None) -> bool:
    return get_grammar(cfg or SyntheticConfig()).accepts(tokens)


def first_invalid(tokens: Sequence[str], cfg: SyntheticConfig | None = None) -> int | None:
    return get_grammar(cfg or SyntheticConfig()).first_invalid(tokens)


def vocabulary(cfg: SyntheticConfig | None = None) -> list[str]:
    return get_grammar(cfg or SyntheticConfig()).vocabulary()

