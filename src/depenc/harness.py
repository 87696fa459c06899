"""A trained checkpoint as a model of EleutherAI's lm-evaluation-harness (``lm_eval``, optional:
``pip install -e ".[eval]"``): the ``depenc`` model, registered with the harness on import.

``python -m depenc.evaluate harness --ckpt CKPT --tasks blimp,lambada_openai,wikitext`` runs tasks through
:func:`lm_eval.simple_evaluate`; ``python -m depenc.harness --model depenc --model_args pretrained=CKPT
--tasks ...`` is the harness's own command line (``lm-eval run``) with this model registered first.

Conditioning and tokens are those of ``python -m depenc.evaluate score``: the run's tokenizer, and
``<eos>`` (which the model saw at every document start in training) before every context.

* ``loglikelihood(context, continuation)``: ``log p(continuation | <eos> context)`` and whether greedy
  decoding would produce it. The continuation's tokens are those of ``context + continuation`` after the
  context's (whitespace at the end of the context moves to the continuation, as in the harness's own
  models); a context longer than the model's block keeps its last tokens.
* ``loglikelihood_rolling(text)``: ``log p(tokens(text) <eos> | <eos>)``, the document closed by
  ``<eos>`` as documents are in training; for a text that fits the block this is exactly ``evaluate
  score``'s ``logprob``. A longer text is predicted in disjoint windows of the block size, each with
  as much left context as fits (the windows of ``lm_eval.utils.get_rolling_token_windows``), where
  ``score`` restarts the context at every window.
* ``generate_until(context, gen_kwargs)``: greedy (``do_sample`` with a ``temperature`` > 0 samples,
  seeded per batch of equally long prompts) with :meth:`Transformer.generate`, at most ``max_gen_toks`` tokens; the text stops before
  the first stop string of ``until`` or at ``<eos>``.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from typing import Sequence

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from depenc.evaluation.base import model_device, needs_gold_arcs

log = logging.getLogger("depenc.harness")

__all__ = ["DepEncLM", "spans"]

DEFAULT_MAX_GEN_TOKS = 256  # the harness's default for generation tasks
GEN_CHUNK = 32  # tokens generated between checks for stop strings
GEN_KEYS = {"until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p"}


def spans(context: Sequence[int], continuation: Sequence[int], block: int) -> list[tuple[list[int], list[int]]]:
    """``(inputs, targets)`` windows that predict every continuation token once: consecutive spans of
    at most ``block`` targets, each window holding the ``block`` tokens before its span's end (fewer at
    the start). ``context`` must not be empty (``<eos>`` at least)."""
    seq = list(context) + list(continuation)
    out = []
    for s in range(len(context), len(seq), block):
        e = min(s + block, len(seq))
        out.append((seq[max(0, e - 1 - block) : e - 1], seq[s:e]))
    return out


class DepEncLM(LM):
    """A depenc checkpoint in the harness: ``pretrained`` is the ``.ckpt`` file (its run folder holds the
    tokenizer, as for ``python -m depenc.evaluate``); ``device`` auto | cpu | cuda | cuda:N."""

    def __init__(self, pretrained: str, batch_size: int | str = 32, device: str | None = "auto", seed: int = 0):
        from depenc.evaluate import load_run

        super().__init__()
        if device and str(device).startswith("cuda") and not torch.cuda.is_available():
            log.warning("device %s requested but CUDA is not available: running on the CPU", device)
            device = "cpu"
        _, model, tokenizer, _ = load_run(str(pretrained), device or "auto")
        self._setup(model, tokenizer, batch_size, seed, str(pretrained))

    @classmethod
    def from_model(cls, model: torch.nn.Module, tokenizer, batch_size: int | str = 32, seed: int = 0,
                   name: str = "") -> "DepEncLM":
        """The harness model of a loaded ``Transformer`` (in eval mode, on its device) and its tokenizer."""
        self = cls.__new__(cls)
        LM.__init__(self)
        self._setup(model, tokenizer, batch_size, seed, name)
        return self

    def _setup(self, model, tokenizer, batch_size, seed: int, name: str) -> None:
        if needs_gold_arcs(model):
            raise ValueError("this checkpoint uses model.depenc.parser=oracle, which needs gold arcs for every "
                             "input; the harness gives plain text")
        if not str(batch_size).isdigit() or int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer (no 'auto'), got {batch_size!r}")
        self.model = model.eval()
        self.tok = tokenizer
        self.batch_size = int(batch_size)
        self.block = int(model.cfg.block_size)
        self.eos = int(tokenizer.eos_id)
        self.seed = int(seed)
        self.name = name
        self._device = model_device(model)

    def get_model_info(self) -> dict:
        """Merged into the results' ``config`` by the harness."""
        cfg = self.model.cfg
        return {"depenc_ckpt": self.name, "model_kind": cfg.kind, "block_size": self.block,
                "n_params": sum(p.numel() for p in self.model.parameters()), "tokenizer": self.tok.kind}

    # ---- tokens ---------------------------------------------------------------------------------
    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(``<eos>`` + context tokens, continuation tokens)."""
        n_space = len(context) - len(context.rstrip())
        if n_space:  # "a b " + "c" is scored as "a b" + " c"
            context, continuation = context[:-n_space], context[-n_space:] + continuation
        ctx = self.tok.encode(context)
        whole = self.tok.encode(context + continuation)
        cont = whole[len(ctx):] if whole[: len(ctx)] == ctx else self.tok.encode(continuation)
        return [self.eos] + ctx, cont

    @torch.no_grad()
    def _score(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(summed log-prob, every token greedy) of each (context ids, continuation ids)."""
        windows = []  # (request, inputs, targets)
        for k, (ctx, cont) in enumerate(pairs):
            windows += [(k, inp, tgt) for inp, tgt in spans(ctx, cont, self.block)]
        total = [0.0] * len(pairs)
        greedy = [True] * len(pairs)
        order = sorted(range(len(windows)), key=lambda i: -len(windows[i][1]))  # longest first: memory peaks early
        for s in range(0, len(order), self.batch_size):
            chunk = [windows[i] for i in order[s : s + self.batch_size]]
            x = torch.full((len(chunk), len(chunk[0][1])), self.eos, dtype=torch.long)  # (B, L)
            for r, (_, inp, _) in enumerate(chunk):
                x[r, : len(inp)] = torch.tensor(inp)
            logp = torch.log_softmax(self.model(x.to(self._device))["logits"].float(), dim=-1)  # (B, L, V)
            for r, (k, inp, tgt) in enumerate(chunk):
                rows = logp[r, len(inp) - len(tgt) : len(inp)]  # (n, V): the positions that predict tgt
                t = torch.tensor(tgt, device=rows.device)
                total[k] += float(rows.gather(-1, t.unsqueeze(-1)).sum())
                greedy[k] = greedy[k] and bool((rows.argmax(-1) == t).all())
        return list(zip(total, greedy))

    # ---- the harness's requests -------------------------------------------------------------------
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        out = self._score([self._encode_pair(*req.args) for req in requests])
        for req, res in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", req.args, res)
        return out

    def loglikelihood_rolling(self, requests) -> list[float]:
        scored = self._score([([self.eos], self.tok.encode(req.args[0]) + [self.eos]) for req in requests])
        out = [lp for lp, _ in scored]
        for req, res in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, res)
        return out

    def generate_until(self, requests) -> list[str]:
        out: list[str | None] = [None] * len(requests)
        groups: dict[tuple[int, str], list[int]] = defaultdict(list)  # a batch needs equal prompt lengths
        prompts = []
        for k, req in enumerate(requests):
            context, kwargs = req.args
            unknown = set(kwargs) - GEN_KEYS
            if unknown:
                raise ValueError(f"generate_until: unsupported generation arguments {sorted(unknown)} "
                                 f"(supported: {sorted(GEN_KEYS)})")
            prompts.append([self.eos] + self.tok.encode(context))
            groups[len(prompts[-1]), json.dumps(kwargs, sort_keys=True, default=str)].append(k)
        for ks in groups.values():
            kwargs = requests[ks[0]].args[1]
            for s in range(0, len(ks), self.batch_size):
                batch = ks[s : s + self.batch_size]
                # seeded per batch: a batch's samples do not depend on the batches before it
                generator = torch.Generator(device=self._device).manual_seed(self.seed)
                texts = self._generate([prompts[k] for k in batch], kwargs, generator)
                for k, text in zip(batch, texts):
                    out[k] = text
                    self.cache_hook.add_partial("generate_until", requests[k].args, text)
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def _generate(self, prompts: list[list[int]], kwargs: dict, generator: torch.Generator) -> list[str]:
        """Continuations of equally long prompts, generated GEN_CHUNK tokens at a time until every row has
        met ``<eos>``, a stop string or ``max_gen_toks``."""
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
        temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
        top_k, top_p = (kwargs.get("top_k"), kwargs.get("top_p")) if temperature > 0 else (None, None)
        idx = torch.tensor(prompts, dtype=torch.long, device=self._device)  # (B, T0)
        n0 = idx.size(1)
        texts: list[str | None] = [None] * len(prompts)
        alive = list(range(len(prompts)))
        while alive:
            done_tokens = idx.size(1) - n0
            step = min(GEN_CHUNK, max_new - done_tokens)
            new = self.model.generate(idx[alive], step, temperature=temperature, top_k=top_k, top_p=top_p,
                                      eos_id=self.eos, generator=generator)
            idx = torch.cat([idx, torch.full((idx.size(0), new.size(1) - idx.size(1)), self.eos,
                                             dtype=torch.long, device=idx.device)], dim=1)
            idx[alive] = new
            still = []
            for r in alive:
                gen = idx[r, n0:].tolist()
                ended = self.eos in gen or len(gen) >= max_new
                text = self._continuation(prompts[r], gen[: gen.index(self.eos)] if self.eos in gen else gen)
                cut = min((text.find(u) for u in until if u and u in text), default=-1)
                if cut >= 0 or ended:
                    texts[r] = text[:cut] if cut >= 0 else text
                else:
                    still.append(r)
            alive = still
        return texts  # type: ignore[return-value]

    def _continuation(self, prompt: list[int], new: list[int]) -> str:
        """The text the new tokens add after the prompt (with its leading space, where the tokenizer
        puts one between words)."""
        before = self.tok.decode(prompt[1:])
        full = self.tok.decode(prompt[1:] + new)
        return full[len(before):] if full.startswith(before) else self.tok.decode(new)


if __name__ == "__main__":  # the harness's own command line with "depenc" registered
    from lm_eval.__main__ import cli_evaluate

    import depenc.harness  # noqa: F401  (registers the module's class; this file's copy runs as __main__)

    cli_evaluate()
else:
    register_model("depenc")(DepEncLM)
