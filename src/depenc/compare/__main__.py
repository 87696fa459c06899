"""Compare runs: ``python -m depenc.compare [--exps A B ...] [--runs DIR ...] [--name NAME] [--root runs] [--out reports]``.

Writes ``<out>/<name>/``:

* ``index.html``: self-contained report (figures embedded as base64 PNG data URIs; no network);
* ``summary.md``: the same tables in Markdown, figures linked as the PNG files next to it;
* ``*.png``: validation perplexity against step, UUAS by sentence length and recall by arc length
  (chain / random references), sentence lengths of generated text against the reference, agreement
  accuracy by distance, throughput and peak memory (and excess loss by category, where runs have it);
* ``aggregate.csv``: every final metric per group (n, mean, std, min, max, difference to the baseline).

Runs are grouped by experiment (``exp``; an experiment whose runs have different ``model.kind``
is split per kind), so seeds aggregate: each group shows mean ± sample standard deviation (ddof=1)
over its runs, with ``n`` = the number of runs that have the metric. A metric a run lacks is absent
(``—``), never zero. The baseline is the group whose ``model.kind`` is ``baseline_matched``, else
``baseline`` (``--baseline LABEL`` picks another); differences are group mean minus baseline mean.

``--exps``: the finished runs (with ``summary.json``) of each experiment under ``--root``, the latest
run per seed (``--all-runs`` keeps reruns of a seed too). ``--runs``: the given run folders (or
experiment folders: all runs in them), finished or not.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from depenc.compare.runs import CompareError, select_runs


def default_name(exps: Sequence[str] | None, runs: Sequence[str] | None) -> str:
    """The experiments joined by -vs-, else compare-<timestamp>; safe as a folder name."""
    name = "-vs-".join(exps) if exps and not runs else f"compare-{datetime.now():%Y%m%d-%H%M%S}"
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
    from depenc.compare.report import build_report  # after choosing the backend

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
