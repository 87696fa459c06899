"""Evaluate a trained checkpoint: ``python -m depenc.evaluate {ppl,score,align,generate} --ckpt CKPT ...``.

* ``ppl --text FILE [--stride N]``: token perplexity, bits per byte and word perplexity of a text file (one
  document per non-empty line, documents joined with ``<eos>`` as in training, non-overlapping blocks
  of the model's context, or sliding windows every N tokens with each token scored once; default the
  run's ``eval.stride``), and the share of ``<unk>`` tokens (a warning above 5%). Prints one JSON object.
* ``score --input FILE``: one JSON line per input line: ``{"text", "logprob", "n_tokens"}``,
  the total log-probability (nats) of the sentence's tokens and the closing ``<eos>`` given ``[<eos>]``;
  an empty line gets ``"logprob": null`` and ``"reason": "empty line"``.
* ``align --treebank FILE [--select FILE] [--max-sentences N]``: dependency alignment (DESIGN 4.2) of
  every source; ``attn_best`` only with ``--select`` (the head is chosen there, never on FILE).
  FILE may be ``synthetic:<split>`` for a run trained on the synthetic grammar. Prints one JSON object.
* ``generate --n N --seed S --out FILE.jsonl``: samples as JSONL (as the generation callback writes
  them); prints their statistics as one JSON object.
* ``agree [--split test_long]``: subject-verb agreement minimal pairs of a run trained on the
  synthetic grammar (accuracy and margin by distance and attractors, as the agreement callback logs).
* ``excess --split S [--reference own|train] [--max-sentences N]``: excess loss and KL over the synthetic
  grammar's exact optimum on sentence-aligned blocks, by category, depth and agreement distance
  (``depenc.evaluation.excess``; the excess callback's numbers). Prints one JSON object.
* ``pairs --input FILE.jsonl|DIR [--by field,UID] [--format json|table] [--bootstrap N]``: minimal pairs
  in BLiMP's format (``depenc.evaluation.pairs``): accuracy of lp(good) > lp(bad) with ``score``'s
  log-prob, mean margin and bootstrap 95% intervals, overall and per group of each ``--by`` key, and the
  one-prefix accuracy (agree's number) where the pairs have BLiMP's one-prefix fields.
* ``harness --tasks T1,T2 [--include-path DIR] [--limit N]``: lm-evaluation-harness tasks (``blimp``,
  ``lambada_openai``, ``wikitext``, local YAML tasks in DIR) through ``lm_eval.simple_evaluate`` with
  the model as :class:`depenc.harness.DepEncLM`; prints the harness's results JSON. Needs ``lm_eval``
  (``pip install -e ".[eval]"``).

``--ablate zero_gate`` (M = 0) / ``--ablate zero_lambda`` (no dependency-weighted attention) switch
off part of a DepEnc model at inference time, for any command: does the model use its structure?

The tokenizer is read from ``<run_dir>/tokenizer.json`` (the checkpoint lives in
``<run_dir>/checkpoints/``), else rebuilt from the run's data config. Errors (missing checkpoint or
file, unreadable input) give one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from depenc.evaluation.base import needs_gold_arcs, oracle_skip_reason, unwrap_model
from depenc.evaluation.io import to_json
from depenc.evaluation.likelihood import perplexity, score_sentences


UNK_WARN_RATE = 0.05  # evaluate ppl warns when more of the text's tokens than this are <unk>


class CLIError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


# --------------------------------------------------------------------------------------------
# loading


def load_run(ckpt: str, device: str = "auto") -> tuple[Any, torch.nn.Module, Any, dict]:
    """(LightningModule, plain model in eval mode on ``device``, tokenizer, run config dict)."""
    path = Path(ckpt)
    if not path.is_file():
        raise CLIError(f"checkpoint not found: {path} (give a .ckpt file, e.g. runs/<exp>/<run_id>/checkpoints/last.ckpt)")
    from depenc.lightning import CheckpointError, load_lm

    try:
        lm = load_lm(str(path), map_location="cpu")
    except CheckpointError as exc:  # truncated, foreign, or an unsafe pickle: nothing of it ran
        raise CLIError(str(exc)) from None
    except Exception as exc:  # a checkpoint of another version
        raise CLIError(f"cannot load checkpoint {path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    model = unwrap_model(lm)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    model.to(dev).eval()
    run_config = dict(lm.hparams.get("run_config") or {})
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    tok_path = run_dir / "tokenizer.json"
    from depenc.data.tokenizers import load_tokenizer

    if tok_path.is_file():
        tokenizer = load_tokenizer(tok_path)
    else:
        if not run_config.get("data"):
            raise CLIError(f"no tokenizer.json next to {path} (looked in {run_dir}) and no data config in the checkpoint")
        from depenc.data.datamodule import LMDataModule

        dm = LMDataModule(run_config["data"], seed=run_config["seed"])
        dm.setup("fit")
        tokenizer = dm.tokenizer
    if tokenizer.vocab_size != model.cfg.vocab_size:
        raise CLIError(f"tokenizer has {tokenizer.vocab_size} tokens but the model {model.cfg.vocab_size}: "
                       f"wrong tokenizer.json in {run_dir}?")
    return lm, model, tokenizer, run_config


def _read_all_lines(path: str, what: str) -> list[str]:
    """Every line of a UTF-8 text file, stripped, empty ones included."""
    p = Path(path)
    if p.is_dir():
        raise CLIError(f"{what} {p} is a folder: give a text file")
    if not p.is_file():
        raise CLIError(f"{what} not found: {p}")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CLIError(f"{what} {p} is not UTF-8 text: byte {exc.start} (0x{exc.object[exc.start]:02x}) "
                       "is the first that is not; convert it, e.g. iconv -f latin1 -t utf-8") from None
    return [line.strip() for line in text.splitlines()]


def _read_lines(path: str, what: str) -> list[str]:
    return [line for line in _read_all_lines(path, what) if line]


def _check_model(model) -> None:
    if needs_gold_arcs(model):
        raise CLIError("this checkpoint uses model.depenc.parser=oracle, which needs gold arcs for every input; "
                       "it cannot be evaluated on plain text")


# --------------------------------------------------------------------------------------------
# commands


def _load(args) -> tuple[Any, torch.nn.Module, Any, dict]:
    """load_run with the command's ``--ablate`` switches (``Transformer.ablate``) applied."""
    lm, model, tok, run_config = load_run(args.ckpt, args.device)
    try:
        model.ablate(*(args.ablate or []))
    except ValueError as exc:  # not a DepEnc model
        raise CLIError(f"--ablate {' '.join(args.ablate)}: {args.ckpt}: {exc}") from None
    return lm, model, tok, run_config


def _synthetic_data(run_config: dict, command: str) -> dict:
    """The data config of a run trained on the synthetic grammar (CLIError for any other run)."""
    data = run_config["data"]
    if data["source"] != "synthetic":
        raise CLIError(f"{command} needs a run trained on the synthetic grammar (data.source is {data['source']!r})")
    return data


def cmd_agree(args) -> int:
    from depenc.evaluation.agreement import evaluate_pairs, load_pairs

    _, model, tok, run_config = _load(args)
    if (reason := oracle_skip_reason(model, tok)) is not None:
        raise CLIError(reason)
    data = _synthetic_data(run_config, "agree")
    try:
        pairs = load_pairs(data["synthetic"], args.split, args.max_pairs)
    except (KeyError, ValueError) as exc:
        raise CLIError(f"--split {args.split}: {exc}") from None
    metrics, _ = evaluate_pairs(model, tok, pairs, args.batch_size, seed=args.seed)
    _emit({"ckpt": args.ckpt, "split": args.split, "ablate": args.ablate or [], "metrics": metrics}, args.out)
    return 0


def cmd_excess(args) -> int:
    from depenc.evaluation.base import synthetic_config
    from depenc.evaluation.excess import evaluate_excess

    _, model, tok, run_config = _load(args)
    data = _synthetic_data(run_config, "excess")
    try:
        metrics, result = evaluate_excess(model, tok, synthetic_config(data["synthetic"]), args.split, args.reference,
                                          args.max_sentences, args.batch_size,
                                          cache_dir=Path(data["cache_dir"]) / "exact")  # the run's data cache
    except ValueError as exc:  # unknown split, a subword tokenizer
        raise CLIError(f"excess --split {args.split}: {exc}") from None
    _emit({"ckpt": args.ckpt, "split": args.split, "reference": args.reference, "ablate": args.ablate or [],
           "metrics": metrics, "result": result}, args.out)
    return 0


def cmd_ppl(args) -> int:
    docs = _read_lines(args.text, "text file")
    _, model, tok, run_config = _load(args)
    _check_model(model)
    if not docs:
        raise CLIError(f"text file {args.text} has no non-empty line")
    stride = args.stride if args.stride is not None else int((run_config.get("eval") or {}).get("stride", 0))
    if stride > model.cfg.block_size:
        raise CLIError(f"--stride must be <= the model's block size {model.cfg.block_size}, got {stride}")
    out = {"ckpt": args.ckpt, "text": args.text, **perplexity(model, tok, docs, args.batch_size, stride)}
    if (out["unk_rate"] or 0) > UNK_WARN_RATE:
        print(f"warning: {out['unk_rate']:.1%} of the tokens of {args.text} are <unk> (not in the run's vocabulary): "
              "its perplexity says little about the model", file=sys.stderr)
    _emit(out, args.out)
    return 0


def cmd_score(args) -> int:
    lines = _read_all_lines(args.input, "input file")
    _, model, tok, _ = _load(args)
    _check_model(model)
    scored = iter(score_sentences(model, tok, [line for line in lines if line], args.batch_size))
    # one output line per input line: a caller pairing them is never shifted
    rows = [next(scored) if line else {"text": line, "logprob": None, "n_tokens": 0, "reason": "empty line"}
            for line in lines]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _treebank(spec: str, name: str, tok, block: int, n: int, run_config: dict):
    from depenc.evaluation.alignment import SYNTHETIC_PREFIX, encode_treebank, gold_from_spec, resolve_path

    synthetic = spec.startswith(SYNTHETIC_PREFIX)
    if not synthetic and not resolve_path(spec).exists():
        raise CLIError(f"treebank not found: {spec}")
    try:
        gold = gold_from_spec(spec, run_config["data"]["synthetic"] if synthetic else None, n)
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from None
    except (ValueError, OSError) as exc:  # an unknown synthetic split, an unreadable file
        raise CLIError(f"--treebank {spec}: {exc}" if synthetic else f"cannot read treebank {spec}: {exc}") from None
    return encode_treebank(name, gold, tok, block, source=spec)


def cmd_align(args) -> int:
    from depenc.evaluation.alignment import evaluate_alignment, treebank_name

    _, model, tok, run_config = _load(args)  # oracle models read the gold arcs here
    block = int(model.cfg.block_size)
    name = treebank_name(args.treebank)
    treebank = _treebank(args.treebank, name, tok, block, args.max_sentences, run_config)
    selection = None
    if args.select and (args.select == args.treebank or (
            ":" not in args.select and Path(args.select).resolve() == Path(args.treebank).resolve())):
        raise CLIError("--select must be another treebank than --treebank: attn_best is never reported on "
                       "the treebank its head was chosen on")
    if args.select:
        sel_name = "selection:" + treebank_name(args.select)
        selection = _treebank(args.select, sel_name, tok, block, args.select_max_sentences, run_config)
    try:
        result = evaluate_alignment(model, [treebank], selection, args.batch_size, args.drop_punct, args.n_examples,
                                    args.seed)
    except ValueError as exc:  # e.g. an oracle model with a subword tokenizer
        raise CLIError(str(exc)) from None
    tb = result["treebanks"][name]
    out = {
        "ckpt": args.ckpt,
        "treebank": args.treebank,
        "select": args.select,
        "target": model.cfg.depenc.target if model.encoder is not None else None,
        "drop_punct": args.drop_punct,
        **{k: tb[k] for k in ("n_total", "n_used", "n_skipped", "skipped")},
        "sources": tb["sources"],
        "best_head": result["selection"],
    }
    if args.n_examples:
        out["examples"] = tb["examples"]
    _emit(out, args.out)
    return 0


def cmd_generate(args) -> int:
    from depenc.evaluation.generation import generate_samples, sample_metrics, write_samples

    reference = _read_lines(args.reference, "reference file") if args.reference else None
    _, model, tok, run_config = _load(args)
    _check_model(model)
    grammar = None
    if run_config["data"]["source"] == "synthetic":
        from depenc.data import synthetic
        from depenc.evaluation.base import synthetic_config

        grammar = synthetic.get_grammar(synthetic_config(run_config["data"]["synthetic"]))
    samples = generate_samples(model, tok, args.n, args.seed, args.batch_size, args.max_new_tokens,
                               args.temperature, args.top_k, args.top_p)
    metrics = sample_metrics(samples, reference, grammar)
    try:
        write_samples(args.out, samples)
    except OSError as exc:
        raise CLIError(f"cannot write {args.out}: {exc}") from None
    _emit({"ckpt": args.ckpt, "out": args.out, "n": args.n, "seed": args.seed, "temperature": args.temperature,
           "top_k": args.top_k, "top_p": args.top_p, "metrics": metrics}, None)
    return 0


def cmd_pairs(args) -> int:
    from depenc.evaluation.pairs import PairsError, evaluate_pairs, group_labels, model_scorers, read_pairs, table

    by = [k.strip() for k in (args.by or "").split(",") if k.strip()]
    try:
        pairs = read_pairs(args.input)
        for key in by:  # before the model is loaded
            group_labels(pairs, key)
    except PairsError as exc:
        raise CLIError(str(exc)) from None
    _, model, tok, _ = _load(args)
    _check_model(model)
    result = evaluate_pairs(pairs, *model_scorers(model, tok, args.batch_size), by=by, n_boot=args.bootstrap,
                            seed=args.seed)
    if args.format == "table":
        text = table(result) + "\n"
        if args.out:
            try:
                Path(args.out).write_text(text, encoding="utf-8")
            except OSError as exc:
                raise CLIError(f"cannot write {args.out}: {exc}") from None
        else:
            sys.stdout.write(text)
        return 0
    _emit({"ckpt": args.ckpt, "input": args.input, "ablate": args.ablate or [], **result}, args.out)
    return 0


def cmd_harness(args) -> int:
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise CLIError('harness needs the lm-evaluation-harness (lm_eval): pip install -e ".[eval]"') from None
    from lm_eval.utils import handle_non_serializable

    from depenc.evaluation.io import nan_to_none
    from depenc.harness import DepEncLM

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise CLIError("--tasks: give task names, e.g. blimp,lambada_openai,wikitext")
    if args.include_path and not Path(args.include_path).is_dir():
        raise CLIError(f"--include-path {args.include_path}: not a folder (of task YAML files)")
    manager = TaskManager(include_path=args.include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks and not Path(t).is_file()]
    if unknown:
        raise CLIError(f"unknown task{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: see `lm-eval ls tasks`"
                       + (f" (with --include_path {args.include_path})" if args.include_path else ""))
    _, model, tok, _ = _load(args)
    _check_model(model)
    lm = DepEncLM.from_model(model, tok, args.batch_size, name=args.ckpt)
    try:
        results = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=args.limit or None,
                                          log_samples=False)
    except ConnectionError as exc:  # the tasks' data comes from the Hugging Face Hub
        raise CLIError(f"{str(exc).splitlines()[0]}: the harness downloads the tasks' data from the Hugging Face "
                       "Hub (offline: HF_DATASETS_OFFLINE=1 with the data in the datasets cache)") from None
    text = json.dumps(nan_to_none({"ckpt": args.ckpt, **results}), default=handle_non_serializable, indent=1,
                      ensure_ascii=False)
    if args.out:
        try:
            Path(args.out).write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            raise CLIError(f"cannot write {args.out}: {exc}") from None
    else:
        print(text)
    return 0


def _emit(obj: dict, out: str | None) -> None:
    text = to_json(obj)
    if out:
        try:
            Path(out).write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            raise CLIError(f"cannot write {out}: {exc}") from None
    else:
        print(text)


# --------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    from depenc.models.transformer import Transformer

    p = argparse.ArgumentParser(prog="python -m depenc.evaluate", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{ppl,score,align,generate,agree,excess,pairs,harness}")

    def common(sp):
        sp.add_argument("--ckpt", required=True, help="checkpoint (runs/<exp>/<run_id>/checkpoints/last.ckpt)")
        sp.add_argument("--device", default="auto", help="auto (GPU if available) | cpu | cuda | cuda:N")
        sp.add_argument("--batch-size", type=int, default=32)
        sp.add_argument("--ablate", action="append", choices=Transformer.ABLATIONS, default=None,
                        help="switch off part of a DepEnc model at inference time (repeatable)")

    sp = sub.add_parser("ppl", help="perplexity / bits per byte of a text file (one document per line)")
    common(sp)
    sp.add_argument("--text", required=True)
    sp.add_argument("--stride", type=int, default=None,
                    help="sliding windows every N tokens, each token scored once (0 = non-overlapping blocks; "
                         "default: the run's eval.stride)")
    sp.add_argument("--out", default=None, help="write the JSON here instead of stdout")
    sp.set_defaults(func=cmd_ppl)

    sp = sub.add_parser("score", help="log-probability of every line (sentence) of a file, as JSON lines")
    common(sp)
    sp.add_argument("--input", required=True)
    sp.add_argument("--out", default=None, help="write the JSON lines here instead of stdout")
    sp.set_defaults(func=cmd_score)

    sp = sub.add_parser("align", help="dependency alignment against a gold treebank")
    common(sp)
    sp.add_argument("--treebank", required=True, help=".conllu, .dp, .zip, a folder, or synthetic:<split>")
    sp.add_argument("--select", default=None, help="treebank that chooses attn_best's head (never the reported one)")
    sp.add_argument("--max-sentences", type=int, default=0, help="first N sentences of --treebank (0 = all)")
    sp.add_argument("--select-max-sentences", type=int, default=0, help="first N sentences of --select (0 = all)")
    sp.add_argument("--drop-punct", action="store_true", help="remove punctuation words before scoring")
    sp.add_argument("--n-examples", type=int, default=0, help="keep predicted edges of the first N sentences")
    sp.add_argument("--seed", type=int, default=0, help="seed of the random reference trees")
    sp.add_argument("--out", default=None, help="write the JSON here instead of stdout")
    sp.set_defaults(func=cmd_align)

    sp = sub.add_parser("generate", help="sample texts to JSONL")
    common(sp)
    sp.set_defaults(batch_size=100)
    sp.add_argument("--n", type=int, required=True)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", required=True, help="JSONL file for the samples")
    sp.add_argument("--temperature", type=float, default=1.0)
    sp.add_argument("--top-k", type=int, default=0)
    sp.add_argument("--top-p", type=float, default=1.0)
    sp.add_argument("--max-new-tokens", type=int, default=0, help="0 = the model's block size")
    sp.add_argument("--reference", default=None, help="reference text (one document per line) for length statistics")
    sp.set_defaults(func=cmd_generate)

    sp = sub.add_parser("agree", help="subject-verb agreement minimal pairs (runs on the synthetic grammar)")
    common(sp)
    sp.add_argument("--split", default="test_long", help="synthetic split of the pairs: test | test_long | ...")
    sp.add_argument("--max-pairs", type=int, default=0, help="first N pairs (0 = all)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the bootstrap intervals")
    sp.add_argument("--out", default=None, help="write the JSON here instead of stdout")
    sp.set_defaults(func=cmd_agree)

    sp = sub.add_parser("excess", help="excess loss and KL over the synthetic grammar's exact optimum")
    common(sp)
    sp.add_argument("--split", default="test", help="synthetic split: validation | test | test_long")
    sp.add_argument("--reference", default="own", choices=("own", "train"),
                    help="the optimum: own (the split's generator) | train (the training grammar without the depth cap)")
    sp.add_argument("--max-sentences", type=int, default=0, help="first N sentences (0 = all)")
    sp.add_argument("--out", default=None, help="write the JSON here instead of stdout")
    sp.set_defaults(func=cmd_excess)

    sp = sub.add_parser("pairs", help="minimal pairs in BLiMP's JSONL format (a file or a folder of them)")
    common(sp)
    sp.add_argument("--input", required=True, help="JSONL file with sentence_good, sentence_bad (BLiMP), or a folder")
    sp.add_argument("--by", default="", help="comma-separated keys to group the pairs by, e.g. field,UID")
    sp.add_argument("--format", default="json", choices=("json", "table"))
    sp.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    sp.add_argument("--seed", type=int, default=0, help="seed of the bootstrap intervals")
    sp.add_argument("--out", default=None, help="write the output here instead of stdout")
    sp.set_defaults(func=cmd_pairs)

    sp = sub.add_parser("harness", help="lm-evaluation-harness tasks (blimp, lambada_openai, wikitext, ...)")
    common(sp)
    sp.add_argument("--tasks", required=True, help="comma-separated task, group or tag names (or YAML paths)")
    sp.add_argument("--include-path", default=None, help="folder of extra task YAML files")
    sp.add_argument("--limit", type=int, default=0, help="first N documents of each task (0 = all)")
    sp.add_argument("--out", default=None, help="write the JSON here instead of stdout")
    sp.set_defaults(func=cmd_harness)
    return p


# bounds of the numeric flags (a flag a command does not have is skipped)
FLAG_RANGES = {"batch_size": "positive", "n": "positive", "temperature": "nonnegative", "top_k": "nonnegative",
               "top_p": "top_p", "max_new_tokens": "nonnegative", "max_sentences": "nonnegative",
               "select_max_sentences": "nonnegative", "n_examples": "nonnegative", "max_pairs": "nonnegative",
               "stride": "nonnegative",
               "bootstrap": "nonnegative", "limit": "nonnegative"}


def check_flags(args) -> None:
    from depenc.config import range_problem

    for attr, kind in FLAG_RANGES.items():
        if getattr(args, attr, None) is not None and (problem := range_problem(getattr(args, attr), kind)):
            raise CLIError(f"--{attr.replace('_', '-')} {problem}, got {getattr(args, attr)}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_flags(args)
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
