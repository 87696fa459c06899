"""Figures over groups of runs (``{label: [Run, ...]}``), as matplotlib ``Figure`` objects without
pyplot, so the Agg command line and a notebook both use them. Each returns None when no run has
the data. The report draws :func:`fig_val_curves`, :func:`fig_alignment`,
:func:`fig_sentence_lengths`, :func:`fig_agreement`, :func:`fig_efficiency` (and :func:`fig_excess`
when runs have excess-loss metrics); the notebook adds :func:`fig_lexical`, :func:`fig_grammar` and
:func:`fig_arcs`."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from depenc.compare import stats
from depenc.compare.runs import Run
from depenc.compare.tables import MISSING
from depenc.metrics.alignment import MODEL_SOURCES, gold_edges

Groups = Mapping[str, Sequence[Run]]


def _new_figure(ncols: int = 1, nrows: int = 1, width: float = 5.5, height: float = 4.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _colors(labels: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {g: cmap(i % 10) for i, g in enumerate(labels)}


def _label(ax, title: str, xlabel: str, ylabel: str, legend: int | None = 8, grid: str = "both") -> None:
    """A panel's small title, axis labels, light grid and legend (``legend``: its font size; None: none)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, axis=grid)
    if legend is not None:
        ax.legend(fontsize=legend)


def _pooled(groups: Groups) -> list[Run]:
    return [r for rs in groups.values() for r in rs]


def _values(runs: Sequence[Run], key: str) -> list[float]:
    """The final values of ``key`` of the runs that have it, in run order (the dots of a figure)."""
    return [v for r in runs if (v := r.final(key)) is not None]


def _curves(runs: Sequence[Run], key: str) -> pd.DataFrame:
    """The runs' curves of a metric stacked: columns ``step``, ``value`` (one row per run and step)."""
    frames = []
    for r in runs:
        steps, values = r.curve(key)
        frames.append(pd.DataFrame({"step": steps, "value": values}))
    return pd.concat(frames)


def fig_val_curves(groups: Groups):
    """Validation perplexity against step: mean line and min/max band per group, one panel per set."""
    keys = stats.keys_matching(_pooled(groups), r"^val/[^/]+/ppl$", history=True)
    if not keys:
        return None
    colors = _colors(list(groups))
    fig, axes = _new_figure(ncols=min(len(keys), 3), nrows=math.ceil(len(keys) / 3))
    flat = axes.ravel()
    for ax, key in zip(flat, keys):
        lo_all, hi_all = [], []
        for g, rs in groups.items():
            by_step = _curves(rs, key).groupby("step")["value"].agg(["mean", "min", "max"])
            if by_step.empty:
                continue
            steps = by_step.index.to_numpy()
            n = len([r for r in rs if key in r.history])
            ax.plot(steps, by_step["mean"].to_numpy(), marker="o", ms=3, color=colors[g], label=f"{g} (n={n})")
            ax.fill_between(steps, by_step["min"].to_numpy(), by_step["max"].to_numpy(), color=colors[g],
                            alpha=0.2, linewidth=0)
            lo_all.append(by_step["min"].min())
            hi_all.append(by_step["max"].max())
        if lo_all and min(lo_all) > 0 and max(hi_all) / min(lo_all) > 10:
            ax.set_yscale("log")
        _label(ax, f"{key.split('/')[1]}: perplexity (mean, band = min–max over seeds)", "step", "perplexity")
    for ax in flat[len(keys):]:
        ax.set_visible(False)
    return fig


def _bucket_series(summary: Mapping, group: str, prefix: str, labels: Sequence[str]) -> tuple[np.ndarray, ...]:
    """Mean, min, max of ``<prefix><label>`` per label in a :func:`stats.summarize` result (NaN where absent)."""
    absent = {"mean": np.nan, "min": np.nan, "max": np.nan}
    cells = [summary.get((prefix + label, group), absent) for label in labels]
    return tuple(np.asarray([c[s] for c in cells], dtype=np.float64) for s in ("mean", "min", "max"))


def _means(summary: Mapping, group: str, keys: Sequence[str]) -> np.ndarray:
    """The group's mean of each key in a :func:`stats.summarize` result (NaN where absent)."""
    return np.asarray([summary.get((k, group), {}).get("mean", np.nan) for k in keys], dtype=np.float64)


def _alignment_buckets(runs: Iterable[Run]) -> dict[str, dict[str, set]]:
    """``{treebank: {"uuas_len" | "recall_arc": {bucket label, ...}}}`` of the runs' align/ metrics."""
    rx = re.compile(r"^align/([^/]+)/([^/]+)/(uuas_len|recall_arc)_(.+)$")
    found: dict[str, dict[str, set]] = {}
    for r in runs:
        for k in r.metric_keys():
            m = rx.match(k)
            if m:
                found.setdefault(m.group(1), {}).setdefault(m.group(3), set()).add(m.group(4))
    return found


_SOURCE_STYLES = {"parser": ("o", "-"), "attn_mean": ("s", "--"), "attn_best": ("^", "-.")}
_REFERENCE_STYLES = {"chain": ("0.35", ":"), "random": ("0.6", "--")}


def fig_alignment(groups: Groups):
    """UUAS by sentence-length bucket and recall by arc-length bucket per treebank: model sources per
    group (mean over seeds, bars = min–max), chain and random references (grey, pooled over runs)."""
    found = _alignment_buckets(_pooled(groups))
    if not found:
        return None
    summary = stats.summarize(groups)
    pooled = stats.summarize({"": _pooled(groups)})
    colors = _colors(list(groups))
    treebanks = sorted(found)
    fig, axes = _new_figure(ncols=2, nrows=len(treebanks), width=6.0, height=4.2)
    n_series = len(groups) * len(MODEL_SOURCES)
    for row, tb in enumerate(treebanks):
        for col, (kind, title, xlabel) in enumerate((
            ("uuas_len", "UUAS by sentence length", "sentence length (words)"),
            ("recall_arc", "recall by arc length", "arc length (words)"),
        )):
            ax = axes[row, col]
            labels = sorted(found[tb].get(kind, ()), key=stats.bucket_key)
            if not labels:
                ax.set_visible(False)
                continue
            x = np.arange(len(labels), dtype=np.float64)
            width = 0.5 / max(1, n_series)
            i = 0
            for g in groups:
                for src in MODEL_SOURCES:
                    mean, lo, hi = _bucket_series(summary, g, f"align/{tb}/{src}/{kind}_", labels)
                    if np.all(np.isnan(mean)):
                        continue
                    off = (i - n_series / 2) * width
                    i += 1
                    marker, ls = _SOURCE_STYLES[src]
                    ax.errorbar(x + off, mean, yerr=[mean - lo, hi - mean], marker=marker, ls=ls, ms=4,
                                color=colors[g], capsize=2, label=f"{g} · {src}")
            for src, (color, ls) in _REFERENCE_STYLES.items():
                mean, _, _ = _bucket_series(pooled, "", f"align/{tb}/{src}/{kind}_", labels)
                if not np.all(np.isnan(mean)):
                    ax.plot(x, mean, color=color, ls=ls, lw=1.5, label=f"{src} (reference)")
            ax.set_xticks(x, labels)
            ax.set_ylim(-0.02, 1.02)
            _label(ax, f"{tb}: {title}", xlabel, "UUAS" if kind == "uuas_len" else "recall", legend=7)
    return fig


def generated_lengths(runs: Sequence[Run]) -> list[int]:
    """Sentence lengths of the last step's samples of every run (pooled)."""
    from depenc.metrics.text import sentence_lengths

    return [n for r in runs for n in sentence_lengths(s.get("text", "") for s in r.samples())]


def reference_shares(runs: Sequence[Run]) -> dict[int, float]:
    """Reference length shares, averaged over the runs that stored them (0 where a run lacks a length)."""
    tables = [t for r in runs if (t := r.reference_lengths())]
    if not tables:
        return {}
    lengths = sorted({k for t in tables for k in t})
    return {k: float(np.mean([t.get(k, 0.0) for t in tables])) for k in lengths}


def fig_sentence_lengths(groups: Groups):
    """Sentence-length distribution of generated text (last step, pooled over seeds) against the
    reference; without samples, the Wasserstein-1 distance gen/len_w1 per group."""
    colors = _colors(list(groups))
    gen = {g: generated_lengths(rs) for g, rs in groups.items()}
    ref = reference_shares(_pooled(groups))
    if not any(gen.values()):
        if not _values(_pooled(groups), "gen/len_w1"):
            return None
        return _bar_panels(groups, [("gen/len_w1", "Wasserstein-1 of sentence lengths vs reference (gen/len_w1)")])
    fig, axes = _new_figure(width=7.0)
    ax = axes[0, 0]
    top = max([max(v) for v in gen.values() if v] + ([max(ref)] if ref else []))
    edges = np.arange(0, top + 2) + 0.5
    if ref:
        xs = np.asarray(sorted(ref))
        ys = np.asarray([ref[x] for x in xs])
        ax.fill_between(xs, ys, step="mid", color="0.75", alpha=0.7,
                        label=f"reference (mean {np.sum(xs * ys) / max(ys.sum(), 1e-12):.1f})")
    for g, lengths in gen.items():
        if not lengths:
            continue
        counts, _ = np.histogram(lengths, bins=edges)
        centers = (edges[:-1] + edges[1:]) / 2
        ax.step(centers, counts / counts.sum(), where="mid", color=colors[g], lw=1.6,
                label=f"{g} (mean {np.mean(lengths):.1f}, {len(lengths)} sentences)")
    _label(ax, "sentence lengths: generated (last evaluation) vs reference",
           "sentence length (words, final punctuation included)", "share of sentences")
    return fig


def _agreement_buckets(runs: Iterable[Run]) -> dict[str, set]:
    """``{split: {distance bucket label, ...}}`` of the runs' agree/<split>/acc_dist_<bucket> metrics."""
    rx = re.compile(r"^agree/([^/]+)/acc_dist_(.+)$")
    found: dict[str, set] = {}
    for r in runs:
        for k in r.metric_keys():
            m = rx.match(k)
            if m and not stats.is_bound(k):
                found.setdefault(m.group(1), set()).add(m.group(2))
    return found


def fig_agreement(groups: Groups):
    """Agreement accuracy by subject-verb distance per split: mean over seeds, error bars = the
    runs' 95% bootstrap CI (mean of the bounds), dots = single seeds."""
    found = _agreement_buckets(_pooled(groups))
    if not found:
        return None
    summary = stats.summarize(groups)
    colors = _colors(list(groups))
    splits = sorted(found)
    fig, axes = _new_figure(ncols=len(splits), width=5.0)
    for ax, split in zip(axes.ravel(), splits):
        labels = sorted(found[split], key=stats.bucket_key)
        x = np.arange(len(labels), dtype=np.float64)
        width = 0.6 / max(1, len(groups))
        for i, (g, rs) in enumerate(groups.items()):
            off = (i - (len(groups) - 1) / 2) * width
            keys = [f"agree/{split}/acc_dist_{b}" for b in labels]
            means = _means(summary, g, keys)
            los, his = _means(summary, g, [k + "_lo" for k in keys]), _means(summary, g, [k + "_hi" for k in keys])
            for j, key in enumerate(keys):
                values = _values(rs, key)
                if len(values) > 1:
                    ax.scatter(np.full(len(values), x[j] + off), values, s=9, color=colors[g], alpha=0.5, zorder=3)
            if np.all(np.isnan(means)):
                continue
            yerr = np.vstack([np.clip(means - los, 0, None), np.clip(his - means, 0, None)])
            yerr = np.nan_to_num(yerr)
            ax.errorbar(x + off, means, yerr=yerr, fmt="o", ms=5, capsize=3, color=colors[g],
                        label=f"{g} (n={len(_values(rs, f'agree/{split}/acc'))})")
        ax.axhline(0.5, color="0.5", ls=":", lw=1, label="chance")
        ax.set_xticks(x, labels)
        ax.set_ylim(-0.02, 1.02)
        _label(ax, f"{split}: accuracy by distance (95% bootstrap CI)", "words between subject and verb",
               "agreement accuracy")
    return fig


def _bar_panels(groups: Groups, panels: Sequence[tuple[str, str]]):
    """One bar panel per metric: mean per group, min–max error bar, dots = single runs, ``—`` = absent."""
    summary = stats.summarize(groups, [key for key, _ in panels])
    colors = _colors(list(groups))
    fig, axes = _new_figure(ncols=len(panels), width=4.8)
    for ax, (key, title) in zip(axes.ravel(), panels):
        x = np.arange(len(groups), dtype=np.float64)
        for i, (g, rs) in enumerate(groups.items()):
            st = summary.get((key, g))
            if st is None:
                ax.text(x[i], 0, MISSING, ha="center", va="bottom", fontsize=12)
                continue
            ax.bar(x[i], st["mean"], color=colors[g], alpha=0.8, width=0.6)
            ax.errorbar(x[i], st["mean"], yerr=[[st["mean"] - st["min"]], [st["max"] - st["mean"]]], color="k",
                        capsize=4)
            ax.scatter(np.full(st["n"], x[i]), _values(rs, key), s=12, color="k", zorder=3)
        ax.set_xticks(x, list(groups), rotation=15, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    return fig


def _present_panels(groups: Groups, panels: Sequence[tuple[str, str]]):
    """:func:`_bar_panels` of the panels some run has a value for (None if none)."""
    runs = _pooled(groups)
    panels = [(k, t) for k, t in panels if _values(runs, k)]
    return _bar_panels(groups, panels) if panels else None


def fig_efficiency(groups: Groups):
    """Throughput and peak memory per group (whole-run averages from summary.json)."""
    return _present_panels(groups, [("perf/tokens_per_s", "training throughput (tokens/s)"),
                                    ("perf/peak_mem_mb", "peak memory (MiB)")])


def fig_lexical(groups: Groups):
    """Lexical variation of the generated text (final logged gen/* values)."""
    return _present_panels(groups, [("gen/distinct_1", "distinct-1"), ("gen/distinct_2", "distinct-2"),
                                    ("gen/mattr", "MATTR"), ("gen/rep4", "repeated 4-grams")])


def fig_excess(groups: Groups):
    """Excess loss over the exact optimum per category of the target token (nats/token), one panel
    per split: mean over seeds per group, error bars = min–max."""
    summary = stats.summarize(groups, stats.excess_keys(stats.all_keys(_pooled(groups))))
    by_split: dict[str, list[str]] = {}
    for metric, _ in summary:
        m = re.match(stats.EXCESS_CATEGORY, metric)
        if m and m.group(2) not in by_split.setdefault(m.group(1), []):
            by_split[m.group(1)].append(m.group(2))
    if not by_split:
        return None
    colors = _colors(list(groups))
    fig, axes = _new_figure(ncols=len(by_split), width=6.0)
    for ax, (split, cats) in zip(axes.ravel(), sorted(by_split.items())):
        x = np.arange(len(cats), dtype=np.float64)
        width = 0.8 / max(1, len(groups))
        for i, g in enumerate(groups):
            mean, lo, hi = _bucket_series(summary, g, f"excess/{split}/cat/", [f"{c}/excess" for c in cats])
            off = (i - (len(groups) - 1) / 2) * width
            ax.bar(x + off, np.nan_to_num(mean), width=width, color=colors[g], alpha=0.8, label=g)
            ax.errorbar(x + off, mean, yerr=np.nan_to_num([mean - lo, hi - mean]), fmt="none", color="k", capsize=2)
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set_xticks(x, cats, rotation=30, ha="right", fontsize=8)
        _label(ax, f"{split}: excess over the exact optimum by target category", "category of the target token",
               "excess loss (nats/token)", grid="y")
    return fig


# ---- notebook figures ----------------------------------------------------------------------


def first_invalid_positions(run: Run) -> list[int]:
    """Where the first invalid token falls in each generated sentence of the last samples (synthetic grammar)."""
    return [int(x["first_invalid"]) for s in run.samples() for x in s.get("sentences") or []
            if x.get("first_invalid") is not None]


def fig_grammar(runs: Sequence[Run]):
    """Synthetic grammar: gen/grammatical (solid) and gen/valid_prefix (dashed) against step, and
    where the first invalid token falls in the last samples' sentences."""
    have = [r for r in runs if "gen/grammatical" in r.history or first_invalid_positions(r)]
    if not have:
        return None
    colors = _colors([r.label or r.name for r in runs])
    fig, axes = _new_figure(ncols=2, width=5.5)
    ax, ax2 = axes[0]
    for r in have:
        c = colors[r.label or r.name]
        for key, ls in (("gen/grammatical", "-"), ("gen/valid_prefix", "--")):
            s, v = r.curve(key)
            if len(s):
                ax.plot(s, v, ls=ls, marker="o", ms=3, color=c, label=f"{r.label or r.name}: {key.split('/')[1]}")
        pos = first_invalid_positions(r)
        if pos:
            edges = np.arange(0, max(pos) + 2) - 0.5
            counts, _ = np.histogram(pos, bins=edges)
            ax2.step(np.arange(len(counts)), counts, where="mid", color=c, label=f"{r.label or r.name} ({len(pos)})")
    ax.set_ylim(-0.02, 1.02)
    _label(ax, "grammatical (solid) / every prefix valid (dashed)", "step", "share of generated sentences", legend=7)
    drew_positions = bool(ax2.get_legend_handles_labels()[0])
    _label(ax2, "first invalid token (last evaluation)", "position of the first invalid token in its sentence (0-based)",
           "sentences", legend=7 if drew_positions else None)
    return fig


def draw_arcs(ax, words: Sequence[str], gold: Iterable[Sequence[int]], pred: Iterable[Sequence[int]] | None = None,
              title: str = "") -> None:
    """Gold arcs above the words (black), predicted arcs below them (green: in the gold tree, red: not).
    Edges are 0-based word index pairs."""
    from matplotlib.patches import Arc

    gold = {(min(a, b), max(a, b)) for a, b in gold}
    pred = {(min(a, b), max(a, b)) for a, b in (pred or [])}
    n = len(words)
    top = max([b - a for a, b in gold | pred] + [1])
    for i, w in enumerate(words):
        ax.text(i, 0, w, ha="center", va="center", fontsize=8, rotation=0,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "0.8", "lw": 0.5})
    for a, b in gold:
        ax.add_patch(Arc(((a + b) / 2, 0.25), b - a, (b - a) * 0.6, theta1=0, theta2=180, color="k", lw=1.2))
    for a, b in pred:
        ok = (a, b) in gold
        ax.add_patch(Arc(((a + b) / 2, -0.25), b - a, (b - a) * 0.6, theta1=180, theta2=360,
                         color="tab:green" if ok else "tab:red", lw=1.2))
    ax.set_xlim(-0.7, n - 0.3)
    ax.set_ylim(-top * 0.3 - 0.6, top * 0.3 + 0.6)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)


def _arc_examples(runs: Sequence[Run], n_examples: int, treebank: str | None) -> list[tuple]:
    """(run, treebank, step, examples) per run whose last alignment file kept example sentences."""
    cols = []
    for r in runs:
        al = r.alignment() or {}
        tbs = al.get("treebanks") or {}
        name = treebank if treebank in tbs else next((t for t in tbs if tbs[t].get("examples")), None)
        examples = (tbs[name].get("examples") or []) if name is not None else []
        if examples:
            cols.append((r, name, al.get("step"), examples[:n_examples]))
    return cols


#: Whose tree :func:`fig_arcs` draws: DepEnc's parser, else the best attention head, else the mean.
ARC_SOURCES = ("parser", "attn_best", "attn_mean")


def fig_arcs(runs: Sequence[Run], n_examples: int = 3, treebank: str | None = None):
    """Gold (above) and predicted (below) arcs of the first sentences kept in each run's last
    alignment/<step>.json: one column per run, the edges of the first of :data:`ARC_SOURCES` it has."""
    cols = _arc_examples(runs, n_examples, treebank)
    if not cols:
        return None
    rows = max(len(c[3]) for c in cols)
    longest = max(len(ex["words"]) for c in cols for ex in c[3])
    fig, axes = _new_figure(ncols=len(cols), nrows=rows, width=max(5.0, 0.55 * longest), height=2.6)
    for j, (r, name, step, examples) in enumerate(cols):
        for i in range(rows):
            ax = axes[i, j]
            if i >= len(examples):
                ax.set_visible(False)
                continue
            ex = examples[i]
            pred = ex.get("pred") or {}
            src = next((s for s in ARC_SOURCES if s in pred), None)
            gold = sorted(gold_edges(ex["heads"]))
            edges = pred.get(src, []) if src else []
            hits = len({(min(a, b), max(a, b)) for a, b in edges} & set(gold))
            title = f"{r.label or r.name} · {name} #{ex.get('index', i)} · {src or 'no prediction'}"
            if src:
                title += f": {hits}/{len(gold)} gold arcs (step {step})"
            draw_arcs(ax, ex["words"], gold, edges, title)
    return fig
