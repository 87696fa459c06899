"""Markdown table of the structure study (docs/structure-study.md) from the study's run folders.

    python scripts/study_table.py [runs/study] [--brown]

One row per variant (a folder under the root): mean ± std over its finished runs (n) of the final
metrics that decide the study. The synthetic table skips the ``brown_*`` variants; ``--brown``
tables only those (WSJ / EWT alignment, Brown / WikiText-2 / PTB perplexity and bits per byte).
Runs are read and aggregated by ``depenc.compare`` (the same code as ``make compare``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from depenc.compare.runs import Run, find_runs, load_run
from depenc.compare.stats import aggregate
from depenc.compare.tables import fmt_stat


def over_20(prefix: str) -> tuple[str, str]:
    """The two length buckets of sentences over 20 words (averaged by :func:`value`)."""
    return (f"{prefix}/uuas_len_21-40", f"{prefix}/uuas_len_>40")


COLUMNS = [
    ("val ppl", "val/validation/ppl", 2),
    ("test_long ppl", "test/test_long/ppl", 2),
    ("parser UUAS", "align/synthetic/parser/uuas", 3),
    ("parser UUAS >20 w", over_20("align/synthetic/parser"), 3),
    ("parser left-arc", "align/synthetic/parser/left_arc", 3),
    ("best head UUAS", "align/synthetic/attn_best/uuas", 3),
    ("agree >12 (test_long)", "agree/test_long/acc_dist_>12", 3),
    ("margin >12 (nats)", "agree/test_long/margin_dist_>12", 2),
    ("grammatical", "gen/grammatical", 2),
    ("lambda", "depenc/lambda_mean", 3),
    ("gate", "depenc/gate_mean", 2),
]


BROWN_COLUMNS = [
    ("val ppl", "val/validation/ppl", 1),
    ("test ppl", "test/test/ppl", 1),
    ("test bpb", "test/test/bpb", 3),
    ("WikiText-2 bpb", "test/wikitext2_test/bpb", 3),
    ("PTB bpb", "test/ptb_test/bpb", 3),
    ("WSJ parser UUAS", "align/wsj/parser/uuas", 3),
    ("WSJ parser >20 w", over_20("align/wsj/parser"), 3),
    ("WSJ parser left-arc", "align/wsj/parser/left_arc", 3),
    ("WSJ best head", "align/wsj/attn_best/uuas", 3),
    ("EWT parser UUAS", "align/ewt/parser/uuas", 3),
    ("EWT parser >20 w", over_20("align/ewt/parser"), 3),
    ("EWT best head", "align/ewt/attn_best/uuas", 3),
]
REFERENCES = {  # (label, summary key prefix) of the chain lines printed under each table
    "synthetic": [("synthetic test", "align/synthetic/chain")],
    "brown": [("WSJ sample", "align/wsj/chain"), ("EWT dev", "align/ewt/chain")],
}


def value(run: Run, key: str | tuple[str, ...]) -> float | None:
    """A final metric of a run; for a tuple of keys, the mean of those the run has."""
    if isinstance(key, tuple):  # mean of buckets (sentences over 20 words)
        vals = [v for k in key if (v := run.final(k)) is not None]
        return sum(vals) / len(vals) if vals else None
    return run.final(key)


def study_runs(root: Path, brown: bool) -> dict[str, list[Run]]:
    """``{variant: finished runs}`` of the variant folders under ``root`` (by name), Brown ones or not."""
    variants = {d.name: find_runs(root, d.name) for d in sorted(root.iterdir())
                if d.is_dir() and d.name.startswith("brown_") == brown}
    return {v: [load_run(p) for p in dirs] for v, dirs in variants.items() if dirs}


def table(variants: dict[str, list[Run]], columns: list) -> list[str]:
    """The Markdown lines of the study table: one row per variant, one cell per column."""
    values = pd.DataFrame([(variant, i, label, v) for variant, runs in variants.items() for i, run in enumerate(runs)
                           for label, key, _ in columns if (v := value(run, key)) is not None],
                          columns=["group", "run", "metric", "value"])
    summary = aggregate(values).to_dict("index")
    lines = ["| variant | " + " | ".join(c[0] for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for variant in variants:
        cells = [fmt_stat(summary.get((label, variant)), lambda x, d=digits: f"{x:.{d}f}") for label, _, digits in columns]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return lines


def chain_lines(variants: dict[str, list[Run]], brown: bool) -> list[str]:
    """The adjacent-word chain's scores (the same in every run over the same sentences), from the first run that has them."""
    lines = []
    for label, prefix in REFERENCES["brown" if brown else "synthetic"]:
        first = next((r for runs in variants.values() for r in runs if value(r, f"{prefix}/uuas") is not None), None)
        if first is not None:
            lines.append(f"Adjacent-word chain on the {label}: UUAS {value(first, f'{prefix}/uuas'):.3f}, "
                         f"over 20 words {value(first, over_20(prefix)):.3f}, "
                         f"left-arc {value(first, f'{prefix}/left_arc'):.3f}.")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", nargs="?", default="runs/study", help="the study's run folders (default: runs/study)")
    p.add_argument("--brown", action="store_true", help="table the brown_* variants only")
    args = p.parse_args(argv)
    root = Path(args.root)
    if not root.is_dir():
        print(f"error: no folder {root} (the study's runs: runs/study/<variant>/<run_id>)", file=sys.stderr)
        return 2
    variants = study_runs(root, args.brown)
    print("\n".join(table(variants, BROWN_COLUMNS if args.brown else COLUMNS)))
    print()
    for line in chain_lines(variants, args.brown):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
