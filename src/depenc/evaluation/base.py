"""What every evaluation needs from a model: the plain module, its device, eval mode, and whether it is
an oracle model that reads gold arcs; and the synthetic grammar's config from a run config."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch

__all__ = ["eval_mode", "model_device", "needs_gold_arcs", "oracle_skip_reason", "padded", "synthetic_config",
           "unwrap_model"]


def unwrap_model(model_or_lm: Any) -> torch.nn.Module:
    """The plain :class:`Transformer` behind a LightningModule and/or ``torch.compile``."""
    model = getattr(model_or_lm, "model", model_or_lm)
    return getattr(model, "_orig_mod", model)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode and no gradients inside; the previous train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def padded(seqs: Sequence[Sequence[int]], pad: int) -> torch.Tensor:
    """(B, T) ids of the sequences, padded at the end to the longest: harmless for a causal model,
    whose rows never see later positions."""
    idx = torch.full((len(seqs), max(len(s) for s in seqs)), pad, dtype=torch.long)
    for b, s in enumerate(seqs):
        idx[b, : len(s)] = torch.tensor(s, dtype=torch.long)
    return idx


def needs_gold_arcs(model: torch.nn.Module) -> bool:
    """``depenc.parser=oracle`` models cannot run without gold arcs for every input."""
    return model.encoder is not None and model.cfg.depenc.parser == "oracle"


def oracle_skip_reason(model: torch.nn.Module, tokenizer: Any) -> str | None:
    """Why an evaluation that builds gold arcs per sentence cannot score ``model`` (None when it can):
    the gold arcs are per word, so an oracle model needs one token per word."""
    if needs_gold_arcs(model) and tokenizer.kind != "word":
        return "an oracle model (depenc.parser=oracle) needs the word tokenizer"
    return None


def with_depth_splits(splits, scfg) -> list[str]:
    """``splits`` followed by the depth-generalisation splits when the corpus has them
    (``n_test_depth > 0``) and they are not listed already."""
    from depenc.data.synthetic import DEPTH_SPLITS

    listed = [str(s) for s in splits]
    return listed + ([s for s in DEPTH_SPLITS if s not in listed] if scfg.n_test_depth > 0 else [])


def synthetic_config(cfg: Any):
    """A :class:`depenc.data.synthetic.SyntheticConfig` from one, a dict or an OmegaConf node
    (``data.synthetic`` of a run config)."""
    from omegaconf import OmegaConf

    from depenc.data import synthetic

    if isinstance(cfg, synthetic.SyntheticConfig):
        return cfg
    if OmegaConf.is_config(cfg):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    return synthetic.SyntheticConfig.from_dict(dict(cfg))
