import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def tiny_overrides(tmp_path: Path, *extra: str) -> list[str]:
    """The tiny-run settings every end-to-end test uses: debug experiment, run folder and cache in
    tmp_path, no W&B, a small slice of the synthetic corpus."""
    return [
        f"run.root={tmp_path / 'runs'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "logger.wandb.mode=disabled",
        *extra,
    ]


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the reference data folder {SHARED_DATA} (see README: Real corpora)")
    return SHARED_DATA
