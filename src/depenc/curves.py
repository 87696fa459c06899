"""Learning curves and depth generalisation over grid runs (``make curves``; docs/regimes.md).

``python -m depenc.curves --exps regimes/matched regimes/alibi ...`` reads every finished run of the
experiments (``make sweep GRID=...`` names them by grid point) and writes to ``reports/<name>/``:

* ``curves.png``: excess loss over the grammar's exact optimum (nats/token, sentence-aligned, final
  weights = best.ckpt in the regime experiments) against training tokens, one line per model (mean
  over seeds, band = min-max), log x-axis, one panel per split;
* ``depth.png``: excess loss, agreement accuracy and agreement margin against embedding depth, for
  runs that have the depth splits (``data.synthetic.n_test_depth > 0``);
* ``summary.md`` and ``curves.json``: the same numbers as tables (mean [min, max] (n seeds)), the
  smallest data size at which each model's mean test excess is within ``--within`` (0.01) nats/token
  of the floor, and which models' seed ranges lie entirely below (or above) the first model's.

A run belongs to the *size* family when it has no depth splits: its x is its train split's tokens
(``hparams.yaml``: split_stats.train.n_tokens) and its n_train. Runs with depth splits form the
*depth* family, one group per (model, n_train, max_depth). Several runs of one seed at one point:
the latest counts (a warning says so).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from depenc.compare.runs import CompareError, Run, select_runs
from depenc.compare.tables import md_table

DEFAULT_EXPS = ("regimes/matched", "regimes/alibi", "regimes/depenc", "regimes/oracle")
SIZE_SPLITS = ("validation", "test", "test_long")
DEPTH_COLUMNS = ("test", "test_depth3", "test_depth4", "test_depth5", "test_depth6")  # test = the training depths
DEPTH_LABELS = {"test": "≤ train cap", "test_depth3": "3", "test_depth4": "4", "test_depth5": "5", "test_depth6": "≥ 6"}


@dataclass
class Point:
    """The runs of one model at one grid point (one per seed)."""

    model: str
    n_train: int
    max_depth: int
    train_tokens: int | None
    runs: list[Run] = field(default_factory=list)

    def values(self, key: str) -> list[float]:
        return [v for r in self.runs if (v := r.final(key)) is not None]

    def stat(self, key: str) -> dict | None:
        """mean, min, max and n over seeds of a final metric (None if no run has it)."""
        v = self.values(key)
        if not v:
            return None
        return {"mean": float(np.mean(v)), "min": float(min(v)), "max": float(max(v)), "n": len(v)}


def _synthetic(run: Run) -> dict:
    return ((run.config.get("data") or {}).get("synthetic") or {})


def train_tokens(run: Run) -> int | None:
    """Tokens of the run's train split (hparams.yaml), or None."""
    try:
        h = yaml.safe_load((run.path / "hparams.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    n = ((h.get("split_stats") or {}).get("train") or {}).get("n_tokens")
    return int(n) if isinstance(n, (int, float)) else None


def has_depth_splits(run: Run) -> bool:
    return bool(_synthetic(run).get("n_test_depth"))


def group_points(runs: Sequence[Run], exps: Sequence[str]) -> tuple[list[Point], list[Point]]:
    """(size family, depth family): runs grouped by (model, n_train, max_depth), latest run per seed."""
    groups: dict[tuple, dict] = {}
    for r in sorted(runs, key=lambda r: (r.started, r.run_id)):
        if r.source != "synthetic":
            raise CompareError(f"{r.path}: curves need runs on the synthetic grammar (data.source=synthetic)")
        s = _synthetic(r)
        key = (has_depth_splits(r), r.exp, int(s.get("n_train", 0)), int(s.get("max_depth", 0)))
        g = groups.setdefault(key, {"seeds": {}, "tokens": None})
        if r.seed in g["seeds"]:
            print(f"curves: {r.exp} n_train={key[2]} seed {r.seed} ran more than once; using the latest "
                  f"({r.path.name}, not {g['seeds'][r.seed].path.name})", file=sys.stderr)
        g["seeds"][r.seed] = r
        g["tokens"] = g["tokens"] or train_tokens(r)
    order = {e: i for i, e in enumerate(exps)}
    size, depth = [], []
    for (is_depth, exp, n_train, max_depth), g in sorted(groups.items(), key=lambda kv: (order.get(kv[0][1], 99), kv[0][1], kv[0][2:])):
        p = Point(exp, n_train, max_depth, g["tokens"], sorted(g["seeds"].values(), key=lambda r: r.seed or 0))
        (depth if is_depth else size).append(p)
    return size, depth


def models_of(points: Sequence[Point]) -> list[str]:
    return list(dict.fromkeys(p.model for p in points))


def _by_model(points: Sequence[Point]) -> dict[str, list[Point]]:
    out: dict[str, list[Point]] = {}
    for p in points:
        out.setdefault(p.model, []).append(p)
    return {m: sorted(ps, key=lambda p: p.n_train) for m, ps in out.items()}


def fmt(stat: Mapping | None, digits: int = 4) -> str:
    if stat is None:
        return "—"
    if stat["n"] == 1:
        return f"{stat['mean']:.{digits}f} (n=1)"
    return f"{stat['mean']:.{digits}f} [{stat['min']:.{digits}f}, {stat['max']:.{digits}f}] (n={stat['n']})"


def separation(stat: Mapping | None, ref: Mapping | None) -> str:
    """'below' / 'above' when the seed ranges do not overlap (both with >= 2 seeds), else ''."""
    if stat is None or ref is None or stat["n"] < 2 or ref["n"] < 2:
        return ""
    if stat["max"] < ref["min"]:
        return "below"
    if stat["min"] > ref["max"]:
        return "above"
    return ""


def first_within(points: Sequence[Point], key: str, within: float) -> Point | None:
    """The smallest data size whose mean of ``key`` is <= ``within`` (None if none is)."""
    for p in sorted(points, key=lambda p: p.n_train):
        s = p.stat(key)
        if s is not None and s["mean"] <= within:
            return p
    return None


# ---------------------------------------------------------------------------------------------- tables


def size_table(points: Sequence[Point], key: str) -> tuple[list[str], list[list[str]]]:
    """Rows = models, columns = data sizes; cells mean [min, max] (n); ↓/↑: the seed range lies
    entirely below/above the first model's at that size."""
    by_model = _by_model(points)
    sizes = sorted({p.n_train for p in points})
    models = list(by_model)
    head = ["model"] + [f"{n:,} sent. ({_tokens_at(points, n)})" for n in sizes]
    rows = []
    for m in models:
        at = {p.n_train: p for p in by_model[m]}
        ref = {p.n_train: p for p in by_model[models[0]]}
        row = [m]
        for n in sizes:
            s = at[n].stat(key) if n in at else None
            mark = separation(s, ref[n].stat(key) if n in ref else None) if m != models[0] else ""
            row.append(fmt(s) + {"below": " ↓", "above": " ↑", "": ""}[mark])
        rows.append(row)
    return head, rows


def _tokens_at(points: Sequence[Point], n_train: int) -> str:
    toks = [p.train_tokens for p in points if p.n_train == n_train and p.train_tokens]
    return f"{toks[0] / 1000:.0f}k tokens" if toks else "? tokens"


def depth_table(points: Sequence[Point], metric: str) -> tuple[list[str], list[list[str]]]:
    """Rows = models (x depth-split configuration), columns = depth buckets. ``metric``: excess | acc | margin."""
    head = ["model"] + [DEPTH_LABELS[c] for c in DEPTH_COLUMNS]
    rows = []
    for p in points:
        label = p.model if len({q.n_train for q in points}) == 1 else f"{p.model} (n_train={p.n_train})"
        row = [label]
        for split in DEPTH_COLUMNS:
            if metric == "excess":
                row.append(fmt(p.stat(f"excess/{split}/excess")))
            else:
                s = p.stat(f"agree/{split}/{metric}")
                lo, hi = p.values(f"agree/{split}/{metric}_lo"), p.values(f"agree/{split}/{metric}_hi")
                cell = fmt(s, 3)
                if s is not None and lo and hi:
                    cell += f"; 95% CI {min(lo):.3f}–{max(hi):.3f}"
                row.append(cell)
        rows.append(row)
    return head, rows


# --------------------------------------------------------------------------------------------- figures


def _figure(ncols: int, nrows: int = 1, width: float = 4.6, height: float = 3.6):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def fig_curves(points: Sequence[Point], splits: Sequence[str] = SIZE_SPLITS, within: float = 0.01):
    """Excess loss against training tokens (log x), mean line and min-max band per model, a panel per split."""
    by_model = _by_model(points)
    present = [s for s in splits if any(p.stat(f"excess/{s}/excess") for p in points)]
    if not present:
        return None
    fig, axes = _figure(len(present))
    for ax, split in zip(axes[0], present):
        for i, (m, ps) in enumerate(by_model.items()):
            xs, mean, lo, hi = [], [], [], []
            for p in ps:
                s = p.stat(f"excess/{split}/excess")
                if s is None:
                    continue
                xs.append(p.train_tokens or p.n_train)
                mean.append(s["mean"]), lo.append(s["min"]), hi.append(s["max"])
            if not xs:
                continue
            color = f"C{i % 10}"
            ax.plot(xs, mean, marker="o", color=color, label=m)
            ax.fill_between(xs, lo, hi, color=color, alpha=0.2)
        ax.axhline(within, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training tokens")
        ax.set_ylabel("excess loss (nats/token)")
        ax.set_title(f"{split}: excess over the exact optimum", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    return fig


def fig_depth(points: Sequence[Point]):
    """Excess loss, agreement accuracy and margin against embedding depth, one line per model."""
    if not points:
        return None
    panels = (("excess/{}/excess", "excess loss (nats/token)"), ("agree/{}/acc", "agreement accuracy"),
              ("agree/{}/margin", "agreement margin (nats)"))
    fig, axes = _figure(len(panels))
    xs = np.arange(len(DEPTH_COLUMNS))
    for ax, (pattern, ylabel) in zip(axes[0], panels):
        for i, p in enumerate(points):
            stats = [p.stat(pattern.format(s)) for s in DEPTH_COLUMNS]
            ok = [j for j, s in enumerate(stats) if s is not None]
            if not ok:
                continue
            color = f"C{i % 10}"
            ax.plot(xs[ok], [stats[j]["mean"] for j in ok], marker="o", color=color, label=p.model)
            ax.fill_between(xs[ok], [stats[j]["min"] for j in ok], [stats[j]["max"] for j in ok], color=color, alpha=0.2)
        ax.set_xticks(xs, [DEPTH_LABELS[c] for c in DEPTH_COLUMNS])
        ax.set_xlabel("embedding depth (test split)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=7)
    cap = sorted({p.max_depth for p in points})
    fig.suptitle(f"trained on depth ≤ {', '.join(map(str, cap))}; band = min-max over seeds", fontsize=9)
    return fig


# ---------------------------------------------------------------------------------------------- report


def build(runs: Sequence[Run], exps: Sequence[str], out_dir: Path, within: float = 0.01) -> dict:
    """Write summary.md, curves.json and the figures to ``out_dir``; returns the JSON payload."""
    size, depth = group_points(runs, exps)
    if not size and not depth:
        raise CompareError("no finished runs to draw")
    out_dir.mkdir(parents=True, exist_ok=True)
    md = [f"# Regimes: {', '.join(models_of(size + depth))}", ""]
    payload: dict = {"within": within, "size": [], "depth": []}
    if size:
        md += ["## Excess loss against data size", "",
               "Excess loss over the grammar's exact optimum (nats/token, every sentence scored from its start), "
               "mean [min, max] over seeds (n). ↓ / ↑: the seed range lies entirely below / above "
               f"`{models_of(size)[0]}`'s at that size.", ""]
        for split in SIZE_SPLITS:
            if any(p.stat(f"excess/{split}/excess") for p in size):
                md += [f"**{split}**", "", md_table(*size_table(size, f"excess/{split}/excess")), ""]
        md += [f"Smallest data size within {within} nats/token of the floor (mean test excess):", ""]
        rows = []
        for m, ps in _by_model(size).items():
            p = first_within(ps, "excess/test/excess", within)
            rows.append([m, "not reached" if p is None else f"{p.n_train:,} sentences ({_tokens_at(size, p.n_train)})"])
        md += [md_table(["model", "first within"], rows), ""]
        if any(p.stat("agree/test_long/acc") for p in size):
            md += ["**agreement accuracy, test_long** (every sentence has a pair > 12 words apart)", "",
                   md_table(*size_table(size, "agree/test_long/acc")), ""]
        steps = [[p.model, f"{p.n_train:,}", fmt(p.stat("best_step"), 0), fmt(p.stat("global_step"), 0)] for p in size]
        md += ["Best and last step (early stopping; the step cap is the experiment's max_steps):", "",
               md_table(["model", "n_train", "best step", "last step"], steps), ""]
        payload["size"] = [_point_json(p, [f"excess/{s}/excess" for s in SIZE_SPLITS]
                                       + ["agree/test_long/acc", "agree/test_long/margin", "best_step", "global_step"])
                           for p in size]
        fig = fig_curves(size, within=within)
        if fig is not None:
            fig.savefig(out_dir / "curves.png", dpi=110)
            md += ["![excess loss against training tokens](curves.png)", ""]
    if depth:
        caps = sorted({p.max_depth for p in depth})
        md += ["## Depth generalisation", "",
               f"Trained on sentences of embedding depth ≤ {', '.join(map(str, caps))}; each held-out depth split "
               "is sampled from the training rules without the depth cap and scored against that exact reference. "
               "Mean [min, max] over seeds (n); agreement also with the widest 95% bootstrap interval of the seeds.", ""]
        for title, metric in (("excess loss (nats/token)", "excess"), ("agreement accuracy", "acc"),
                              ("agreement margin (nats)", "margin")):
            md += [f"**{title}**", "", md_table(*depth_table(depth, metric)), ""]
        keys = [f"excess/{s}/excess" for s in DEPTH_COLUMNS] + [f"agree/{s}/{m}" for s in DEPTH_COLUMNS for m in ("acc", "margin")]
        payload["depth"] = [_point_json(p, keys) for p in depth]
        fig = fig_depth(depth)
        if fig is not None:
            fig.savefig(out_dir / "depth.png", dpi=110)
            md += ["![excess and agreement against depth](depth.png)", ""]
    md += ["Runs: " + ", ".join(f"`{r.path}`" for p in size + depth for r in p.runs), ""]
    (out_dir / "summary.md").write_text("\n".join(md))
    (out_dir / "curves.json").write_text(json.dumps(payload, indent=1))
    return payload


def _point_json(p: Point, keys: Sequence[str]) -> dict:
    return {"model": p.model, "n_train": p.n_train, "max_depth": p.max_depth, "train_tokens": p.train_tokens,
            "seeds": [r.seed for r in p.runs], "runs": [str(r.path) for r in p.runs],
            "metrics": {k: s for k in keys if (s := p.stat(k)) is not None}}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m depenc.curves", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exps", nargs="+", default=list(DEFAULT_EXPS), help="experiments (folders under --root)")
    ap.add_argument("--root", default="runs", help="where the run folders are (default: runs)")
    ap.add_argument("--out", default="reports", help="where reports go (default: reports)")
    ap.add_argument("--name", default="regimes", help="report folder name (default: regimes)")
    ap.add_argument("--within", type=float, default=0.01, help="nats/token above the floor that counts as reached")
    args = ap.parse_args(argv)
    if not (args.within > 0 and math.isfinite(args.within)):
        print(f"error: --within must be a positive number, got {args.within}", file=sys.stderr)
        return 2
    import matplotlib

    matplotlib.use("Agg")
    # an experiment still training (no finished run yet) is left out, so a report can be drawn mid-study
    present = [e for e in args.exps if any((Path(args.root) / e).glob("*/summary.json"))]
    for e in args.exps:
        if e not in present:
            print(f"curves: no finished runs of {e} under {args.root} yet; left out", file=sys.stderr)
    try:
        if not present:
            raise CompareError(f"no finished run of {', '.join(args.exps)} under {args.root} "
                               "(train them first: make sweep ...; or give --root)")
        runs = select_runs(present, None, args.root, all_runs=True)
        out = Path(args.out) / args.name
        payload = build(runs, args.exps, out, args.within)
    except CompareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"summary: {out / 'summary.md'}")
    print(f"  {len(payload['size'])} size point(s), {len(payload['depth'])} depth point(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
