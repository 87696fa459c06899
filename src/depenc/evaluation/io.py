"""JSON output of evaluations: NaN and infinity become ``null`` (JSON has neither), numpy values
become plain numbers; files are written atomically."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["nan_to_none", "to_json", "write_json"]


def nan_to_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (also inside dicts, lists, tuples) replaced by None."""
    if isinstance(obj, (float, np.floating)) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return nan_to_none(obj.tolist())
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def to_json(obj: Any, indent: int | None = 1) -> str:
    return json.dumps(nan_to_none(obj), default=_json_default, indent=indent)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON (NaN -> null) atomically, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(to_json(obj))
    os.replace(tmp, path)
    return path
