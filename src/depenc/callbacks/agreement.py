"""Subject-verb agreement across distance on the synthetic grammar (DESIGN 4.4).

Minimal pairs come from the grammar's annotations (:func:`depenc.data.synthetic.minimal_pairs`): at
every finite verb, the correct form against the form of the other number, given the same prefix.
Score: the margin ``log p(correct | [BOS] + prefix) - log p(wrong | [BOS] + prefix)`` in nats;
accuracy = share of margins > 0. Both overall, per distance bucket (words between subject and verb)
and per number of attractors (intervening nouns of the other number), each with a seeded bootstrap
95% confidence interval (percentile method).

Efficiency: with a word tokenizer every verb form is one token, so one forward pass over
``[BOS] + sentence`` gives both log-probabilities at every verb of the sentence at once (the model is
causal: the logits at the verb's position depend on the prefix only). Other tokenizers score each
form as the sum of the log-probabilities of its tokens, one sequence per form.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

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
    unwrap_model,
    wandb_log,
    write_json,
)

log = logging.getLogger("depenc.callbacks.agreement")

#: Distance buckets (words strictly between subject and verb), inclusive bounds.
DIST_BUCKETS: list[tuple[int, int | None]] = [(0, 3), (4, 7), (8, 12), (13, None)]
#: Attractor-count buckets.
ATTR_BUCKETS: list[tuple[int, int | None]] = [(0, 0), (1, 1), (2, 2), (3, None)]

__all__ = [
    "ATTR_BUCKETS",
    "DIST_BUCKETS",
    "AgreementCallback",
    "PairItem",
    "agreement_metrics",
    "attr_label",
    "bootstrap_ci",
    "dist_label",
    "load_pairs",
    "score_pairs",
]


def _label(value: int, buckets, open_label: str) -> str:
    for lo, hi in buckets:
        if value >= lo and (hi is None or value <= hi):
            if hi is None:
                return open_label
            return str(lo) if lo == hi else f"{lo}-{hi}"
    raise ValueError(f"{value} is in no bucket")


def dist_label(distance: int) -> str:
    """``0-3``, ``4-7``, ``8-12`` or ``>12``."""
    return _label(distance, DIST_BUCKETS, f">{DIST_BUCKETS[-1][0] - 1}")


def attr_label(attractors: int) -> str:
    """``0``, ``1``, ``2`` or ``3+``."""
    return _label(attractors, ATTR_BUCKETS, f"{ATTR_BUCKETS[-1][0]}+")


DIST_LABELS = [dist_label(lo) for lo, _ in DIST_BUCKETS]
ATTR_LABELS = [attr_label(lo) for lo, _ in ATTR_BUCKETS]


@dataclass(frozen=True)
class PairItem:
    """One minimal pair: the sentence (tokens), the verb position and both forms."""

    sentence: tuple[str, ...]
    verb: int
    good: str
    bad: str
    distance: int
    attractors: int
    heads: tuple[int, ...] = ()  # gold heads of the sentence (for oracle models)


def load_pairs(synthetic_cfg: Any, split: str, max_pairs: int = 0) -> list[PairItem]:
    """Minimal pairs of a synthetic split, in sentence order; the first ``max_pairs`` (0 = all).

    Taking the first pairs (not a random subset) keeps the set fixed across evaluations and needs
    few sentences, hence few forward passes."""
    from depenc.data import synthetic

    scfg = synthetic_cfg if isinstance(synthetic_cfg, synthetic.SyntheticConfig) else (
        synthetic.SyntheticConfig.from_dict(dict(synthetic_cfg or {})))
    out: list[PairItem] = []
    for s in synthetic.make_split(scfg, split):
        for p in synthetic.minimal_pairs([s], scfg):
            out.append(PairItem(tuple(p.good_sentence), int(p.verb), p.good, p.bad, int(p.distance),
                                int(p.attractors), tuple(s.heads)))
        if max_pairs and len(out) >= max_pairs:
            return out[:max_pairs]
    return out


# --------------------------------------------------------------------------------------------
# scoring


def _single_token_ids(tokenizer, words: Sequence[str]) -> list[int] | None:
    """Word tokenizer: the id of every word (None if some word is unknown)."""
    if getattr(tokenizer, "kind", "") != "word":
        return None
    unk = getattr(tokenizer, "unk_id", None)
    ids = tokenizer.encode(" ".join(words))
    if len(ids) != len(words) or (unk is not None and unk in ids):
        return None
    return ids


@torch.no_grad()
def score_pairs(
    model: torch.nn.Module, tokenizer, pairs: Sequence[PairItem], batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Margins (nats) of every pair and a mask of the pairs that could be scored (prefix + verb
    within the context). The model must be in eval mode."""
    margins = np.full(len(pairs), np.nan)
    block = int(model.cfg.block_size)
    device = model_device(model)
    eos = int(tokenizer.eos_id)
    # fast path: group by sentence, one forward gives every verb's two log-probs
    groups: dict[tuple[str, ...], list[int]] = {}
    slow: list[int] = []
    for k, p in enumerate(pairs):
        if p.verb + 1 > block:  # [BOS] + prefix must fit
            continue
        if _single_token_ids(tokenizer, [p.good, p.bad]) is None:
            slow.append(k)
            continue
        groups.setdefault(p.sentence, []).append(k)
    oracle = needs_gold_arcs(model)
    if oracle and slow:
        raise ValueError("an oracle model (depenc.parser=oracle) needs the word tokenizer for agreement pairs")
    units = []
    for sent, ks in groups.items():
        need = max(pairs[k].verb for k in ks)  # tokens up to (excluding) the last verb
        ids = _single_token_ids(tokenizer, list(sent[:need]))
        if ids is None and need > 0:
            if oracle:
                raise ValueError("an oracle model needs every word of the pairs in the vocabulary")
            slow.extend(ks)
            continue
        units.append(([eos] + (ids or []), ks))
    units.sort(key=lambda u: len(u[0]))
    for s in range(0, len(units), max(1, batch_size)):
        chunk = units[s : s + batch_size]
        T = max(len(u[0]) for u in chunk)
        idx = torch.full((len(chunk), T), eos, dtype=torch.long)
        for b, (ids, _) in enumerate(chunk):
            idx[b, : len(ids)] = torch.tensor(ids)
        kw = {}
        if oracle:  # the gold arcs of the sentence; rows after the prefix only touch padding (causal)
            kw["gold_M"] = gold_matrices([pairs[ks[0]].heads for _, ks in chunk], model.cfg.depenc.target, T, device)
        logp = torch.log_softmax(model(idx.to(device), **kw)["logits"].float(), dim=-1).cpu()
        for b, (_, ks) in enumerate(chunk):
            for k in ks:
                p = pairs[k]
                good, bad = _single_token_ids(tokenizer, [p.good, p.bad])
                row = logp[b, p.verb]  # position v holds the last prefix token (BOS at 0)
                margins[k] = float(row[good] - row[bad])
    if slow:
        margins[slow] = _score_slow(model, tokenizer, [pairs[k] for k in slow], batch_size, block, device, eos)
    return margins, ~np.isnan(margins)


def _continuation(tokenizer, prefix: Sequence[str], word: str) -> tuple[list[int], int] | None:
    """Token ids of ``prefix + word`` and the number of prefix tokens (None if the prefix's tokens
    are not a prefix of the full encoding)."""
    full = tokenizer.encode(" ".join([*prefix, word]))
    pre = tokenizer.encode(" ".join(prefix)) if prefix else []
    if full[: len(pre)] != pre or len(full) == len(pre):
        return None
    return full, len(pre)


@torch.no_grad()
def _score_slow(model, tokenizer, pairs, batch_size, block, device, eos) -> np.ndarray:
    seqs: list[tuple[list[int], int]] = []  # ([BOS] + ids, first scored position in ids)
    ok = []
    for p in pairs:
        prefix = list(p.sentence[: p.verb])
        g, b = _continuation(tokenizer, prefix, p.good), _continuation(tokenizer, prefix, p.bad)
        if g is None or b is None or 1 + len(g[0]) > block + 1 or 1 + len(b[0]) > block + 1:
            ok.append(False)
            seqs += [([eos], 0), ([eos], 0)]
            continue
        ok.append(True)
        seqs += [([eos] + g[0], g[1]), ([eos] + b[0], b[1])]
    totals = np.zeros(len(seqs))
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    for s in range(0, len(order), max(1, batch_size)):
        chunk = order[s : s + batch_size]
        T = max(len(seqs[i][0]) - 1 for i in chunk) or 1
        idx = torch.full((len(chunk), T), eos, dtype=torch.long)
        for r, i in enumerate(chunk):
            inp = seqs[i][0][:-1]
            idx[r, : len(inp)] = torch.tensor(inp)
        logp = torch.log_softmax(model(idx.to(device))["logits"].float(), dim=-1).cpu()
        for r, i in enumerate(chunk):
            ids, start = seqs[i]
            tgt = ids[1:]
            totals[i] = sum(float(logp[r, pos, tgt[pos]]) for pos in range(start, len(tgt)))
    out = totals[0::2] - totals[1::2]
    out[~np.asarray(ok, dtype=bool)] = np.nan
    return out


# --------------------------------------------------------------------------------------------
# statistics


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap ``(lo, hi)`` of the mean of ``values`` (NaN for an empty sample)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    if n_boot <= 0 or x.size == 1:
        return float(x.mean()), float(x.mean())
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    step = max(1, int(2_000_000 // x.size))  # bound memory: resample in chunks
    for s in range(0, n_boot, step):
        m = min(step, n_boot - s)
        means[s : s + m] = x[rng.integers(0, x.size, size=(m, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def agreement_metrics(
    margins: np.ndarray, distances: np.ndarray, attractors: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> dict[str, float]:
    """``acc``, ``margin`` (+ ``_lo``/``_hi``), ``n``, overall and per ``dist_<bucket>`` /
    ``attr_<bucket>`` (keys like ``acc_dist_>12``, ``margin_attr_3+_lo``, ``n_dist_0-3``)."""
    m = np.asarray(margins, dtype=np.float64)
    d = np.asarray(distances)
    a = np.asarray(attractors)
    out: dict[str, float] = {}

    def fill(suffix: str, mask: np.ndarray, k: int) -> None:
        x = m[mask]
        out[f"n{suffix}"] = int(x.size)
        if x.size == 0:
            return
        acc = (x > 0).astype(np.float64)
        out[f"acc{suffix}"] = float(acc.mean())
        out[f"margin{suffix}"] = float(x.mean())
        out[f"acc{suffix}_lo"], out[f"acc{suffix}_hi"] = bootstrap_ci(acc, n_boot, seed + k)
        out[f"margin{suffix}_lo"], out[f"margin{suffix}_hi"] = bootstrap_ci(x, n_boot, seed + k)

    fill("", np.ones(m.shape, dtype=bool), 0)
    dl = np.array([dist_label(int(x)) for x in d]) if d.size else np.array([], dtype=str)
    al = np.array([attr_label(int(x)) for x in a]) if a.size else np.array([], dtype=str)
    for i, label in enumerate(DIST_LABELS):
        fill(f"_dist_{label}", dl == label, 1 + i)
    for i, label in enumerate(ATTR_LABELS):
        fill(f"_attr_{label}", al == label, 101 + i)
    return out


def evaluate_pairs(model, tokenizer, pairs: Sequence[PairItem], batch_size: int = 64, n_boot: int = 1000,
                   seed: int = 0) -> tuple[dict[str, float], dict]:
    """(metrics, details) for one set of pairs; the model is put in eval mode here."""
    with eval_mode(model):
        margins, ok = score_pairs(model, tokenizer, pairs, batch_size)
    dist = np.array([p.distance for p in pairs], dtype=np.int64)
    attr = np.array([p.attractors for p in pairs], dtype=np.int64)
    metrics = agreement_metrics(margins[ok], dist[ok], attr[ok], n_boot, seed)
    metrics["n_skipped"] = int((~ok).sum())
    details = {"items": [[int(dist[i]), int(attr[i]), float(margins[i])] for i in np.flatnonzero(ok)],
               "item_columns": ["distance", "attractors", "margin"]}
    return metrics, details


# --------------------------------------------------------------------------------------------
# the callback


class AgreementCallback(EvalCallback):
    prefix = "agree"

    def __init__(
        self,
        tokenizer,
        synthetic_cfg: Any = None,
        splits: Sequence[str] = ("test", "test_long"),
        every_n_val: int = 1,
        max_pairs: int = 1000,
        final_max_pairs: int = 0,
        batch_size: int = 64,
        n_bootstrap: int = 1000,
        seed: int = 0,
        run_dir: str | Path | None = None,
    ):
        super().__init__(every_n_val=every_n_val, run_dir=run_dir)
        self.tokenizer = tokenizer
        self.synthetic_cfg = synthetic_cfg
        self.splits = list(splits)
        self.max_pairs = int(max_pairs)
        self.final_max_pairs = int(final_max_pairs)
        self.batch_size = int(batch_size)
        self.n_bootstrap = int(n_bootstrap)
        self.seed = int(seed)
        self._pairs: dict[tuple[str, int], list[PairItem]] = {}
        self.last_result: dict | None = None

    @classmethod
    def from_config(cls, c, cfg, dm, run_dir) -> "AgreementCallback | None":
        data = getattr(dm, "cfg", None) or cfg_get(cfg, "data", {})
        if cfg_get(data, "source") != "synthetic":
            log.info("agreement callback: data.source=%s has no agreement annotations; disabled "
                     "(it needs data.source=synthetic)", cfg_get(data, "source"))
            return None
        return cls(
            tokenizer=dm.tokenizer,
            synthetic_cfg=cfg_get(data, "synthetic", {}),
            splits=list(cfg_get(c, "splits", ["test", "test_long"])),
            every_n_val=cfg_get(c, "every_n_val", 1),
            max_pairs=cfg_get(c, "max_pairs", 1000),
            final_max_pairs=cfg_get(c, "final_max_pairs", 0),
            batch_size=cfg_get(c, "batch_size", 64),
            n_bootstrap=cfg_get(c, "n_bootstrap", 1000),
            seed=cfg_get(c, "seed", 0),
            run_dir=run_dir,
        )

    def check_model(self, model) -> str | None:
        return oracle_skip_reason(model, self.tokenizer)

    def pairs(self, split: str, n: int) -> list[PairItem]:
        key = (split, n)
        if key not in self._pairs:
            self._pairs[key] = load_pairs(self.synthetic_cfg, split, n)
        return self._pairs[key]

    def evaluate(self, trainer, pl_module, final: bool) -> dict[str, float]:
        model = unwrap_model(pl_module)
        n = self.max_pairs
        if final:
            n = self.max_pairs if self.final_max_pairs < 0 else self.final_max_pairs
        metrics: dict[str, float] = {}
        result: dict[str, Any] = {"step": trainer.global_step, "final": final, "max_pairs": n, "splits": {}}
        for split in self.splits:
            m, details = evaluate_pairs(model, self.tokenizer, self.pairs(split, n), self.batch_size,
                                        self.n_bootstrap, self.seed)
            result["splits"][split] = {"metrics": m, **details}
            metrics.update({f"agree/{split}/{k}": v for k, v in m.items()})
        self.last_result = result
        path = self.out_path("agreement", f"{trainer.global_step}.json")
        if path is not None:
            write_json(path, result)
        self._log_wandb(trainer, result)
        return metrics

    def _log_wandb(self, trainer, result: dict) -> None:
        from depenc.callbacks import wandb_runs

        if not wandb_runs(trainer):
            return
        import wandb

        rows = []
        for split, r in result["splits"].items():
            m = r["metrics"]
            for kind, labels in (("dist", DIST_LABELS), ("attr", ATTR_LABELS)):
                for label in labels:
                    if f"acc_{kind}_{label}" in m:
                        rows.append([split, kind, label, m[f"n_{kind}_{label}"], m[f"acc_{kind}_{label}"],
                                     m[f"acc_{kind}_{label}_lo"], m[f"acc_{kind}_{label}_hi"],
                                     m[f"margin_{kind}_{label}"], m[f"margin_{kind}_{label}_lo"],
                                     m[f"margin_{kind}_{label}_hi"]])
        cols = ["split", "kind", "bucket", "n", "acc", "acc_lo", "acc_hi", "margin", "margin_lo", "margin_hi"]
        wandb_log(trainer, {"agree/buckets": wandb.Table(columns=cols, data=rows)})
