"""Statistics over groups of runs: the final values as one long table, their mean, sample standard
deviation (ddof=1), min and max per (metric, group) with pandas, differences to the baseline group;
and which metrics the report shows, in which order, and which direction is better."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import pandas as pd

from depenc.compare.runs import Run
from depenc.metrics.alignment import MODEL_SOURCES, REFERENCE_SOURCES


def final_values(groups: Mapping[str, Sequence[Run]], keys: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per final value a run has: columns ``group``, ``run`` (index in the group),
    ``metric``, ``value``. ``keys``: only these metrics (default: every metric of each run)."""
    wanted = None if keys is None else set(keys)
    rows = []
    for g, runs in groups.items():
        for i, r in enumerate(runs):
            present = r.metric_keys() if wanted is None else wanted & r.metric_keys()
            rows += [(g, i, key, v) for key in sorted(present) if (v := r.final(key)) is not None]
    return pd.DataFrame(rows, columns=["group", "run", "metric", "value"])


def aggregate(values: pd.DataFrame) -> pd.DataFrame:
    """Per (metric, group) of a :func:`final_values` table: n, mean, std (ddof=1; NaN for n=1),
    min, max. Only pairs with at least one value appear: an absent metric is absent, never 0."""
    by = values.groupby(["metric", "group"], sort=False)["value"]
    return by.agg(n="count", mean="mean", std="std", min="min", max="max")


def summarize(groups: Mapping[str, Sequence[Run]], keys: Iterable[str] | None = None) -> dict[tuple[str, str], dict]:
    """``{(metric, group): {n, mean, std, min, max}}`` of the final values (see :func:`aggregate`)."""
    return aggregate(final_values(groups, keys)).to_dict("index")


def diff_to_baseline(table: pd.DataFrame, baseline: str) -> pd.Series:
    """Group mean minus the baseline group's mean of the same metric (NaN for the baseline
    itself and where the baseline lacks the metric), on the index of an :func:`aggregate` table."""
    metric, group = table.index.get_level_values("metric"), table.index.get_level_values("group")
    base = table["mean"].xs(baseline, level="group") if baseline in group else pd.Series(dtype=float)
    diff = table["mean"].to_numpy() - base.reindex(metric).to_numpy()
    return pd.Series(diff, index=table.index).where(group != baseline)


# ---- which metrics, in which order ---------------------------------------------------------


def bucket_key(label: str) -> tuple[float, str]:
    """Sort bucket labels (``1-10``, ``>40``, ``3+``, ``5``) by their lower bound."""
    m = re.search(r"\d+", label)
    lo = float(m.group()) if m else float("inf")
    if label.startswith(">"):
        lo += 0.5
    return lo, label


_SOURCE_ORDER = {s: i for i, s in enumerate(MODEL_SOURCES + REFERENCE_SOURCES)}


def key_sort(key: str) -> tuple:
    """Sort metric names part by part: alignment sources in a fixed order, buckets by their bound."""
    out = []
    for p in key.split("/"):
        m = re.match(r"^(acc_dist|uuas_len|recall_arc)_(.+)$", p)
        if p in _SOURCE_ORDER:
            out.append((0, _SOURCE_ORDER[p], p))
        elif m:
            out.append((1, *bucket_key(m.group(2))))
        else:
            out.append((2, 0, p))
    return tuple(out)


def is_bound(key: str) -> bool:
    """A confidence-interval bound (``..._lo`` / ``..._hi``), shown only through its metric."""
    return key.endswith(("_lo", "_hi"))


HEADLINE = [
    r"^val/[^/]+/ppl$",
    r"^val/[^/]+/bpb$",
    r"^val/[^/]+/word_ppl$",
    r"^test/[^/]+/ppl$",
    r"^test/[^/]+/bpb$",
    r"^align/[^/]+/[^/]+/uuas$",
    r"^align/[^/]+/(parser|attn_mean|attn_best)/left_arc$",
    r"^agree/[^/]+/acc$",
    r"^agree/[^/]+/acc_dist_[^/]+$",
    r"^gen/(grammatical|valid_prefix|first_invalid_pos|len_w1|len_js|mean_sent_len|distinct_2|mattr|rep4)$",
    r"^perf/(tokens_per_s|peak_mem_mb|step_time_ms)$",
    r"^depenc/(gate_mean|lambda_mean|parser_entropy)$",
    r"^(n_params|global_step|tokens_seen|wall_time_s)$",
]


def all_keys(runs: Iterable[Run]) -> list[str]:
    """Every metric any of the runs has, sorted by :func:`key_sort`."""
    keys: set[str] = set()
    for r in runs:
        keys |= r.metric_keys()
    return sorted(keys, key=key_sort)


def keys_matching(runs: Iterable[Run], pattern: str, history: bool = False) -> list[str]:
    """Metrics of the runs (``history``: only those in metrics.csv) matching a regex, sorted."""
    rx = re.compile(pattern)
    keys: set[str] = set()
    for r in runs:
        keys |= {k for k in (r.history.columns if history else r.metric_keys()) if rx.search(k)}
    return sorted(keys, key=key_sort)


def headline_keys(keys: Iterable[str]) -> list[str]:
    """The keys of the main table, in the order of :data:`HEADLINE` (those present)."""
    keys = sorted((k for k in keys if not is_bound(k)), key=key_sort)
    out: list[str] = []
    for pattern in HEADLINE:
        rx = re.compile(pattern)
        out.extend(k for k in keys if rx.search(k) and k not in out)
    return out


# Excess loss over the grammar's exact optimum (depenc.evaluation.excess), in nats/token:
# excess/<split>/excess overall, excess/<split>/cat/<category>/excess per category of the target token.
EXCESS_TOTAL = r"^excess/([^/]+)/excess$"
EXCESS_CATEGORY = r"^excess/([^/]+)/cat/([^/]+)/excess$"


def excess_keys(keys: Iterable[str]) -> list[str]:
    """The overall and per-category excess-loss metrics among ``keys``: per split, the overall one first."""
    rx = re.compile(f"{EXCESS_TOTAL}|{EXCESS_CATEGORY}")
    total = re.compile(EXCESS_TOTAL)
    return sorted((k for k in keys if rx.search(k)), key=lambda k: (k.split("/")[1], not total.search(k), key_sort(k)))


_LOWER_BETTER = re.compile(r"(^excess/.*/(excess|kl)|/ppl|/bpb|/loss|word_ppl|len_w1|len_js|rep4|peak_mem_mb|peak_rss_mb"
                           r"|step_time_ms|wall_time_s)$")
_HIGHER_BETTER = re.compile(r"(uuas|left_arc|/acc|acc_dist_[^/]+|acc_attr_[^/]+|grammatical|valid_prefix"
                            r"|tokens_per_s|distinct_\d|mattr|recall_arc_[^/]+)$")


def better(key: str) -> str:
    """``↓`` lower is better, ``↑`` higher is better, ``""`` neither."""
    if is_bound(key):
        return ""
    if _LOWER_BETTER.search(key):
        return "↓"
    if _HIGHER_BETTER.search(key):
        return "↑"
    return ""
