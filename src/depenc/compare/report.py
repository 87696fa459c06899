"""The comparison report: :func:`build_report` writes ``index.html`` (self-contained: figures as
base64 PNG data URIs, nothing fetched, so it opens offline), ``summary.md`` (the same tables, figures
linked as the PNG files next to it), the PNGs and ``aggregate.csv`` (every final metric per group:
n, mean, std, min, max, difference to the baseline)."""

from __future__ import annotations

import base64
import html
import io
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from depenc.compare import figures, stats
from depenc.compare.runs import Run, choose_baseline, group_runs
from depenc.compare.tables import (
    MISSING,
    excess_table,
    html_table,
    md_table,
    metric_header,
    metric_rows,
    run_rows,
)

Table = tuple[list[str], list[list[str]]]

#: (file name, figure function over the groups, caption); a figure no run has data for is noted as absent.
FIGURES: list[tuple[str, Callable, str]] = [
    ("val_ppl", figures.fig_val_curves, "Validation perplexity against step: mean over seeds, band = min–max."),
    ("alignment", figures.fig_alignment, ("UUAS by sentence-length bucket and recall by arc length (final "
                                          "evaluation); error bars = min–max over seeds; chain and random trees "
                                          "as references.")),
    ("sentence_lengths", figures.fig_sentence_lengths, ("Sentence lengths of generated text (last evaluation, "
                                                        "pooled over seeds) against the reference text.")),
    ("agreement", figures.fig_agreement, ("Subject-verb agreement accuracy by distance: mean over seeds, error "
                                          "bars = 95% bootstrap CI of the runs (mean of the bounds), dots = "
                                          "single seeds.")),
    ("efficiency", figures.fig_efficiency, "Throughput and peak memory (whole-run averages): mean, min–max, dots = runs."),
]
#: Figures drawn only when runs have their metrics (no absent note otherwise).
OPTIONAL_FIGURES: list[tuple[str, Callable, str]] = [
    ("excess", figures.fig_excess, ("Excess loss over the grammar's exact optimum by category of the target "
                                    "token (nats/token): mean over seeds, error bars = min–max.")),
]
EXCESS_NOTE = ("Excess = the model's NLL minus the exact optimum's on the same sentences (nats/token); "
               "share removed = 1 − group mean / baseline mean.")

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto; padding: 0 1.5em; max-width: 1500px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 13px; color: #555; } .note { color: #555; font-size: 13px; }
"""

# Counts the images that decoded (complete && naturalWidth > 0) once the page has loaded:
# <body data-images-loaded="N" data-images-total="M"> (checked by tests/test_compare.py).
IMAGES_SCRIPT = """
<script>
function depencCountImages() {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  document.body.dataset.imagesLoaded = ok;
  document.body.dataset.imagesTotal = imgs.length;
}
window.addEventListener('load', depencCountImages);
</script>
"""


@dataclass
class Report:
    index: Path
    summary_md: Path
    groups: dict[str, list[Run]]
    baseline: str | None


@dataclass
class _Figure:
    name: str
    caption: str
    png: bytes


@dataclass
class _Page:
    """What both summary.md and index.html show."""

    title: str
    intro: str
    base_note: str
    runs: Table
    metrics: Table
    all_metrics: Table
    excess: Table | None
    figures: list[_Figure]
    absent: list[str]  # names of the figures no run has the data for


def _png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _draw_figures(groups: dict[str, list[Run]]) -> tuple[list[_Figure], list[str]]:
    optional = {name for name, _, _ in OPTIONAL_FIGURES}
    drawn, absent = [], []
    for name, fn, caption in FIGURES + OPTIONAL_FIGURES:
        fig = fn(groups)
        if fig is not None:
            drawn.append(_Figure(name, caption, _png_bytes(fig)))
        elif name not in optional:
            absent.append(name)
    return drawn, absent


def write_aggregate(groups: dict[str, list[Run]], keys: Sequence[str], baseline: str | None, path: Path) -> None:
    """aggregate.csv: one row per (metric, group) with a value, metrics in ``keys`` order."""
    table = stats.aggregate(stats.final_values(groups, keys))
    table = table.reindex([(k, g) for k in keys for g in groups if (k, g) in table.index])
    table["diff_vs_baseline"] = stats.diff_to_baseline(table, baseline) if baseline else float("nan")
    # "\r\n": the csv module's line ending, which the file has always had
    table.reset_index().to_csv(path, index=False, lineterminator="\r\n")


def _markdown(page: _Page) -> str:
    md = [f"# {page.title}", "", page.intro, "", page.base_note, "", "## Runs", "", md_table(*page.runs), "",
          "## Final metrics", "", md_table(*page.metrics), ""]
    if page.excess is not None:
        md += ["## Excess loss over the exact optimum", "", EXCESS_NOTE, "", md_table(*page.excess), ""]
    md += ["## Figures", ""]
    for f in page.figures:
        md += [f"![{f.name}]({f.name}.png)", "", f"*{f.caption}*", ""]
    for name in page.absent:
        md += [f"- {name}: no run has the data for this figure ({MISSING}).", ""]
    md += ["## All final metrics", "", md_table(*page.all_metrics), ""]
    return "\n".join(md)


def _md_inline(text: str) -> str:
    """HTML of one line of the report's Markdown: escaped, ``**bold**`` kept."""
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))


def _html(page: _Page) -> str:
    title = html.escape(page.title)
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{title}</title><style>{CSS}</style></head><body>",
        f"<h1>{title}</h1>", f'<p class="note">{_md_inline(page.intro)}</p>', f"<p>{_md_inline(page.base_note)}</p>",
        "<h2>Runs</h2>", html_table(*page.runs, "runs"),
        "<h2>Final metrics</h2>", html_table(*page.metrics, "metrics"),
    ]
    if page.excess is not None:
        parts += ["<h2>Excess loss over the exact optimum</h2>", f'<p class="note">{html.escape(EXCESS_NOTE)}</p>',
                  html_table(*page.excess, "excess")]
    parts.append("<h2>Figures</h2>")
    for f in page.figures:
        uri = "data:image/png;base64," + base64.b64encode(f.png).decode("ascii")
        parts.append(f'<figure id="fig-{f.name}"><img src="{uri}" alt="{html.escape(f.name)}">'
                     f"<figcaption>{html.escape(f.caption)} ({html.escape(f.name)}.png)</figcaption></figure>")
    for name in page.absent:
        parts.append(f'<p class="note">{html.escape(name)}: no run has the data for this figure ({MISSING}).</p>')
    parts += ["<details><summary>All final metrics</summary>", html_table(*page.all_metrics, "all-metrics"),
              "</details>", IMAGES_SCRIPT, "</body></html>"]
    return "\n".join(parts)


def build_report(runs: Sequence[Run], out_dir: str | os.PathLike, title: str = "depenc comparison",
                 baseline: str | None = None) -> Report:
    """Write index.html, summary.md, aggregate.csv and the PNG figures into ``out_dir``."""
    groups = group_runs(runs)
    base, base_note = choose_baseline(groups, baseline)  # before writing anything: may raise CompareError
    if base is not None:  # baseline first
        groups = {base: groups[base], **{g: rs for g, rs in groups.items() if g != base}}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keys = stats.all_keys(runs)
    drawn, absent = _draw_figures(groups)
    for f in drawn:
        (out / f"{f.name}.png").write_bytes(f.png)
    write_aggregate(groups, keys, base, out / "aggregate.csv")

    counts = ", ".join(f"{g}: n={len(rs)}" for g, rs in groups.items())
    intro = (f"{len(runs)} runs in {len(groups)} groups ({counts}); generated {datetime.now():%Y-%m-%d %H:%M}. "
             f"Values are final metrics (summary.json): mean ± sample standard deviation over seeds, n = runs "
             f"with the metric; {MISSING} = absent. Δ = group mean − baseline mean (relative in brackets); "
             f"↓/↑ = lower/higher is better.")
    m_head = metric_header(groups, base)
    page = _Page(title=title, intro=intro, base_note=base_note, runs=run_rows(groups),
                 metrics=(m_head, metric_rows(groups, stats.headline_keys(keys), base)),
                 all_metrics=(m_head, metric_rows(groups, keys, base)), excess=excess_table(groups, base),
                 figures=drawn, absent=absent)
    summary_md, index = out / "summary.md", out / "index.html"
    summary_md.write_text(_markdown(page), encoding="utf-8")
    index.write_text(_html(page), encoding="utf-8")
    return Report(index, summary_md, groups, base)
