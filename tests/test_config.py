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
        ("trainer.max_steps=abc", "trainer.max_steps' (from command line): Value 'abc' of type 'str' could not be converted to Integer"),
        ("data.batch_size=0", "data.batch_size' must be positive"),
        ("model.depenc.hops=2", "unknown config key 'model.depenc.hops'"),
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


def test_schema_and_base_yaml_agree():
    """base.yaml declares exactly the schema's keys with the schema's defaults (one place for defaults),
    and every key has its one-line comment."""
    from omegaconf import OmegaConf

    from depenc.config import EXPERIMENTS_DIR, _flat_keys, schema

    base = OmegaConf.load(EXPERIMENTS_DIR / "base.yaml")
    declared, yaml_keys = _flat_keys(schema()), _flat_keys(base)
    assert set(declared) == set(yaml_keys)
    leaves = {k: v for k, v in declared.items() if not isinstance(v, dict)}
    assert {k: yaml_keys[k] for k in leaves} == leaves
    for line in (EXPERIMENTS_DIR / "base.yaml").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and not line.rstrip().endswith(":"):
            assert "#" in line, f"base.yaml line without a comment: {line!r}"


def test_run_config_holds_no_model_derived_keys(tmp_path):
    """vocab_size / block_size / eos_id of the model come from the data; the schema has no such keys."""
    with pytest.raises(ConfigError, match="unknown config key 'model.block_size'"):
        load_config("debug", ["model.block_size=64"])
