"""The one config schema: every key of an experiment, its type and its default.

``experiments/base.yaml`` lists the same keys with a comment each (a test checks that the two agree);
:mod:`depenc.config` loads base.yaml + an experiment file + command-line overrides through
``OmegaConf.structured(Config)``, so types, defaults and unknown keys are checked here and only here.
String options list their values in ``field(metadata=choices(...))``. The model's own config object
(:class:`ModelConfig`) is the ``model:`` section, plus three values the builder takes from the data.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional


def choices(*values: str) -> dict:
    return {"choices": values}


@dataclass
class DepEncConfig:
    """The dependency encoder (DESIGN 3.2-3.3); used when ``ModelConfig.kind == "depenc"``."""

    parser: str = field(default="biaffine", metadata=choices("biaffine", "distance", "oracle"))
    # row i: where word i+1 | word i attaches; frontier (parser=oracle only): the gold right frontier after word i
    target: str = field(default="next", metadata=choices("next", "self", "frontier"))
    parser_layer: int = 1  # the encoder reads the output of this many blocks (>= 1)
    d_dep: int = 64  # biaffine projection width
    n_distance_buckets: int = 16  # distance term buckets (1..8 exact, then two per doubling)
    structured_encoding: bool = True  # h_i += W_s (g_i sum_j P_ij e_j)
    dep_attention: bool = True  # dependency-weighted attention in every block above the encoder
    # bias: logits + beta_h log(M + eps) | mix: (1-lam_h) attention + lam_h M V | gate: attention x (I + arcs), not renormalised
    attention: str = field(default="bias", metadata=choices("bias", "mix", "gate"))
    gamma_init: float = -2.0  # mix: initial logit of the dependency component (sigmoid(-2) = 0.12)
    beta_init: float = 0.0  # bias: initial beta_h
    bias_eps: float = 0.01  # bias: eps in log(M + eps)
    gate_init: float = 0.0  # initial gate logit (sigmoid(0) = 0.5)
    embedding_init: str = field(default="none", metadata=choices("none", "ppmi_svd"))  # applied by the builder
    # lm: the usual output head | head_mixture: p(x_i+1) = (1 - g_i) p_lm(. | h_i) + g_i sum_j P_ij q(. | h_j),
    # the next word predicted through its candidate heads (target=next; Dependency-based Mixture LMs)
    output: str = field(default="lm", metadata=choices("lm", "head_mixture"))
    # training only, an auxiliary objective beyond the paper: inside = a whole-sentence head-outward dependency
    # model (inside algorithm over projective trees) whose posterior next-word attachments train the parser
    # (DMV without valence) | dmv: the same with valence (the DMV)
    inducer: str = field(default="none", metadata=choices("none", "inside", "dmv"))
    inducer_dim: int = 64  # the inducer's word-embedding width
    distill_weight: float = 1.0  # weight of the parser's cross-entropy against the inducer's posteriors


@dataclass
class ModelConfig:
    kind: str = field(default="baseline", metadata=choices("baseline", "baseline_matched", "depenc"))
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    mlp_hidden: int = 0  # 0 = 4 * n_embd; baseline_matched: computed to match DepEnc's parameter count
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm
    pos: str = field(default="learned", metadata=choices("learned", "alibi"))
    # biased attention (DepEnc bias form, ALiBi): auto = flex on CUDA, lean on CPU (sdpa with dropout)
    attention_impl: str = field(default="auto", metadata=choices("auto", "sdpa", "lean", "flex"))
    compile: bool = False  # torch.compile the model (train.py)
    depenc: DepEncConfig = field(default_factory=DepEncConfig)
    # set from the data when the model is built; never in experiment files
    vocab_size: int = 0
    block_size: int = 0
    eos_id: int = 0

    @property
    def mlp_width(self) -> int:
        return self.mlp_hidden or 4 * self.n_embd

    @property
    def has_encoder(self) -> bool:
        return self.kind == "depenc"

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        dep = d.pop("depenc", None) or {}
        return cls(**d, depenc=dep if isinstance(dep, DepEncConfig) else DepEncConfig(**dep))

    def to_dict(self) -> dict:
        return asdict(self)


# ---- the experiment config ----------------------------------------------------------------------
DERIVED_MODEL_KEYS = ("vocab_size", "block_size", "eos_id")  # ModelConfig fields the builder sets


def section(cls: type, name: str, drop: tuple[str, ...] = ()) -> type:
    """A mutable schema section with the fields (types, defaults, choices) of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        if f.name in drop:
            continue
        default = ({"default_factory": f.default_factory} if f.default is dataclasses.MISSING
                   else {"default": f.default})
        specs.append((f.name, hints[f.name], field(metadata=f.metadata, **default)))
    return dataclasses.make_dataclass(name, specs)


def _synthetic_section() -> type:
    from depenc.data.synthetic import SyntheticConfig

    return section(SyntheticConfig, "SyntheticSection")


ModelSection = section(ModelConfig, "ModelSection", drop=DERIVED_MODEL_KEYS)
SyntheticSection = _synthetic_section()


@dataclass
class RunConfig:
    root: str = "runs"
    name: Optional[str] = None
    group: Optional[str] = None


@dataclass
class TextConfig:
    train: Any = None  # a path or a list of paths
    validation: Any = None
    test: Any = None
    by: str = field(default="line", metadata=choices("line", "paragraph", "file"))
    whitespace: bool = False


@dataclass
class HFConfig:
    name: Optional[str] = None
    config: Optional[str] = None
    text_field: str = "text"
    whitespace: Optional[bool] = None
    streaming: bool = False  # stream the dataset instead of downloading it (datasets' streaming=True)


@dataclass
class BrownConfig:
    nltk_data: Optional[str] = None
    split: List[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    split_seed: int = 0
    # document: one <eos> per document (sentences joined by newlines) | sentence: one per sentence (the
    # split stays by document), so that sentence-level consumers (depenc.inducer) see sentence boundaries
    by: str = field(default="document", metadata=choices("document", "sentence"))


@dataclass
class DataConfig:
    source: str = field(default="synthetic", metadata=choices("synthetic", "text", "hf", "brown"))
    tokenizer: str = field(default="word", metadata=choices("word", "bpe", "char", "file"))
    tokenizer_file: Optional[str] = None  # tokenizer=file: a Hugging Face tokenizer.json
    vocab_size: int = 8000
    min_freq: int = 1
    lowercase: bool = False
    block_size: int = 128
    batch_size: int = 32
    num_workers: int = 0
    cache_dir: str = ".cache/depenc"
    build_workers: int = 0  # processes tokenising the train split (litdata.optimize); 0 = one per CPU core
    remote_dir: Optional[str] = None  # folder or URL (s3://, gs://, r2://) holding copies of built caches
    max_train_docs: int = 0
    text: TextConfig = field(default_factory=TextConfig)
    hf: HFConfig = field(default_factory=HFConfig)
    brown: BrownConfig = field(default_factory=BrownConfig)
    synthetic: SyntheticSection = field(default_factory=SyntheticSection)  # type: ignore[valid-type]
    eval_sets: Dict[str, Any] = field(default_factory=dict)  # name: {path, by, whitespace}


@dataclass
class OptimConfig:
    lr: float = 0.003
    weight_decay: float = 0.1
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_steps: int = 100
    warmup_tokens: int = 0  # > 0: the warmup in tokens (replaces warmup_steps)
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    encoder_lr_mult: float = 1.0


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    max_tokens: int = 0  # > 0: the run's length in tokens (replaces max_steps)
    global_batch_tokens: int = 0  # > 0: tokens per optimizer step over all devices (gradient accumulation)
    val_check_interval: int = 200
    limit_val_batches: Any = 1.0  # share (float) or number (int)
    limit_test_batches: Any = 1.0
    test_at_end: bool = True
    checkpoint_every_n_steps: int = 200
    accelerator: str = "auto"
    devices: Any = 1  # int or 'auto'
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    log_every_n_steps: int = 10
    log_encoder_every: int = 50
    deterministic: bool = False
    dist_timeout_s: int = 1800  # DDP process-group timeout (a rank waiting for rank zero's callbacks)
    progress: str = field(default="auto", metadata=choices("auto", "bar", "log", "none"))
    progress_every_n_steps: int = 50
    early_stopping_patience: int = 0  # > 0: stop after this many validations without improvement
    early_stopping_min_delta: float = 0.0
    final_weights: str = field(default="auto", metadata=choices("auto", "last", "best"))  # auto = best with early stopping


@dataclass
class EvalConfig:
    """How validation/test perplexity (and ``evaluate ppl``) cut the token stream into windows."""

    stride: int = 0  # 0 = non-overlapping blocks; S < block_size: windows every S tokens, each token scored once


@dataclass
class WandbConfig:
    mode: str = field(default="auto", metadata=choices("auto", "online", "offline", "disabled"))
    project: str = "depenc"
    entity: Optional[str] = None
    job_type: str = "train"
    tags: List[str] = field(default_factory=list)


@dataclass
class LoggerConfig:
    csv: bool = True
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class EvalCallbackConfig:
    """What every evaluation callback has: whether it runs, and after which validations."""

    enabled: bool = True
    every_n_val: int = 1  # after every N-th validation (0 = only at the end of training)


@dataclass
class AlignmentCallbackConfig(EvalCallbackConfig):
    synthetic: bool = True
    treebanks: Dict[str, Any] = field(default_factory=dict)  # name: path
    selection: str = "auto"
    max_sentences: int = 400
    final_max_sentences: int = 0
    selection_sentences: int = 200
    batch_size: int = 32
    drop_punct: bool = False
    n_examples: int = 20
    seed: int = 0


@dataclass
class GenerationCallbackConfig(EvalCallbackConfig):
    n_samples: int = 100
    final_n_samples: int = 0
    batch_size: int = 100
    max_new_tokens: int = 0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    n_reference: int = 2000


@dataclass
class AgreementCallbackConfig(EvalCallbackConfig):
    splits: List[str] = field(default_factory=lambda: ["test", "test_long"])
    max_pairs: int = 1000
    final_max_pairs: int = 0
    batch_size: int = 64
    n_bootstrap: int = 1000
    seed: int = 0


@dataclass
class ExcessCallbackConfig(EvalCallbackConfig):
    splits: List[str] = field(default_factory=lambda: ["validation", "test", "test_long"])
    reference: str = field(default="train", metadata=choices("train", "own"))
    max_sentences: int = 200
    final_max_sentences: int = 0
    batch_size: int = 32


@dataclass
class PairsCallbackConfig(EvalCallbackConfig):
    enabled: bool = False
    files: List[str] = field(default_factory=list)  # JSONL files or folders of them (BLiMP's format)
    by: List[str] = field(default_factory=lambda: ["UID"])
    batch_size: int = 32
    n_bootstrap: int = 1000
    seed: int = 0


@dataclass
class EfficiencyCallbackConfig:
    enabled: bool = True
    log_every_n_steps: int = 0


@dataclass
class CallbacksConfig:
    alignment: AlignmentCallbackConfig = field(default_factory=AlignmentCallbackConfig)
    generation: GenerationCallbackConfig = field(default_factory=GenerationCallbackConfig)
    agreement: AgreementCallbackConfig = field(default_factory=AgreementCallbackConfig)
    excess: ExcessCallbackConfig = field(default_factory=ExcessCallbackConfig)
    pairs: PairsCallbackConfig = field(default_factory=PairsCallbackConfig)
    efficiency: EfficiencyCallbackConfig = field(default_factory=EfficiencyCallbackConfig)


@dataclass
class Config:
    seed: int = 0
    exp: Optional[str] = None
    extends: Optional[str] = None
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelSection = field(default_factory=ModelSection)  # type: ignore[valid-type]
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)


FREE_FORM = ("data.eval_sets", "callbacks.alignment.treebanks")  # sections whose keys are user-chosen names


def choice_fields(cls: type = Config, prefix: str = "") -> dict[str, tuple[str, ...]]:
    """Dotted key -> allowed values, for every string option of the schema."""
    out: dict[str, tuple[str, ...]] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if "choices" in f.metadata:
            out[key] = f.metadata["choices"]
        elif dataclasses.is_dataclass(hints[f.name]):
            out.update(choice_fields(hints[f.name], key + "."))
    return out
