"""Integer buckets with inclusive bounds, and their labels (``"1-10"``, ``"3"``, ``">40"`` or ``"3+"``).

A bucket is ``(lo, hi)`` with ``hi = None`` for an open last bucket. The open bucket is labelled
``">{lo - 1}"`` by default (``open_style=">"``) or ``"{lo}+"`` (``open_style="+"``).
"""

from __future__ import annotations

from collections.abc import Sequence

Bucket = tuple[int, "int | None"]

__all__ = ["Bucket", "bucket_label", "bucket_labels", "find_bucket"]


def bucket_label(bucket: Bucket, open_style: str = ">") -> str:
    """``"1-10"``, ``"1"`` for a single value, ``">40"`` / ``"41+"`` for an open bucket."""
    lo, hi = bucket
    if hi is None:
        if open_style not in (">", "+"):
            raise ValueError(f"open_style must be '>' or '+', got {open_style!r}")
        return f">{lo - 1}" if open_style == ">" else f"{lo}+"
    return str(lo) if lo == hi else f"{lo}-{hi}"


def bucket_labels(buckets: Sequence[Bucket], open_style: str = ">") -> list[str]:
    return [bucket_label(b, open_style) for b in buckets]


def find_bucket(value: int, buckets: Sequence[Bucket], open_style: str = ">") -> str | None:
    """Label of the bucket holding ``value`` (None when no bucket does)."""
    for lo, hi in buckets:
        if value >= lo and (hi is None or value <= hi):
            return bucket_label((lo, hi), open_style)
    return None
