"""Tables as header + rows of strings (numbers formatted, ``—`` for an absent value), and their
Markdown and HTML forms: the runs, the final metrics per group with the difference to the baseline,
the excess loss over the exact optimum; for the notebook, lexical variation, grammaticality and
generations side by side."""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from depenc.compare import stats
from depenc.compare.runs import Run, finite

MISSING = "—"
Groups = Mapping[str, Sequence[Run]]


def fmt_num(x: float | None, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return MISSING
    sign = "+" if signed else ""
    a = abs(x)
    if a == 0:
        return f"{x:{sign}.0f}" if not signed else "±0"
    if a >= 1e4 or float(x).is_integer() and a >= 100:
        return f"{x:{sign},.0f}"
    if a >= 100:
        return f"{x:{sign}.1f}"
    if a >= 1:
        return f"{x:{sign}.3f}"
    if a >= 1e-3:
        return f"{x:{sign}.4f}"
    return f"{x:{sign}.2e}"


def fmt_stat(stat: Mapping | None, num: Callable[[float], str] = fmt_num) -> str:
    """``mean ± std (n=k)``; ``mean (n=1)``; ``—`` when absent (``stat``: one :func:`stats.summarize`
    value; ``num`` formats a number)."""
    if stat is None:
        return MISSING
    if stat["n"] == 1:
        return f"{num(stat['mean'])} (n=1)"
    return f"{num(stat['mean'])} ± {num(stat['std'])} (n={stat['n']})"


def fmt_delta(stat: Mapping | None, base: Mapping | None) -> str:
    """Group mean minus baseline mean, with the relative difference in brackets."""
    if stat is None or base is None:
        return MISSING
    d = stat["mean"] - base["mean"]
    rel = f" ({100 * d / abs(base['mean']):+.1f}%)" if base["mean"] != 0 else ""
    return f"{fmt_num(d, signed=True)}{rel}"


def fmt_removed(stat: Mapping | None, base: Mapping | None) -> str:
    """The share of the baseline's (positive) excess that a group removes: 1 − group mean / baseline mean."""
    if stat is None or base is None or base["mean"] <= 0:
        return MISSING
    return f"{100 * (1 - stat['mean'] / base['mean']):.1f}%"


def md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(x: str) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(head: Sequence[str], rows: Sequence[Sequence[str]], table_id: str) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>'


# ---- the report's tables -------------------------------------------------------------------


def _group_heads(groups: Groups, baseline: str | None) -> list[str]:
    return [f"{g} (baseline)" if g == baseline else g for g in groups]


def metric_header(groups: Groups, baseline: str | None) -> list[str]:
    head = ["metric", ""] + _group_heads(groups, baseline)
    if baseline is not None:
        head += [f"Δ {g} − {baseline}" for g in groups if g != baseline]
    return head


def metric_rows(groups: Groups, keys: Sequence[str], baseline: str | None) -> list[list[str]]:
    """Rows ``[metric, better, <group cells>..., <delta cells>...]`` (see :func:`metric_header`)."""
    summary = stats.summarize(groups, keys)
    rows = []
    for key in keys:
        cells = {g: summary.get((key, g)) for g in groups}
        row = [key, stats.better(key)] + [fmt_stat(cells[g]) for g in groups]
        if baseline is not None:
            row += [fmt_delta(cells[g], cells[baseline]) for g in groups if g != baseline]
        rows.append(row)
    return rows


def run_rows(groups: Groups) -> tuple[list[str], list[list[str]]]:
    head = ["group", "run", "seed", "model.kind", "data.source", "steps", "wall time (s)", "status", "folder"]
    rows = []
    for g, runs in groups.items():
        for r in runs:
            steps = r.final("global_step")
            rows.append([g, r.run_id, MISSING if r.seed is None else str(r.seed), r.kind or MISSING,
                         r.source or MISSING, MISSING if steps is None else str(int(steps)),
                         fmt_num(r.final("wall_time_s")), "finished" if r.complete else "unfinished",
                         str(r.path)])
    return head, rows


def excess_table(groups: Groups, baseline: str | None) -> tuple[list[str], list[list[str]]] | None:
    """Excess loss over the exact optimum (nats/token), overall and per category of the target
    token, per group; with a baseline, the share of its excess each other group removes (from the
    group means). None when no run has ``excess/<split>/...`` metrics."""
    keys = stats.excess_keys(stats.all_keys(r for rs in groups.values() for r in rs))
    if not keys:
        return None
    summary = stats.summarize(groups, keys)
    head = ["excess (nats/token)"] + _group_heads(groups, baseline)
    if baseline is not None:
        head += [f"{g}: share of the baseline's excess removed" for g in groups if g != baseline]
    rows = []
    for key in keys:
        cells = {g: summary.get((key, g)) for g in groups}
        row = [key] + [fmt_stat(cells[g]) for g in groups]
        if baseline is not None:
            row += [fmt_removed(cells[g], cells[baseline]) for g in groups if g != baseline]
        rows.append(row)
    return head, rows


# ---- the notebook's tables -----------------------------------------------------------------


def lexical_table(runs: Sequence[Run]) -> tuple[list[str], list[list[str]]]:
    """Lexical variation of each run's last samples (recomputed) next to the logged values."""
    from depenc.metrics.text import text_statistics

    keys = ["distinct_1", "distinct_2", "distinct_3", "mattr", "rep4", "mean_sent_len"]
    head = ["run", "n samples", *keys]
    rows = []
    for r in runs:
        texts = [s.get("text", "") for s in r.samples()]
        st = text_statistics(texts) if texts else {}
        rows.append([r.label or r.name, str(len(texts)), *[fmt_num(finite(st.get(k))) for k in keys]])
    return head, rows


def grammar_table(runs: Sequence[Run]) -> tuple[list[str], list[list[str]]]:
    """Grammaticality of the last samples (synthetic grammar verdicts stored with the samples)."""
    head = ["run", "sentences", "grammatical", "valid prefix", "mean first invalid pos", "logged gen/grammatical"]
    rows = []
    for r in runs:
        sents = [x for s in r.samples() for x in s.get("sentences") or []]
        if not sents:
            rows.append([r.label or r.name, "0", MISSING, MISSING, MISSING, fmt_num(r.final("gen/grammatical"))])
            continue
        bad = [x["first_invalid"] for x in sents if x.get("first_invalid") is not None]
        rows.append([
            r.label or r.name, str(len(sents)),
            fmt_num(float(np.mean([bool(x.get("accepted")) for x in sents]))),
            fmt_num(float(np.mean([x.get("first_invalid") is None for x in sents]))),
            fmt_num(float(np.mean(bad)) if bad else None),
            fmt_num(r.final("gen/grammatical")),
        ])
    return head, rows


def highlight_sample(sample: Mapping[str, Any]) -> str:
    """HTML of a sample's text with its first invalid token (synthetic grammar) marked."""
    words = str(sample.get("text", "")).split()
    fi = sample.get("first_invalid")
    parts = []
    for i, w in enumerate(words):
        w = html.escape(w)
        parts.append(f'<b style="color:#c00">{w}</b>' if fi is not None and i == fi else w)
    mark = "" if sample.get("grammatical") is None else (" ✓" if sample.get("grammatical") else " ✗")
    return " ".join(parts) + mark


def samples_side_by_side(runs: Sequence[Run], n: int = 5) -> str:
    """HTML table: the first ``n`` samples of each run's last evaluation, one column per run."""
    cols = [r.samples() for r in runs]
    head = "".join(f"<th>{html.escape(r.label or r.name)}</th>" for r in runs)
    body = []
    for i in range(n):
        cells = "".join(f"<td style='text-align:left;vertical-align:top'>{highlight_sample(c[i]) if i < len(c) else MISSING}</td>"
                        for c in cols)
        body.append(f"<tr><td>{i}</td>{cells}</tr>")
    return f"<table><tr><th>#</th>{head}</tr>{''.join(body)}</table>"

