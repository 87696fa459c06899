"""Run experiments x seeds (x a grid): ``python -m depenc.sweep --exps A B --seeds 1 2 3 [--grid KEY=v1,v2 ...] [--jobs N] [--gpus 0,1] [--dry-run] [-- key=value ...]``.

Each (experiment, seed) is ``python -m depenc.train <exp> seed=<s> [key=value ...]``, run folders under
``runs/<exp>/``. ``--grid data.synthetic.n_train=1000,4000 model.n_layer=2,4`` adds every combination of
the listed values (a product over the keys); such a run is named by its grid point and seed
(``runs/<exp>/n_train=1000-n_layer=2-s1``), and its config.yaml holds the point's values. Every
(experiment, grid point) config is checked before anything runs: a bad key or value stops the sweep
with one line (exit 2). By default one after another, in the order experiment by experiment, seed by seed,
with the output on the terminal. ``--jobs N`` runs up to N at once (each job's output goes to
``<log-dir>/<exp>-s<seed>.log``); ``--gpus 0,1,...`` gives each job one of these GPUs through
``CUDA_VISIBLE_DEVICES`` (a GPU runs one job at a time; ``--jobs`` defaults to the number of GPUs).
A failed run does not stop the others (``--fail-fast`` does); the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


@dataclass
class Job:
    exp: str
    seed: str
    cmd: list[str]
    point: str = ""  # the grid point's tag, e.g. "n_train=1000-n_layer=2" ("" without a grid)

    @property
    def name(self) -> str:
        return f"{self.exp.replace('/', '_')}{'-' + self.point if self.point else ''}-s{self.seed}"


class SweepError(ValueError):
    """A bad --grid or a config that would fail: one line, exit 2, nothing run."""


def parse_grid(specs: Sequence[str]) -> list[list[str]]:
    """['a.b=1,2', 'c=x,y'] -> [['a.b=1', 'c=x'], ['a.b=1', 'c=y'], ['a.b=2', 'c=x'], ['a.b=2', 'c=y']]."""
    axes = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        listed = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not listed:
            raise SweepError(f"--grid {spec!r}: give KEY=v1,v2,... (e.g. data.synthetic.n_train=1000,4000)")
        axes.append([f"{key.strip()}={v}" for v in listed])
    return [list(point) for point in itertools.product(*axes)]


def point_tag(point: Sequence[str]) -> str:
    """A run-folder-safe name of a grid point: the last part of each key with its value."""
    parts = [f"{key.rsplit('.', 1)[-1]}={value}" for key, _, value in (o.partition("=") for o in point)]
    return re.sub(r"[^A-Za-z0-9=._,-]", "_", "-".join(parts))


def plan(exps: Sequence[str], seeds: Sequence[str], overrides: Sequence[str], python: str = sys.executable,
         grid: Sequence[str] = ()) -> list[Job]:
    points = parse_grid(grid) if grid else [[]]
    jobs = []
    for exp in exps:
        for point in points:
            tag = point_tag(point) if point else ""
            for seed in seeds:
                named = [f"run.name={tag}-s{seed}"] if tag else []
                jobs.append(Job(exp, str(seed), [python, "-m", "depenc.train", exp, f"seed={seed}", *overrides,
                                                 *point, *named], tag))
    return jobs


def check_configs(jobs: Sequence[Job]) -> None:
    """Load every distinct (experiment, overrides) config as the run would: SweepError on the first bad one."""
    from depenc.config import ConfigError, load_config

    seen = set()
    for job in jobs:
        exp, overrides = job.cmd[3], tuple(job.cmd[4:])
        if (exp, overrides) in seen:
            continue
        seen.add((exp, overrides))
        try:
            load_config(exp, list(overrides))
        except ConfigError as exc:
            raise SweepError(f"{job.name}: {exc}") from None


def _run_sequential(jobs: list[Job], fail_fast: bool) -> dict[str, int]:
    results: dict[str, int] = {}
    for i, job in enumerate(jobs, 1):
        print(f"[sweep {i}/{len(jobs)}] {shlex.join(job.cmd)}", flush=True)
        t0 = time.time()
        rc = subprocess.call(job.cmd)
        results[job.name] = rc
        print(f"[sweep {i}/{len(jobs)}] {job.name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} "
              f"in {time.time() - t0:.0f} s", flush=True)
        if rc != 0 and fail_fast:
            break
    return results


def _run_parallel(jobs: list[Job], n_jobs: int, gpus: list[str], log_dir: Path, fail_fast: bool) -> dict[str, int]:
    log_dir.mkdir(parents=True, exist_ok=True)
    pending = list(jobs)
    running: dict[subprocess.Popen, tuple[Job, str | None, float, object]] = {}
    free_gpus = list(gpus)
    results: dict[str, int] = {}
    stop = False
    while (pending and not stop) or running:
        while pending and not stop and len(running) < n_jobs and (not gpus or free_gpus):
            job = pending.pop(0)
            env = dict(os.environ)
            gpu = free_gpus.pop(0) if gpus else None
            if gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = gpu
            log = open(log_dir / f"{job.name}.log", "w")
            proc = subprocess.Popen(job.cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            running[proc] = (job, gpu, time.time(), log)
            where = f" on GPU {gpu}" if gpu is not None else ""
            print(f"[sweep] started {job.name}{where}: {shlex.join(job.cmd)} > {log.name}", flush=True)
        time.sleep(0.5)
        for proc in [p for p in running if p.poll() is not None]:
            job, gpu, t0, log = running.pop(proc)
            log.close()
            results[job.name] = proc.returncode
            if gpu is not None:
                free_gpus.append(gpu)
            status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}, see {log.name})"
            print(f"[sweep] {job.name}: {status} in {time.time() - t0:.0f} s", flush=True)
            if proc.returncode != 0 and fail_fast:
                stop = True
    return results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m depenc.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exps", nargs="+", required=True, help="experiment names (experiments/<exp>.yaml)")
    p.add_argument("--seeds", nargs="+", default=["1", "2", "3"], help="seeds (default: 1 2 3)")
    p.add_argument("--jobs", type=int, default=0, help="runs at once (default: 1, or the number of --gpus)")
    p.add_argument("--gpus", default="", help="comma-separated GPU ids, one job per GPU (CUDA_VISIBLE_DEVICES)")
    p.add_argument("--log-dir", default="runs/sweep-logs", help="per-job logs when --jobs > 1")
    p.add_argument("--fail-fast", action="store_true", help="stop starting runs after the first failure")
    p.add_argument("--grid", nargs="+", default=[], metavar="KEY=v1,v2",
                   help="config keys and their values: every combination is run (x experiments x seeds)")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run (after --)")
    args = p.parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        p.error(f"overrides must be key=value: {bad}")
    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
    n_jobs = args.jobs or max(1, len(gpus))
    try:
        jobs = plan(args.exps, args.seeds, args.overrides, grid=args.grid)
        check_configs(jobs)
    except SweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        for job in jobs:
            print(shlex.join(job.cmd))
        return 0
    t0 = time.time()
    if n_jobs <= 1 and not gpus:
        results = _run_sequential(jobs, args.fail_fast)
    else:
        results = _run_parallel(jobs, n_jobs, gpus, Path(args.log_dir), args.fail_fast)
    failed = [name for name, rc in results.items() if rc != 0]
    skipped = [j.name for j in jobs if j.name not in results]
    print(f"[sweep] {len(results) - len(failed)}/{len(jobs)} runs ok in {time.time() - t0:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else "")
          + (f"; not started: {', '.join(skipped)}" if skipped else ""), flush=True)
    return 1 if failed or skipped else 0


if __name__ == "__main__":
    sys.exit(main())
