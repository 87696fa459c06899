"""Markdown table of the structure study (docs/structure-study.md) from the study's run folders.

    python scripts/study_table.py [runs/study]

One row per variant: mean ± std over seeds (n) of the final metrics that decide the study.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

COLUMNS = [
    ("val ppl", "val/validation/ppl", 2),
    ("test_long ppl", "test/test_long/ppl", 2),
    ("parser UUAS", "align/synthetic/parser/uuas", 3),
    ("parser UUAS >20 w", ("align/synthetic/parser/uuas_len_21-40", "align/synthetic/parser/uuas_len_>40"), 3),
    ("parser left-arc", "align/synthetic/parser/left_arc", 3),
    ("best head UUAS", "align/synthetic/attn_best/uuas", 3),
    ("agree >12 (test_long)", "agree/test_long/acc_dist_>12", 3),
    ("margin >12 (nats)", "agree/test_long/margin_dist_>12", 2),
    ("grammatical", "gen/grammatical", 2),
    ("lambda", "depenc/lambda_mean", 3),
    ("gate", "depenc/gate_mean", 2),
]


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


def main(root: str = "runs/study") -> None:
    rows = {}
    for summary_file in sorted(Path(root).glob("*/*/summary.json")):
        rows.setdefault(summary_file.parts[-3], []).append(json.loads(summary_file.read_text()))
    print("| variant | " + " | ".join(c[0] for c in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for variant, summaries in rows.items():
        cells = [cell([v for s in summaries if (v := value(s, key)) is not None], d) for _, key, d in COLUMNS]
        print(f"| {variant} | " + " | ".join(cells) + " |")
    chain = next((value(s, "align/synthetic/chain/uuas") for ss in rows.values() for s in ss), None)
    if chain is not None:
        print(f"\nAdjacent-word chain UUAS on the same sentences: {chain:.3f}.")


if __name__ == "__main__":
    main(*sys.argv[1:])
