"""Evaluation callbacks, built from the ``callbacks`` section of the config."""

from __future__ import annotations

from pathlib import Path


def build_callbacks(cfg, dm, run_dir: Path) -> list:
    return []
