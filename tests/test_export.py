"""depenc.export hf: a baseline becomes a transformers GPT2LMHeadModel with the same logits and a fast
tokenizer with the same ids; DepEnc and ALiBi are refused (own format written, or exit 2 with
--require-hf); one-line CLI errors."""

import copy
import json
from pathlib import Path

import pytest
import torch

from conftest import NO_CALLBACKS, tiny_overrides

pytest.importorskip("transformers")

TINY_BASELINE = [
    "model.kind=baseline", "run.name=base", *NO_CALLBACKS, "callbacks.efficiency.enabled=false",
    "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
    "trainer.checkpoint_every_n_steps=2", "trainer.test_at_end=false",
    "data.synthetic.n_train=200", "data.synthetic.n_validation=20", "data.synthetic.n_test=20",
    "data.synthetic.n_test_long=20",
]


@pytest.fixture(scope="module")
def baseline_ckpt(tmp_path_factory) -> Path:
    """A tiny trained baseline's checkpoints/last.ckpt (2 steps, word tokenizer)."""
    from depenc.train import main

    tmp = tmp_path_factory.mktemp("export")
    assert main(["debug", *tiny_overrides(tmp, *TINY_BASELINE)]) == 0
    return tmp / "runs" / "debug" / "base" / "checkpoints" / "last.ckpt"


def variant_ckpt(base: Path, name: str, **model_changes) -> Path:
    """A checkpoint in the same run folder (same tokenizer) of a freshly initialised model of the
    baseline's hyper-parameters with ``model_changes``."""
    from depenc.lightning import LM_CLASSES, read_checkpoint

    hp = copy.deepcopy(read_checkpoint(str(base))["hyper_parameters"])
    hp["model"].update(model_changes)
    hp["kind"] = hp["model"]["kind"]
    torch.manual_seed(1)
    lm = LM_CLASSES[hp["kind"]](**hp)
    path = base.with_name(f"{name}.ckpt")
    torch.save({"state_dict": lm.state_dict(), "hyper_parameters": hp}, path)
    return path


def export(ckpt: Path, out: Path, *flags: str) -> int:
    from depenc.export import main

    return main(["hf", "--ckpt", str(ckpt), "--out", str(out), *flags])


@pytest.mark.parametrize("variant", ["trained", "no_bias_matched_width"])
def test_gpt2_from_pretrained_gives_the_models_logits(baseline_ckpt, tmp_path, variant, capsys):
    from transformers import GPT2LMHeadModel

    from depenc.evaluate import load_run

    # bias=false: GPT-2 gets zero biases; an MLP width other than 4 * n_embd (baseline_matched): n_inner
    ckpt = baseline_ckpt if variant == "trained" else variant_ckpt(
        baseline_ckpt, "nobias", kind="baseline_matched", bias=False, mlp_hidden=77)
    out = tmp_path / "hf"
    assert export(ckpt, out) == 0
    assert "GPT2LMHeadModel.from_pretrained" in capsys.readouterr().out
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    _, model, _, _ = load_run(str(ckpt), device="cpu")
    hf = GPT2LMHeadModel.from_pretrained(str(out)).float().eval()
    cfg = json.loads((out / "config.json").read_text())
    want = ("gelu", model.cfg.mlp_width, 1e-5)  # exact GELU, the MLP's width, nn.LayerNorm's eps
    assert (cfg["activation_function"], cfg["n_inner"], cfg["layer_norm_epsilon"]) == want
    idx = torch.randint(model.cfg.vocab_size, (3, model.cfg.block_size), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model.eval()(idx)["logits"], hf(input_ids=idx).logits
    assert ours.abs().max() > 0.01  # not a degenerate all-zero model
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_exported_tokenizer_gives_the_runs_ids(baseline_ckpt, tmp_path):
    from transformers import PreTrainedTokenizerFast

    from depenc.data.tokenizers import load_tokenizer

    out = tmp_path / "hf"
    assert export(baseline_ckpt, out) == 0
    run_tok = load_tokenizer(baseline_ckpt.parents[1] / "tokenizer.json")
    fast = PreTrainedTokenizerFast.from_pretrained(str(out))
    sentence = "the dogs that the cat sees  sleep . qqqnotaword"
    ids = run_tok.encode(sentence)
    # the unknown word is <unk>, the two spaces one split
    assert ids[-1] == run_tok.unk_id and len(ids) == 9 and 1 not in ids[:-1]
    assert fast(sentence).input_ids == ids  # nothing added around the sentence
    assert (fast.eos_token_id, fast.bos_token_id, fast.pad_token_id, fast.unk_token_id) == (0, 0, 0, 1)
    assert fast.decode(ids[:-1]) == "the dogs that the cat sees sleep ."


@pytest.mark.parametrize("kind", ["char", "bpe", "file"])
def test_char_bpe_and_file_tokenizers_convert_with_the_same_ids(kind, tmp_path):
    from depenc.data.tokenizers import build_tokenizer
    from depenc.export import hf_tokenizer

    texts = ["The cat sat on the mat.", "Dogs\tbark  loudly!\nat night", "héllo wörld über"] * 4
    tok = build_tokenizer("bpe" if kind == "file" else kind, texts, 300, lowercase=True)
    if kind == "file":  # a tokenizer.json of Hugging Face's read from disk (data.tokenizer=file)
        tok.hf.save(str(tmp_path / "tokenizer.json"))
        tok = build_tokenizer("file", [], 0, tokenizer_file=str(tmp_path / "tokenizer.json"))
    fast = hf_tokenizer(tok, 64)
    for s in ["The Cat sat!  on\tthe MAT\nÜber", "zq Ω unseen", " leading space"]:
        assert fast(s).input_ids == tok.encode(s), s
    assert (fast.unk_token_id is None) == (kind != "char") and fast.eos_token_id == tok.eos_id


@pytest.mark.parametrize("feature,changes", [("DepEnc dependency encoder", {"kind": "depenc"}),
                                             ("ALiBi", {"pos": "alibi"})])
def test_models_gpt2_cannot_express_are_refused(baseline_ckpt, tmp_path, capsys, feature, changes):
    from safetensors.torch import load_file

    from depenc.evaluate import load_run

    ckpt = variant_ckpt(baseline_ckpt, feature.split()[0].lower(), **changes)
    out = tmp_path / "own"
    assert export(ckpt, out) == 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no transformers equivalent" in err and feature in err
    assert "not loadable" in err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["transformers_equivalent"] is None and cfg["model_config"]["kind"] == changes.get("kind", "baseline")
    _, model, _, _ = load_run(str(ckpt), device="cpu")
    weights = load_file(str(out / "model.safetensors"))
    own = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    assert weights.keys() == own.keys() and all(torch.equal(weights[k], own[k]) for k in own)
    assert (out / "tokenizer.json").is_file() and (out / "depenc_tokenizer.json").is_file()

    strict = tmp_path / "strict"
    assert export(ckpt, strict, "--require-hf") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and feature in err
    assert not strict.exists()


def test_default_baseline_experiments_map_to_gpt2():
    from omegaconf import OmegaConf

    from depenc.config import load_config
    from depenc.export import hf_blockers
    from depenc.schema import ModelConfig

    def blockers(exp: str) -> list[str]:
        model = {**OmegaConf.to_container(load_config(exp, []).model), "vocab_size": 100, "block_size": 128}
        return hf_blockers(ModelConfig.from_dict(model))

    assert blockers("baseline_small") == [] and blockers("baseline_matched_small") == []
    assert "DepEnc" in blockers("depenc_small")[0] and "ALiBi" in blockers("baseline_alibi_small")[0]


def test_cli_errors_are_one_line(baseline_ckpt, tmp_path, capsys):
    assert export(tmp_path / "missing.ckpt", tmp_path / "o") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: checkpoint not found") and len(err.splitlines()) == 1

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    assert export(baseline_ckpt, busy) == 2
    err = capsys.readouterr().err.strip()
    assert "not empty" in err and "--force" in err and len(err.splitlines()) == 1
    assert export(baseline_ckpt, busy, "--force") == 0
    assert (busy / "notes.txt").read_text() == "keep me" and (busy / "model.safetensors").is_file()
