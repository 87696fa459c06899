"""Markdown table of the structure study (docs/structure-study.md) from the study's run folders.

    python scripts/study_table.py [runs/study] [--brown]

One row per variant: mean ± std over seeds (n) of the final metrics that decide the study. The
synthetic table skips the ``brown_*`` variants; ``--brown`` tables only those (WSJ / EWT alignment,
Brown / WikiText-2 / PTB perplexity and bits per byte).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

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


def value(summary: dict, key) -> float | None:
    if isinstance(key, tuple):  # mean of buckets (sentences over 20 words)
        vals = [summary.get(k) for k in key if summary.get(k) is not None]
        return sum(vals) / len(vals) if vals else None
    v = summary.get(key)
    return float(v) if isinstance(v, (int, float)) else None


def cell(values: list[float], digits: int) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (n=1)"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f} (n={len(values)})"


def main(root: str = "runs/study", brown: bool = False) -> None:
    columns = BROWN_COLUMNS if brown else COLUMNS
    rows: dict[str, list[dict]] = {}
    for summary_file in sorted(Path(root).glob("*/*/summary.json")):
        variant = summary_file.parts[-3]
        if variant.startswith("brown_") == brown:
            rows.setdefault(variant, []).append(json.loads(summary_file.read_text()))
    print("| variant | " + " | ".join(c[0] for c in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for variant, summaries in rows.items():
        cells = [cell([v for s in summaries if (v := value(s, key)) is not None], d) for _, key, d in columns]
        print(f"| {variant} | " + " | ".join(cells) + " |")
    print()
    for label, prefix in REFERENCES["brown" if brown else "synthetic"]:
        first = next((s for ss in rows.values() for s in ss if value(s, f"{prefix}/uuas") is not None), None)
        if first is not None:
            over20 = value(first, over_20(prefix))
            print(f"Adjacent-word chain on the {label}: UUAS {value(first, f'{prefix}/uuas'):.3f}, "
                  f"over 20 words {over20:.3f}, left-arc {value(first, f'{prefix}/left_arc'):.3f}.")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(*[a for a in args if a != "--brown"], brown="--brown" in args)
