"""Compare runs: ``python -m depenc.compare [--exps A B ...] [--runs DIR ...] [--name NAME] [--root runs] [--out reports]``.

Writes ``<out>/<name>/``:

* ``index.html``: self-contained report (figures embedded as base64 PNG data URIs; no network);
* ``summary.md``: the same tables in Markdown, figures linked as the PNG files next to it;
* ``*.png``: validation perplexity against step, UUAS by sentence length and recall by arc length
  (chain / random references), sentence lengths of generated text against the reference, agreement
  accuracy by distance, throughput and peak memory;
* ``aggregate.csv``: every final metric per group (n, mean, std, min, max, difference to the baseline).

Runs are grouped by experiment (``exp``; an experiment whose runs have different ``model.kind``
is split per kind), so seeds aggregate: each group shows mean ± sample standard deviation (ddof=1)
over its runs, with ``n`` = the number of runs that have the metric. A metric a run lacks is absent
(``—``), never zero. The baseline is the group whose ``model.kind`` is ``baseline_matched``, else
``baseline`` (``--baseline LABEL`` picks another); differences are group mean minus baseline mean.

``--exps``: the finished runs (with ``summary.json``) of each experiment under ``--root``, the latest
run per seed (``--all-runs`` keeps reruns of a seed too). ``--runs``: the given run folders (or
experiment folders: all runs in them), finished or not.

The loading helpers (:func:`load_run` -> :class:`Run`, :func:`resolve_run_dirs`, the plotting
functions) are shared with ``notebooks/01-analyze-generations.ipynb``.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
MISSING = "—"
MODEL_SOURCES = ("parser", "attn_mean", "attn_best")
REFERENCE_SOURCES = ("chain", "random")
BASELINE_KINDS = ("baseline_matched", "baseline")
DEFAULT_NOTEBOOK_EXPS = ("depenc_small", "baseline_matched_small")
NOTEBOOK_ENV = "DEPENC_NOTEBOOK_RUNS"

__all__ = [
    "CompareError",
    "Run",
    "Stat",
    "aggregate",
    "build_report",
    "choose_baseline",
    "draw_arcs",
    "find_runs",
    "group_runs",
    "latest_run",
    "load_run",
    "resolve_run_dirs",
    "select_runs",
]


class CompareError(Exception):
    """A problem the user can fix (no runs found, a folder that is not a run); exit code 2."""


# --------------------------------------------------------------------------------------------
# one run folder


def _finite(value: Any) -> float | None:
    """``value`` as a finite float, else None (None, NaN, inf, strings, bools count as absent)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_history(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """metrics.csv -> ``{metric: (steps, values)}`` with the rows where the metric has a value."""
    cols: dict[str, tuple[list[float], list[float]]] = {}
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = _finite(row.get("step"))
            for key, raw in row.items():
                if not key or key in ("step", "epoch") or raw in (None, ""):
                    continue
                value = _finite(raw)
                if value is None:
                    continue
                steps, values = cols.setdefault(key, ([], []))
                steps.append(step if step is not None else float(len(steps)))
                values.append(value)
    return {k: (np.asarray(s, dtype=np.float64), np.asarray(v, dtype=np.float64)) for k, (s, v) in cols.items()}


def _numbered_files(folder: Path, suffix: str) -> dict[int, Path]:
    """``{step: path}`` of ``folder/<step><suffix>`` files."""
    out: dict[int, Path] = {}
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.endswith(suffix) and p.name[: -len(suffix)].isdigit():
                out[int(p.name[: -len(suffix)])] = p
    return out


@dataclass
class Run:
    """A loaded run folder: resolved config, run.json, summary.json and metrics.csv history.

    The per-step files (alignment/, samples/, agreement/) are read on demand; ``step=None`` means
    the last step that has the file."""

    path: Path
    config: dict
    info: dict
    summary: dict
    history: dict[str, tuple[np.ndarray, np.ndarray]] = field(repr=False)
    label: str = ""  # group label (set by group_runs)

    # identity -----------------------------------------------------------------------------------
    @property
    def exp(self) -> str:
        return str(self.config.get("exp") or self.info.get("exp") or self.path.parent.name)

    @property
    def run_id(self) -> str:
        return str(self.info.get("run_id") or self.path.name)

    @property
    def name(self) -> str:
        return f"{self.exp}/{self.run_id}"

    @property
    def seed(self) -> int | None:
        seed = self.config.get("seed")
        return int(seed) if isinstance(seed, (int, float)) and not isinstance(seed, bool) else None

    @property
    def kind(self) -> str | None:
        return (self.config.get("model") or {}).get("kind")

    @property
    def source(self) -> str | None:
        return (self.config.get("data") or {}).get("source")

    @property
    def complete(self) -> bool:
        return (self.path / "summary.json").is_file()

    @property
    def started(self) -> float:
        return _started(self.path)

    # metrics ------------------------------------------------------------------------------------
    def final(self, key: str) -> float | None:
        """The final value of a metric: summary.json, else the last value in metrics.csv, else None."""
        if key in self.summary:
            return _finite(self.summary[key])
        if key in self.history and len(self.history[key][1]):
            return float(self.history[key][1][-1])
        return None

    def metric_keys(self) -> set[str]:
        keys = {k for k, v in self.summary.items() if _finite(v) is not None}
        keys |= set(self.history)
        return keys - {"step", "epoch"}

    def curve(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of a metric, one value per step (the last one logged at that step)."""
        if key not in self.history:
            return np.zeros(0), np.zeros(0)
        steps, values = self.history[key]
        last: dict[float, float] = {}
        for s, v in zip(steps.tolist(), values.tolist()):
            last[s] = v
        s = np.asarray(sorted(last), dtype=np.float64)
        return s, np.asarray([last[x] for x in s.tolist()], dtype=np.float64)

    # per-step files -----------------------------------------------------------------------------
    def steps(self, kind: str) -> list[int]:
        """Steps that have ``alignment`` / ``agreement`` / ``samples`` files."""
        suffix = ".jsonl" if kind == "samples" else ".json"
        return sorted(_numbered_files(self.path / kind, suffix))

    def _step_file(self, kind: str, suffix: str, step: int | None) -> Path | None:
        files = _numbered_files(self.path / kind, suffix)
        if not files:
            return None
        return files.get(max(files) if step is None else int(step))

    def alignment(self, step: int | None = None) -> dict | None:
        p = self._step_file("alignment", ".json", step)
        return _read_json(p) if p else None

    def agreement(self, step: int | None = None) -> dict | None:
        p = self._step_file("agreement", ".json", step)
        return _read_json(p) if p else None

    def samples(self, step: int | None = None) -> list[dict]:
        p = self._step_file("samples", ".jsonl", step)
        if p is None:
            return []
        out = []
        for line in p.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def samples_summary(self, step: int | None = None) -> dict | None:
        """``samples/<step>.summary.json`` (statistics and the length histogram against the reference)."""
        if step is None:
            steps = self.steps("samples")
            if not steps:
                return None
            step = steps[-1]
        p = self.path / "samples" / f"{step}.summary.json"
        return _read_json(p) if p.is_file() else None

    def reference_lengths(self, step: int | None = None) -> dict[int, float]:
        """Reference sentence-length shares ``{length: share}`` stored with the samples (empty if none)."""
        s = self.samples_summary(step) or {}
        out = {}
        for row in s.get("length_histogram") or []:
            if len(row) >= 3 and _finite(row[2]) is not None:
                out[int(row[0])] = float(row[2])
        return out


def _started(path: Path) -> float:
    """When a run started: the timestamp of its run id (``YYYYmmdd-HHMMSS-...``), else its folder's mtime."""
    m = re.match(r"^(\d{8}-\d{6})", path.name)
    if m:
        try:
            return datetime.strptime(m.group(1), "%Y%m%d-%H%M%S").timestamp()
        except ValueError:
            pass
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _load_config(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    except Exception:  # an unreadable config leaves the identity to run.json / the folder name
        return {}


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() or (path / "run.json").is_file()


def load_run(path: str | os.PathLike) -> Run:
    """Load a run folder (``runs/<exp>/<run_id>``)."""
    path = Path(path)
    if not path.is_dir() or not is_run_dir(path):
        raise CompareError(f"{path} is not a run folder (no config.yaml / run.json; expected runs/<exp>/<run_id>)")
    summary = _read_json(path / "summary.json")
    return Run(
        path=path,
        config=_load_config(path / "config.yaml"),
        info=_read_json(path / "run.json") or {},
        summary=summary if isinstance(summary, dict) else {},
        history=_read_history(path / "metrics.csv"),
    )


# --------------------------------------------------------------------------------------------
# choosing runs


def find_runs(root: str | os.PathLike, exp: str, complete: bool = True) -> list[Path]:
    """Run folders of an experiment under ``root``, oldest first (``complete``: with summary.json)."""
    base = Path(root) / exp
    if not base.is_dir():
        return []
    dirs = [p for p in base.iterdir() if p.is_dir() and is_run_dir(p)]
    if complete:
        dirs = [p for p in dirs if (p / "summary.json").is_file()]
    return sorted(dirs, key=lambda p: (_started(p), p.name))


def latest_run(root: str | os.PathLike, exp: str, complete: bool = True) -> Path | None:
    runs = find_runs(root, exp, complete)
    return runs[-1] if runs else None


def _warn(msg: str) -> None:
    print(f"compare: {msg}", file=sys.stderr)


def select_runs(
    exps: Sequence[str] | None = None,
    runs: Sequence[str | os.PathLike] | None = None,
    root: str | os.PathLike = "runs",
    all_runs: bool = False,
) -> list[Run]:
    """The runs to compare: finished runs of each experiment in ``exps`` (the latest per seed unless
    ``all_runs``), then the folders in ``runs`` (a run folder, or an experiment folder = its runs)."""
    out: list[Run] = []
    for exp in exps or []:
        base = Path(root) / exp
        if not base.is_dir():
            raise CompareError(f"no experiment folder {base} (train it first: make train EXP={exp}; "
                               f"or give --root)")
        unfinished = [p for p in find_runs(root, exp, complete=False) if not (p / "summary.json").is_file()]
        if unfinished:
            _warn(f"{exp}: skipping {len(unfinished)} unfinished run(s) without summary.json: "
                  + ", ".join(p.name for p in unfinished))
        loaded = [load_run(p) for p in find_runs(root, exp, complete=True)]
        if not loaded:
            raise CompareError(f"{base}: no finished run (a run folder with summary.json)")
        if not all_runs:
            latest: dict[tuple, Run] = {}
            for r in loaded:  # oldest first: a later run of the same seed replaces an earlier one
                key = (r.seed, r.kind) if r.seed is not None else (r.run_id, r.kind)
                if key in latest:
                    _warn(f"{exp}: seed {r.seed} ran more than once; using the latest ({r.path.name}, "
                          f"not {latest[key].path.name}); --all-runs keeps both")
                latest[key] = r
            loaded = sorted(latest.values(), key=lambda r: (r.started, r.run_id))
        out.extend(loaded)
    for given in runs or []:
        p = Path(given)
        if p.is_dir() and not is_run_dir(p):
            found = sorted((q for q in p.iterdir() if q.is_dir() and is_run_dir(q)), key=lambda q: (_started(q), q.name))
            if not found:
                raise CompareError(f"{p} is neither a run folder nor an experiment folder with runs")
            out.extend(load_run(q) for q in found)
        else:
            out.append(load_run(p))
    seen: set[Path] = set()
    unique = []
    for r in out:
        key = r.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(r)
    if not unique:
        raise CompareError("no runs selected: give --exps EXP ... or --runs RUN_DIR ...")
    return unique


def group_runs(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs grouped by experiment (in order of appearance); an experiment holding runs of several
    model kinds is split into ``<exp>/<kind>`` groups. Sets ``run.label``."""
    kinds: dict[str, set] = {}
    for r in runs:
        kinds.setdefault(r.exp, set()).add(r.kind)
    groups: dict[str, list[Run]] = {}
    for r in runs:
        r.label = f"{r.exp}/{r.kind}" if len(kinds[r.exp]) > 1 else r.exp
        groups.setdefault(r.label, []).append(r)
    return groups


def group_kind(runs: Sequence[Run]) -> str | None:
    kinds = {r.kind for r in runs}
    return next(iter(kinds)) if len(kinds) == 1 else None


def choose_baseline(groups: Mapping[str, Sequence[Run]], explicit: str | None = None) -> tuple[str | None, str]:
    """(label of the baseline group or None, a sentence saying which and why)."""
    if explicit:
        if explicit not in groups:
            raise CompareError(f"--baseline {explicit}: no such group (groups: {', '.join(groups)})")
        return explicit, f"Baseline: **{explicit}** (chosen with --baseline)."
    for kind in BASELINE_KINDS:
        for label, runs in groups.items():
            if group_kind(runs) == kind:
                return label, f"Baseline: **{label}** (model.kind = {kind})."
    return None, "No baseline: no selected group has model.kind baseline_matched or baseline, so no differences are shown."


# --------------------------------------------------------------------------------------------
# aggregation and formatting


@dataclass
class Stat:
    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float | None:
        return float(np.std(self.values, ddof=1)) if self.n > 1 else None

    @property
    def min(self) -> float:
        return float(np.min(self.values))

    @property
    def max(self) -> float:
        return float(np.max(self.values))


def aggregate(runs: Sequence[Run], key: str) -> Stat | None:
    """Final values of ``key`` over the runs that have it (None if no run has it)."""
    values = [v for r in runs if (v := r.final(key)) is not None]
    return Stat(values) if values else None


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


def fmt_stat(stat: Stat | None) -> str:
    """``mean ± std (n=k)``; ``mean (n=1)``; ``—`` when absent."""
    if stat is None:
        return MISSING
    if stat.n == 1:
        return f"{fmt_num(stat.mean)} (n=1)"
    return f"{fmt_num(stat.mean)} ± {fmt_num(stat.std)} (n={stat.n})"


def fmt_delta(stat: Stat | None, base: Stat | None) -> str:
    if stat is None or base is None:
        return MISSING
    d = stat.mean - base.mean
    rel = f" ({100 * d / abs(base.mean):+.1f}%)" if base.mean != 0 else ""
    return f"{fmt_num(d, signed=True)}{rel}"


_LOWER_BETTER = re.compile(r"(/ppl|/bpb|/loss|word_ppl|len_w1|len_js|rep4|peak_mem_mb|peak_rss_mb|step_time_ms|wall_time_s)$")
_HIGHER_BETTER = re.compile(r"(uuas|left_arc|/acc|acc_dist_[^/]+|acc_attr_[^/]+|grammatical|valid_prefix|tokens_per_s|distinct_\d|mattr|recall_arc_[^/]+)$")


def better(key: str) -> str:
    """``↓`` lower is better, ``↑`` higher is better, ``""`` neither."""
    if key.endswith("_lo") or key.endswith("_hi"):
        return ""
    if _LOWER_BETTER.search(key):
        return "↓"
    if _HIGHER_BETTER.search(key):
        return "↑"
    return ""


def _bucket_key(label: str) -> tuple[float, str]:
    """Sort bucket labels (``1-10``, ``>40``, ``3+``, ``5``) by their lower bound."""
    m = re.search(r"\d+", label)
    lo = float(m.group()) if m else float("inf")
    if label.startswith(">"):
        lo += 0.5
    return lo, label


_SOURCE_ORDER = {s: i for i, s in enumerate(MODEL_SOURCES + REFERENCE_SOURCES)}

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


def _key_sort(key: str) -> tuple:
    parts = key.split("/")
    out = []
    for p in parts:
        m = re.match(r"^(acc_dist|uuas_len|recall_arc)_(.+)$", p)
        if p in _SOURCE_ORDER:
            out.append((0, _SOURCE_ORDER[p], p))
        elif m:
            out.append((1, *_bucket_key(m.group(2))))
        else:
            out.append((2, 0, p))
    return tuple(out)


def headline_keys(keys: Iterable[str]) -> list[str]:
    """The keys of the main table, in a fixed order (those present)."""
    keys = [k for k in keys if not (k.endswith("_lo") or k.endswith("_hi"))]
    out: list[str] = []
    for pattern in HEADLINE:
        rx = re.compile(pattern)
        out.extend(k for k in sorted(keys, key=_key_sort) if rx.search(k) and k not in out)
    return out


def all_keys(runs: Sequence[Run]) -> list[str]:
    keys: set[str] = set()
    for r in runs:
        keys |= r.metric_keys()
    return sorted(keys, key=_key_sort)


def metric_rows(groups: Mapping[str, Sequence[Run]], keys: Sequence[str], baseline: str | None) -> list[list[str]]:
    """Rows ``[metric, better, <group cells>..., <delta cells>...]``."""
    rows = []
    for key in keys:
        stats = {g: aggregate(runs, key) for g, runs in groups.items()}
        row = [key, better(key)] + [fmt_stat(stats[g]) for g in groups]
        if baseline is not None:
            row += [fmt_delta(stats[g], stats[baseline]) for g in groups if g != baseline]
        rows.append(row)
    return rows


def metric_header(groups: Mapping[str, Sequence[Run]], baseline: str | None) -> list[str]:
    head = ["metric", ""] + [f"{g} (baseline)" if g == baseline else g for g in groups]
    if baseline is not None:
        head += [f"Δ {g} − {baseline}" for g in groups if g != baseline]
    return head


def run_rows(groups: Mapping[str, Sequence[Run]]) -> tuple[list[str], list[list[str]]]:
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


# --------------------------------------------------------------------------------------------
# figures (matplotlib Figure objects, no pyplot: usable from the Agg CLI and from a notebook)


def _new_figure(ncols: int = 1, nrows: int = 1, width: float = 5.5, height: float = 4.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _colors(labels: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {g: cmap(i % 10) for i, g in enumerate(labels)}


def _keys_matching(runs: Iterable[Run], pattern: str, history: bool = False) -> list[str]:
    rx = re.compile(pattern)
    keys: set[str] = set()
    for r in runs:
        keys |= {k for k in (r.history if history else r.metric_keys()) if rx.search(k)}
    return sorted(keys, key=_key_sort)


def fig_val_curves(groups: Mapping[str, Sequence[Run]]):
    """Validation perplexity against step: mean line and min/max band per group, one panel per set."""
    runs = [r for rs in groups.values() for r in rs]
    keys = _keys_matching(runs, r"^val/[^/]+/ppl$", history=True)
    if not keys:
        return None
    colors = _colors(list(groups))
    fig, axes = _new_figure(ncols=min(len(keys), 3), nrows=math.ceil(len(keys) / 3))
    flat = axes.ravel()
    for ax, key in zip(flat, keys):
        lo_all, hi_all = [], []
        for g, rs in groups.items():
            by_step: dict[float, list[float]] = {}
            for r in rs:
                for s, v in zip(*[a.tolist() for a in r.curve(key)]):
                    by_step.setdefault(s, []).append(v)
            if not by_step:
                continue
            steps = np.asarray(sorted(by_step))
            vals = [by_step[s] for s in steps.tolist()]
            mean = np.asarray([np.mean(v) for v in vals])
            lo = np.asarray([np.min(v) for v in vals])
            hi = np.asarray([np.max(v) for v in vals])
            n = len([r for r in rs if key in r.history])
            ax.plot(steps, mean, marker="o", ms=3, color=colors[g], label=f"{g} (n={n})")
            ax.fill_between(steps, lo, hi, color=colors[g], alpha=0.2, linewidth=0)
            lo_all.append(lo.min())
            hi_all.append(hi.max())
        if lo_all and min(lo_all) > 0 and max(hi_all) / min(lo_all) > 10:
            ax.set_yscale("log")
        ax.set_title(f"{key.split('/')[1]}: perplexity (mean, band = min–max over seeds)", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("perplexity")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in flat[len(keys):]:
        ax.set_visible(False)
    return fig


def _bucket_series(runs: Sequence[Run], prefix: str, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, min, max over runs of ``<prefix><label>`` per label (NaN where no run has it)."""
    mean, lo, hi = [], [], []
    for label in labels:
        st = aggregate(runs, prefix + label)
        mean.append(np.nan if st is None else st.mean)
        lo.append(np.nan if st is None else st.min)
        hi.append(np.nan if st is None else st.max)
    return np.asarray(mean), np.asarray(lo), np.asarray(hi)


def fig_alignment(groups: Mapping[str, Sequence[Run]]):
    """UUAS by sentence-length bucket and recall by arc-length bucket per treebank: model sources per
    group (mean over seeds, bars = min–max), chain and random references (grey)."""
    runs = [r for rs in groups.values() for r in rs]
    rx = re.compile(r"^align/([^/]+)/([^/]+)/(uuas_len|recall_arc)_(.+)$")
    found: dict[str, dict[str, set]] = {}
    for r in runs:
        for k in r.metric_keys():
            m = rx.match(k)
            if m:
                found.setdefault(m.group(1), {}).setdefault(m.group(3), set()).add(m.group(4))
    if not found:
        return None
    colors = _colors(list(groups))
    styles = {"parser": ("o", "-"), "attn_mean": ("s", "--"), "attn_best": ("^", "-.")}
    ref_styles = {"chain": ("0.35", ":"), "random": ("0.6", "--")}
    treebanks = sorted(found)
    fig, axes = _new_figure(ncols=2, nrows=len(treebanks), width=6.0, height=4.2)
    series = [(g, s) for g in groups for s in MODEL_SOURCES]
    for row, tb in enumerate(treebanks):
        for col, (kind, title, xlabel) in enumerate((
            ("uuas_len", "UUAS by sentence length", "sentence length (words)"),
            ("recall_arc", "recall by arc length", "arc length (words)"),
        )):
            ax = axes[row, col]
            labels = sorted(found[tb].get(kind, ()), key=_bucket_key)
            if not labels:
                ax.set_visible(False)
                continue
            x = np.arange(len(labels), dtype=np.float64)
            width = 0.5 / max(1, len(series))
            i = 0
            for g, rs in groups.items():
                for src in MODEL_SOURCES:
                    mean, lo, hi = _bucket_series(rs, f"align/{tb}/{src}/{kind}_", labels)
                    if np.all(np.isnan(mean)):
                        continue
                    off = (i - len(series) / 2) * width
                    i += 1
                    marker, ls = styles[src]
                    ax.errorbar(x + off, mean, yerr=[mean - lo, hi - mean], marker=marker, ls=ls, ms=4,
                                color=colors[g], capsize=2, label=f"{g} · {src}")
            for src, (color, ls) in ref_styles.items():
                mean, _, _ = _bucket_series(runs, f"align/{tb}/{src}/{kind}_", labels)
                if not np.all(np.isnan(mean)):
                    ax.plot(x, mean, color=color, ls=ls, lw=1.5, label=f"{src} (reference)")
            ax.set_xticks(x, labels)
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("UUAS" if kind == "uuas_len" else "recall")
            ax.set_title(f"{tb}: {title}", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    return fig


def generated_lengths(runs: Sequence[Run]) -> list[int]:
    """Sentence lengths of the last step's samples of every run (pooled)."""
    from depenc.metrics.text import sentence_lengths

    return [n for r in runs for n in sentence_lengths(s.get("text", "") for s in r.samples())]


def reference_shares(runs: Sequence[Run]) -> dict[int, float]:
    """Reference length shares, averaged over the runs that stored them."""
    tables = [t for r in runs if (t := r.reference_lengths())]
    if not tables:
        return {}
    lengths = sorted({k for t in tables for k in t})
    return {k: float(np.mean([t.get(k, 0.0) for t in tables])) for k in lengths}


def fig_sentence_lengths(groups: Mapping[str, Sequence[Run]]):
    """Sentence-length distribution of generated text (last step, pooled over seeds) against the
    reference; without samples, the Wasserstein-1 distance gen/len_w1 per group."""
    colors = _colors(list(groups))
    gen = {g: generated_lengths(rs) for g, rs in groups.items()}
    runs = [r for rs in groups.values() for r in rs]
    ref = reference_shares(runs)
    if any(gen.values()):
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
            shares = counts / counts.sum()
            centers = (edges[:-1] + edges[1:]) / 2
            ax.step(centers, shares, where="mid", color=colors[g], lw=1.6,
                    label=f"{g} (mean {np.mean(lengths):.1f}, {len(lengths)} sentences)")
        ax.set_xlabel("sentence length (words, final punctuation included)")
        ax.set_ylabel("share of sentences")
        ax.set_title("sentence lengths: generated (last evaluation) vs reference", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        return fig
    stats = {g: aggregate(rs, "gen/len_w1") for g, rs in groups.items()}
    if all(s is None for s in stats.values()):
        return None
    return _bar_panels(groups, [("gen/len_w1", "Wasserstein-1 of sentence lengths vs reference (gen/len_w1)")])


def fig_agreement(groups: Mapping[str, Sequence[Run]]):
    """Agreement accuracy by subject-verb distance per split: mean over seeds, error bars = the
    runs' 95% bootstrap CI (mean of the bounds), dots = single seeds."""
    runs = [r for rs in groups.values() for r in rs]
    rx = re.compile(r"^agree/([^/]+)/acc_dist_(.+)$")
    found: dict[str, set] = {}
    for r in runs:
        for k in r.metric_keys():
            m = rx.match(k)
            if m and not (k.endswith("_lo") or k.endswith("_hi")):
                found.setdefault(m.group(1), set()).add(m.group(2))
    if not found:
        return None
    colors = _colors(list(groups))
    splits = sorted(found)
    fig, axes = _new_figure(ncols=len(splits), width=5.0)
    for ax, split in zip(axes.ravel(), splits):
        labels = sorted(found[split], key=_bucket_key)
        x = np.arange(len(labels), dtype=np.float64)
        width = 0.6 / max(1, len(groups))
        for i, (g, rs) in enumerate(groups.items()):
            off = (i - (len(groups) - 1) / 2) * width
            means, los, his = [], [], []
            for j, label in enumerate(labels):
                key = f"agree/{split}/acc_dist_{label}"
                st, lo, hi = aggregate(rs, key), aggregate(rs, key + "_lo"), aggregate(rs, key + "_hi")
                means.append(np.nan if st is None else st.mean)
                los.append(np.nan if lo is None else lo.mean)
                his.append(np.nan if hi is None else hi.mean)
                if st is not None and st.n > 1:
                    ax.scatter(np.full(st.n, x[j] + off), st.values, s=9, color=colors[g], alpha=0.5, zorder=3)
            means, los, his = map(np.asarray, (means, los, his))
            if np.all(np.isnan(means)):
                continue
            yerr = np.vstack([np.clip(means - los, 0, None), np.clip(his - means, 0, None)])
            yerr = np.nan_to_num(yerr)
            ax.errorbar(x + off, means, yerr=yerr, fmt="o", ms=5, capsize=3, color=colors[g],
                        label=f"{g} (n={len([r for r in rs if r.final(f'agree/{split}/acc') is not None])})")
        ax.axhline(0.5, color="0.5", ls=":", lw=1, label="chance")
        ax.set_xticks(x, labels)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("words between subject and verb")
        ax.set_ylabel("agreement accuracy")
        ax.set_title(f"{split}: accuracy by distance (95% bootstrap CI)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def _bar_panels(groups: Mapping[str, Sequence[Run]], panels: Sequence[tuple[str, str]]):
    """One bar panel per metric: mean per group, min–max error bar, dots = single runs, ``—`` = absent."""
    colors = _colors(list(groups))
    fig, axes = _new_figure(ncols=len(panels), width=4.8)
    for ax, (key, title) in zip(axes.ravel(), panels):
        x = np.arange(len(groups), dtype=np.float64)
        for i, (g, rs) in enumerate(groups.items()):
            st = aggregate(rs, key)
            if st is None:
                ax.text(x[i], 0, MISSING, ha="center", va="bottom", fontsize=12)
                continue
            ax.bar(x[i], st.mean, color=colors[g], alpha=0.8, width=0.6)
            ax.errorbar(x[i], st.mean, yerr=[[st.mean - st.min], [st.max - st.mean]], color="k", capsize=4)
            ax.scatter(np.full(st.n, x[i]), st.values, s=12, color="k", zorder=3)
        ax.set_xticks(x, list(groups), rotation=15, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    return fig


def fig_efficiency(groups: Mapping[str, Sequence[Run]]):
    """Throughput and peak memory per group (whole-run averages from summary.json)."""
    runs = [r for rs in groups.values() for r in rs]
    panels = [(k, t) for k, t in (("perf/tokens_per_s", "training throughput (tokens/s)"),
                                  ("perf/peak_mem_mb", "peak memory (MiB)"))
              if any(r.final(k) is not None for r in runs)]
    return _bar_panels(groups, panels) if panels else None


FIGURES = [
    ("val_ppl", fig_val_curves, "Validation perplexity against step: mean over seeds, band = min–max."),
    ("alignment", fig_alignment, "UUAS by sentence-length bucket and recall by arc length (final evaluation); "
                                 "error bars = min–max over seeds; chain and random trees as references."),
    ("sentence_lengths", fig_sentence_lengths, "Sentence lengths of generated text (last evaluation, pooled over "
                                               "seeds) against the reference text."),
    ("agreement", fig_agreement, "Subject-verb agreement accuracy by distance: mean over seeds, error bars = "
                                 "95% bootstrap CI of the runs (mean of the bounds), dots = single seeds."),
    ("efficiency", fig_efficiency, "Throughput and peak memory (whole-run averages): mean, min–max, dots = runs."),
]


# --------------------------------------------------------------------------------------------
# arcs (notebook)


def gold_edge_list(heads: Sequence[int]) -> list[tuple[int, int]]:
    from depenc.metrics.alignment import gold_edges

    return sorted(gold_edges(heads))


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
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="0.8", lw=0.5))
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


# --------------------------------------------------------------------------------------------
# notebook helpers


def _find_root(runs_root: str | os.PathLike) -> Path:
    """A path as given if it exists, else relative to the repository root (a notebook runs in notebooks/)."""
    p = Path(runs_root)
    if p.is_absolute() or p.exists():
        return p
    alt = REPO_ROOT / p
    return alt if alt.exists() else p


def resolve_run_dirs(
    run_dirs: Sequence[str | os.PathLike] | None = None,
    runs_root: str | os.PathLike = "runs",
    default_exps: Sequence[str] = DEFAULT_NOTEBOOK_EXPS,
    env_var: str = NOTEBOOK_ENV,
) -> list[Path]:
    """Run folders for the notebook: ``run_dirs`` if given, else ``$DEPENC_NOTEBOOK_RUNS``
    (colon-separated), else the latest finished run of each of ``default_exps`` under ``runs_root``."""
    if run_dirs:
        dirs = [Path(d) for d in ([run_dirs] if isinstance(run_dirs, (str, os.PathLike)) else run_dirs)]
    elif os.environ.get(env_var):
        dirs = [Path(d) for d in os.environ[env_var].split(os.pathsep) if d.strip()]
    else:
        root = _find_root(runs_root)
        dirs = [d for exp in default_exps if (d := latest_run(root, exp)) is not None]
        if not dirs:
            raise CompareError(f"no finished run of {', '.join(default_exps)} under {root}: train them first "
                               f"(make sweep SEEDS=1) or set RUN_DIRS / ${env_var}")
    dirs = [_find_root(d) for d in dirs]  # relative paths: from the working directory, else the repository root
    missing = [str(d) for d in dirs if not is_run_dir(d)]
    if missing:
        raise CompareError(f"not run folders: {', '.join(missing)}")
    return dirs


def lexical_table(runs: Sequence[Run]) -> tuple[list[str], list[list[str]]]:
    """Lexical variation of each run's last samples (recomputed) next to the logged values."""
    from depenc.metrics.text import text_statistics

    keys = ["distinct_1", "distinct_2", "distinct_3", "mattr", "rep4", "mean_sent_len"]
    head = ["run", "n samples", *keys]
    rows = []
    for r in runs:
        texts = [s.get("text", "") for s in r.samples()]
        st = text_statistics(texts) if texts else {}
        rows.append([r.label or r.name, str(len(texts)), *[fmt_num(_finite(st.get(k))) for k in keys]])
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


def label_runs(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """One group per run, labelled ``<exp> (<kind>, seed <s>)`` (plus the run id where that repeats)."""
    base = [f"{r.exp} ({r.kind}, seed {r.seed})" for r in runs]
    groups: dict[str, list[Run]] = {}
    for r, label in zip(runs, base):
        r.label = label if base.count(label) == 1 else f"{label} {r.run_id}"
        groups[r.label] = [r]
    return groups


def fig_lexical(groups: Mapping[str, Sequence[Run]]):
    """Lexical variation of the generated text (final logged gen/* values)."""
    runs = [r for rs in groups.values() for r in rs]
    panels = [(k, t) for k, t in (("gen/distinct_1", "distinct-1"), ("gen/distinct_2", "distinct-2"),
                                  ("gen/mattr", "MATTR"), ("gen/rep4", "repeated 4-grams"))
              if any(r.final(k) is not None for r in runs)]
    return _bar_panels(groups, panels) if panels else None


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
    ax.set_xlabel("step")
    ax.set_ylabel("share of generated sentences")
    ax.set_title("grammatical (solid) / every prefix valid (dashed)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax2.set_xlabel("position of the first invalid token in its sentence (0-based)")
    ax2.set_ylabel("sentences")
    ax2.set_title("first invalid token (last evaluation)", fontsize=9)
    ax2.grid(alpha=0.3)
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(fontsize=7)
    return fig


def fig_arcs(runs: Sequence[Run], n_examples: int = 3, treebank: str | None = None):
    """Gold (above) and predicted (below) arcs of the first sentences kept in each run's last
    alignment/<step>.json: one column per run, its parser's edges (else attn_best, else attn_mean)."""
    cols = []
    for r in runs:
        al = r.alignment() or {}
        tbs = al.get("treebanks") or {}
        name = treebank if treebank in tbs else next((t for t in tbs if tbs[t].get("examples")), None)
        if name is None:
            continue
        examples = tbs[name].get("examples") or []
        if examples:
            cols.append((r, name, al.get("step"), examples[:n_examples]))
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
            src = next((s for s in MODEL_SOURCES if s in pred), None)
            gold = gold_edge_list(ex["heads"])
            edges = pred.get(src, []) if src else []
            hits = len({(min(a, b), max(a, b)) for a, b in edges} & set(gold))
            title = f"{r.label or r.name} · {name} #{ex.get('index', i)} · {src or 'no prediction'}"
            if src:
                title += f": {hits}/{len(gold)} gold arcs (step {step})"
            draw_arcs(ax, ex["words"], gold, edges, title)
    return fig


def first_invalid_positions(run: Run) -> list[int]:
    return [int(x["first_invalid"]) for s in run.samples() for x in s.get("sentences") or []
            if x.get("first_invalid") is not None]


# --------------------------------------------------------------------------------------------
# output


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
    out_dir: Path
    index: Path
    summary_md: Path
    figures: list[Path]
    groups: dict[str, list[Run]]
    baseline: str | None


def _png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def build_report(runs: Sequence[Run], out_dir: str | os.PathLike, title: str = "depenc comparison",
                 baseline: str | None = None) -> Report:
    """Write index.html, summary.md, aggregate.csv and the PNG figures into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = group_runs(runs)
    base, base_note = choose_baseline(groups, baseline)
    if base is not None:  # baseline first
        groups = {base: groups[base], **{g: rs for g, rs in groups.items() if g != base}}
    keys = all_keys(runs)
    head_keys = headline_keys(keys)
    m_head = metric_header(groups, base)
    r_head, r_rows = run_rows(groups)
    counts = ", ".join(f"{g}: n={len(rs)}" for g, rs in groups.items())
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M")

    figures: list[tuple[str, Path, str, bytes]] = []
    absent: list[tuple[str, str]] = []
    for name, fn, caption in FIGURES:
        fig = fn(groups)
        if fig is None:
            absent.append((name, caption))
            continue
        data = _png_bytes(fig)
        path = out / f"{name}.png"
        path.write_bytes(data)
        figures.append((name, path, caption, data))

    # aggregate.csv
    with open(out / "aggregate.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", "group", "n", "mean", "std", "min", "max", "diff_vs_baseline"])
        for key in keys:
            base_stat = aggregate(groups[base], key) if base else None
            for g, rs in groups.items():
                st = aggregate(rs, key)
                if st is None:
                    continue
                diff = "" if base_stat is None or g == base else repr(st.mean - base_stat.mean)
                w.writerow([key, g, st.n, repr(st.mean), "" if st.std is None else repr(st.std),
                            repr(st.min), repr(st.max), diff])

    intro = (f"{len(runs)} runs in {len(groups)} groups ({counts}); generated {stamp}. Values are final "
             f"metrics (summary.json): mean ± sample standard deviation over seeds, n = runs with the metric; "
             f"{MISSING} = absent. Δ = group mean − baseline mean (relative in brackets); ↓/↑ = lower/higher is better.")

    # summary.md
    md = [f"# {title}", "", intro, "", base_note, "", "## Runs", "", md_table(r_head, r_rows), "",
          "## Final metrics", "", md_table(m_head, metric_rows(groups, head_keys, base)), "", "## Figures", ""]
    for name, path, caption, _ in figures:
        md += [f"![{name}]({path.name})", "", f"*{caption}*", ""]
    for name, caption in absent:
        md += [f"- {name}: no run has the data for this figure ({MISSING}).", ""]
    md += ["## All final metrics", "", md_table(m_head, metric_rows(groups, keys, base)), ""]
    summary_md = out / "summary.md"
    summary_md.write_text("\n".join(md), encoding="utf-8")

    # index.html
    def md_inline(text: str) -> str:
        return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))

    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>", f'<p class="note">{md_inline(intro)}</p>', f"<p>{md_inline(base_note)}</p>",
        "<h2>Runs</h2>", html_table(r_head, r_rows, "runs"),
        "<h2>Final metrics</h2>", html_table(m_head, metric_rows(groups, head_keys, base), "metrics"),
        "<h2>Figures</h2>",
    ]
    for name, path, caption, data in figures:
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        parts.append(f'<figure id="fig-{name}"><img src="{uri}" alt="{html.escape(name)}">'
                     f"<figcaption>{html.escape(caption)} ({html.escape(path.name)})</figcaption></figure>")
    for name, caption in absent:
        parts.append(f'<p class="note">{html.escape(name)}: no run has the data for this figure ({MISSING}).</p>')
    parts += ["<details><summary>All final metrics</summary>",
              html_table(m_head, metric_rows(groups, keys, base), "all-metrics"), "</details>",
              IMAGES_SCRIPT, "</body></html>"]
    index = out / "index.html"
    index.write_text("\n".join(parts), encoding="utf-8")
    return Report(out, index, summary_md, [p for _, p, _, _ in figures], groups, base)


def default_name(exps: Sequence[str] | None, runs: Sequence[str] | None) -> str:
    if exps and not runs:
        name = "-vs-".join(exps)
    else:
        name = f"compare-{datetime.now():%Y%m%d-%H%M%S}"
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name)[:120]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m depenc.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exps", nargs="+", default=None, help="experiments (folders under --root); all their finished runs")
    p.add_argument("--runs", nargs="+", default=None, help="run folders (or experiment folders)")
    p.add_argument("--name", default=None, help="report name: <out>/<name>/ (default: the experiments joined by -vs-)")
    p.add_argument("--root", default="runs", help="where the run folders are (default: runs)")
    p.add_argument("--out", default="reports", help="where reports go (default: reports)")
    p.add_argument("--baseline", default=None, help="group label to diff against (default: model.kind baseline_matched, else baseline)")
    p.add_argument("--all-runs", action="store_true", help="with --exps: keep every run, not only the latest per seed")
    args = p.parse_args(argv)
    if not args.exps and not args.runs:
        p.error("give --exps EXP ... and/or --runs RUN_DIR ...")
    import matplotlib

    matplotlib.use("Agg")
    try:
        runs = select_runs(args.exps, args.runs, args.root, args.all_runs)
        name = args.name or default_name(args.exps, args.runs)
        report = build_report(runs, Path(args.out) / name, title=f"depenc comparison: {name}", baseline=args.baseline)
    except CompareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {report.index}")
    print(f"summary: {report.summary_md}")
    for g, rs in report.groups.items():
        print(f"  {g}{' (baseline)' if g == report.baseline else ''}: {len(rs)} run(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
