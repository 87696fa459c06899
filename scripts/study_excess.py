"""Excess loss over the grammar's exact optimum for a set of finished runs, and the study tables.

    python scripts/study_excess.py eval RUN_DIR ... --out docs/study/excess.json   # evaluate (adds to the file)
    python scripts/study_excess.py table docs/study/excess.json [--baseline baseline_matched_small]

``eval`` scores each run's last checkpoint with sentence-aligned blocks (``depenc.evaluation.excess``) on
validation and test (reference ``own``) and test_long (references ``train`` and ``own``), and records the
flat metrics and the per-category results under ``<exp>/s<seed>/<split>:<reference>``. ``table`` prints
Markdown: floors, overall excess and KL (mean ± std over seeds, n), the five categories with the most
excess, depth, the share of the baseline's excess each model removes, and plain-block vs aligned ppl.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

EVALS = (("validation", "own"), ("test", "own"), ("test_long", "train"), ("test_long", "own"))


def evaluate_runs(run_dirs: list[Path], out: Path) -> None:
    import torch

    from depenc.evaluate import load_run
    from depenc.evaluation.base import synthetic_config
    from depenc.evaluation.excess import evaluate_excess

    torch.set_num_threads(1)
    results = json.loads(out.read_text()) if out.is_file() else {}
    for run_dir in run_dirs:
        _, model, tok, run_config = load_run(str(run_dir / "checkpoints" / "last.ckpt"), "cpu")
        exp, seed = run_config["exp"], f"s{run_config['seed']}"
        data = run_config["data"]
        for split, reference in EVALS:
            flat, rich = evaluate_excess(model, tok, synthetic_config(data["synthetic"]), split, reference,
                                         cache_dir=Path(data["cache_dir"]) / "exact")
            pre = f"excess/{split}/"
            results.setdefault(exp, {}).setdefault(seed, {})[f"{split}:{reference}"] = {
                "run": str(run_dir), **{k[len(pre):]: v for k, v in flat.items()},
                "cat_n": {c: s["n"] for c, s in rich["cat"].items()}}
            print(f"{exp} {seed} {split}:{reference} excess {flat[pre + 'excess']:.4f}", flush=True)
        out.write_text(json.dumps(results, indent=1, sort_keys=True))


def stat(values: list[float], digits: int = 4) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (n=1)"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f} (n={len(values)})"


def table(path: Path, baseline: str) -> str:
    res = json.loads(path.read_text())
    exps = sorted(res, key=lambda e: (e != baseline, e))

    def vals(exp, key, name):
        return [seed[key][name] for seed in res[exp].values() if key in seed and name in seed[key]]

    lines = ["Exact optimum of each split (nats/token, ppl):", "",
             "| split:reference | optimum nats/token | optimum ppl |", "|---|---|---|"]
    any_run = res[exps[0]][next(iter(res[exps[0]]))]
    for split, ref in EVALS:
        key = f"{split}:{ref}"
        lines.append(f"| {key} | {any_run[key]['opt_nll']:.6f} | {any_run[key]['opt_ppl']:.4f} |")
    lines += ["", "Excess and KL over the optimum (nats/token, sentence-aligned, mean ± std over seeds):", "",
              "| model | " + " | ".join(f"{s}:{r} excess | {s}:{r} KL" for s, r in EVALS) + " |",
              "|---|" + "---|" * (2 * len(EVALS))]
    for exp in exps:
        cells = [f"{stat(vals(exp, f'{s}:{r}', 'excess'))} | {stat(vals(exp, f'{s}:{r}', 'kl'))}" for s, r in EVALS]
        lines.append(f"| `{exp}` | " + " | ".join(cells) + " |")
    base = {f"{s}:{r}": statistics.mean(vals(baseline, f"{s}:{r}", "excess")) for s, r in EVALS}
    lines += ["", f"Share of `{baseline}`'s excess removed (1 - model / baseline mean; mean ± std over the model's seeds):", "",
              "| model | " + " | ".join(f"{s}:{r}" for s, r in EVALS) + " |", "|---|" + "---|" * len(EVALS)]
    for exp in exps[1:]:
        cells = [stat([1 - v / base[f"{s}:{r}"] for v in vals(exp, f"{s}:{r}", "excess")], 2) for s, r in EVALS]
        lines.append(f"| `{exp}` | " + " | ".join(cells) + " |")
    for key in ("test:own", "test_long:train"):
        contrib = {c: statistics.mean(seed[key][f"cat/{c}/share"] * seed[key]["excess"] for seed in res[baseline].values())
                   for c in res[baseline][next(iter(res[baseline]))][key]["cat_n"]}
        top = sorted(contrib, key=contrib.get, reverse=True)[:5]
        lines += ["", f"{key}: the five categories with the most excess in `{baseline}` — contribution to the "
                  "overall excess (nats per token of the split) and, in brackets, excess per token of the category:", "",
                  "| model | " + " | ".join(top) + " |", "|---|" + "---|" * len(top)]
        for exp in exps:
            cells = []
            for c in top:
                part = [seed[key][f"cat/{c}/share"] * seed[key]["excess"] for seed in res[exp].values() if key in seed]
                per = [seed[key][f"cat/{c}/excess"] for seed in res[exp].values() if key in seed]
                cells.append(f"{stat(part)} [{statistics.mean(per):.3f}]")
            lines.append(f"| `{exp}` | " + " | ".join(cells) + " |")
    depths = sorted({k.split("/")[1] for seed in res[baseline].values() for k in seed["test_long:train"]
                     if k.startswith("depth/")}, key=int)
    lines += ["", "test_long:train, excess per token by embedding depth at the position (mean over seeds):", "",
              "| model | " + " | ".join(f"depth {d}" for d in depths) + " |", "|---|" + "---|" * len(depths)]
    for exp in exps:
        cells = [f"{statistics.mean(vals(exp, 'test_long:train', f'depth/{d}/excess')):.4f}" for d in depths]
        lines.append(f"| `{exp}` | " + " | ".join(cells) + " |")
    lines += ["", "Plain blocks (cut at block starts) against sentence-aligned blocks, same checkpoints (ppl):", "",
              "| model | validation plain | validation aligned | test plain | test aligned | test_long plain | test_long aligned |",
              "|---|---|---|---|---|---|---|"]
    for exp in exps:
        cells = [f"{stat(vals(exp, k, 'plain_ppl'), 3)} | {stat(vals(exp, k, 'ppl'), 3)}"
                 for k in ("validation:own", "test:own", "test_long:own")]
        lines.append(f"| `{exp}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("eval")
    e.add_argument("runs", nargs="+", type=Path)
    e.add_argument("--out", type=Path, required=True)
    t = sub.add_parser("table")
    t.add_argument("path", type=Path)
    t.add_argument("--baseline", default="baseline_matched_small")
    a = p.parse_args(argv)
    if a.cmd == "eval":
        evaluate_runs(a.runs, a.out)
    else:
        sys.stdout.write(table(a.path, a.baseline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
