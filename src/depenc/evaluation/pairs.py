"""Minimal pairs in BLiMP's format (Warstadt et al., 2020): does the model give the good sentence the
higher probability? The functions behind ``python -m depenc.evaluate pairs`` and the pairs callback.

Input: JSON lines with at least ``sentence_good`` and ``sentence_bad`` (BLiMP's files also have
``field``, ``linguistics_term``, ``UID``, ``pairID``, ...; any key can group the pairs), or a folder of
such files (every ``*.jsonl`` in it, sorted: BLiMP's layout, one file per UID).
``python -m depenc.data.synthetic pairs`` writes the synthetic grammar's agreement pairs this way.

Scores, in nats, for every pair:

* ``margin`` = ``lp(good) - lp(bad)``, ``lp`` the sentence log-probability of ``evaluate score``
  (its tokens and the closing ``<eos>`` given ``<eos>``); the pair is right when the margin is > 0
  (BLiMP's full-sentence method). lm_eval's ``blimp`` task compares the sentences without the closing
  ``<eos>`` (``log p(" " + sentence | <eos>)``), so its accuracy can differ from this one.
* ``prefix_margin``, for pairs with BLiMP's one-prefix fields (``one_prefix_prefix``,
  ``one_prefix_word_good``, ``one_prefix_word_bad``): ``log p(word_good | <eos> prefix) - log p(word_bad |
  <eos> prefix)``, scored by :func:`depenc.evaluation.agreement.score_pairs`, the number ``evaluate
  agree`` and the agreement callback report. On the synthetic agreement pairs ``prefix_acc`` therefore
  equals agree's ``acc``; the full-sentence ``acc`` differs, because the words after the verb are
  predicted from different prefixes in the two sentences.

Accuracy and mean margin overall and per group of each ``by`` key, each with a percentile bootstrap
95% interval over pairs (``agreement.bootstrap_ci``, seeded; every group its own seed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from depenc.evaluation.agreement import PairItem, bootstrap_ci, score_pairs
from depenc.evaluation.base import eval_mode
from depenc.evaluation.likelihood import score_sentences

__all__ = ["PREFIX_FIELDS", "REQUIRED", "ROW_COLUMNS", "STATS", "PairSet", "PairsError", "evaluate_pairs", "group_labels",
           "metric_rows", "model_scorers", "pair_margins", "pair_metrics", "read_pairs", "scalars", "table"]

REQUIRED = ("sentence_good", "sentence_bad")
PREFIX_FIELDS = ("one_prefix_prefix", "one_prefix_word_good", "one_prefix_word_bad")
STATS = ("n", "acc", "acc_lo", "acc_hi", "margin", "margin_lo", "margin_hi",
         "n_prefix", "prefix_acc", "prefix_acc_lo", "prefix_acc_hi", "prefix_margin")


class PairsError(ValueError):
    """Unusable pairs input; the message names the file and line."""


class PairSet:
    """The pairs of one input: ``records`` (the JSON objects) and ``where`` (``file:line`` of each)."""

    def __init__(self, name: str, records: list[dict], where: list[str]):
        self.name, self.records, self.where = name, records, where

    def __len__(self) -> int:
        return len(self.records)


# --------------------------------------------------------------------------------------------
# input


def _read_file(path: Path, records: list[dict], where: list[str]) -> None:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PairsError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise PairsError(f"cannot read {path}: {exc.strerror or exc}") from None
    n0 = len(records)
    for k, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PairsError(f"{path}:{k}: not JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise PairsError(f"{path}:{k}: not a JSON object")
        for key in REQUIRED:
            if key not in obj:
                raise PairsError(f"{path}:{k}: no '{key}' (a pair needs {' and '.join(REQUIRED)})")
            if not isinstance(obj[key], str) or not obj[key].strip():
                raise PairsError(f"{path}:{k}: '{key}' must be a non-empty string")
        records.append(obj)
        where.append(f"{path}:{k}")
    if len(records) == n0:
        raise PairsError(f"{path}: no pairs (empty file)")


def read_pairs(path: str | Path, name: str | None = None) -> PairSet:
    """The pairs of a JSONL file or of every ``*.jsonl`` file of a folder (sorted by name); named after
    the file's stem or the folder."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.glob("*.jsonl") if f.is_file())
        if not files:
            raise PairsError(f"{p}: a folder without .jsonl files")
    elif p.is_file():
        files = [p]
    else:
        raise PairsError(f"pairs file not found: {p}")
    records: list[dict] = []
    where: list[str] = []
    for f in files:
        _read_file(f, records, where)
    return PairSet(name or (p.name if p.is_dir() else p.stem), records, where)


def _sort_key(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0, str(value))


def group_labels(pairs: PairSet, key: str) -> list[str]:
    """The ``key`` value of every pair as a label (PairsError naming the first pair without it)."""
    for rec, w in zip(pairs.records, pairs.where):
        if key not in rec:
            raise PairsError(f"{w}: no '{key}' to group by")
    return [str(rec[key]) for rec in pairs.records]


def _label_order(pairs: PairSet, key: str) -> list[str]:
    """The distinct labels of ``key``, numbers in numeric order first, then the rest alphabetically."""
    values = {str(rec[key]): rec[key] for rec in pairs.records}
    return sorted(values, key=lambda label: _sort_key(values[label]))


# --------------------------------------------------------------------------------------------
# scoring


def model_scorers(model, tokenizer, batch_size: int = 32) -> tuple[Callable, Callable]:
    """``(logprob, prefix_margin)``: ``logprob(sentences)`` as ``evaluate score`` gives it and
    ``prefix_margin(items)`` for ``(prefix, word_good, word_bad)`` triples (NaN where the prefix and
    word do not fit the context), both arrays. The model is put in eval mode for each call."""

    def logprob(sentences: Sequence[str]) -> np.ndarray:
        with eval_mode(model):
            rows = score_sentences(model, tokenizer, sentences, batch_size)
        return np.array([r["logprob"] for r in rows], dtype=np.float64)

    def prefix_margin(items: Sequence[tuple[str, str, str]]) -> np.ndarray:
        pairs = []
        for prefix, good, bad in items:
            words = tuple(prefix.split())
            pairs.append(PairItem(words + (good,), len(words), good, bad, 0, 0))
        with eval_mode(model):
            margins, _ = score_pairs(model, tokenizer, pairs, batch_size)
        return margins

    return logprob, prefix_margin


def _has_prefix(rec: dict) -> bool:
    return all(isinstance(rec.get(k), str) and rec[k].strip() for k in PREFIX_FIELDS)


def pair_margins(pairs: PairSet, logprob: Callable, prefix_margin: Callable | None) -> dict[str, np.ndarray]:
    """``good``, ``bad`` (sentence log-probs) and ``prefix`` margins (NaN without one-prefix fields) of
    every pair; every distinct sentence is scored once."""
    sentences = sorted({r[k] for r in pairs.records for k in REQUIRED})
    lp = dict(zip(sentences, logprob(sentences)))
    good = np.array([lp[r["sentence_good"]] for r in pairs.records], dtype=np.float64)
    bad = np.array([lp[r["sentence_bad"]] for r in pairs.records], dtype=np.float64)
    prefix = np.full(len(pairs), np.nan)
    with_prefix = [i for i, r in enumerate(pairs.records) if _has_prefix(r)]
    if prefix_margin is not None and with_prefix:
        items = [tuple(pairs.records[i][k].strip() for k in PREFIX_FIELDS) for i in with_prefix]
        prefix[with_prefix] = prefix_margin(items)
    return {"good": good, "bad": bad, "prefix": prefix}


# --------------------------------------------------------------------------------------------
# statistics


def _stats(margin: np.ndarray, prefix: np.ndarray, n_boot: int, seed: int) -> dict[str, float]:
    out: dict[str, float] = {"n": int(margin.size)}
    if margin.size:
        acc = (margin > 0).astype(np.float64)
        out["acc"] = float(acc.mean())
        out["acc_lo"], out["acc_hi"] = bootstrap_ci(acc, n_boot, seed)
        out["margin"] = float(margin.mean())
        out["margin_lo"], out["margin_hi"] = bootstrap_ci(margin, n_boot, seed)
    p = prefix[~np.isnan(prefix)]
    out["n_prefix"] = int(p.size)
    if p.size:
        pacc = (p > 0).astype(np.float64)
        out["prefix_acc"] = float(pacc.mean())
        out["prefix_acc_lo"], out["prefix_acc_hi"] = bootstrap_ci(pacc, n_boot, seed)
        out["prefix_margin"] = float(p.mean())
    return out


def pair_metrics(margins: dict[str, np.ndarray], groups: dict[str, tuple[list[str], list[str]]],
                 n_boot: int = 1000, seed: int = 0) -> dict:
    """``{"all": stats, "groups": {key: {label: stats}}}`` where stats has :data:`STATS` (the ``acc`` and
    ``prefix_`` ones only where defined). ``groups``: key -> (label of every pair, labels in order).
    The k-th group (in this order) bootstraps with seed ``seed + k``, overall with ``seed``."""
    m = margins["good"] - margins["bad"]
    prefix = margins["prefix"]
    out: dict[str, Any] = {"all": _stats(m, prefix, n_boot, seed), "groups": {}}
    k = 0
    for key, (labels, order) in groups.items():
        lab = np.asarray(labels, dtype=object)
        out["groups"][key] = {}
        for label in order:
            k += 1
            mask = lab == label
            out["groups"][key][label] = _stats(m[mask], prefix[mask], n_boot, seed + k)
    return out


def evaluate_pairs(pairs: PairSet, logprob: Callable, prefix_margin: Callable | None = None,
                   by: Sequence[str] = (), n_boot: int = 1000, seed: int = 0) -> dict:
    """Metrics of one input (see :func:`pair_metrics`) plus ``name``, ``by`` and ``n_pairs``;
    ``logprob`` / ``prefix_margin`` as :func:`model_scorers` returns them (or fakes in tests)."""
    groups = {key: (group_labels(pairs, key), _label_order(pairs, key)) for key in by}
    metrics = pair_metrics(pair_margins(pairs, logprob, prefix_margin), groups, n_boot, seed)
    return {"name": pairs.name, "n_pairs": len(pairs), "by": list(by), **metrics}


# --------------------------------------------------------------------------------------------
# output


def scalars(result: dict, prefix: str) -> dict[str, float]:
    """Flat metrics for the loggers: ``<prefix>/acc``, ``.../margin``, ... and ``<prefix>/acc_<key>_<label>``
    (with ``n_<key>_<label>``) for every group."""
    out = {f"{prefix}/{k}": v for k, v in result["all"].items()}
    for key, groups in result["groups"].items():
        for label, st in groups.items():
            out[f"{prefix}/n_{key}_{label}"] = st["n"]
            if "acc" in st:
                out[f"{prefix}/acc_{key}_{label}"] = st["acc"]
            if "prefix_acc" in st:
                out[f"{prefix}/prefix_acc_{key}_{label}"] = st["prefix_acc"]
    return out


ROW_COLUMNS = ["name", "group", *STATS]


def metric_rows(result: dict) -> list[list]:
    """Rows of :data:`ROW_COLUMNS`: overall (group ``all``) then every ``key=label`` group."""
    rows = [[result["name"], "all", *(result["all"].get(s) for s in STATS)]]
    for key, groups in result["groups"].items():
        rows += [[result["name"], f"{key}={label}", *(st.get(s) for s in STATS)] for label, st in groups.items()]
    return rows


def table(result: dict) -> str:
    """A plain-text table: n, accuracy [95% interval], mean margin and, where there are one-prefix
    fields, the prefix accuracy, per group."""
    def num(x, fmt):
        return "-" if x is None else format(x, fmt)

    head = f"{'group':<40} {'n':>6} {'acc':>6} {'95% CI':>15} {'margin':>8} {'prefix_acc':>10} {'n_prefix':>8}"
    lines = [f"{result['name']}: {result['n_pairs']} pairs", head]
    for _, group, *vals in metric_rows(result):
        st = dict(zip(STATS, vals))
        ci = "-" if st["acc_lo"] is None else f"[{st['acc_lo']:.3f}, {st['acc_hi']:.3f}]"
        lines.append(f"{group:<40} {st['n']:>6} {num(st['acc'], '.3f'):>6} {ci:>15} {num(st['margin'], '.3f'):>8} "
                     f"{num(st['prefix_acc'], '.3f'):>10} {st['n_prefix']:>8}")
    return "\n".join(lines)
