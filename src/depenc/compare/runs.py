"""Run folders: load one (:func:`load_run` -> :class:`Run`), choose which to compare
(:func:`select_runs` for the report, :func:`resolve_run_dirs` for the notebook, :func:`find_runs`
for scripts), and group them (:func:`group_runs` by experiment, :func:`label_runs` one per run).
The report, ``notebooks/01-analyze-generations.ipynb`` and ``scripts/study_table.py`` all read runs
through this module."""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[3]
BASELINE_KINDS = ("baseline_matched", "baseline")
DEFAULT_NOTEBOOK_EXPS = ("depenc_small", "baseline_matched_small")
NOTEBOOK_ENV = "DEPENC_NOTEBOOK_RUNS"


class CompareError(Exception):
    """A problem the user can fix (no runs found, a folder that is not a run); exit code 2."""


def finite(value: Any) -> float | None:
    """``value`` as a finite float, else None (None, NaN, inf, strings, bools count as absent)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_history(path: Path) -> pd.DataFrame:
    """metrics.csv as numbers: a ``step`` column and one column per metric that has a value
    (NaN where a row did not log it; non-numbers and inf count as absent)."""
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError):  # missing, empty or unparsable file: no history
        return pd.DataFrame()
    if "step" not in df:
        return pd.DataFrame()
    df = df.drop(columns=[c for c in df if c == "epoch" or str(c).startswith("Unnamed:")])
    text = df.select_dtypes(exclude="number").columns  # columns with a non-number in them
    if len(text):
        df[text] = df[text].apply(pd.to_numeric, errors="coerce")
    values = df.to_numpy(np.float64, copy=True)  # (rows, columns)
    values[~np.isfinite(values)] = np.nan  # inf counts as absent, like NaN
    df = pd.DataFrame(values, columns=df.columns)
    return df.dropna(subset=["step"]).dropna(axis=1, how="all")


def _last_step(folder: Path, suffix: str) -> int | None:
    """The largest ``<step>`` of the ``folder/<step><suffix>`` files, or None."""
    if not folder.is_dir():
        return None
    stems = [p.name[: -len(suffix)] for p in folder.iterdir() if p.name.endswith(suffix)]
    return max((int(s) for s in stems if s.isdigit()), default=None)


@dataclass
class Run:
    """A loaded run folder: resolved config, run.json, summary.json and the metrics.csv history.
    The last evaluation's files (alignment/, samples/) are read on demand."""

    path: Path
    config: dict
    info: dict
    summary: dict
    history: pd.DataFrame = field(repr=False)
    label: str = ""  # group label (set by group_runs / label_runs)

    @property
    def exp(self) -> str:
        return str(self.config.get("exp") or self.info.get("exp") or self.path.parent.name)

    @property
    def run_id(self) -> str:
        return str(self.info.get("run_id") or self.path.name)

    @property
    def name(self) -> str:
        return f"{self.exp}/{self.run_id}"

    @property
    def seed(self) -> int | None:
        seed = self.config.get("seed")
        return int(seed) if isinstance(seed, (int, float)) and not isinstance(seed, bool) else None

    @property
    def kind(self) -> str | None:
        return (self.config.get("model") or {}).get("kind")

    @property
    def source(self) -> str | None:
        return (self.config.get("data") or {}).get("source")

    @property
    def complete(self) -> bool:
        return (self.path / "summary.json").is_file()

    @property
    def started(self) -> float:
        return _started(self.path)

    def final(self, key: str) -> float | None:
        """The final value of a metric: summary.json, else the last value in metrics.csv, else None."""
        if key in self.summary:
            return finite(self.summary[key])
        if key in self.history:
            values = self.history[key].dropna()
            return float(values.iloc[-1]) if len(values) else None
        return None

    def metric_keys(self) -> set[str]:
        keys = {k for k, v in self.summary.items() if finite(v) is not None}
        return (keys | set(self.history.columns)) - {"step", "epoch"}

    def curve(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of a metric, one value per step (the last one logged at that step)."""
        if key not in self.history:
            return np.zeros(0), np.zeros(0)
        last = self.history[["step", key]].dropna().groupby("step")[key].last()
        return last.index.to_numpy(np.float64), last.to_numpy(np.float64)

    def alignment(self) -> dict | None:
        """The last ``alignment/<step>.json`` (scores and the kept example sentences)."""
        step = _last_step(self.path / "alignment", ".json")
        return None if step is None else _read_json(self.path / "alignment" / f"{step}.json")

    def samples(self) -> list[dict]:
        """The last ``samples/<step>.jsonl``, one dict per generated sample (unreadable lines skipped)."""
        step = _last_step(self.path / "samples", ".jsonl")
        if step is None:
            return []
        out = []
        for line in (self.path / "samples" / f"{step}.jsonl").read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def reference_lengths(self) -> dict[int, float]:
        """Reference sentence-length shares ``{length: share}`` stored with the last samples
        (``samples/<step>.summary.json``; empty if none)."""
        step = _last_step(self.path / "samples", ".jsonl")
        summary = None if step is None else _read_json(self.path / "samples" / f"{step}.summary.json")
        out = {}
        for row in (summary or {}).get("length_histogram") or []:
            if len(row) >= 3 and finite(row[2]) is not None:
                out[int(row[0])] = float(row[2])
        return out


def _started(path: Path) -> float:
    """When a run started: the timestamp of its run id (``YYYYmmdd-HHMMSS-...``), else its folder's mtime."""
    m = re.match(r"^(\d{8}-\d{6})", path.name)
    if m:
        try:
            return datetime.strptime(m.group(1), "%Y%m%d-%H%M%S").timestamp()
        except ValueError:
            pass
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _load_config(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    except Exception:  # an unreadable config leaves the identity to run.json / the folder name
        return {}


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() or (path / "run.json").is_file()


def load_run(path: str | os.PathLike) -> Run:
    """Load a run folder (``runs/<exp>/<run_id>``)."""
    path = Path(path)
    if not path.is_dir() or not is_run_dir(path):
        raise CompareError(f"{path} is not a run folder (no config.yaml / run.json; expected runs/<exp>/<run_id>)")
    summary = _read_json(path / "summary.json")
    return Run(
        path=path,
        config=_load_config(path / "config.yaml"),
        info=_read_json(path / "run.json") or {},
        summary=summary if isinstance(summary, dict) else {},
        history=_read_history(path / "metrics.csv"),
    )


# ---- choosing runs -------------------------------------------------------------------------


def _run_dirs(folder: Path) -> list[Path]:
    """The run folders directly inside ``folder``, oldest first."""
    dirs = [p for p in folder.iterdir() if p.is_dir() and is_run_dir(p)] if folder.is_dir() else []
    return sorted(dirs, key=lambda p: (_started(p), p.name))


def find_runs(root: str | os.PathLike, exp: str, complete: bool = True) -> list[Path]:
    """Run folders of an experiment under ``root``, oldest first (``complete``: with summary.json)."""
    return [p for p in _run_dirs(Path(root) / exp) if not complete or (p / "summary.json").is_file()]


def latest_run(root: str | os.PathLike, exp: str) -> Path | None:
    """The newest finished run of an experiment, or None."""
    runs = find_runs(root, exp)
    return runs[-1] if runs else None


def _warn(msg: str) -> None:
    print(f"compare: {msg}", file=sys.stderr)


# keys that differ between runs of one experiment without making them different experiments
IDENTITY_FREE = ("seed", "run.", "logger.", "trainer.progress", "callbacks.", "data.cache_dir", "data.num_workers",
                 "data.build_workers", "exp", "extends")


def _flat(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_difference(a: Run, b: Run) -> list[str]:
    """``key=value`` of ``a`` for every setting in which two runs of one experiment differ beyond seed,
    run name, logging and evaluation (a grid point, say)."""
    fa, fb = _flat(a.config), _flat(b.config)
    keys = sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k) and not k.startswith(IDENTITY_FREE))
    return [f"{k}={fa.get(k)}" for k in keys]


def _latest_per_seed(exp: str, runs: Sequence[Run]) -> list[Run]:
    """One run per (seed, kind): the latest (``runs`` oldest first), with a warning for each rerun and a
    louder one when the runs differ in their settings (grid points: compare them with make curves)."""
    latest: dict[tuple, Run] = {}
    for r in runs:
        key = (r.seed, r.kind) if r.seed is not None else (r.run_id, r.kind)
        if key in latest:
            diff = config_difference(r, latest[key])
            what = (f"; they differ in {', '.join(diff[:4])}{' ...' if len(diff) > 4 else ''} (grid points? "
                    "make curves compares those, or give --runs)") if diff else ""
            _warn(f"{exp}: seed {r.seed} ran more than once; using the latest ({r.path.name}, "
                  f"not {latest[key].path.name}){what}; --all-runs keeps both")
        latest[key] = r
    return sorted(latest.values(), key=lambda r: (r.started, r.run_id))


def _exp_runs(root: str | os.PathLike, exp: str, all_runs: bool) -> list[Run]:
    """The finished runs of one experiment (the latest per seed unless ``all_runs``)."""
    base = Path(root) / exp
    if not base.is_dir():
        raise CompareError(f"no experiment folder {base} (train it first: make train EXP={exp}; or give --root)")
    unfinished = [p for p in find_runs(root, exp, complete=False) if not (p / "summary.json").is_file()]
    if unfinished:
        _warn(f"{exp}: skipping {len(unfinished)} unfinished run(s) without summary.json: "
              + ", ".join(p.name for p in unfinished))
    loaded = [load_run(p) for p in find_runs(root, exp)]
    if not loaded:
        raise CompareError(f"{base}: no finished run (a run folder with summary.json)")
    return loaded if all_runs else _latest_per_seed(exp, loaded)


def _given_runs(given: str | os.PathLike) -> list[Run]:
    """A run folder, or an experiment folder (all runs in it, finished or not)."""
    p = Path(given)
    if p.is_dir() and not is_run_dir(p):
        found = _run_dirs(p)
        if not found:
            raise CompareError(f"{p} is neither a run folder nor an experiment folder with runs")
        return [load_run(q) for q in found]
    return [load_run(p)]


def select_runs(
    exps: Sequence[str] | None = None,
    runs: Sequence[str | os.PathLike] | None = None,
    root: str | os.PathLike = "runs",
    all_runs: bool = False,
) -> list[Run]:
    """The runs to compare: finished runs of each experiment in ``exps`` (the latest per seed unless
    ``all_runs``), then the folders in ``runs`` (a run folder, or an experiment folder = its runs)."""
    out = [r for exp in exps or [] for r in _exp_runs(root, exp, all_runs)]
    out += [r for given in runs or [] for r in _given_runs(given)]
    unique: dict[Path, Run] = {}
    for r in out:  # a folder given twice (or by --exps and --runs) counts once
        unique.setdefault(r.path.resolve(), r)
    if not unique:
        raise CompareError("no runs selected: give --exps EXP ... or --runs RUN_DIR ...")
    return list(unique.values())


def group_runs(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs grouped by experiment (in order of appearance); an experiment holding runs of several
    model kinds is split into ``<exp>/<kind>`` groups. Sets ``run.label``."""
    kinds: dict[str, set] = {}
    for r in runs:
        kinds.setdefault(r.exp, set()).add(r.kind)
    groups: dict[str, list[Run]] = {}
    for r in runs:
        r.label = f"{r.exp}/{r.kind}" if len(kinds[r.exp]) > 1 else r.exp
        groups.setdefault(r.label, []).append(r)
    return groups


def label_runs(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """One group per run, labelled ``<exp> (<kind>, seed <s>)`` (plus the run id where that repeats)."""
    base = [f"{r.exp} ({r.kind}, seed {r.seed})" for r in runs]
    groups: dict[str, list[Run]] = {}
    for r, label in zip(runs, base):
        r.label = label if base.count(label) == 1 else f"{label} {r.run_id}"
        groups[r.label] = [r]
    return groups


def _group_kind(runs: Sequence[Run]) -> str | None:
    kinds = {r.kind for r in runs}
    return next(iter(kinds)) if len(kinds) == 1 else None


def choose_baseline(groups: Mapping[str, Sequence[Run]], explicit: str | None = None) -> tuple[str | None, str]:
    """(label of the baseline group or None, a sentence saying which and why)."""
    if explicit:
        if explicit not in groups:
            raise CompareError(f"--baseline {explicit}: no such group (groups: {', '.join(groups)})")
        return explicit, f"Baseline: **{explicit}** (chosen with --baseline)."
    for kind in BASELINE_KINDS:
        for label, runs in groups.items():
            if _group_kind(runs) == kind:
                return label, f"Baseline: **{label}** (model.kind = {kind})."
    return None, "No baseline: no selected group has model.kind baseline_matched or baseline, so no differences are shown."


# ---- the notebook's runs -------------------------------------------------------------------


def _find_root(path: str | os.PathLike) -> Path:
    """A path as given if it exists, else relative to the repository root (a notebook runs in notebooks/)."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    alt = REPO_ROOT / p
    return alt if alt.exists() else p


def resolve_run_dirs(
    run_dirs: Sequence[str | os.PathLike] | str | os.PathLike | None = None,
    runs_root: str | os.PathLike = "runs",
    default_exps: Sequence[str] = DEFAULT_NOTEBOOK_EXPS,
    env_var: str = NOTEBOOK_ENV,
) -> list[Path]:
    """Run folders for the notebook: ``run_dirs`` if given, else ``$DEPENC_NOTEBOOK_RUNS``
    (colon-separated), else the latest finished run of each of ``default_exps`` under ``runs_root``."""
    if run_dirs:
        dirs = [Path(d) for d in ([run_dirs] if isinstance(run_dirs, (str, os.PathLike)) else run_dirs)]
    elif os.environ.get(env_var):
        dirs = [Path(d) for d in os.environ[env_var].split(os.pathsep) if d.strip()]
    else:
        root = _find_root(runs_root)
        dirs = [d for exp in default_exps if (d := latest_run(root, exp)) is not None]
        if not dirs:
            raise CompareError(f"no finished run of {', '.join(default_exps)} under {root}: train them first "
                               f"(make sweep SEEDS=1) or set RUN_DIRS / ${env_var}")
    dirs = [_find_root(d) for d in dirs]  # relative paths: from the working directory, else the repository root
    missing = [str(d) for d in dirs if not is_run_dir(d)]
    if missing:
        raise CompareError(f"not run folders: {', '.join(missing)}")
    return dirs
