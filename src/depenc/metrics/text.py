"""Statistics of generated text against reference text (DESIGN 4.3).

Conventions
-----------
* Text is whitespace-tokenised (``str.split()``); tokens are compared case-sensitively.
* A sentence ends at a terminal token: a token made only of ``.``, ``!`` and ``?`` (so ``.``,
  ``?``, ``...``, ``?!``). The terminal token belongs to its sentence and **counts as a word** in
  sentence lengths. A trailing fragment without a terminal token counts as a sentence, so text
  without terminal punctuation still has lengths; a sample cut off by the generation limit thus
  contributes one short final sentence. The reference goes through the same rule, so both sides
  stay comparable. Empty sentences are dropped.
* Corpus-level lexical statistics pool n-grams over all texts; n-grams never cross text
  boundaries but do cross sentence boundaries inside a text.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance

__all__ = [
    "distinct_n",
    "is_terminal",
    "jensen_shannon",
    "length_histogram",
    "mattr",
    "repeated_ngram_rate",
    "sentence_lengths",
    "split_sentences",
    "text_statistics",
    "wasserstein1",
]

_TERMINAL_CHARS = frozenset(".!?")


def is_terminal(token: str) -> bool:
    """True for a sentence-final token: non-empty and made only of ``.``, ``!``, ``?``."""
    return bool(token) and all(c in _TERMINAL_CHARS for c in token)


def split_sentences(tokens_or_text: str | Sequence[str]) -> list[list[str]]:
    """Split whitespace-tokenised text (or a token list) into sentences at terminal tokens.

    The terminal token ends (and stays in) its sentence; a trailing unterminated fragment is a
    sentence too; empty sentences are dropped.
    """
    tokens = tokens_or_text.split() if isinstance(tokens_or_text, str) else list(tokens_or_text)
    sentences: list[list[str]] = []
    current: list[str] = []
    for tok in tokens:
        if not tok or tok.isspace():
            continue
        current.append(tok)
        if is_terminal(tok):
            sentences.append(current)
            current = []
    if current:
        sentences.append(current)
    return sentences


def sentence_lengths(texts: Iterable[str]) -> list[int]:
    """Words per sentence over all texts, in order (the terminal punctuation counts as a word)."""
    return [len(s) for text in texts for s in split_sentences(text)]


def _integer_edges(values: np.ndarray) -> np.ndarray:
    """Unit-width bins centred on the integers from ``min`` to ``max`` of ``values``."""
    lo = int(np.floor(values.min()))
    hi = int(np.ceil(values.max()))
    return np.arange(lo, hi + 2, dtype=np.float64) - 0.5


def length_histogram(
    lengths: Sequence[float] | np.ndarray, bins: int | Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Histogram ``(counts, edges)`` of lengths.

    ``bins=None`` gives unit-width bins centred on each integer from the minimum to the maximum
    length; an int or a sequence of edges is passed to ``np.histogram``.
    """
    x = np.asarray(lengths, dtype=np.float64)
    if bins is None:
        if x.size == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(1)
        bins = _integer_edges(x)
    counts, edges = np.histogram(x, bins=bins)
    return counts, edges


def wasserstein1(a_samples: Sequence[float], b_samples: Sequence[float]) -> float:
    """1-D Wasserstein-1 (earth mover's) distance between two samples (NaN if one is empty)."""
    a = np.asarray(a_samples, dtype=np.float64)
    b = np.asarray(b_samples, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        return float("nan")
    return float(wasserstein_distance(a, b))


def jensen_shannon(
    a_samples: Sequence[float],
    b_samples: Sequence[float],
    bins: int | Sequence[float] | None = None,
) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between the histograms of two samples.

    Both samples share one binning: ``bins=None`` uses unit bins on each integer over the pooled
    range; an int gives that many equal-width bins over the pooled range; a sequence gives the
    edges, and values outside them are clipped into the end bins. Empty bins are fine (0 log 0 =
    0), so no smoothing is needed. NaN if a sample is empty. Computed with
    ``scipy.spatial.distance.jensenshannon`` (squared: scipy returns the distance).
    """
    a = np.asarray(a_samples, dtype=np.float64)
    b = np.asarray(b_samples, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        return float("nan")
    pooled = np.concatenate([a, b])
    if bins is None:
        edges = _integer_edges(pooled)
    elif isinstance(bins, (int, np.integer)):
        lo, hi = float(pooled.min()), float(pooled.max())
        if hi <= lo:
            hi = lo + 1.0
        edges = np.linspace(lo, hi, int(bins) + 1)
    else:
        edges = np.asarray(bins, dtype=np.float64)
        a = np.clip(a, edges[0], edges[-1])
        b = np.clip(b, edges[0], edges[-1])
    p = np.histogram(a, bins=edges)[0].astype(np.float64)
    q = np.histogram(b, bins=edges)[0].astype(np.float64)
    # scipy gives the Jensen-Shannon *distance*, the square root of the divergence
    js = float(jensenshannon(p, q, base=2.0)) ** 2
    return min(max(js, 0.0), 1.0)


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(tokens_list: Iterable[Sequence[str]], n: int) -> float:
    """Distinct-n: unique n-grams / total n-grams, pooled over the corpus (NaN if no n-gram).

    n-grams are taken within each token list (never across lists).
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for toks in tokens_list:
        grams = _ngrams(list(toks), n)
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else float("nan")


def mattr(tokens: Sequence[str], window: int = 50) -> float:
    """Moving-average type-token ratio: mean TTR over all windows of ``window`` tokens.

    Texts shorter than the window get their plain type-token ratio; NaN for no tokens.
    """
    toks = list(tokens)
    L = len(toks)
    if window < 1:
        raise ValueError("window must be >= 1")
    if L == 0:
        return float("nan")
    if L < window:
        return len(set(toks)) / L
    counts: Counter[str] = Counter(toks[:window])
    types = len(counts)
    total_types = types
    for i in range(window, L):
        new, old = toks[i], toks[i - window]
        counts[new] += 1
        if counts[new] == 1:
            types += 1
        counts[old] -= 1
        if counts[old] == 0:
            types -= 1
            del counts[old]
        total_types += types
    return total_types / ((L - window + 1) * window)


def repeated_ngram_rate(tokens_list: Iterable[Sequence[str]], n: int = 4) -> float:
    """Share of n-gram occurrences whose n-gram occurs more than once in the same text.

    Every occurrence of a repeated n-gram counts, the first one included: in ``a b c d a b c d``
    (n=4) the 5 occurrences are ``abcd, bcda, cdab, dabc, abcd`` and 2 of them repeat, so 0.4.
    Pooled over texts: (repeated occurrences) / (all occurrences); NaN if no text has n tokens.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    repeated = total = 0
    for toks in tokens_list:
        counts = Counter(_ngrams(list(toks), n))
        total += sum(counts.values())
        repeated += sum(c for c in counts.values() if c > 1)
    return repeated / total if total else float("nan")


def text_statistics(
    texts: Sequence[str], reference: Sequence[str] | None = None, window: int = 50
) -> dict[str, float]:
    """Lexical and sentence-length statistics of ``texts``, compared with ``reference`` if given.

    Keys: ``distinct_1``, ``distinct_2``, ``distinct_3``, ``mattr`` (per-text MATTR averaged over
    texts weighted by their token counts), ``rep4``, ``mean_sent_len``, ``n_texts``,
    ``n_sentences``; with a reference also ``ref_mean_sent_len``, ``len_w1`` (Wasserstein-1 of
    sentence lengths) and ``len_js`` (Jensen-Shannon divergence of sentence lengths, unit bins).
    """
    token_lists = [t.split() for t in texts]
    lengths = sentence_lengths(texts)
    weights = np.array([len(t) for t in token_lists], dtype=np.float64)
    if weights.sum() > 0:
        per_text = np.array([mattr(t, window) if t else 0.0 for t in token_lists])
        mattr_value = float(np.sum(per_text * weights) / weights.sum())
    else:
        mattr_value = float("nan")
    out: dict[str, float] = {
        "distinct_1": distinct_n(token_lists, 1),
        "distinct_2": distinct_n(token_lists, 2),
        "distinct_3": distinct_n(token_lists, 3),
        "mattr": mattr_value,
        "rep4": repeated_ngram_rate(token_lists, 4),
        "mean_sent_len": float(np.mean(lengths)) if lengths else float("nan"),
        "n_texts": len(token_lists),
        "n_sentences": len(lengths),
    }
    if reference is not None:
        ref_lengths = sentence_lengths(reference)
        out["ref_mean_sent_len"] = float(np.mean(ref_lengths)) if ref_lengths else float("nan")
        out["len_w1"] = wasserstein1(lengths, ref_lengths)
        out["len_js"] = jensen_shannon(lengths, ref_lengths)
    return out
