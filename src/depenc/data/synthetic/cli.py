"""Command line of the synthetic corpus: ``python -m depenc.data.synthetic {export,pairs,check,stats,floor}``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Sequence

from .corpus import make_split, minimal_pairs, pair_record, split_stats, to_conllu
from .exact import DEFAULT_CACHE_DIR, REFERENCES, floor
from .grammar import SPLITS, SyntheticConfig, get_grammar


def _coerce(key: str, value: str):
    types = {f.name: f.type for f in dataclasses.fields(SyntheticConfig)}
    if key not in types:
        raise ValueError(f"unknown SyntheticConfig key: {key}")
    t = str(types[key])
    return int(value) if "int" in t else float(value)


def _cfg_from_args(args: argparse.Namespace) -> SyntheticConfig:
    d: dict = {}
    for kv in args.set or ():
        if "=" not in kv:
            raise ValueError(f"--set expects KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        try:
            d[k.strip()] = _coerce(k.strip(), v.strip())
        except ValueError as exc:
            raise ValueError(f"--set {kv}: {exc}") from None
    if getattr(args, "seed", None) is not None:
        d["seed"] = args.seed
    cfg = SyntheticConfig.from_dict(d)
    n = getattr(args, "n", None)
    if n is not None:  # splits are prefix-stable, so this just takes the first n
        cfg = dataclasses.replace(cfg, **{f"n_{args.split}": n})
    return cfg


class _ArgumentParser(argparse.ArgumentParser):
    """Bad arguments: one line on stderr and exit code 2 (no usage block)."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    ap = _ArgumentParser(prog="python -m depenc.data.synthetic",
                         description="The embedded synthetic grammar: corpus export, checks, exact floors.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p: argparse.ArgumentParser, split: bool = True, n: bool = True) -> None:
        if split:
            p.add_argument("--split", default="test", choices=SPLITS)
        if n:
            p.add_argument("--n", type=int, default=None, help="number of sentences")
        p.add_argument("--seed", type=int, default=None)
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a SyntheticConfig field (repeatable)")

    p = sub.add_parser("export", help="write a split as CoNLL-U")
    common(p)
    p.add_argument("--out", required=True)
    p = sub.add_parser("pairs", help="write agreement minimal pairs as JSONL (BLiMP's fields + distance, attractors, ...)")
    common(p)
    p.add_argument("--out", required=True)
    p = sub.add_parser("check", help="recognise one sentence per line: OK or BAD <index>")
    common(p, split=False, n=False)
    p.add_argument("file")
    p = sub.add_parser("stats", help="print statistics of a split")
    common(p)
    p.set_defaults(split="train")
    p = sub.add_parser("floor", help="exact entropy floor of a split (nats/token, ppl)")
    common(p)
    p.set_defaults(split="validation")
    p.add_argument("--reference", default="own", choices=REFERENCES,
                   help="own: the split's generator; train: the training rules without depth cap")
    p.add_argument("--dedup", action="store_true",
                   help="also the floor shift of the held-out dedup (parses the earlier splits)")
    p.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR,
                   help=f"cache of the exact distributions (default {DEFAULT_CACHE_DIR})")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    return ap


def _floor(args: argparse.Namespace, cfg: SyntheticConfig) -> None:
    if cfg.split_size(args.split) < 1:
        raise ValueError(f"split {args.split} has no sentences (--n must be >= 1)")
    res = floor(cfg, args.split, args.reference, None if args.no_cache else args.cache_dir,
                dedup=args.dedup)
    if args.json:
        print(json.dumps(res))
        return
    print(f"floor {args.split} (reference {args.reference}): {res['nats_per_token']:.6f} nats/token, "
          f"ppl {res['ppl']:.4f} ({res['n_sentences']} sentences, {res['n_tokens']} tokens with <eos>)")
    how = "read from the cache" if res["cached"] else "computed"
    print(f"exact distributions of {res['n_tokens']} positions: {res['seconds']:.2f} s ({how})")
    if "p_too_long" in res:
        print(f"P(length > max_words) = {res['p_too_long']:.3g} "
              f"(conditioning on it: {res['length_shift']:+.2g} nats/token)")
    if "dedup_mass" in res:
        print(f"P(sentence in an earlier split) = {res['dedup_mass']:.4g} "
              f"(conditioning on the dedup: {res['dedup_shift']:+.3g} nats/token)")


def _run(args: argparse.Namespace) -> None:
    cfg = _cfg_from_args(args)
    if args.cmd == "export":
        sents = make_split(cfg, args.split)
        with open(args.out, "w", encoding="utf-8") as f:
            for i, s in enumerate(sents):
                f.write(to_conllu(s, f"{args.split}-{i}"))
        print(f"wrote {len(sents)} sentences to {args.out}")
    elif args.cmd == "pairs":
        sents = make_split(cfg, args.split)
        pairs = minimal_pairs(sents, cfg)
        with open(args.out, "w", encoding="utf-8") as f:
            for i, p_ in enumerate(pairs):
                f.write(json.dumps(pair_record(p_, i)) + "\n")
        print(f"wrote {len(pairs)} pairs from {len(sents)} sentences to {args.out}",
              file=sys.stderr)
    elif args.cmd == "check":
        g = get_grammar(cfg)
        with open(args.file, encoding="utf-8") as f:
            for line in f:
                toks = line.split()
                fi, ok = g.check(toks)
                print("OK" if ok else f"BAD {len(toks) if fi is None else fi}")
    elif args.cmd == "stats":
        sents = make_split(cfg, args.split)
        for k, v in split_stats(sents).items():
            print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
    elif args.cmd == "floor":
        _floor(args, cfg)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _run(args)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
