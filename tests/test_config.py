"""Config loading: every shipped experiment loads; unknown keys, wrong types and missing files fail
before any work with a message naming the nearest valid key."""

import subprocess
import sys

import pytest

from depenc.config import ConfigError, list_experiments, load_config


@pytest.mark.parametrize("exp", list_experiments())
def test_every_shipped_experiment_loads(exp):
    cfg = load_config(exp)
    assert cfg.exp == exp and cfg.trainer.max_steps > 0


def test_overrides_apply():
    cfg = load_config("debug", ["trainer.max_steps=7", "model.n_layer=3", "optim.lr=1e-3", "model.kind=depenc"])
    assert cfg.trainer.max_steps == 7 and cfg.model.n_layer == 3 and cfg.optim.lr == 1e-3


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.max_stepz=5", "did you mean trainer.max_steps?"),
        ("model.depenc.gama_init=1", "did you mean model.depenc.gamma_init?"),
        ("trainer.max_steps=abc", "trainer.max_steps' (from command line) expects int"),
        ("model.depenc.structured_encoding=3", "expects bool"),
        ("model.kind=transformer", "must be one of baseline, baseline_matched, depenc"),
        ("model.n_head=3", "divisible"),
        ("trainer.max_steps", "key=value"),
    ],
)
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(ConfigError, match=message.replace("?", r"\?").replace("(", r"\(").replace(")", r"\)")):
        load_config("debug", [override])


def test_missing_experiment_names_nearest():
    with pytest.raises(ConfigError, match="did you mean debug"):
        load_config("debugg")


def test_cli_exits_nonzero_with_short_message(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "depenc.train", "debug", "trainer.max_stepz=5", f"run.root={tmp_path}"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "did you mean trainer.max_steps?" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir()), "no run folder for a rejected config"
