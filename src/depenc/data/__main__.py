"""``python -m depenc.data build EXP [key=value ...] [--rebuild]``: build (or find) the data cache of an
experiment and print its tokens, build time, tokens per second and peak memory.

The overrides are the training command's (``data.build_workers=8``, ``data.source=text data.text.train=...``);
``--rebuild`` deletes the experiment's cache first, so the build is measured. Peak memory is the
resident set of this process and of its largest worker (``litdata.optimize`` processes), in MB.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m depenc.data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the data cache of an experiment and report its size and speed")
    b.add_argument("exp", help="experiment name (experiments/<exp>.yaml)")
    b.add_argument("overrides", nargs="*", help="key=value config overrides")
    b.add_argument("--rebuild", action="store_true", help="delete the cache first (measure the build)")
    args = p.parse_args(argv)

    from depenc.config import ConfigError, load_config
    from depenc.data.datamodule import LMDataModule
    from depenc.data.sources import DataUnavailableError

    try:
        cfg = load_config(args.exp, args.overrides)
        dm = LMDataModule(cfg.data, seed=cfg.seed)
        if args.rebuild:
            shutil.rmtree(dm.cache_folder(), ignore_errors=True)
        t0 = time.perf_counter()
        dm.setup()
        seconds = time.perf_counter() - t0
    except (ConfigError, DataUnavailableError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    tokens = sum(s["n_tokens"] for s in dm.split_stats.values())
    print(f"cache: {dm.cache_path} ({'found' if dm.cache_hit else 'built'} in {seconds:.1f} s)")
    for name, stats in dm.split_stats.items():
        print(f"  {name}: {stats['n_docs']} documents, {stats['n_tokens']} tokens")
    build = dm.corpus_info["build"]
    if not dm.cache_hit:
        print(f"tokens: {tokens} in {seconds:.1f} s = {tokens / seconds / 1e6:.3f}M tokens/s "
              f"({build.get('workers')} workers over {build.get('train_shards')} train shards; tokenizer "
              f"{build.get('train_tokenizer_s')} s, evaluation splits {build.get('encode_eval_s')} s, "
              f"train split {build.get('encode_train_s')} s)")
    print(f"peak RSS: {self_mb:.0f} MB (this process), {child_mb:.0f} MB (largest worker)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
