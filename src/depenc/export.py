"""Export a trained checkpoint: ``python -m depenc.export hf --ckpt CKPT --out DIR [--force] [--require-hf]``.

``hf`` writes a Hugging Face ``save_pretrained`` folder. A baseline (``model.kind`` baseline or
baseline_matched with learned positions) is exactly a GPT-2: pre-LayerNorm blocks (eps 1e-5), learned
positions, exact-erf GELU MLP of width ``mlp_width`` (``n_inner``), attention scaled by 1/sqrt(head
dim), q, k, v concatenated in ``c_attn``, head tied to the token embedding. It becomes a
``transformers.GPT2LMHeadModel`` (model.safetensors, config.json, generation_config.json; GPT-2's
Conv1D layers hold the transposed ``nn.Linear`` weights, and a model trained with ``bias=false``
gets zero biases), checked against the checkpoint's logits before anything is written.

A model GPT-2 cannot express (DepEnc's dependency encoder, ALiBi position biases) is refused with one
line naming the feature; the folder then holds the model in this project's own format instead:
model.safetensors (the state dict, ``lm_head.weight`` left out: it is ``wte.weight``), config.json
(``depenc.models.transformer.ModelConfig``) and depenc_tokenizer.json -- not loadable by
``transformers``. Exit code 0 (``--require-hf``: 2, and nothing written).

Both write the run's tokenizer as a ``transformers.PreTrainedTokenizerFast`` (tokenizer.json,
tokenizer_config.json): the run's end-of-text token (``<eos>``; a tokenizer file's own, e.g. GPT-2's
``<|endoftext|>``) is end, beginning and padding token (training joins documents with it and pads
blocks with it), ``<unk>`` the unknown token (word and char tokenizers; byte-level BPE has none); it
encodes text to the ids the run's tokenizer gives. Errors (missing checkpoint, a non-empty
``--out`` without ``--force``) give one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import torch

from depenc.evaluate import CLIError, load_run
from depenc.schema import ModelConfig

# what an export writes; --force removes these from --out first (and nothing else)
EXPORT_FILES = ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "depenc_tokenizer.json")
PARITY_TOL = 1e-4  # max |logit difference| the export's own check accepts (float32)
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, used by every LayerNorm of the model


def hf_blockers(cfg: ModelConfig) -> list[str]:
    """What ``cfg`` uses that GPT-2 cannot express (empty: the model is a GPT-2)."""
    out = []
    if cfg.has_encoder:
        out.append("the DepEnc dependency encoder (model.kind=depenc)")
    if cfg.pos == "alibi":
        out.append("ALiBi recency biases in place of position embeddings (model.pos=alibi)")
    return out


def gpt2_config(cfg: ModelConfig):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, n_inner=cfg.mlp_width, activation_function="gelu",  # F.gelu: exact erf, not tanh
        resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, layer_norm_epsilon=LAYER_NORM_EPS,
        scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False,
        bos_token_id=cfg.eos_id, eos_token_id=cfg.eos_id, pad_token_id=cfg.eos_id, tie_word_embeddings=True,
    )


def gpt2_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The baseline's weights under GPT2LMHeadModel's names: Linear weights transposed for Conv1D,
    absent biases (``bias=false``) as zeros."""
    def bias(layer, width: int) -> torch.Tensor:
        return layer.bias.detach().clone() if layer.bias is not None else torch.zeros(width)

    sd = {"transformer.wte.weight": model.wte.weight.detach().clone(),
          "transformer.wpe.weight": model.wpe.weight.detach().clone()}
    for i, block in enumerate(model.blocks):
        p = f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            norm = getattr(block, ln)
            sd[p + ln + ".weight"] = norm.weight.detach().clone()
            sd[p + ln + ".bias"] = bias(norm, norm.normalized_shape[0])
        for name, layer in (("attn.c_attn", block.attn.c_attn), ("attn.c_proj", block.attn.c_proj),
                            ("mlp.c_fc", block.mlp.c_fc), ("mlp.c_proj", block.mlp.c_proj)):
            sd[p + name + ".weight"] = layer.weight.detach().t().contiguous()  # (in, out) for Conv1D
            sd[p + name + ".bias"] = bias(layer, layer.out_features)
    sd["transformer.ln_f.weight"] = model.ln_f.weight.detach().clone()
    sd["transformer.ln_f.bias"] = bias(model.ln_f, model.ln_f.normalized_shape[0])
    return sd


def to_gpt2(model: torch.nn.Module):
    """A ``GPT2LMHeadModel`` (eval mode, float32) computing what ``model`` computes."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel(gpt2_config(model.cfg))
    missing, unexpected = hf.load_state_dict(gpt2_state_dict(model), strict=False)
    # lm_head.weight is tied to wte (not in the state dict); anything else would be a mapping bug
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"GPT-2 weight mapping: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf.float().eval()


@torch.no_grad()
def max_logit_diff(model: torch.nn.Module, hf, idx: torch.Tensor) -> float:
    """max |logits(model) - logits(hf)| on token ids ``idx`` (B, T), both in eval mode."""
    was_training = model.training
    model.eval()
    try:
        ours = model(idx)["logits"]  # (B, T, V)
        theirs = hf(input_ids=idx).logits  # (B, T, V)
    finally:
        model.train(was_training)
    return float((ours - theirs).abs().max())


def hf_tokenizer(tok, block_size: int):
    """The run's tokenizer as a ``transformers.PreTrainedTokenizerFast`` giving the same ids."""
    from tokenizers import Regex
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if getattr(tok, "hf", None) is not None:  # byte-level BPE (learnt, or a tokenizer.json file): already one
        core = HFTokenizer.from_str(tok.hf.to_str())  # a copy: the run's tokenizer stays as it is
    else:
        core = HFTokenizer(models.WordLevel(vocab=dict(tok.index), unk_token=tok.id_to_token(tok.unk_id)))
        if tok.lowercase:
            core.normalizer = normalizers.Lowercase()
        if tok.kind == "word":  # str.split(): runs of whitespace separate words; decoding joins with spaces
            core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        else:  # char: every code point is a token, whitespace included; decoding concatenates
            core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
            core.decoder = decoders.Fuse()
    eos = tok.id_to_token(tok.eos_id)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=eos, bos_token=eos, pad_token=eos,
                                   unk_token=tok.id_to_token(tok.unk_id) if tok.unk_id is not None else None,
                                   model_max_length=block_size)


def save_own_format(model: torch.nn.Module, tok, out: Path) -> None:
    from safetensors.torch import save_file

    # lm_head.weight is wte.weight (tied): safetensors refuses shared tensors, and it is redundant
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt", "source": "depenc"})
    (out / "config.json").write_text(json.dumps({
        "architecture": "depenc.models.transformer.Transformer",
        "transformers_equivalent": None,
        "not_expressible_in_gpt2": hf_blockers(model.cfg),
        "tied_weights": {"lm_head.weight": "wte.weight"},
        "model_config": model.cfg.to_dict(),
    }, indent=2))
    tok.save(out / "depenc_tokenizer.json")


def check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file: give a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise CLIError(f"--out {out} exists and is not empty: choose another folder or pass --force")


def prepare_out(out: Path, force: bool) -> None:
    check_out(out, force)
    for name in EXPORT_FILES:  # with --force, an earlier export's files (only those): nothing stale is left
        (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def cmd_hf(args) -> int:
    _, model, tok, _ = load_run(args.ckpt, device="cpu")
    out = Path(args.out)
    check_out(out, args.force)
    blockers = hf_blockers(model.cfg)
    if blockers and args.require_hf:
        raise CLIError(f"{args.ckpt}: no transformers equivalent: GPT-2 cannot express {' and '.join(blockers)}; "
                       "nothing written (--require-hf)")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    fast = hf_tokenizer(tok, model.cfg.block_size)
    if blockers:
        prepare_out(out, args.force)
        save_own_format(model, tok, out)
        fast.save_pretrained(str(out))
        print(f"no transformers equivalent: GPT-2 cannot express {' and '.join(blockers)}; "
              f"wrote {out}/model.safetensors + config.json in depenc's own format (not loadable with "
              "transformers' from_pretrained) + the tokenizer as a PreTrainedTokenizerFast", file=sys.stderr)
        return 0
    hf = to_gpt2(model)
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(model.cfg.vocab_size, (2, min(16, model.cfg.block_size)), generator=gen)
    diff = max_logit_diff(model, hf, idx)
    if not diff <= PARITY_TOL:
        raise CLIError(f"the GPT-2 conversion of {args.ckpt} does not reproduce its logits "
                       f"(max difference {diff:.2e}); nothing written")
    prepare_out(out, args.force)
    hf.save_pretrained(str(out))
    fast.save_pretrained(str(out))
    print(f"wrote {out}: GPT2LMHeadModel with {model.num_params():,} parameters (logits within {diff:.1e} of the "
          f"checkpoint's) + tokenizer; load with transformers.GPT2LMHeadModel.from_pretrained({str(out)!r}) and "
          f"PreTrainedTokenizerFast.from_pretrained({str(out)!r})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m depenc.export", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    hf = sub.add_parser("hf", help="a transformers save_pretrained folder (GPT2LMHeadModel for a baseline)")
    hf.add_argument("--ckpt", required=True, help="checkpoint, e.g. runs/<exp>/<run_id>/checkpoints/best.ckpt")
    hf.add_argument("--out", required=True, help="folder to write (must be empty or absent unless --force)")
    hf.add_argument("--force", action="store_true", help="write into a non-empty --out (replacing an earlier export)")
    hf.add_argument("--require-hf", action="store_true",
                    help="exit 2 (writing nothing) when the model has no transformers equivalent")
    hf.set_defaults(func=cmd_hf)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
