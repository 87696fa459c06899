"""Every shipped experiment file is built into its model and trained for one optimizer step (not
only loaded): the config, the model builder, the LightningModule's optimizer and the model forward
must all accept it."""

import pytest
import torch

from depenc.config import list_experiments, load_config
from depenc.lightning import LM_CLASSES
from depenc.train import build_model_config


class FakeTokenizer:  # the facts build_model_config takes from a tokenizer
    def __init__(self, vocab_size: int):
        self.vocab_size, self.eos_id = vocab_size, 0


@pytest.mark.parametrize("exp", list_experiments())
def test_every_shipped_experiment_builds_and_trains_one_step(exp):
    from depenc.data.synthetic import SyntheticConfig, vocabulary

    cfg = load_config(exp)
    vocab = (len(vocabulary(SyntheticConfig.from_dict(dict(cfg.data.synthetic)))) + 2
             if cfg.data.source == "synthetic" else cfg.data.vocab_size)
    model = build_model_config(cfg, FakeTokenizer(vocab))
    torch.manual_seed(0)
    lm = LM_CLASSES[cfg.model.kind](model=model, optim=dict(cfg.optim), max_steps=cfg.trainer.max_steps,
                                    eval_sets=["validation"], test_sets=["test"], split_stats={}, kind=cfg.model.kind)
    opt = lm.configure_optimizers()["optimizer"]
    T = min(cfg.data.block_size, 48)
    idx = torch.randint(1, vocab, (2, T))
    idx[:, 0] = 0
    gold = torch.ones(2, T, T).tril() if model["depenc"]["parser"] == "oracle" else None
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    loss = lm.model(idx, idx, gold_M=gold if cfg.model.kind == "depenc" else None)["loss"]
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    moved = [n for n, p in lm.model.named_parameters() if not torch.equal(p, before[n])]
    assert "wte.weight" in moved and len(moved) > len(before) // 2
    if cfg.model.kind == "depenc":
        assert any(n.startswith("encoder.") for n in moved)
