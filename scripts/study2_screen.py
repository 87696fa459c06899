"""Markdown tables of the second structure study's screen (docs/structure-study-2.md).

    python scripts/study2_screen.py RUN_DIR [RUN_DIR ...] [--align-dir DIR]

One row per run folder (label ``<experiment folder>-<run name>``, e.g. ``depenc-n_train=16000-s1``, unique
across the experiments of a grid): the exact excess loss and KL on test,
test_long and validation (nats/token over the grammar's optimum, sentence-aligned), agreement on
test_long (accuracy, margin at > 12 words with its 95% interval), training tokens/s and the best step,
read from summary.json; and a second table of parser UUAS on synthetic:test by sentence length (with
the inducer's own trees, chain and random) from ``<align-dir>/<label>.json``, the output of
``python -m depenc.evaluate align --ckpt <run>/checkpoints/best.ckpt --treebank synthetic:test``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXCESS = [("test", "excess/test/excess"), ("test KL", "excess/test/kl"), ("test_long", "excess/test_long/excess"),
          ("validation", "excess/validation/excess")]
BUCKETS = ["uuas", "uuas_len_1-10", "uuas_len_11-20", "uuas_len_21-40", "uuas_len_>40"]


def label(run: Path) -> str:
    """Runs of different experiments share grid-point names (n_train=16000-s1): the experiment folder
    keeps their align files apart."""
    return f"{run.parent.name}-{run.name}"


def run_row(run: Path) -> list[str]:
    s = json.loads((run / "summary.json").read_text())
    cells = [f"{s[k]:.4f}" if k in s else "-" for _, k in EXCESS]
    acc, m = s.get("agree/test_long/acc"), s.get("agree/test_long/margin_dist_>12")
    lo, hi = s.get("agree/test_long/margin_dist_>12_lo"), s.get("agree/test_long/margin_dist_>12_hi")
    cells.append(f"{acc:.3f}" if acc is not None else "-")
    cells.append(f"{m:.2f} [{lo:.2f}, {hi:.2f}]" if m is not None else "-")
    cells.append(f"{s['perf/tokens_per_s']:.0f}" if "perf/tokens_per_s" in s else "-")
    cells.append(str(s.get("best_step", "-")))
    return [label(run), *cells]


def align_rows(run: Path, align_dir: Path, references: bool) -> list[list[str]]:
    """The run's parser (and inducer) rows; with ``references`` the chain and random trees too (the same
    sentences for every run of synthetic:test, so they are shown once)."""
    f = align_dir / f"{label(run)}.json"
    if not f.is_file():
        return []
    src = json.loads(f.read_text())["sources"]
    names = ["parser", "inducer"] + (["chain", "random"] if references else [])
    return [[label(run) if n in ("parser", "inducer") else "(reference)", n,
             *[f"{src[n].get(b, float('nan')):.3f}" for b in BUCKETS]] for n in names if n in src]


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--align-dir", type=Path, default=None)
    args = ap.parse_args(argv)
    missing = [str(r) for r in args.runs if not (r / "summary.json").is_file()]
    if missing:
        print(f"error: no summary.json in {', '.join(missing)} (a finished run folder?)", file=sys.stderr)
        return 2
    head = ["run", *[h for h, _ in EXCESS], "agree acc (test_long)", "margin >12 [95%]", "tokens/s", "best step"]
    print(table(head, [run_row(r) for r in args.runs]))
    if args.align_dir:
        aligned = [r for r in args.runs if (args.align_dir / f"{label(r)}.json").is_file()]
        rows = [row for r in aligned for row in align_rows(r, args.align_dir, r == aligned[-1])]
        print()
        print(table(["run", "source", "UUAS", "1-10 w", "11-20 w", "21-40 w", ">40 w"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
