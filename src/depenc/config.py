"""Experiment configuration: ``experiments/base.yaml`` + ``experiments/<exp>.yaml`` + CLI overrides.

``base.yaml`` declares every key (with a comment). An experiment file and the command line may
only set keys that exist there, with a value of a compatible type; anything else stops the run
before any work with a message naming the bad key and the nearest valid one.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig, ListConfig, OmegaConf

EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "experiments"

# Sections whose keys are user-chosen names (not declared in base.yaml).
FREE_FORM = ("data.eval_sets", "callbacks.alignment.treebanks")


class ConfigError(ValueError):
    """A config problem the user can fix; the message says what and how."""


def experiments_dir() -> Path:
    return EXPERIMENTS_DIR


def list_experiments(root: Path | None = None) -> list[str]:
    root = root or EXPERIMENTS_DIR
    return sorted(
        str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml") if p.name != "base.yaml"
    )


def _flat_keys(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> leaf value (dicts are walked; lists are leaves)."""
    out: dict[str, Any] = {}
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, dict):
        for key, value in node.items():
            dotted = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict) and not _is_free_form(dotted):
                out[dotted] = value  # the section itself is also a valid key
                out.update(_flat_keys(value, dotted))
            else:
                out[dotted] = value
    return out


def _is_free_form(dotted: str) -> bool:
    return any(dotted == f or dotted.startswith(f + ".") for f in FREE_FORM)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (list, tuple, ListConfig)):
        return "list"
    if isinstance(value, (dict, DictConfig)):
        return "mapping"
    return type(value).__name__


def _compatible(declared: Any, given: Any) -> bool:
    if declared is None or given is None:
        return True  # null in base.yaml means "any type, optional"
    d, g = _type_name(declared), _type_name(given)
    if d == g:
        return True
    if d == "float" and g == "int":
        return True
    if d == "str" and g in ("int", "float"):  # e.g. precision=16 or run.name=123
        return True
    return False


def _check_against(base: DictConfig, delta: Any, source: str) -> None:
    """Raise ConfigError for any key in ``delta`` that base.yaml does not declare or mistypes."""
    declared = _flat_keys(base)
    for key, value in _flat_keys(delta).items():
        if _is_free_form(key) and key not in declared:
            continue
        if key not in declared:
            parent = key.rsplit(".", 1)[0] if "." in key else ""
            candidates = [k for k in declared if not _is_free_form(k) or k in FREE_FORM]
            near = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
            hint = f" -- did you mean {near[0]}?" if near else ""
            if not near and parent in declared:
                siblings = [k.rsplit(".", 1)[1] for k in declared if k.startswith(parent + ".") and k.count(".") == key.count(".")]
                hint = f" -- valid keys under {parent}: {', '.join(sorted(siblings))}"
            raise ConfigError(f"unknown config key '{key}' (from {source}){hint}")
        if not _compatible(declared[key], value):
            raise ConfigError(
                f"config key '{key}' (from {source}) expects {_type_name(declared[key])} "
                f"(like {declared[key]!r}), got {_type_name(value)} {value!r}"
            )


def parse_overrides(overrides: Iterable[str]) -> DictConfig:
    overrides = list(overrides)
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. trainer.max_steps=50)")
    try:
        return OmegaConf.from_dotlist(overrides)
    except Exception as exc:  # omegaconf's grammar errors are long; keep the first line
        raise ConfigError(f"cannot parse overrides {overrides}: {str(exc).splitlines()[0]}") from None


def load_config(exp: str, overrides: Iterable[str] = (), root: Path | None = None) -> DictConfig:
    """Resolved config for experiment ``exp`` (a name under experiments/, e.g. ``depenc_small``)."""
    root = Path(root or EXPERIMENTS_DIR)
    base = OmegaConf.load(root / "base.yaml")
    exp_path = root / f"{exp}.yaml"
    if not exp_path.is_file():
        names = list_experiments(root)
        near = difflib.get_close_matches(exp, names, n=1)
        hint = f" -- did you mean {near[0]}?" if near else ""
        raise ConfigError(f"no experiment file {exp_path}{hint} (available: {', '.join(names)})")
    layers = _experiment_layers(base, exp, root)
    cli = parse_overrides(overrides)
    _check_against(base, cli, "command line")
    cfg = OmegaConf.merge(base, *layers, cli)
    cfg.exp = exp
    OmegaConf.resolve(cfg)
    validate(cfg)
    return cfg


def _experiment_layers(base: DictConfig, exp: str, root: Path, seen: tuple = ()) -> list[DictConfig]:
    """The experiment file, preceded by the files it ``extends`` (e.g. depenc_brown extends baseline_brown)."""
    if exp in seen:
        raise ConfigError(f"experiment files extend each other in a cycle: {' -> '.join((*seen, exp))}")
    path = root / f"{exp}.yaml"
    if not path.is_file():
        raise ConfigError(f"experiment '{seen[-1]}' extends '{exp}', but there is no {path}")
    delta = OmegaConf.load(path) or OmegaConf.create({})
    _check_against(base, delta, f"experiments/{exp}.yaml")
    parent = delta.get("extends")
    return [*(_experiment_layers(base, parent, root, (*seen, exp)) if parent else []), delta]


_CHOICES = {
    "model.kind": ("baseline", "baseline_matched", "depenc"),
    "model.pos": ("learned", "alibi"),
    "model.depenc.parser": ("biaffine", "distance", "frontier", "oracle"),
    "model.depenc.target": ("self", "next"),
    "model.depenc.attention": ("mix", "bias"),
    "model.depenc.embedding_init": ("none", "ppmi_svd"),
    "data.source": ("synthetic", "text", "hf", "brown"),
    "data.tokenizer": ("word", "bpe", "char"),
    "logger.wandb.mode": ("auto", "online", "offline", "disabled"),
}


def validate(cfg: DictConfig) -> None:
    """Value checks that types alone cannot express."""
    for key, choices in _CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(choices)}, got {value!r}")
    m = cfg.model
    if m.n_embd % m.n_head:
        raise ConfigError(f"model.n_embd={m.n_embd} must be divisible by model.n_head={m.n_head}")
    if m.kind == "depenc" and not 0 <= m.depenc.parser_layer < m.n_layer:
        raise ConfigError(
            f"model.depenc.parser_layer={m.depenc.parser_layer} must be in [0, model.n_layer-1={m.n_layer - 1}] "
            "so that at least one block sits above the encoder"
        )
    if m.depenc.hops < 1:
        raise ConfigError(f"model.depenc.hops must be >= 1, got {m.depenc.hops}")
    if m.depenc.parser == "oracle" and cfg.data.source != "synthetic":
        raise ConfigError("model.depenc.parser=oracle needs gold trees: use data.source=synthetic")
    if cfg.trainer.max_steps <= 0:
        raise ConfigError(f"trainer.max_steps must be positive, got {cfg.trainer.max_steps}")


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
