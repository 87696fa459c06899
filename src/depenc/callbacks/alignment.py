"""Dependency alignment during training and from the CLI (DESIGN 4.2).

For every sentence of a gold treebank the model reads ``[BOS] + the sentence's tokens`` (sentences
are batched, padded with ``<eos>`` at the end: the model is causal, so padding after a sentence
cannot change its rows). Sources scored against the gold tree:

* ``parser``: DepEnc's soft left-arc matrix M = g * P. With ``target=next`` row i says where token
  i+1 attaches, so the matrix is shifted (:func:`shift_next_to_self`) and row b is scored against
  word b's own left arcs, i.e. the state before word b against where word b attaches;
* ``attn_mean``: every head of every layer with the BOS column and the diagonal dropped and the
  rows renormalised over the earlier tokens (DESIGN 4.2 step 3), then averaged;
* ``attn_best``: the single (layer, head) with the highest UUAS on a *selection* treebank,
  reported on the other treebanks (never on the one it was chosen on). With ``selection: cross``
  every treebank gets its own attn_best, chosen on the next treebank of the list (wrapping round),
  so that two treebanks (WSJ, EWT) each report a head chosen on the other;
* ``chain`` and ``random``: reference trees over the same sentences.

Token scores are aggregated to words with :func:`word_scores_from_tokens`; the tree is the maximum
spanning tree of ``M + M^T`` (:class:`AlignmentAccumulator`). Sentences whose input does not fit
into the model's context, or whose tokens do not map back onto their words, are skipped and counted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from depenc.callbacks import (
    EvalCallback,
    cfg_get,
    eval_mode,
    gold_matrices,
    model_device,
    needs_gold_arcs,
    oracle_skip_reason,
    wandb_log,
    write_json,
)
from depenc.metrics.alignment import (
    ARC_BUCKET_LABELS,
    LENGTH_BUCKET_LABELS,
    AlignmentAccumulator,
    renormalise_rows_drop_first_and_diag,
    score_reference,
    shift_next_to_self,
    word_scores_from_tokens,
)

log = logging.getLogger("depenc.callbacks.alignment")

MODEL_SOURCES = ("parser", "attn_mean", "attn_best")
REFERENCE_SOURCES = ("chain", "random")
SOURCES = MODEL_SOURCES + REFERENCE_SOURCES
SYNTHETIC_PREFIX = "synthetic:"

__all__ = [
    "SOURCES",
    "AlignmentCallback",
    "EncodedSentence",
    "GoldSentence",
    "Treebank",
    "encode_treebank",
    "CROSS",
    "evaluate_alignment",
    "evaluate_treebank",
    "load_gold",
    "resolve_path",
    "select_best_head",
    "sentence_word_scores",
    "synthetic_gold",
]


# --------------------------------------------------------------------------------------------
# gold sentences and their encoding


@dataclass
class GoldSentence:
    """Words with 1-based gold heads (0 = root) and a punctuation mask."""

    words: list[str]
    heads: list[int]
    punct: list[bool] | None = None


@dataclass
class EncodedSentence:
    """A gold sentence as model input: ``ids = [BOS] + tokens``; ``word_of_token`` per token
    (without BOS); ``index`` = its position in the treebank."""

    index: int
    sentence: GoldSentence
    ids: list[int]
    word_of_token: list[int]


@dataclass
class Treebank:
    """Gold sentences that fit the model (``encoded``) and the count of those skipped, by reason."""

    name: str
    encoded: list[EncodedSentence]
    n_total: int
    skipped: dict[str, int] = field(default_factory=dict)
    source: str = ""
    _references: dict | None = None

    @property
    def n_used(self) -> int:
        return len(self.encoded)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())


def synthetic_gold(synthetic_cfg: Any, split: str, n: int = 0) -> list[GoldSentence]:
    """The first ``n`` (0 = all) gold trees of a synthetic split."""
    from depenc.data import synthetic

    scfg = synthetic_cfg if isinstance(synthetic_cfg, synthetic.SyntheticConfig) else (
        synthetic.SyntheticConfig.from_dict(dict(synthetic_cfg or {})))
    # the full split of the run's own config: make_split caches it (and the earlier splits that a
    # held-out split must be disjoint from), so the data module's work is reused
    sents = synthetic.make_split(scfg, split)
    if n and n > 0:
        sents = sents[:n]
    return [GoldSentence(list(s.tokens), list(s.heads), [t == "." for t in s.tokens]) for s in sents]


def resolve_path(path: str | Path) -> Path:
    """A path as given (relative to the working directory), else relative to the repository root."""
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        return p
    repo = Path(__file__).resolve().parents[3]
    alt = repo / p
    return alt if alt.exists() else p


def load_gold(path: str | Path, n: int = 0) -> list[GoldSentence]:
    """The first ``n`` (0 = all) sentences of a treebank file (.conllu, .dp, .zip, folder)."""
    from depenc.data.treebanks import load_treebank

    sents = load_treebank(resolve_path(path))
    if n and n > 0:
        sents = sents[:n]
    return [GoldSentence(list(s.words), list(s.heads), s.punct_mask()) for s in sents]


def encode_treebank(
    name: str, sentences: Sequence[GoldSentence], tokenizer, block_size: int, source: str = ""
) -> Treebank:
    """Tokenise every sentence (word tokenizer: one id per word; BPE / char: the space-joined words,
    mapped back to words with ``words_of``). Skipped: ``too_long`` (``1 + tokens > block_size``),
    ``word_mismatch`` (tokens do not map onto the words), ``empty``."""
    encoded: list[EncodedSentence] = []
    skipped: dict[str, int] = {}

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    kind = getattr(tokenizer, "kind", "")
    for i, s in enumerate(sentences):
        n = len(s.words)
        if n == 0:
            skip("empty")
            continue
        if kind == "word":
            ids = tokenizer.encode(" ".join(s.words))
            wot = list(range(len(ids)))
            if len(ids) != n:
                skip("word_mismatch")
                continue
        else:
            ids = tokenizer.encode(" ".join(s.words))
            wot = list(tokenizer.words_of(ids))
            if not ids or max(wot) != n - 1 or sorted(set(w for w in wot if w >= 0)) != list(range(n)):
                skip("word_mismatch")
                continue
        if 1 + len(ids) > block_size:
            skip("too_long")
            continue
        encoded.append(EncodedSentence(i, s, [tokenizer.eos_id] + list(ids), wot))
    return Treebank(name, encoded, len(sentences), skipped, source)


# --------------------------------------------------------------------------------------------
# model -> word score matrices


def _batches(items: Sequence[EncodedSentence], batch_size: int) -> Iterator[list[EncodedSentence]]:
    """Batches of sentences of similar length (less padding), in a deterministic order."""
    order = sorted(range(len(items)), key=lambda k: (len(items[k].ids), k))
    for s in range(0, len(order), max(1, batch_size)):
        yield [items[k] for k in order[s : s + batch_size]]


def sentence_word_scores(
    model: torch.nn.Module,
    treebank: Treebank,
    batch_size: int = 32,
    heads: str | Sequence[tuple[int, int]] | None = None,
    want_parser: bool = True,
    want_mean: bool = True,
) -> Iterator[tuple[EncodedSentence, dict[str, np.ndarray]]]:
    """Yield ``(sentence, {source: (n, n) word score matrix})`` for every usable sentence.

    Sources: ``parser`` (DepEnc with ``want_parser``), ``attn_mean`` (``want_mean``), and
    ``heads``: ``"all"`` adds ``"heads"`` (L, H, n, n) with every renormalised head, a list of
    ``(layer, head)`` adds ``"head_<l>_<h>"`` for each. The model must be in eval mode.
    """
    device = model_device(model)
    eos = int(getattr(model.cfg, "eos_id", 0))
    dep_on = bool(getattr(model.cfg.depenc, "enabled", False))
    target = getattr(model.cfg.depenc, "target", "self")
    need_attn = want_mean or heads is not None
    oracle = needs_gold_arcs(model)
    if oracle and any(len(e.ids) - 1 != len(e.sentence.words) for e in treebank.encoded):
        raise ValueError("an oracle model (depenc.parser=oracle) needs one token per word (word tokenizer)")
    for batch in _batches(treebank.encoded, batch_size):
        T = max(len(e.ids) for e in batch)
        idx = torch.full((len(batch), T), eos, dtype=torch.long)
        for b, e in enumerate(batch):
            idx[b, : len(e.ids)] = torch.tensor(e.ids, dtype=torch.long)
        kw = {}
        if oracle:  # depenc.parser=oracle reads the gold arcs (one token per word: word tokenizer)
            kw["gold_M"] = gold_matrices([e.sentence.heads for e in batch], target, T, device)
        with torch.no_grad():
            out = model(idx.to(device), need_weights=need_attn, return_analysis=dep_on and want_parser, **kw)
        attn = None
        if need_attn:
            attn = torch.stack([a.float() for a in out["attn"]], dim=1).cpu().numpy()  # (B, L, H, T, T)
        M = None
        if dep_on and want_parser and "dep" in out:
            M = out["dep"]["M"].float().cpu().numpy()  # (B, T, T)
        for b, e in enumerate(batch):
            t1 = len(e.ids)
            n = len(e.sentence.words)
            res: dict[str, np.ndarray] = {}
            if M is not None:
                Mb = M[b, :t1, :t1]
                if target == "next":
                    Mb = shift_next_to_self(Mb)  # row i+1 <- row i: where token i+1 attaches
                tok = np.tril(Mb[1:, 1:], -1)
                res["parser"] = word_scores_from_tokens(tok, e.word_of_token, n)
            if attn is not None:
                R = renormalise_rows_drop_first_and_diag(attn[b, :, :, :t1, :t1])  # (L, H, t, t)
                if want_mean:
                    res["attn_mean"] = word_scores_from_tokens(R.mean(axis=(0, 1)), e.word_of_token, n)
                if heads == "all":
                    res["heads"] = word_scores_from_tokens(R, e.word_of_token, n)
                elif heads:
                    for layer, head in heads:
                        res[f"head_{layer}_{head}"] = word_scores_from_tokens(R[layer, head], e.word_of_token, n)
            yield e, res


# --------------------------------------------------------------------------------------------
# scoring


def select_best_head(
    model: torch.nn.Module, treebank: Treebank, batch_size: int = 32, drop_punct: bool = False
) -> dict | None:
    """The (layer, head) with the highest UUAS on ``treebank`` (first on ties).

    Returns ``{"layer", "head", "uuas", "selected_on", "n_sentences", "per_head": [[uuas]]}``
    (per_head is layers x heads), or None when the treebank has no usable sentence.
    """
    if treebank.n_used == 0:
        return None
    L, H = model.cfg.n_layer, model.cfg.n_head
    accs = [[AlignmentAccumulator(drop_punct) for _ in range(H)] for _ in range(L)]
    for e, res in sentence_word_scores(model, treebank, batch_size, heads="all", want_parser=False, want_mean=False):
        pm = e.sentence.punct if drop_punct else None
        W = res["heads"]
        for layer in range(L):
            for head in range(H):
                accs[layer][head].add(W[layer, head], e.sentence.heads, pm)
    per_head = [[accs[layer][head].result().get("uuas", float("nan")) for head in range(H)] for layer in range(L)]
    arr = np.nan_to_num(np.asarray(per_head, dtype=np.float64), nan=-1.0)
    flat = int(np.argmax(arr))
    layer, head = divmod(flat, H)
    return {
        "layer": layer,
        "head": head,
        "uuas": per_head[layer][head],
        "selected_on": treebank.name,
        "n_sentences": treebank.n_used,
        "per_head": per_head,
    }


def _references(treebank: Treebank, drop_punct: bool, seed: int) -> dict[str, dict]:
    """chain / random scores of the treebank's usable sentences (cached: they do not change)."""
    key = (drop_punct, seed)
    if treebank._references is None or treebank._references.get("key") != key:
        heads = [e.sentence.heads for e in treebank.encoded]
        masks = [e.sentence.punct for e in treebank.encoded] if drop_punct else None
        treebank._references = {
            "key": key,
            "chain": score_reference("chain", heads, punct_masks=masks),
            "random": score_reference("random", heads, seed=seed, punct_masks=masks),
        }
    return {k: treebank._references[k] for k in REFERENCE_SOURCES}


def evaluate_treebank(
    model: torch.nn.Module,
    treebank: Treebank,
    best_head: dict | None = None,
    batch_size: int = 32,
    drop_punct: bool = False,
    n_examples: int = 20,
    seed: int = 0,
) -> dict:
    """Scores of every source on one treebank.

    Returns ``{"name", "n_used", "n_skipped", "skipped", "sources": {source: result}, "best_head",
    "examples"}`` where each result has the keys of :meth:`AlignmentAccumulator.result`. ``attn_best``
    is only scored with a ``best_head`` chosen on another treebank; ``parser`` only for DepEnc.
    The first ``n_examples`` sentences (treebank order) keep their words, gold heads and predicted
    edges per model source.
    """
    dep_on = bool(model.cfg.depenc.enabled)
    use_best = best_head is not None and best_head.get("selected_on") != treebank.name
    bh = (best_head["layer"], best_head["head"]) if use_best else None
    accs: dict[str, AlignmentAccumulator] = {"attn_mean": AlignmentAccumulator(drop_punct)}
    if dep_on:
        accs["parser"] = AlignmentAccumulator(drop_punct)
    if bh is not None:
        accs["attn_best"] = AlignmentAccumulator(drop_punct)
    example_ids = {e.index for e in sorted(treebank.encoded, key=lambda e: e.index)[: max(0, n_examples)]}
    examples: dict[int, dict] = {}
    for e, res in sentence_word_scores(model, treebank, batch_size, heads=[bh] if bh else None, want_parser=dep_on):
        pm = e.sentence.punct if drop_punct else None
        if bh is not None:
            res["attn_best"] = res.pop(f"head_{bh[0]}_{bh[1]}")
        edges = {src: accs[src].add(W, e.sentence.heads, pm) for src, W in res.items() if src in accs}
        if e.index in example_ids:
            examples[e.index] = {
                "index": e.index,
                "words": e.sentence.words,
                "heads": e.sentence.heads,
                "pred": {src: [list(x) for x in ed] for src, ed in edges.items()},
            }
    sources = {src: acc.result() for src, acc in accs.items()}
    if treebank.n_used:
        sources.update(_references(treebank, drop_punct, seed))
    return {
        "name": treebank.name,
        "source": treebank.source,
        "n_total": treebank.n_total,
        "n_used": treebank.n_used,
        "n_skipped": treebank.n_skipped,
        "skipped": dict(treebank.skipped),
        "sources": {s: sources[s] for s in SOURCES if s in sources},
        "best_head": ({k: v for k, v in best_head.items() if k != "per_head"} if use_best else None),
        "examples": [examples[k] for k in sorted(examples)],
    }


CROSS = "cross"  # selection mode: each treebank reports a head chosen on the next one


def evaluate_alignment(
    model: torch.nn.Module,
    treebanks: Sequence[Treebank],
    selection: Treebank | str | None = None,
    batch_size: int = 32,
    drop_punct: bool = False,
    n_examples: int = 20,
    seed: int = 0,
) -> dict:
    """Choose attn_best on ``selection`` (if given), then score every treebank.

    ``selection="cross"``: each treebank's attn_best is chosen on the next treebank of ``treebanks``
    (wrapping round; needs at least two). Returns ``{"selection": select_best_head(...) or None,
    "cross_selection": {treebank name: the choice used for it} (cross only), "treebanks": {name:
    evaluate_treebank(...)}}``. The model is put in eval mode (and restored) here.
    """
    cross = isinstance(selection, str)
    if cross and selection != CROSS:
        raise ValueError(f"selection must be a treebank, None or {CROSS!r}, got {selection!r}")
    if cross and len(treebanks) < 2:
        raise ValueError(f"selection {CROSS!r} needs at least two treebanks, got {len(treebanks)}")
    with eval_mode(model):
        if cross:
            picks = [select_best_head(model, tb, batch_size, drop_punct) for tb in treebanks]
            chosen = {tb.name: picks[(i + 1) % len(treebanks)] for i, tb in enumerate(treebanks)}
            best = None
        else:
            best = select_best_head(model, selection, batch_size, drop_punct) if selection is not None else None
            chosen = {tb.name: best for tb in treebanks}
        results = {
            tb.name: evaluate_treebank(model, tb, chosen[tb.name], batch_size, drop_punct, n_examples, seed)
            for tb in treebanks
        }
    out = {"selection": best, "treebanks": results}
    if cross:
        out["cross_selection"] = chosen
    return out


def flat_metrics(result: dict, prefix: str = "align") -> dict[str, float]:
    """``align/<treebank>/<source>/<metric>`` scalars (+ ``align/<treebank>/n_used|n_skipped``; the
    chosen head as ``align/best_head/*``, or ``align/<treebank>/best_head/*`` under cross-selection)."""
    out: dict[str, float] = {}
    for name, tb in result["treebanks"].items():
        out[f"{prefix}/{name}/n_used"] = tb["n_used"]
        out[f"{prefix}/{name}/n_skipped"] = tb["n_skipped"]
        for src, res in tb["sources"].items():
            for key, value in res.items():
                if key in ("n_sentences", "n_gold_edges", "n_left_arc_words"):
                    continue
                out[f"{prefix}/{name}/{src}/{key}"] = value
    chosen = {"": result.get("selection")}
    chosen.update({f"{name}/": sel for name, sel in (result.get("cross_selection") or {}).items()})
    for key, sel in chosen.items():
        if sel is not None:
            out[f"{prefix}/{key}best_head/layer"] = sel["layer"]
            out[f"{prefix}/{key}best_head/head"] = sel["head"]
            out[f"{prefix}/{key}best_head/selection_uuas"] = sel["uuas"]
    return out


def bucket_rows(result: dict) -> list[list]:
    """Rows ``[treebank, source, kind, bucket, value]`` (kind: uuas_len | recall_arc) for a table."""
    rows = []
    for name, tb in result["treebanks"].items():
        for src, res in tb["sources"].items():
            for kind, labels in (("uuas_len", LENGTH_BUCKET_LABELS), ("recall_arc", ARC_BUCKET_LABELS)):
                for label in labels:
                    value = res.get(f"{kind}_{label}")
                    if value is not None:
                        rows.append([name, src, kind, label, float(value)])
    return rows


# --------------------------------------------------------------------------------------------
# the callback


class AlignmentCallback(EvalCallback):
    """Dependency alignment on the configured treebanks (see the module docstring).

    ``treebanks``: name -> path (``.conllu``, ``.dp``, ``.zip``) or ``synthetic:<split>``;
    ``selection``: the name or path of the treebank that chooses attn_best (``None``: no attn_best).
    Missing files are skipped with a warning.
    """

    prefix = "align"

    def __init__(
        self,
        tokenizer,
        treebanks: dict[str, str],
        selection: str | None = None,
        synthetic_cfg: Any = None,
        every_n_val: int = 1,
        max_sentences: int = 400,
        final_max_sentences: int = 0,
        selection_sentences: int = 200,
        batch_size: int = 32,
        drop_punct: bool = False,
        n_examples: int = 20,
        seed: int = 0,
        run_dir: str | Path | None = None,
    ):
        super().__init__(every_n_val=every_n_val, run_dir=run_dir)
        self.tokenizer = tokenizer
        self.treebank_specs = dict(treebanks)
        self.selection_spec = selection
        self.synthetic_cfg = synthetic_cfg
        self.max_sentences = int(max_sentences)
        self.final_max_sentences = int(final_max_sentences)
        self.selection_sentences = int(selection_sentences)
        self.batch_size = int(batch_size)
        self.drop_punct = bool(drop_punct)
        self.n_examples = int(n_examples)
        self.seed = int(seed)
        self._gold: dict[str, list[GoldSentence] | None] = {}
        self._warned: set[str] = set()
        self._encoded: dict[tuple[str, int, int], Treebank] = {}
        self.last_result: dict | None = None

    @classmethod
    def from_config(cls, c, cfg, dm, run_dir) -> "AlignmentCallback | None":
        data = getattr(dm, "cfg", None) or cfg_get(cfg, "data", {})
        synthetic = cfg_get(data, "source") == "synthetic"
        specs: dict[str, str] = {}
        if synthetic and cfg_get(c, "synthetic", True):
            specs["synthetic"] = f"{SYNTHETIC_PREFIX}test"
        for name, path in dict(cfg_get(c, "treebanks", {}) or {}).items():
            specs[str(name)] = str(path)
        selection = cfg_get(c, "selection", "auto")
        if selection == "auto":
            if synthetic:
                selection = f"{SYNTHETIC_PREFIX}validation"
            else:
                files = [n for n, p in specs.items() if not p.startswith(SYNTHETIC_PREFIX)]
                selection = files[0] if files else None
        elif selection in ("none", ""):
            selection = None
        elif selection == CROSS and len(specs) < 2:
            raise ValueError(f"callbacks.alignment.selection: {CROSS!r} needs at least two treebanks "
                             f"(each reports a head chosen on another), got {sorted(specs) or 'none'}")
        if not specs:
            log.warning("alignment callback: no treebank configured (callbacks.alignment.treebanks); disabled")
            return None
        return cls(
            tokenizer=dm.tokenizer,
            treebanks=specs,
            selection=selection,
            synthetic_cfg=cfg_get(data, "synthetic", {}),
            every_n_val=cfg_get(c, "every_n_val", 1),
            max_sentences=cfg_get(c, "max_sentences", 400),
            final_max_sentences=cfg_get(c, "final_max_sentences", 0),
            selection_sentences=cfg_get(c, "selection_sentences", 200),
            batch_size=cfg_get(c, "batch_size", 32),
            drop_punct=cfg_get(c, "drop_punct", False),
            n_examples=cfg_get(c, "n_examples", 20),
            seed=cfg_get(c, "seed", 0),
            run_dir=run_dir,
        )

    def check_model(self, model) -> str | None:
        return oracle_skip_reason(model, self.tokenizer)

    # data ---------------------------------------------------------------------------------------
    def _gold_sentences(self, spec: str, n: int) -> list[GoldSentence] | None:
        """Gold sentences of a spec (path or synthetic:<split>), None (with one warning) if missing."""
        key = f"{spec}#{n}"
        if key not in self._gold:
            try:
                if spec.startswith(SYNTHETIC_PREFIX):
                    self._gold[key] = synthetic_gold(self.synthetic_cfg, spec[len(SYNTHETIC_PREFIX):], n)
                else:
                    self._gold[key] = load_gold(spec, n)
            except FileNotFoundError as exc:
                if spec not in self._warned:
                    log.warning("alignment: %s -- skipped", exc)
                    self._warned.add(spec)
                self._gold[key] = None
        return self._gold[key]

    def _treebank(self, name: str, spec: str, n: int, block_size: int) -> Treebank | None:
        key = (name, n, block_size)
        if key not in self._encoded:
            gold = self._gold_sentences(spec, n)
            if gold is None:
                return None
            self._encoded[key] = encode_treebank(name, gold, self.tokenizer, block_size, source=spec)
        return self._encoded[key]

    def _selection_name(self) -> tuple[str, str] | None:
        sel = self.selection_spec
        if sel is None or sel == CROSS:
            return None
        if sel in self.treebank_specs:
            return sel, self.treebank_specs[sel]
        if sel.startswith(SYNTHETIC_PREFIX):
            return sel.replace(":", "_"), sel
        return Path(sel).stem, sel

    # evaluation ---------------------------------------------------------------------------------
    def evaluate(self, trainer, pl_module, final: bool) -> dict[str, float]:
        from depenc.callbacks import unwrap_model

        model = unwrap_model(pl_module)
        block = int(model.cfg.block_size)
        n = self.final_max_sentences if final else self.max_sentences
        if final and self.final_max_sentences < 0:
            n = self.max_sentences
        t0 = time.perf_counter()
        treebanks = [tb for name, spec in self.treebank_specs.items()
                     if (tb := self._treebank(name, spec, n, block)) is not None]
        selection = CROSS if self.selection_spec == CROSS else None
        sel = self._selection_name()
        if sel is not None:
            sel_name, sel_spec = sel
            sel_n = self.selection_sentences if sel_name not in self.treebank_specs else n
            selection = self._treebank(sel_name, sel_spec, sel_n, block)
        if selection == CROSS and len(treebanks) < 2:  # a treebank file is missing (warned above)
            log.warning("alignment: selection 'cross' needs two treebanks, %d found -- no attn_best", len(treebanks))
            selection = None
        result = evaluate_alignment(model, treebanks, selection, self.batch_size, self.drop_punct,
                                    self.n_examples, self.seed)
        result.update(step=trainer.global_step, final=final, seconds=time.perf_counter() - t0,
                      max_sentences=n, drop_punct=self.drop_punct,
                      target=model.cfg.depenc.target if model.cfg.depenc.enabled else None)
        self.last_result = result
        path = self.out_path("alignment", f"{trainer.global_step}.json")
        if path is not None:
            write_json(path, result)
        rows = bucket_rows(result)
        if rows:
            try:
                import wandb

                wandb_log(trainer, {"align/buckets": wandb.Table(
                    columns=["treebank", "source", "kind", "bucket", "value"], data=rows)})
            except ImportError:  # pragma: no cover
                pass
        return flat_metrics(result)


def treebanks_from_specs(
    specs: dict[str, str], tokenizer, block_size: int, n: int = 0, synthetic_cfg: Any = None
) -> list[Treebank]:
    """Load and encode ``name -> path | synthetic:<split>`` (raises FileNotFoundError if missing)."""
    out = []
    for name, spec in specs.items():
        if spec.startswith(SYNTHETIC_PREFIX):
            gold = synthetic_gold(synthetic_cfg, spec[len(SYNTHETIC_PREFIX):], n)
        else:
            gold = load_gold(spec, n)
        out.append(encode_treebank(name, gold, tokenizer, block_size, source=spec))
    return out


def iter_examples(result: dict) -> Iterable[dict]:  # convenience for notebooks
    for tb in result["treebanks"].values():
        yield from tb["examples"]
