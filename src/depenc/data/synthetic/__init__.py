"""Embedded English-like probabilistic grammar with exact gold dependency trees.

The default training corpus of the project (DESIGN.md section 5). One rule table drives everything:

* the *generator* samples from it (seeded, ``random.Random``, never global state) and builds the gold
  dependency tree and the subject-verb agreement records while it generates;
* the *recogniser* is an Earley parser over the same rules (the weights are dropped), which decides
  membership (:meth:`Grammar.accepts`) and the first token at which a sequence stops being a valid
  prefix of some sentence (:meth:`Grammar.first_invalid`).

Language
--------
Nonterminals are split by number (``NP_sg``/``NP_pl``...), so subject-verb agreement holds in every
clause: main clauses, subject and object relative clauses, complement clauses, and every conjunct of
a coordinated verb phrase. Constructions: determiners with number, stacked adjectives, PPs on nouns
and on intransitive verbs, subject relatives (``the dog that sees the cats runs``), object relatives
(``the dog that the cats see runs``), sentential complements (``the man says that the dogs run``),
coordinated VPs (``the dog runs and sees a cat``), pre- and post-verbal adverbs. The first conjunct of
a coordinated VP contains no clause, so ``and`` + verb can only coordinate with the last finite verb
before it: every agreement is unambiguous, and the other-number form of any generated verb makes
the sentence ungrammatical (and the prefix invalid at that verb).

The generator limits embedding depth (``max_depth``: rules that embed a PP, relative clause or
complement clause are switched off once that many are nested) and sentence length (``max_words``, by
resampling). The recogniser accepts the *unbounded-depth, unbounded-length closure* of every rule
with positive weight (in the config or its ``test_long`` variant): a superset of what the generator
can produce, and the same set whatever the depth limit.

Dependency conventions (UD-style; each rule names its head child and the labels of the others)
-----------------------------------------------------------------------------------------------
* ``det``/``amod``: determiner and adjectives -> their noun;
* ``nsubj``/``obj``: subject and object nouns -> their verb; ``obl``: a PP's noun -> intransitive verb;
* ``case``: a preposition -> its noun; ``nmod``: that noun -> the noun it modifies;
* ``acl:relcl``: a relative clause's verb -> the noun it modifies; the relativiser ``that`` -> the
  relative clause's verb as ``nsubj`` (subject relative) or ``obj`` (object relative);
* ``ccomp``: a complement clause's verb -> the clause-taking verb; ``mark``: complementiser ``that``
  -> the complement clause's verb;
* ``conj``: the second conjunct verb -> the first; ``cc``: ``and`` -> the second conjunct verb;
* ``advmod``: adverbs -> their verb; ``punct``: the final ``.`` -> the main verb; ``root``: main verb.
Trees are projective by construction (every rule's yield is contiguous).

Agreement records
-----------------
One per finite verb: ``subject`` is the controlling noun (the clause's subject noun, or for a
subject relative clause the noun the clause modifies), ``distance`` counts the words strictly
between the noun and the verb, ``attractors`` the nouns of the other number strictly between them.

Splits
------
``train``, ``validation``, ``test``, ``test_long`` use seeds ``seed * 1000 + {0, 1, 2, 3}``. Held-out
splits are made disjoint from train and from each other: a held-out sentence whose token string
already occurs in an earlier split (order train, validation, test, test_long) is dropped and
sampling continues until the split has its size. Only 4-word sentences (``the dog runs .``) ever
collide: about 4% of held-out draws at the defaults, so held-out splits slightly under-represent
them. Splits are prefix-stable: with the earlier splits' sizes fixed, a larger ``n_<split>`` gives
the same first sentences (so ``--n`` in the CLI just takes a prefix). ``test_long`` samples from
a recursion-heavy variant of the grammar and keeps only sentences with at least one agreement record
at distance >= ``long_min_distance``.

Exact probabilities
-------------------
:mod:`depenc.data.synthetic.exact` gives the generator's exact distribution: the Bayes-optimal
next-token distribution after any prefix (a probabilistic Earley parser over the depth-annotated
rules), per-token surprisals, sentence log-probabilities, and the entropy floor of a split under the
split's own generator or the training rules without the depth cap.

Modules: :mod:`.grammar` (config, lexicon, rules, generator, recogniser), :mod:`.corpus` (splits,
minimal pairs, trees, CoNLL-U, statistics), :mod:`.exact`, :mod:`.cli`. Every public name of the
first two is re-exported here.

CLI: ``python -m depenc.data.synthetic {export,pairs,check,stats,floor} ...`` (see ``--help``).
"""


from . import corpus, grammar
from .corpus import (chain_uuas, make_split, minimal_pairs, split_stats, to_conllu,
                     undirected_edges)
from .grammar import (DEPTH_SPLITS, LEXICON, NUMBERS, SPLITS, START, Agreement, Grammar, MinimalPair, Rule,
                      Sentence, SyntheticConfig, accepts, build_rules, first_invalid, get_grammar,
                      vocabulary)
from .cli import main

# the files whose code determines the generated corpus: token caches are keyed by their hash
SOURCE_FILES = (grammar.__file__, corpus.__file__)

__all__ = [
    "NUMBERS",
    "START",
    "SOURCE_FILES",
    "SyntheticConfig",
    "Agreement",
    "Sentence",
    "MinimalPair",
    "Rule",
    "Grammar",
    "LEXICON",
    "SPLITS",
    "DEPTH_SPLITS",
    "build_rules",
    "get_grammar",
    "accepts",
    "first_invalid",
    "vocabulary",
    "make_split",
    "minimal_pairs",
    "chain_uuas",
    "split_stats",
    "undirected_edges",
    "to_conllu",
    "main",
]
