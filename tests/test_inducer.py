"""The whole-sentence inducer (depenc.inducer=inside): the inside algorithm against brute-force
enumeration of projective trees, the generative story, the causal parser's targets on a worked
example, and the model: an auxiliary loss in training only, inference untouched."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import has_cycle

from depenc.models.inducer import HeadOutwardInducer, Segments, ValenceInducer, distill_loss, eisner_inside
from depenc.models.transformer import Transformer
from depenc.schema import DepEncConfig, ModelConfig


def projective_trees(n: int):
    """Every single-root projective tree over words 1..n as heads[d - 1] in 0..n (0 = the root, before
    word 1): one root child, no cycle, and no two arcs cross (the root's arc included)."""
    for heads in itertools.product(range(n + 1), repeat=n):
        if sum(h == 0 for h in heads) != 1 or any(h == d for d, h in enumerate(heads, 1)) or has_cycle(list(heads)):
            continue
        arcs = [(min(h, d), max(h, d)) for d, h in enumerate(heads, 1)]
        if not any(a < c < b < e for a, b in arcs for c, e in arcs):
            yield heads


def nearest_child(heads, d: int) -> bool:
    """Whether word d (1-based) is its head's nearest child on its side."""
    h = heads[d - 1]
    side = [e for e, g in enumerate(heads, 1) if g == h and (e > h) == (d > h)]
    return d == min(side, key=lambda e: abs(e - h))


def brute_force(arc: torch.Tensor, root: torch.Tensor, n: int, arc_first: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
    """(log Z, arc posteriors (n, n)) of one sentence by enumeration; with arc_first, a head's nearest
    child on each side takes that weight (valence)."""
    weights, trees = [], list(projective_trees(n))
    for heads in trees:
        w = sum(root[d - 1] if h == 0 else
                (arc_first if arc_first is not None and nearest_child(heads, d) else arc)[h - 1, d - 1]
                for d, h in enumerate(heads, 1))
        weights.append(float(w))
    log_z = torch.tensor(weights, dtype=torch.float64).logsumexp(0)
    post = torch.zeros(n, n, dtype=torch.float64)
    for heads, w in zip(trees, weights):
        for d, h in enumerate(heads, 1):
            if h:
                post[h - 1, d - 1] += math.exp(w - log_z)
    return float(log_z), post


def test_projective_tree_counts():
    """Single-root projective dependency trees over n words: 1, 2, 7, 30, 143 (OEIS A006013)."""
    assert [len(list(projective_trees(n))) for n in range(1, 6)] == [1, 2, 7, 30, 143]


def test_inside_matches_brute_force_with_padding():
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([1, 3, 5, 4])
    n = 5
    arc = torch.randn(4, n, n, generator=g, dtype=torch.float64).requires_grad_()
    root = torch.randn(4, n, generator=g, dtype=torch.float64)
    log_z = eisner_inside(arc, root, lengths)
    (post,) = torch.autograd.grad(log_z.sum(), arc)
    for s, length in enumerate(lengths.tolist()):
        want_z, want_post = brute_force(arc[s].detach(), root[s], length)
        assert log_z[s].item() == pytest.approx(want_z, abs=1e-9)
        torch.testing.assert_close(post[s, :length, :length], want_post)
        assert post[s].sum().item() == pytest.approx(length - 1)  # every word but the root's child has a head
        assert post[s, length:].abs().sum() == 0 and post[s, :, length:].abs().sum() == 0  # padding unread


def test_inside_with_valence_matches_brute_force():
    """Eisner's algorithm with first-child states: the nearest child of a head on each side scored apart."""
    g = torch.Generator().manual_seed(2)
    lengths = torch.tensor([1, 2, 5, 4])
    n = 5
    arc = torch.randn(4, n, n, generator=g, dtype=torch.float64).requires_grad_()
    first = torch.randn(4, n, n, generator=g, dtype=torch.float64).requires_grad_()
    root = torch.randn(4, n, generator=g, dtype=torch.float64)
    log_z = eisner_inside(arc, root, lengths, first)
    post = sum(torch.autograd.grad(log_z.sum(), [arc, first]))
    for s, length in enumerate(lengths.tolist()):
        want_z, want_post = brute_force(arc[s].detach(), root[s], length, first[s].detach())
        assert log_z[s].item() == pytest.approx(want_z, abs=1e-9)
        torch.testing.assert_close(post[s, :length, :length], want_post)
    # equal first and later weights: the valence-free numbers
    torch.testing.assert_close(eisner_inside(arc, root, lengths, arc), eisner_inside(arc, root, lengths))


def story_parts(cls, seed: int, words: list[int]):
    """A random inducer (float64, parameters N(0, 1)) and its pieces for one sentence, to write the story out
    by hand: (inducer, words (1, n), log p from the inducer, cont logits (n, n_cont), child log-probs per side
    (n, V), root log-probs (V,))."""
    torch.manual_seed(seed)
    ind = cls(vocab_size=4, dim=8).double()
    for p in ind.parameters():
        torch.nn.init.normal_(p, std=1.0)
    words = torch.tensor([words])
    got, _ = ind.log_prob(words, torch.tensor([words.size(1)]))
    e = ind.emb(words[0])
    child = [F.log_softmax(lin(e), -1) for lin in ind.child]  # left, right: (n, V)
    return ind, words, got, ind.cont(e), child, F.log_softmax(ind.root, -1)


def test_log_prob_is_the_head_outward_story():
    """log p(sentence) from the inducer = log sum over projective trees of the generative story's product,
    written out here from the model's own softmaxes."""
    ind, words, got, cont, child, root = story_parts(HeadOutwardInducer, 0, [2, 0, 3, 1])  # cont: (n, 2) left, right
    total = []
    for heads in projective_trees(4):
        lp = F.logsigmoid(-cont).sum()  # every head stops once in each direction
        for d, h in enumerate(heads):
            if h == 0:
                lp = lp + root[words[0, d]]
            else:
                side = 1 if d > h - 1 else 0
                lp = lp + F.logsigmoid(cont[h - 1, side]) + child[side][h - 1, words[0, d]]
        total.append(lp)
    assert got.item() == pytest.approx(torch.stack(total).logsumexp(0).item(), abs=1e-9)


def test_valence_log_prob_is_the_dmv_story():
    """The DMV: a head's stop/continue odds depend on whether it has a child on that side already."""
    ind, words, got, cont, child, root = story_parts(ValenceInducer, 3, [1, 3, 0, 2])
    assert cont.shape == (4, 4)  # c0 left, c0 right, c1 left, c1 right
    assert len(ind.log_prob(words, torch.tensor([4]))[1]) == 2  # arc scores: later and nearest children
    total = []
    for heads in projective_trees(4):
        lp = 0.0
        for d, h in enumerate(heads):
            if h == 0:
                lp = lp + root[words[0, d]]
        for h in range(4):
            for side in (0, 1):  # left, right
                kids = [d for d, g in enumerate(heads) if g == h + 1 and (d > h) == bool(side)]
                if not kids:
                    lp = lp + F.logsigmoid(-cont[h, side])
                    continue
                lp = lp + F.logsigmoid(cont[h, side]) + F.logsigmoid(cont[h, 2 + side]) * (len(kids) - 1)
                lp = lp + F.logsigmoid(-cont[h, 2 + side]) + sum(child[side][h, words[0, d]] for d in kids)
        total.append(lp)
    assert got.item() == pytest.approx(torch.stack(total).logsumexp(0).item(), abs=1e-9)
    # one-word sentences: the root's child, which stops at once on both sides
    one = torch.arange(4)[:, None]
    lp1, _ = ind.log_prob(one, torch.ones(4, dtype=torch.long))
    c = ind.cont(ind.emb(one[:, 0]))
    torch.testing.assert_close(lp1, root + F.logsigmoid(-c[:, 0]) + F.logsigmoid(-c[:, 1]))


def test_locality_bias_favours_short_arcs_and_is_off_by_default():
    """Structural annealing: -locality * |h - d| on every arc while the posteriors are computed; a large
    bias gives the chain (every word attached to a neighbour)."""
    torch.manual_seed(4)
    ind = ValenceInducer(vocab_size=6, dim=8).double()
    ind.init_weights()
    assert ind.locality == 0.0
    words, lengths = torch.tensor([[1, 2, 3, 4, 5, 1]]), torch.tensor([6])
    segs = Segments(words, lengths, torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long))
    _, U_flat = ind._posteriors(segs)
    ind.locality = 30.0
    _, U = ind._posteriors(segs)
    adjacent = torch.diagonal(U[0], 1).sum().item()
    assert adjacent == pytest.approx(5.0, abs=1e-6) and torch.diagonal(U_flat[0], 1).sum().item() < 4.9


def test_length_groups_give_the_padded_batch_numbers():
    """Sentences of lengths 1..9 run in length groups (1 | 2 | 3-4 | 5-8 | 9): log p and the arc posteriors
    equal one padded inside pass over all of them, and the groups split by the power of two."""
    from depenc.models.inducer import length_groups

    lengths = torch.tensor([9, 1, 3, 4, 2, 5, 8, 7, 6])
    assert [g.tolist() for g in length_groups(lengths)] == [[1], [4], [2, 3], [5, 6, 7, 8], [0]]
    torch.manual_seed(1)
    ind = HeadOutwardInducer(vocab_size=6, dim=8).double()
    for p in ind.parameters():
        torch.nn.init.normal_(p, std=1.0)
    words = torch.randint(1, 6, (9, 9)) * (torch.arange(9) < lengths.unsqueeze(1))
    segs = Segments(words, lengths, torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long))
    logp, U = ind._posteriors(segs)
    want_logp, (arc,) = ind.log_prob(words, lengths)
    (post,) = torch.autograd.grad(want_logp.sum(), arc)
    torch.testing.assert_close(logp, want_logp)
    torch.testing.assert_close(U, post + post.transpose(1, 2))
    assert logp.requires_grad  # the inducer's own loss still trains it
    assert not U.requires_grad  # the parser's targets: no gradient flows back into the inducer


def test_segments_and_next_word_rows_worked_example():
    """Block [x, 3, 4, <eos>, 5, 6, 8]: position 0 is never a word; sentences [3, 4] and [5, 6, 8]."""
    idx = torch.tensor([[7, 3, 4, 0, 5, 6, 8]])
    segs = Segments.of(idx, eos_id=0)
    assert segs.words.tolist() == [[3, 4, 0], [5, 6, 8]] and segs.lengths.tolist() == [2, 3]
    assert segs.seg.tolist() == [[-1, 0, 0, -1, 1, 1, 1]] and segs.pos.tolist() == [[-1, 0, 1, -1, 0, 1, 2]]
    U = torch.zeros(2, 3, 3)
    U[0, 1, 0] = U[0, 0, 1] = 1.0
    U[1, 1, 0] = U[1, 0, 1] = 0.9
    U[1, 2, 0], U[1, 2, 1] = 0.3, 0.6  # word 8: to 5 or to 6
    rows = segs.next_word_rows(U)[0]
    want = torch.zeros(7, 7)
    want[1, 1] = 1.0  # row 1 = where word 4 (position 2) attaches: to 3
    want[4, 4] = 1.0  # row 4: word 6 -> 5
    want[5, 4], want[5, 5] = 1 / 3, 2 / 3  # row 5: word 8 -> 5 or 6, normalised
    torch.testing.assert_close(rows, want)  # rows 0, 2, 3, 6: a first word, an <eos>, past the block


def test_distill_loss_known_values():
    P = torch.tensor([[[1.0, 0.0], [0.25, 0.75]]])
    rows = torch.tensor([[[0.0, 0.0], [0.5, 0.5]]])
    assert distill_loss(P, rows).item() == pytest.approx(-(0.5 * math.log(0.25) + 0.5 * math.log(0.75)))
    assert distill_loss(P, torch.zeros_like(rows)).item() == 0.0


def make(inducer: str) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(kind="depenc", vocab_size=30, block_size=32, n_layer=3, n_head=2, n_embd=32,
                      depenc=DepEncConfig(inducer=inducer))
    return Transformer(cfg)


@pytest.mark.parametrize("inducer", ["inside", "dmv"])
def test_model_aux_loss_in_training_only_and_inference_untouched(inducer):
    with_ind, plain = make(inducer), make("none")
    plain.load_state_dict({k: v for k, v in with_ind.state_dict().items() if not k.startswith("inducer.")})
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(1, 30, (2, 24), generator=g)
    idx[:, 0] = 0
    idx[:, 9] = idx[1, 17] = 0  # sentence ends
    targets = torch.roll(idx, -1, 1)
    out = with_ind.train()(idx, targets)
    assert out["inducer_nll"].item() > 0 and out["distill"].item() > 0
    # the auxiliary loss trains the inducer, and the causal parser through the posterior targets
    out["aux_loss"].backward()
    assert with_ind.inducer.emb.weight.grad.abs().sum() > 0
    assert with_ind.encoder.parser.w_head.weight.grad.abs().sum() > 0
    assert with_ind.wte.weight.grad.abs().sum() > 0  # the embeddings under the parser, through the targets
    # the LM loss is the baseline's quantity; at inference the inducer is not run
    torch.testing.assert_close(out["loss"], plain.train()(idx, targets)["loss"])
    with_ind.eval(), plain.eval()
    ev = with_ind(idx, targets)
    assert "aux_loss" not in ev
    torch.testing.assert_close(ev["logits"], plain(idx)["logits"])


def test_inducer_needs_a_learned_next_word_parser():
    from depenc.config import ConfigError, load_config

    for bad in (["model.depenc.target=self"], ["model.depenc.parser=oracle"]):
        with pytest.raises(ConfigError, match="inducer=inside trains the causal parser's next-word rows"):
            load_config("depenc_small", ["model.depenc.inducer=inside", *bad])
    load_config("study2/inducer")


def test_inducer_refuses_document_streams():
    """Brown (and text by paragraph/file) has no <eos> between sentences: the inducer would parse whole
    windows across sentences (measured on Brown: one 255-piece "sentence" per block row, ~16x the step
    time), so the config says so instead."""
    from depenc.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="data.source=brown streams whole documents"):
        load_config("study/brown_depenc", ["model.depenc.inducer=inside"])
    with pytest.raises(ConfigError, match="data.text.by=paragraph streams whole documents"):
        load_config("depenc_small", ["model.depenc.inducer=inside", "data.source=text", "data.text.by=paragraph"])
    # a sentence-delimited Brown stream is what the inducer needs
    load_config("study/brown_depenc", ["model.depenc.inducer=dmv", "data.brown.by=sentence"])


def test_arc_posteriors_per_position_and_alignment_source():
    """The inducer's own trees: per-position posteriors match the per-sentence ones; the alignment metric
    scores them as the source ``inducer`` (a peaked inducer recovers its preferred tree)."""
    from depenc.evaluation.alignment import GoldSentence, encode_treebank, evaluate_treebank

    m = make("inside").eval()
    idx = torch.tensor([[0, 5, 6, 7, 0, 8, 9, 0]])
    A = m.inducer.arc_posteriors(idx, eos_id=0)[0]
    segs = Segments.of(idx, 0)
    _, U = m.inducer._posteriors(segs)
    torch.testing.assert_close(A[1:4, 1:4], U[0, :3, :3])
    torch.testing.assert_close(A[5:7, 5:7], U[1, :2, :2])
    assert A[1:4, 5:].abs().sum() == 0 and A[0].abs().sum() == 0
    assert A[1:4, 1:4].sum().item() == pytest.approx(2 * 2)  # 3 words: 2 arcs, counted both ways

    class Tok:  # one id per word
        kind, eos_id = "word", 0

        def encode(self, text):
            return [int(w) for w in text.split()]

    # words 5 6 7 8, gold: 6 the root, 5 <- 6 -> 8, 7 <- 8 (the chain gets 2 of 3 edges); an inducer whose
    # root is 6, whose left children are 5 or 7 and whose right children are 8 finds that tree
    with torch.no_grad():
        for lin in m.inducer.child:
            lin.weight.zero_(), lin.bias.zero_()
        m.inducer.child[0].bias[[5, 7]] = 20.0
        m.inducer.child[1].bias[8] = 20.0
        m.inducer.root.zero_()
        m.inducer.root[6] = 20.0
    tb = encode_treebank("toy", [GoldSentence(["5", "6", "7", "8"], [2, 0, 4, 2])], Tok(), block_size=8)
    res = evaluate_treebank(m, tb)
    assert res["sources"]["inducer"]["uuas"] == pytest.approx(1.0)
    assert res["sources"]["chain"]["uuas"] == pytest.approx(2 / 3)
