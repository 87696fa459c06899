"""Markdown tables of the second structure study's screen (docs/structure-study-2.md).

    python scripts/study2_screen.py RUN_DIR [RUN_DIR ...] [--align-dir DIR]

One row per run folder (label ``<experiment folder>-<run name>``, e.g. ``depenc-n_train=16000-s1``, unique
across the experiments of a grid): the exact excess loss and KL on test,
test_long and validation (nats/token over the grammar's optimum, sentence-aligned), agreement on
test_long (accuracy, margin at > 12 words with its 95% interval), training tokens/s, peak memory and the best step,
read from summary.json; agreement accuracy on test_long by distance and by attractors (95% intervals);
test excess and KL by the target token's category; for depth-split runs (``n_test_depth`` > 0), excess on
test and on test_depth3..6;
with ``--align-dir``, parser UUAS on synthetic:test by sentence length and recall by gold arc length (with
the inducer's own trees, chain and random) from ``<align-dir>/<label>.json``, the output of
``python -m depenc.evaluate align --ckpt <run>/checkpoints/best.ckpt --treebank synthetic:test``; with
``--ablate-dir``, the inference-time ablation: test excess with the structure zeroed, from
``<ablate-dir>/<label>.json``, the output of ``python -m depenc.evaluate excess --split test --ablate
zero_gate``, next to the run's own.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from depenc.evaluation.excess import CATEGORIES  # the target token's category, the excess callback's order

EXCESS = [("test", "excess/test/excess"), ("test KL", "excess/test/kl"), ("test_long", "excess/test_long/excess"),
          ("validation", "excess/validation/excess")]
BUCKETS = ["uuas", "uuas_len_1-10", "uuas_len_11-20", "uuas_len_21-40", "uuas_len_>40"]
ARCS = ["recall_arc_1", "recall_arc_2", "recall_arc_3-4", "recall_arc_5-8", "recall_arc_>8"]
AGREE = [f"dist_{b}" for b in ("0-3", "4-7", "8-12", ">12")] + [f"attr_{b}" for b in ("0", "1", "2", "3+")]
DEPTHS = ("test_depth3", "test_depth4", "test_depth5", "test_depth6")  # depth-split runs (n_test_depth > 0)


def label(run: Path) -> str:
    """Runs of different experiments share grid-point names (n_train=16000-s1): the experiment folder
    keeps their align files apart."""
    return f"{run.parent.name}-{run.name}"


@functools.cache
def summary(run: Path) -> dict:
    """The run's summary.json, read once for all tables."""
    return json.loads((run / "summary.json").read_text())


def run_row(run: Path) -> list[str]:
    s = summary(run)
    cells = [f"{s[k]:.4f}" if k in s else "-" for _, k in EXCESS]
    acc, m = s.get("agree/test_long/acc"), s.get("agree/test_long/margin_dist_>12")
    lo, hi = s.get("agree/test_long/margin_dist_>12_lo"), s.get("agree/test_long/margin_dist_>12_hi")
    cells.append(f"{acc:.3f}" if acc is not None else "-")
    cells.append(f"{m:.2f} [{lo:.2f}, {hi:.2f}]" if m is not None else "-")
    cells.append(f"{s['perf/tokens_per_s']:.0f}" if "perf/tokens_per_s" in s else "-")
    cells.append(f"{s['perf/peak_rss_mb']:.0f}" if "perf/peak_rss_mb" in s else "-")
    cells.append(str(s.get("best_step", "-")))
    return [label(run), *cells]


def agree_row(run: Path) -> list[str]:
    """Agreement accuracy on test_long per distance and attractor bucket, ``acc [lo, hi]``."""
    s = summary(run)
    cells = []
    for b in AGREE:
        k = f"agree/test_long/acc_{b}"
        cells.append(f"{s[k]:.3f} [{s[k + '_lo']:.3f}, {s[k + '_hi']:.3f}]" if k in s else "-")
    return [label(run), *cells]


def category_row(run: Path, what: str) -> list[str]:
    """Test excess (``what`` = excess) or KL per category of the target token, in CATEGORIES' order."""
    s = summary(run)
    return [label(run), *[f"{s[k]:.4f}" if (k := f"excess/test/cat/{c}/{what}") in s else "-" for c in CATEGORIES]]


def depth_row(run: Path) -> list[str] | None:
    """Excess on test and the depth-generalisation sets of a depth-split run; None for other runs."""
    s = summary(run)
    if not any(f"excess/{d}/excess" in s for d in DEPTHS):
        return None
    return [label(run), *[f"{s[k]:.4f}" if (k := f"excess/{d}/excess") in s else "-" for d in ("test", *DEPTHS)]]


def align_rows(run: Path, align_dir: Path, references: bool, keys: list[str]) -> list[list[str]]:
    """The run's parser (and inducer) rows of ``keys``; with ``references`` the chain and random trees too
    (the same sentences for every run of synthetic:test, so they are shown once)."""
    f = align_dir / f"{label(run)}.json"
    if not f.is_file():
        return []
    src = json.loads(f.read_text())["sources"]
    names = ["parser", "inducer"] + (["chain", "random"] if references else [])
    return [[label(run) if n in ("parser", "inducer") else "(reference)", n,
             *[f"{src[n].get(b, float('nan')):.3f}" for b in keys]] for n in names if n in src]


def ablate_row(run: Path, ablate_dir: Path) -> list[str] | None:
    """Test excess as trained and with the structure zeroed at inference, and the difference."""
    f = ablate_dir / f"{label(run)}.json"
    if not f.is_file():
        return None
    out = json.loads(f.read_text())
    own = summary(run).get("excess/test/excess")
    zeroed = out["metrics"]["excess/test/excess"]
    delta = f"{zeroed - own:+.4f}" if own is not None else "-"
    return [label(run), " ".join(out.get("ablate") or []) or "(none)", f"{own:.4f}" if own is not None else "-",
            f"{zeroed:.4f}", delta]


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--align-dir", type=Path, default=None, help="folder of `evaluate align` outputs, <label>.json")
    ap.add_argument("--ablate-dir", type=Path, default=None, help="folder of `evaluate excess --ablate` outputs")
    args = ap.parse_args(argv)
    missing = [str(r) for r in args.runs if not (r / "summary.json").is_file()]
    if missing:
        print(f"error: no summary.json in {', '.join(missing)} (a finished run folder?)", file=sys.stderr)
        return 2
    head = ["run", *[h for h, _ in EXCESS], "agree acc (test_long)", "margin >12 [95%]", "tokens/s", "peak RSS MB", "best step"]
    print(table(head, [run_row(r) for r in args.runs]))
    print()
    print(table(["run", *[f"agree {b}" for b in AGREE]], [agree_row(r) for r in args.runs]))
    for what in ("excess", "kl"):
        print(f"\ntest {what} by the target's category (nats/token)\n")
        print(table(["run", *CATEGORIES], [category_row(r, what) for r in args.runs]))
    depth = [row for r in args.runs if (row := depth_row(r)) is not None]
    if depth:
        print("\nexcess on the depth-generalisation sets (nats/token)\n")
        print(table(["run", "test", *[d.removeprefix("test_") for d in DEPTHS]], depth))
    if args.align_dir:
        aligned = [r for r in args.runs if (args.align_dir / f"{label(r)}.json").is_file()]
        for name, keys, cols in (("UUAS by sentence length", BUCKETS, ["UUAS", "1-10 w", "11-20 w", "21-40 w", ">40 w"]),
                                 ("recall by gold arc length", ARCS, ["1", "2", "3-4", "5-8", ">8"])):
            rows = [row for r in aligned for row in align_rows(r, args.align_dir, r == aligned[-1], keys)]
            print(f"\n{name}\n")
            print(table(["run", "source", *cols], rows))
    if args.ablate_dir:
        rows = [row for r in args.runs if (row := ablate_row(r, args.ablate_dir)) is not None]
        print("\ninference-time ablation (test excess, nats/token)\n")
        print(table(["run", "ablation", "as trained", "ablated", "difference"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
