"""Train a whole-sentence inducer alone on the synthetic grammar and score its trees (issue 18).

The inducer variants of ``depenc.inducer`` (inside, dmv) are unsupervised dependency models; in the LM
they are trained inside every training step. This probe trains one by itself on the training sentences
(marginal likelihood, Adam, the LM's schedule shape) and reports the parser UUAS of its trees on a
held-out split by sentence length, against the chain, so teachers can be compared in minutes:

    python scripts/teacher_probe.py --inducer dmv --locality 1.0 --anneal 400 --steps 800
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from depenc.data.synthetic import SyntheticConfig, make_split, vocabulary
from depenc.metrics.alignment import chain_edges, gold_edges, length_bucket, max_spanning_tree
from depenc.models.inducer import INDUCERS, Segments


def batches(sents: list, vocab: dict, size: int, rng: random.Random):
    """Endless shuffled batches of (words (S, n), lengths (S,), the sentences)."""
    order = list(range(len(sents)))
    while True:
        rng.shuffle(order)
        for i in range(0, len(order) - size + 1, size):
            part = [sents[j] for j in order[i:i + size]]
            yield (*encode(part, vocab), part)


def encode(sents: list, vocab: dict) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s.tokens) for s in sents])
    words = torch.zeros(len(sents), int(lengths.max()), dtype=torch.long)
    for i, s in enumerate(sents):
        words[i, :len(s.tokens)] = torch.tensor([vocab[t] for t in s.tokens])
    return words, lengths


def sentence_batch(words: torch.Tensor, lengths: torch.Tensor) -> Segments:
    """Whole sentences (S, n) as the inducer's segments (no block positions: only words and lengths are read)."""
    none = torch.zeros(1, 1, dtype=torch.long)
    return Segments(words, lengths, none, none)


def children_nearest_first(heads: list[int], h: int, side: int) -> list[int]:
    """0-based dependents of word h (0-based; ``heads`` 1-based, 0 = root) on one side (0 left, 1 right),
    nearest first: the order in which the head-outward story generates them."""
    kids = (d for d, g in enumerate(heads) if g - 1 == h and (d > h) == bool(side))
    return sorted(kids, key=lambda d: abs(d - h))


def gold_masks(sents: list, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(later (S, n, n), nearest (S, n, n), root (S,)): the gold arcs [h, d], split by whether d is h's
    nearest child on its side, and each sentence's root word."""
    later, nearest = torch.zeros(len(sents), n, n), torch.zeros(len(sents), n, n)
    root = torch.zeros(len(sents), dtype=torch.long)
    for s, sent in enumerate(sents):
        for d, h in enumerate(sent.heads):
            if h == 0:
                root[s] = d
                continue
            h -= 1
            first = children_nearest_first(sent.heads, h, int(d > h))[0]
            (nearest if d == first else later)[s, h, d] = 1.0
    return later, nearest, root


def tree_log_prob(model, words: torch.Tensor, lengths: torch.Tensor, sents: list) -> torch.Tensor:
    """(S,) log p(gold tree, sentence) under the inducer: its generative story along the gold tree."""
    arcs, root, stop = model.factors(words, lengths)
    later, nearest, r = gold_masks(sents, words.size(1))
    if len(arcs) == 1:  # no valence: every arc has the same weight
        arcs = (arcs[0], arcs[0])
    return (arcs[0] * later).sum((1, 2)) + (arcs[1] * nearest).sum((1, 2)) + root.gather(1, r[:, None])[:, 0] + stop


def score(model, sents: list, vocab: dict) -> dict:
    """UUAS of the maximum spanning tree of the arc posteriors (as the alignment metric decodes), overall
    and by length bucket, with the chain's on the same sentences."""
    hits = {"all": [0, 0]}
    chain = {"all": [0, 0]}
    rels: dict[str, list[int]] = {}
    nll = [0.0, 0.0, 0]  # -log p(sentence), -log p(gold tree, sentence), words
    for i in range(0, len(sents), 256):
        part = sents[i:i + 256]
        words, lengths = encode(part, vocab)
        with torch.enable_grad():
            logp, U = model._posteriors(sentence_batch(words, lengths))
        with torch.no_grad():
            nll[0] -= logp.sum().item()
            nll[1] -= tree_log_prob(model, words, lengths, part).sum().item()
            nll[2] += lengths.sum().item()
        for s, sent in enumerate(part):
            n = len(sent.tokens)
            gold = gold_edges(sent.heads)
            pred = set(max_spanning_tree(U[s, :n, :n].numpy()))
            ch = set(chain_edges(n))
            for d, (h, rel) in enumerate(zip(sent.heads, sent.deprels)):  # recall of gold arcs by relation
                if h:
                    e = (min(d, h - 1), max(d, h - 1))
                    r = rels.setdefault(rel, [0, 0])
                    r[0] += e in pred; r[1] += 1
            for key in ("all", length_bucket(n)):
                if key is None:
                    continue
                hits.setdefault(key, [0, 0]); chain.setdefault(key, [0, 0])
                hits[key][0] += len(pred & gold); hits[key][1] += len(gold)
                chain[key][0] += len(ch & gold); chain[key][1] += len(gold)
    out = {k: {"uuas": h / max(t, 1), "chain": chain[k][0] / max(chain[k][1], 1)} for k, (h, t) in hits.items()}
    out["nll_per_word"] = nll[0] / nll[2]  # the marginal likelihood the inducer maximises
    out["gold_tree_nll_per_word"] = nll[1] / nll[2]  # its gold trees' joint likelihood (>= the marginal's)
    out["recall_by_relation"] = {r: round(h / t, 3) for r, (h, t) in sorted(rels.items())}
    return out


def chain_heads(n: int) -> list[int]:
    """1-based heads of the left-to-right chain: word 1 the root, every other word the child of the one before."""
    return [0] + list(range(1, n))


def head_outward_events(sents: list, vocab: dict, trees: str) -> tuple[torch.Tensor, ...]:
    """Every generation event of the head-outward story along a given tree of each sentence ("gold" or
    "chain"): (head word, side, previous sibling's word or V = none, child's word or V = stop, the head's
    own head's word or V = the root), children taken nearest first; and the root words."""
    V = len(vocab)
    ev, roots = [], []
    for sent in sents:
        w = [vocab[t] for t in sent.tokens]
        heads = sent.heads if trees == "gold" else chain_heads(len(w))
        roots.append(w[heads.index(0)])
        for h in range(len(w)):
            grand = w[heads[h] - 1] if heads[h] else V
            for side in (0, 1):
                prev = V
                for d in [*children_nearest_first(heads, h, side), None]:
                    ev.append((w[h], side, prev, V if d is None else w[d], grand))
                    prev = V if d is None else w[d]
    return (*torch.tensor(ev).T, torch.tensor(roots))


def tree_family_check(train: list, held: list, vocab: dict, seed: int, epochs: int = 6) -> dict:
    """Where the head-outward family's likelihood lies: the model fitted by maximum likelihood on given trees
    (supervised), its held-out joint -log p(tree, sentence) per word, for the gold trees and for the chain,
    with children conditioned on the head and valence (the DMV), on the head and the previous sibling
    (Eisner's model C), or on those and the head's own head (a grandparent). A family whose chain is more
    likely than its gold trees is not led to the gold trees by its own likelihood."""
    V = len(vocab)
    out = {}
    for cond in ("valence", "sibling", "sibling+grandparent"):
        for trees in ("gold", "chain"):
            torch.manual_seed(seed)
            H, D, P, C, G, R = head_outward_events(train, vocab, trees)
            emb = nn.Embedding(V, 64)
            ctx = nn.Embedding(2, 64) if cond == "valence" else nn.Embedding(V + 1, 64)
            grand = nn.Embedding(V + 1, 64)  # sibling+grandparent only
            heads_out = nn.ModuleList(nn.Linear(64, V + 1) for _ in range(2))  # per side: a child's word or stop
            params = [*emb.parameters(), *ctx.parameters(), *grand.parameters(), *heads_out.parameters()]
            opt = torch.optim.Adam(params, lr=3e-3)

            def nll(H, D, P, C, G, per_event=False):
                c = ctx((P != V).long()) if cond == "valence" else ctx(P)
                if cond == "sibling+grandparent":
                    c = c + grand(G)
                x = torch.tanh(emb(H) + c)
                logits = torch.where(D[:, None] == 1, heads_out[1](x), heads_out[0](x))
                each = -F.log_softmax(logits, -1).gather(1, C[:, None])[:, 0]
                return each if per_event else each.sum()

            for _ in range(epochs):
                for j in torch.randperm(len(H)).split(8192):
                    loss = nll(H[j], D[j], P[j], C[j], G[j]) / len(j)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            root_logp = (torch.bincount(R, minlength=V).double() + 0.01).log()
            root_logp -= root_logp.logsumexp(0)
            Hh, Dh, Ph, Ch, Gh, Rh = head_outward_events(held, vocab, trees)
            with torch.no_grad():
                each = nll(Hh, Dh, Ph, Ch, Gh, per_event=True)
            words = sum(len(x.tokens) for x in held)
            out[f"{cond}/{trees}"] = (each.sum().item() - root_logp[Rh].sum().item()) / words
            # where the difference lies: the children's words (with their "continue") and the stops
            out[f"{cond}/{trees}/children"] = each[Ch != V].sum().item() / words
            out[f"{cond}/{trees}/stops"] = each[Ch == V].sum().item() / words
    return out


def bigram_nll_per_word(train: list, held: list, vocab: dict, add: float = 0.01) -> float:
    """Held-out -log p per word of an add-``add`` bigram model with a sentence-end event: the chain's
    sequential statistics, the reference the head-outward likelihoods are read against."""
    V = len(vocab) + 1  # + the end
    pair = torch.zeros(V + 1, V)  # previous (V = start) -> next (V - 1 = end)
    for sent in train:
        ids = [V] + [vocab[t] for t in sent.tokens] + [V - 1]
        for a, b in zip(ids, ids[1:]):
            pair[a, b] += 1
    logp = ((pair + add) / (pair.sum(1, keepdim=True) + add * V)).log()
    total = 0.0
    for sent in held:
        ids = [V] + [vocab[t] for t in sent.tokens] + [V - 1]
        total -= sum(logp[a, b].item() for a, b in zip(ids, ids[1:]))
    return total / sum(len(x.tokens) for x in held)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--inducer", choices=sorted(INDUCERS), default="inside")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--n-train", type=int, default=16000)
    ap.add_argument("--batch", type=int, default=256, help="sentences per step")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--optim", choices=["adam", "lm"], default="adam",
                    help="adam: plain Adam at --lr | lm: the LM's recipe (AdamW, weight decay 0.1 on matrices, "
                         "100 warmup steps, cosine to 0.1 x lr, gradient clipping at 1)")
    ap.add_argument("--weight-decay", type=float, default=0.1, help="--optim lm: AdamW's weight decay on matrices")
    ap.add_argument("--warmup", type=int, default=100, help="--optim lm: linear warmup steps")
    ap.add_argument("--clip", type=float, default=1.0, help="--optim lm: gradient-norm clipping (0 = off)")
    ap.add_argument("--locality", type=float, default=0.0, help="initial structural bias: -locality * |h - d| per arc")
    ap.add_argument("--anneal", type=int, default=0, help="steps over which the locality bias falls linearly to 0")
    ap.add_argument("--supervised", action="store_true",
                    help="train on the gold trees (complete-data likelihood): where the model family's optimum lies")
    ap.add_argument("--supervised-steps", type=int, default=0,
                    help="the first N steps on the gold trees, the rest unsupervised: is the gold solution a stable optimum?")
    ap.add_argument("--tree-check", action="store_true",
                    help="also fit the head-outward family on the gold trees and on the chain (supervised) and "
                         "report their held-out likelihoods, with a bigram reference")
    ap.add_argument("--split", default="test", choices=["validation", "test"])
    ap.add_argument("--n-held", type=int, default=0, help="sentences of the held-out split (0 = the split's default, 2,000)")
    ap.add_argument("--tree-epochs", type=int, default=6, help="--tree-check: epochs of each supervised fit")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    cfg = SyntheticConfig(n_train=args.n_train, **({f"n_{args.split}": args.n_held} if args.n_held else {}))
    vocab = {w: i for i, w in enumerate(vocabulary(cfg))}
    train, held = make_split(cfg, "train"), make_split(cfg, args.split)
    model = INDUCERS[args.inducer](len(vocab), args.dim)
    model.init_weights()
    if args.optim == "lm":  # the LM's recipe (base.yaml optim): AdamW, decay on matrices, warmup + cosine, clipping
        mats = [p for p in model.parameters() if p.dim() >= 2]
        rest = [p for p in model.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": mats, "weight_decay": args.weight_decay}, {"params": rest, "weight_decay": 0.0}],
                                lr=args.lr, betas=(0.9, 0.95))
        warm = args.warmup
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: (t + 1) / warm if t < warm else
                                                  0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (t - warm) / max(1, args.steps - warm))))
    else:
        opt, sched = torch.optim.Adam(model.parameters(), lr=args.lr), None
    it = batches(train, vocab, args.batch, random.Random(args.seed))
    t0 = time.time()
    for step in range(1, args.steps + 1):
        frac = 1.0 - step / args.anneal if args.anneal else 0.0
        model.locality = args.locality * max(frac, 0.0)
        words, lengths, sents = next(it)
        if args.supervised or step <= args.supervised_steps:
            loss = -tree_log_prob(model, words, lengths, sents).sum() / lengths.sum()
        else:
            logp, _ = model._posteriors(sentence_batch(words, lengths))
            loss = -logp.sum() / lengths.sum()
        opt.zero_grad()
        loss.backward()
        if sched is not None and args.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        if sched is not None:
            sched.step()
        if step % 100 == 0 or step == args.steps:
            print(f"step {step} nll/word {loss.item():.4f} locality {model.locality:.3f} ({time.time() - t0:.0f} s)", flush=True)
    model.locality = 0.0
    res = {"args": vars(args), "scores": score(model, held, vocab), "seconds": round(time.time() - t0, 1)}
    if args.tree_check:
        res["tree_family_nll_per_word"] = tree_family_check(train, held, vocab, args.seed, args.tree_epochs)
        res["bigram_nll_per_word"] = bigram_nll_per_word(train, held, vocab)
        print("held-out -log p per word along given trees:", res["tree_family_nll_per_word"],
              f"bigram {res['bigram_nll_per_word']:.4f}")
    for k, v in res["scores"].items():
        if isinstance(v, dict) and "uuas" in v:
            print(f"{k:>8}: UUAS {v['uuas']:.3f}  chain {v['chain']:.3f}")
    sc = res["scores"]
    print(f"held-out nll/word {sc['nll_per_word']:.4f} (marginal), {sc['gold_tree_nll_per_word']:.4f} (gold trees)")
    print("recall by relation:", sc["recall_by_relation"])
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
