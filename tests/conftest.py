import os
from pathlib import Path

import pytest

# One thread per process: tiny models gain nothing from more, and on a shared 2-core machine
# OpenMP threads that spin-wait against another busy process slow small ops down by orders of magnitude.
os.environ.setdefault("OMP_NUM_THREADS", "1")
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


# For tests about training itself, not the evaluation callbacks (each costs ~1 s per validation).
NO_CALLBACKS = [f"callbacks.{name}.enabled=false" for name in ("alignment", "generation", "agreement", "excess")]
# The README's front door: the callbacks run, but only once, at the end of training.
CALLBACKS_AT_END = [f"callbacks.{name}.every_n_val=0" for name in ("alignment", "generation", "agreement", "excess")]


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the reference data folder {SHARED_DATA} (see README: Real corpora)")
    return SHARED_DATA


# ---- tiny finished runs for tests/test_compare.py and tests/test_notebook.py (session-wide) ----
# Smaller than `debug`: 6 steps, validation at 3 and 6, the evaluation callbacks only at the end.
TINY_COMPARE_ARGS = [
    "trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.checkpoint_every_n_steps=6",
    "trainer.log_every_n_steps=2", "trainer.log_encoder_every=2",
    "trainer.limit_val_batches=2", "trainer.limit_test_batches=1",
    "data.synthetic.n_train=400", "data.synthetic.n_validation=60", "data.synthetic.n_test=60",
    "data.synthetic.n_test_long=40",
    "callbacks.alignment.every_n_val=0", "callbacks.alignment.max_sentences=20",
    "callbacks.alignment.selection_sentences=20", "callbacks.alignment.n_examples=4",
    "callbacks.generation.every_n_val=0", "callbacks.generation.n_samples=6",
    "callbacks.generation.n_reference=60", "callbacks.generation.max_new_tokens=24",
    "callbacks.agreement.every_n_val=0", "callbacks.agreement.max_pairs=40", "callbacks.agreement.n_bootstrap=50",
    "callbacks.excess.every_n_val=0",
]


@pytest.fixture(scope="session")
def compare_runs(tmp_path_factory) -> dict[str, list[Path]]:
    """Four tiny finished runs of the `debug` experiment under <tmp>/runs/debug/: model.kind depenc and
    baseline_matched, seeds 1 and 2 (~10 s each). Returns {kind: [run folder of seed 1, of seed 2]}."""
    from depenc.train import main

    tmp = tmp_path_factory.mktemp("compare")
    out: dict[str, list[Path]] = {}
    for kind in ("baseline_matched", "depenc"):
        for seed in (1, 2):
            before = set((tmp / "runs" / "debug").glob("*"))
            assert main(["debug", *tiny_overrides(tmp, f"seed={seed}", f"model.kind={kind}",
                                                  f"run.name={kind}-s{seed}", *TINY_COMPARE_ARGS)]) == 0
            (run_dir,) = set((tmp / "runs" / "debug").glob("*")) - before
            out.setdefault(kind, []).append(run_dir)
    return out


@pytest.fixture(autouse=True)
def no_wandb_run_leaks_between_tests():
    """A test that stops a run early must not hand its W&B run to the next test in the same worker
    (Lightning's WandbLogger adopts any run already in progress)."""
    yield
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


def has_cycle(heads: list[int]) -> bool:
    """heads[d - 1] = the head of word d (0 = the root): does following heads from some word loop?"""
    for i in range(1, len(heads) + 1):
        seen, j = set(), i
        while j != 0:
            if j in seen:
                return True
            seen.add(j)
            j = heads[j - 1]
    return False
