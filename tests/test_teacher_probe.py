"""scripts/teacher_probe.py, the teacher-alone probe of the second structure study: a tiny run through its
entry point, its chain reference against the corpus module's, and the head-outward events on a worked
example."""

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import teacher_probe  # noqa: E402

from depenc.data.synthetic import SyntheticConfig, chain_uuas, make_split  # noqa: E402
from depenc.data.synthetic.grammar import Sentence  # noqa: E402


def test_tiny_probe_scores_its_trees_against_the_chain(tmp_path):
    out = tmp_path / "probe.json"
    args = ["--inducer", "dmv", "--steps", "3", "--n-train", "64", "--batch", "16", "--n-held", "24",
            "--tree-check", "--tree-epochs", "1", "--locality", "1.0", "--anneal", "2", "--optim", "lm", "--out", str(out)]
    assert teacher_probe.main(args) == 0
    res = json.loads(out.read_text())
    sc = res["scores"]
    held = make_split(SyntheticConfig(n_train=64, n_test=24), "test")
    assert sc["all"]["chain"] == pytest.approx(chain_uuas(held))  # the corpus module's own chain score
    assert 0.0 <= sc["all"]["uuas"] <= 1.0 and set(sc) >= {"1-10", "11-20", "nll_per_word", "recall_by_relation"}
    # a marginal sums over every tree, the gold one included: never less likely than the gold tree alone
    assert sc["nll_per_word"] <= sc["gold_tree_nll_per_word"]
    fam = res["tree_family_nll_per_word"]
    assert len(fam) == 3 * 2 * 3  # conditionings x trees x (total, children, stops)
    for key in ("valence/gold", "valence/chain", "sibling/gold", "sibling/chain", "sibling+grandparent/gold"):
        # the whole story = the children + the stops + the root word (a positive remainder)
        assert fam[key] > fam[f"{key}/children"] + fam[f"{key}/stops"] > 0
    assert res["bigram_nll_per_word"] > 0


def test_head_outward_events_worked_example():
    """"the dog runs ." with gold heads dog <- runs (root) -> .: the events of the story, nearest child first."""
    s = Sentence(["the", "dog", "runs", "."], [2, 3, 0, 3], ["det", "nsubj", "root", "punct"], [])
    vocab = {"the": 0, "dog": 1, "runs": 2, ".": 3}
    V = 4
    H, D, P, C, G, R = (t.tolist() for t in teacher_probe.head_outward_events([s], vocab, "gold"))
    events = set(zip(H, D, P, C))
    assert R == [2]
    assert set(zip(H, G)) == {(0, 1), (1, 2), (2, V), (3, 2)}  # every head's own head ("runs": the root)
    assert (1, 0, V, 0) in events and (1, 0, 0, V) in events  # dog: left child "the", then stop
    assert (2, 0, V, 1) in events and (2, 1, V, 3) in events  # runs: "dog" to the left, "." to the right
    assert len(H) == 3 + 2 * 4  # one event per arc, one stop per word and side
    H, D, P, C, G, R = (t.tolist() for t in teacher_probe.head_outward_events([s], vocab, "chain"))
    assert R == [0] and (0, 1, V, 1) in set(zip(H, D, P, C))  # the chain: "the" the root, "dog" its right child
