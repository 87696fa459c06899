"""Experiment configuration: ``experiments/base.yaml`` + ``experiments/<exp>.yaml`` + CLI overrides,
merged into the schema of :mod:`depenc.schema` (``OmegaConf.structured``), which holds every key, its
type and its default. Anything unknown or mistyped stops the run before any work with one line naming
the bad key and the nearest valid one.
"""

from __future__ import annotations

import difflib
import functools
from pathlib import Path
from typing import Any, Iterable

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from depenc.schema import FREE_FORM, Config, choice_fields

EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "experiments"


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
    """Dotted key -> leaf value (sections are walked, free-form ones only to their own key; lists are leaves)."""
    out: dict[str, Any] = {}
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=False)
    for key, value in (node or {}).items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        out[dotted] = value  # a section is also a valid key
        if isinstance(value, dict) and dotted not in FREE_FORM:
            out.update(_flat_keys(value, dotted))
    return out


def leaf_values(cfg: Any) -> dict[str, Any]:
    """Dotted key -> value of every leaf of ``cfg`` (free-form sections and lists as one value)."""
    return {k: v for k, v in _flat_keys(cfg).items() if not isinstance(v, dict) or k in FREE_FORM}


@functools.lru_cache(maxsize=1)
def _schema() -> DictConfig:
    return OmegaConf.structured(Config)


def schema() -> DictConfig:
    """The schema with its defaults (a fresh copy: callers may change it)."""
    return _schema().copy()


def with_defaults(section: str, partial: Any) -> dict:
    """A plain dict of one top-level section (e.g. ``data``): ``partial`` merged into the schema's
    defaults, types and keys checked (OmegaConf errors are raised as they are)."""
    return OmegaConf.to_container(OmegaConf.merge(_schema()[section], partial or {}))  # merge copies


@functools.lru_cache(maxsize=1)
def _declared_keys() -> dict[str, Any]:
    return _flat_keys(_schema())


def _check_keys(delta: Any, source: str) -> None:
    """Raise ConfigError for a key of ``delta`` that the schema does not have, naming the nearest one."""
    declared = _declared_keys()
    for key, value in _flat_keys(delta).items():
        if isinstance(declared.get(key), bool) and not isinstance(value, bool):  # OmegaConf would take 3 as true
            raise ConfigError(f"config key '{key}' (from {source}) expects bool (true / false), got {value!r}")
        if key in declared or any(key.startswith(f + ".") for f in FREE_FORM):
            continue
        near = difflib.get_close_matches(key, list(declared), n=1, cutoff=0.5)
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        hint = f" -- did you mean {near[0]}?" if near else ""
        if not near and parent in declared:
            siblings = [k.rsplit(".", 1)[1] for k in declared if k.startswith(parent + ".") and k.count(".") == key.count(".")]
            hint = f" -- valid keys under {parent}: {', '.join(sorted(siblings))}"
        raise ConfigError(f"unknown config key '{key}' (from {source}){hint}")


def merge_checked(layers: Iterable[tuple[Any, str]]) -> DictConfig:
    """The schema with each (config, source name) merged on top, in order; one-line errors."""
    cfg = _schema()  # merge returns a new config; the cached schema is never changed
    for delta, source in layers:
        _check_keys(delta, source)
        try:
            cfg = OmegaConf.merge(cfg, delta)
        except OmegaConfBaseException as exc:
            key = getattr(exc, "full_key", None) or "?"
            raise ConfigError(f"config key '{key}' (from {source}): {str(exc).splitlines()[0]}") from None
    return cfg


def load_yaml(path: Path, source: str) -> DictConfig:
    try:
        loaded = OmegaConf.load(path)
    except yaml.MarkedYAMLError as exc:  # syntax errors, duplicate keys, tabs: name the line
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}, line {mark.line + 1}, column {mark.column + 1}" if mark else source
        raise ConfigError(f"{where}: invalid YAML: {exc.problem or exc.context}") from None
    except Exception as exc:  # anything else yaml or omegaconf raise: the first line
        raise ConfigError(f"{source}: not a valid YAML mapping: {str(exc).splitlines()[0]}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{source}: expected a mapping of config keys at the top level, got a list")
    return loaded


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
    exp_path = root / f"{exp}.yaml"
    if not exp_path.is_file():
        names = list_experiments(root)
        near = difflib.get_close_matches(exp, names, n=1)
        hint = f" -- did you mean {near[0]}?" if near else ""
        raise ConfigError(f"no experiment file {exp_path}{hint} (available: {', '.join(names)})")
    layers = [(load_yaml(root / "base.yaml", "experiments/base.yaml"), "experiments/base.yaml"),
              *_experiment_layers(exp, root), (parse_overrides(overrides), "command line")]
    cfg = merge_checked(layers)
    cfg.exp = exp
    OmegaConf.resolve(cfg)
    validate(cfg)
    return cfg


def _experiment_layers(exp: str, root: Path, seen: tuple = ()) -> list[tuple[DictConfig, str]]:
    """The experiment file, preceded by the files it ``extends`` (e.g. depenc_brown extends baseline_brown)."""
    if exp in seen:
        raise ConfigError(f"experiment files extend each other in a cycle: {' -> '.join((*seen, exp))}")
    path = root / f"{exp}.yaml"
    if not path.is_file():
        raise ConfigError(f"experiment '{seen[-1]}' extends '{exp}', but there is no {path}")
    source = f"experiments/{exp}.yaml"
    delta = load_yaml(path, source) if path.stat().st_size else OmegaConf.create({})
    parent = delta.get("extends")
    return [*(_experiment_layers(parent, root, (*seen, exp)) if parent else []), (delta, source)]


# value ranges (bounds are checked with the config, before any work)
POSITIVE = ("trainer.max_steps", "model.n_layer", "model.n_head", "model.n_embd", "data.block_size", "data.batch_size", "data.vocab_size",
            "data.min_freq", "trainer.val_check_interval", "trainer.checkpoint_every_n_steps",
            "trainer.log_every_n_steps", "trainer.progress_every_n_steps", "trainer.num_nodes", "trainer.dist_timeout_s", "optim.lr", "data.synthetic.n_train",
            "data.synthetic.n_validation", "data.synthetic.max_depth", "data.synthetic.max_words",
            "callbacks.alignment.batch_size", "callbacks.generation.batch_size", "callbacks.agreement.batch_size",
            "callbacks.excess.batch_size", "callbacks.pairs.batch_size")
NONNEGATIVE = ("trainer.max_tokens", "trainer.global_batch_tokens", "optim.warmup_tokens",
               "trainer.early_stopping_patience", "trainer.early_stopping_min_delta",
               "model.mlp_hidden", "data.num_workers", "data.build_workers", "data.max_train_docs", "eval.stride", "optim.weight_decay", "optim.warmup_steps",
               "optim.grad_clip", "optim.encoder_lr_mult", "trainer.log_encoder_every", "data.synthetic.n_test",
               "data.synthetic.n_test_long", "data.synthetic.n_test_depth", "data.synthetic.dedup_train", "callbacks.generation.temperature", "callbacks.generation.top_k",
               "callbacks.generation.max_new_tokens", "callbacks.generation.n_samples",
               "callbacks.agreement.n_bootstrap", "callbacks.pairs.n_bootstrap", "callbacks.efficiency.log_every_n_steps",
               *(f"callbacks.{c}.every_n_val" for c in ("alignment", "generation", "agreement", "excess", "pairs")))
PROBABILITY = ("model.dropout", "optim.min_lr_ratio")  # in [0, 1]; so are data.synthetic's p_* and long_p_*
RANGES = {"positive": (lambda v: v > 0, "positive"), "nonnegative": (lambda v: v >= 0, ">= 0"),
          "probability": (lambda v: 0 <= v <= 1, "in [0, 1]"), "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
          "beta": (lambda v: 0 <= v < 1, "in [0, 1)")}


def range_problem(value: Any, kind: str) -> str | None:
    """None when ``value`` lies in the range ``kind`` (a key of RANGES), else what it must be."""
    ok, says = RANGES[kind]
    return None if isinstance(value, (int, float)) and not isinstance(value, bool) and ok(value) else f"must be {says}"


def _range_checks(cfg: DictConfig) -> list[tuple[str, str]]:
    """(dotted key, range kind) of every bounded value of ``cfg``."""
    checks = [(k, "positive") for k in POSITIVE] + [(k, "nonnegative") for k in NONNEGATIVE]
    checks += [(k, "probability") for k in PROBABILITY] + [("callbacks.generation.top_p", "top_p")]
    checks += [(f"data.synthetic.{k}", "probability") for k in cfg.data.synthetic if k.startswith(("p_", "long_p_"))]
    checks += [(f"data.synthetic.{k}", "nonnegative") for k in cfg.data.synthetic if k.startswith("w_")]
    checks += [(f"optim.betas.{i}", "beta") for i in range(len(cfg.optim.betas))]
    for key in ("trainer.limit_val_batches", "trainer.limit_test_batches"):  # a share (float) or a number (int)
        checks.append((key, "probability" if isinstance(OmegaConf.select(cfg, key), float) else "nonnegative"))
    return checks


def validate(cfg: DictConfig) -> None:
    """Value checks that types alone cannot express."""
    for key, choices in choice_fields().items():
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(choices)}, got {value!r}")
    for key, kind in _range_checks(cfg):
        value = OmegaConf.select(cfg, key)
        if problem := range_problem(value, kind):
            raise ConfigError(f"config key '{key}' {problem}, got {value!r}")
    m = cfg.model
    if m.n_embd % m.n_head:
        raise ConfigError(f"model.n_embd={m.n_embd} must be divisible by model.n_head={m.n_head}")
    if m.kind == "depenc" and not 1 <= m.depenc.parser_layer < m.n_layer:
        raise ConfigError(
            f"model.depenc.parser_layer={m.depenc.parser_layer} must be in [1, model.n_layer-1={m.n_layer - 1}] "
            "so that the encoder reads contextual states and at least one block sits above it"
        )
    if cfg.data.tokenizer == "file" and not cfg.data.tokenizer_file:
        raise ConfigError("data.tokenizer=file needs data.tokenizer_file=PATH (a Hugging Face tokenizer.json)")
    if cfg.data.tokenizer == "file" and not Path(cfg.data.tokenizer_file).expanduser().is_file():
        raise ConfigError(f"data.tokenizer_file: file not found: {cfg.data.tokenizer_file}")
    if cfg.eval.stride > cfg.data.block_size:
        raise ConfigError(f"eval.stride={cfg.eval.stride} must be <= data.block_size={cfg.data.block_size} "
                          "(0 = non-overlapping blocks)")
    if m.kind == "depenc" and m.depenc.output == "head_mixture" and m.depenc.target == "self":
        raise ConfigError("model.depenc.output=head_mixture predicts the next word through its attachment: "
                          "it needs model.depenc.target=next (or frontier with the oracle)")
    if m.kind == "depenc" and m.depenc.target == "frontier" and m.depenc.parser != "oracle":
        raise ConfigError("model.depenc.target=frontier is the gold right-frontier oracle: it needs "
                          "model.depenc.parser=oracle (a learned parser takes target=next)")
    inducer = m.kind == "depenc" and m.depenc.inducer != "none"
    if inducer and (m.depenc.target != "next" or m.depenc.parser == "oracle"):
        raise ConfigError(f"model.depenc.inducer={m.depenc.inducer} trains the causal parser's next-word rows: it needs "
                          "model.depenc.target=next and a learned parser (biaffine or distance)")
    by_document = ((cfg.data.source == "brown" and cfg.data.brown.by == "document")
                   or (cfg.data.source == "text" and cfg.data.text.by != "line"))
    if inducer and by_document:
        where = "data.source=brown" if cfg.data.source == "brown" else f"data.text.by={cfg.data.text.by}"
        raise ConfigError(f"model.depenc.inducer={m.depenc.inducer} parses sentences between <eos> tokens, and {where} "
                          "streams whole documents (no <eos> between sentences): use data.brown.by=sentence, "
                          "data.source=synthetic or a text source with one sentence per line (data.text.by=line)")
    if m.depenc.parser == "oracle" and cfg.data.source != "synthetic":
        raise ConfigError("model.depenc.parser=oracle needs gold trees: use data.source=synthetic")
    if cfg.data.source == "synthetic":
        for key in ("callbacks.agreement.splits", "callbacks.excess.splits"):
            for split in OmegaConf.select(cfg, key):
                _check_synthetic_split(key, str(split), cfg.data.synthetic)
    if cfg.callbacks.pairs.enabled:  # the files are read when training starts; a missing one fails now
        from depenc.evaluation.alignment import resolve_path

        for f in cfg.callbacks.pairs.files:
            if not resolve_path(f).exists():
                raise ConfigError(f"callbacks.pairs.files: {f} not found (a JSONL file or a folder of them)")


def _check_synthetic_split(key: str, split: str, synthetic: DictConfig) -> None:
    from depenc.data.synthetic.grammar import DEPTH_SPLITS, SPLITS

    held_out = [s for s in SPLITS if s != "train"]
    if split not in held_out:
        near = difflib.get_close_matches(split, held_out, n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise ConfigError(f"{key}: unknown synthetic split {split!r}{hint}; expected some of {', '.join(held_out)}")
    if split in DEPTH_SPLITS and not synthetic.n_test_depth:
        raise ConfigError(f"{key}: {split} is built only with data.synthetic.n_test_depth > 0 (e.g. 1000)")


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
