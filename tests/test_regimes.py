"""The regimes issue's tools: depth-generalisation splits (depth, disjointness, the exact reference of
the uncapped training rules), shared held-out sets across data sizes (dedup_train), final metrics on
best.ckpt, and `python -m depenc.curves` on fake runs with known answers and on one real tiny run."""

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from depenc.config import ConfigError, load_config
from depenc.curves import main as curves_main
from depenc.data.synthetic import DEPTH_SPLITS, SyntheticConfig, make_split
from depenc.data.synthetic.exact import ExactReference, reference_pcfg
from tests.conftest import tiny_overrides

SMALL = SyntheticConfig(seed=4, n_train=600, n_validation=80, n_test=80, n_test_long=20, n_test_depth=30, max_depth=2)


def test_depth_splits_hold_one_depth_each_and_are_unseen_in_training():
    train = make_split(SMALL, "train")
    assert max(s.depth for s in train) <= 2 and len(make_split(SMALL, "validation")) == 80
    assert max(s.depth for s in make_split(SMALL, "validation")) <= 2
    for split, (lo, hi) in zip(DEPTH_SPLITS, ((3, 3), (4, 4), (5, 5), (6, 99))):
        sents = make_split(SMALL, split)
        assert len(sents) == 30
        assert all(lo <= s.depth <= hi for s in sents), split
        assert all(s.agreement for s in sents)  # every sentence has a finite verb, hence a pair
    # held-out sets sample the training rules without the cap, so deeper ones are longer
    mean_len = [np.mean([len(s) for s in make_split(SMALL, sp)]) for sp in DEPTH_SPLITS]
    assert mean_len == sorted(mean_len)


def test_depth_splits_are_scored_by_the_uncapped_training_rules():
    capped = reference_pcfg(SMALL, "own", "validation")
    uncapped = reference_pcfg(SMALL, "own", "test_depth4")
    assert uncapped.nonterminals == reference_pcfg(SMALL, "train", "test").nonterminals
    assert len(capped.nonterminals) > len(uncapped.nonterminals)  # depth-annotated copies vs none
    sentence = make_split(SMALL, "test_depth3")[0].tokens
    # the capped (training) generator cannot produce a depth-3 sentence; the reference can
    assert np.isfinite(ExactReference(SMALL, "train", "test_depth3", cache_dir=None).sentence_logprob(sentence))
    assert ExactReference(SMALL, "own", "validation", cache_dir=None).sentence_logprob(sentence) == -math.inf


def test_dedup_train_gives_every_data_size_the_same_held_out_sets():
    big = SyntheticConfig(seed=4, n_train=10000, n_validation=300, n_test=50, n_test_long=5)
    texts = lambda cfg, sp: [s.text for s in make_split(cfg, sp)]  # noqa: E731
    small = SyntheticConfig(seed=4, n_train=300, n_validation=300, n_test=50, n_test_long=5, dedup_train=10000)
    assert texts(small, "validation") == texts(big, "validation") and texts(small, "test") == texts(big, "test")
    assert texts(small, "train") == texts(big, "train")[:300]  # prefix-stable
    unshared = SyntheticConfig(seed=4, n_train=300, n_validation=300, n_test=50, n_test_long=5)
    assert texts(unshared, "validation") != texts(big, "validation")  # what dedup_train is for
    # the exact reference's disk cache is shared across sizes (the split is the same)
    assert ExactReference(small, "own", "validation").cache_key() == ExactReference(big, "own", "validation").cache_key()


def test_depth_split_names_are_checked_with_the_config():
    with pytest.raises(ConfigError, match=r"test_depth3 is built only with data.synthetic.n_test_depth > 0"):
        load_config("debug", ["callbacks.agreement.splits=[test,test_depth3]"])
    with pytest.raises(ConfigError, match=r"did you mean test_long"):
        load_config("debug", ["callbacks.excess.splits=[test_lng]"])
    load_config("debug", ["callbacks.agreement.splits=[test,test_depth3]", "data.synthetic.n_test_depth=10"])


# ---- the curves report on fake runs ------------------------------------------------------------------


def fake_run(root: Path, exp: str, name: str, seed: int, n_train: int, tokens: int, summary: dict,
             depth: bool = False) -> Path:
    folder = root / exp / name
    folder.mkdir(parents=True)
    synthetic = {"n_train": n_train, "max_depth": 2 if depth else 7, "n_test_depth": 100 if depth else 0}
    (folder / "config.yaml").write_text(yaml.safe_dump({"exp": exp, "seed": seed, "model": {"kind": "baseline"},
                                                         "data": {"source": "synthetic", "synthetic": synthetic}}))
    (folder / "hparams.yaml").write_text(yaml.safe_dump({"split_stats": {"train": {"n_tokens": tokens}}}))
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_curves_tables_separation_and_first_size_within_the_floor(tmp_path):
    root = tmp_path / "runs"
    # excess on test per (model, n_train): seed values; B separates from A only at 4000
    values = {("r/a", 1000): [0.20, 0.22], ("r/a", 4000): [0.030, 0.032], ("r/a", 16000): [0.013, 0.008],
              ("r/b", 1000): [0.19, 0.25], ("r/b", 4000): [0.010, 0.008], ("r/b", 16000): [0.007, 0.008]}
    for (exp, n), seeds in values.items():
        for seed, v in enumerate(seeds, 1):
            fake_run(root, exp, f"n_train={n}-s{seed}", seed, n, n * 15,
                     {"excess/test/excess": v, "excess/validation/excess": v + 0.001, "best_step": 100 * seed,
                      "global_step": 300})
    # a rerun of seed 1 at 1000 for r/a: the later one counts
    fake_run(root, "r/a", "n_train=1000-s1-rerun", 1, 1000, 15000, {"excess/test/excess": 0.24})
    for seed, (d3, d6) in enumerate(((0.05, 0.30), (0.07, 0.50)), 1):
        summary = {"excess/test/excess": 0.01, "excess/test_depth3/excess": d3, "excess/test_depth6/excess": d6,
                   "agree/test_depth6/acc": 0.8, "agree/test_depth6/acc_lo": 0.75, "agree/test_depth6/acc_hi": 0.85}
        fake_run(root, "r/a", f"depth-s{seed}", seed, 16000, 160000, summary, depth=True)
    out = tmp_path / "reports"
    assert curves_main(["--exps", "r/a", "r/b", "--root", str(root), "--out", str(out), "--name", "x"]) == 0
    md = (out / "x" / "summary.md").read_text()
    test_part = md.split("**test**")[1].split("Smallest")[0]
    rows = {r[0]: r for r in (re.split(r"\s*\|\s*", line.strip("| ")) for line in test_part.splitlines()
                              if line.startswith("| r/"))}
    assert rows["r/a"][1] == "0.2300 [0.2200, 0.2400] (n=2)"  # seed 1's rerun (0.24), not 0.20
    assert rows["r/b"][2] == "0.0090 [0.0080, 0.0100] (n=2) ↓" and "↓" not in rows["r/b"][1] + rows["r/b"][3]
    assert "(15k tokens)" in md.split("**test**")[1].splitlines()[2]
    within = {r[0]: r[1] for r in (re.split(r"\s*\|\s*", line.strip("| ")) for line in
                                   md.split("Smallest")[1].split("Best and last")[0].splitlines() if line.startswith("| r/"))}
    assert within == {"r/a": "not reached", "r/b": "4,000 sentences (60k tokens)"}  # r/a's mean at 16000 is 0.0105
    depth_part = md.split("## Depth generalisation")[1]
    d_rows = [re.split(r"\s*\|\s*", line.strip("| ")) for line in depth_part.splitlines() if line.startswith("| r/a")]
    assert d_rows[0][2] == "0.0600 [0.0500, 0.0700] (n=2)" and d_rows[0][5] == "0.4000 [0.3000, 0.5000] (n=2)"
    assert d_rows[1][5] == "0.800 [0.800, 0.800] (n=2); 95% CI 0.750–0.850"
    payload = json.loads((out / "x" / "curves.json").read_text())
    assert len(payload["size"]) == 6 and len(payload["depth"]) == 1
    assert payload["size"][0]["metrics"]["excess/test/excess"]["n"] == 2
    assert (out / "x" / "curves.png").stat().st_size > 5000 and (out / "x" / "depth.png").stat().st_size > 5000


def test_curves_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert curves_main(["--exps", "nothing/here", "--root", str(tmp_path)]) == 2
    assert "no finished run of nothing/here" in capsys.readouterr().err
    fake_run(tmp_path / "runs", "r/a", "n_train=1000-s1", 1, 1000, 15000, {"excess/test/excess": 0.2})
    (tmp_path / "runs" / "r" / "training" / "n_train=1000-s1").mkdir(parents=True)  # started, not finished
    out = tmp_path / "rep"
    args = ["--exps", "r/a", "r/missing", "r/training", "--root", str(tmp_path / "runs"), "--out", str(out)]
    assert curves_main(args) == 0
    err = capsys.readouterr().err
    assert "no finished runs of r/missing" in err and "no finished runs of r/training" in err
    assert (out / "regimes" / "summary.md").is_file()
    assert curves_main(["--within", "-1", "--root", str(tmp_path)]) == 2


# ---- a real tiny run: early stopping, best weights for every final metric, depth splits -------------


def test_final_metrics_come_from_best_ckpt_and_depth_splits_are_evaluated(tmp_path):
    from depenc.train import main

    args = tiny_overrides(tmp_path, "model.kind=depenc", "data.synthetic.n_train=300", "data.synthetic.n_validation=40",
                          "data.synthetic.n_test=30", "data.synthetic.n_test_long=10", "data.synthetic.max_depth=2",
                          "data.synthetic.n_test_depth=12", "trainer.max_steps=12", "trainer.val_check_interval=3",
                          "trainer.early_stopping_patience=2", "trainer.final_weights=best", "optim.lr=0.05",
                          "run.name=best", "data.build_workers=1", "callbacks.generation.enabled=false", "callbacks.alignment.enabled=false",
                          "callbacks.agreement.every_n_val=0", "callbacks.excess.every_n_val=0",
                          "callbacks.excess.splits=[validation]")
    assert main(["debug", *args]) == 0
    run = tmp_path / "runs" / "debug" / "best"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_weights"] == "best" and 0 < summary["best_step"] <= summary["global_step"]
    for split in DEPTH_SPLITS:  # excess and agreement on every depth split, added to the listed ones
        assert summary[f"excess/{split}/excess"] > 0 and summary[f"agree/{split}/n"] > 0
        assert f"test/{split}/ppl" in summary
    # the final excess on validation is best.ckpt's: recompute it from the checkpoint
    from depenc.data.tokenizers import load_tokenizer
    from depenc.evaluation.excess import evaluate_excess
    from depenc.lightning import load_lm, read_checkpoint

    best = read_checkpoint(str(run / "checkpoints" / "best.ckpt"))
    assert best["global_step"] == summary["best_step"]
    lm = load_lm(str(run / "checkpoints" / "best.ckpt")).eval()
    tok = load_tokenizer(run / "tokenizer.json")
    scfg = SyntheticConfig.from_dict(yaml.safe_load((run / "config.yaml").read_text())["data"]["synthetic"])
    with torch.no_grad():
        m, _ = evaluate_excess(lm.model, tok, scfg, "validation", batch_size=32)
    assert m["excess/validation/excess"] == pytest.approx(summary["excess/validation/excess"], abs=1e-6)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    val = [float(r["val/validation/loss"]) for r in rows if r.get("val/validation/loss")]
    assert summary["best_val_loss"] == pytest.approx(min(val), abs=1e-6)
    # summary's validation metrics are best.ckpt's too (recomputed), while metrics.csv keeps the curve
    assert summary["val/validation/loss"] == pytest.approx(summary["best_val_loss"], abs=1e-5)
    assert float(rows[-1].get("val/validation/loss") or val[-1]) == pytest.approx(val[-1])


def test_make_compare_says_when_runs_of_one_seed_are_grid_points(tmp_path, capsys):
    from depenc.compare.runs import select_runs

    root = tmp_path / "runs"
    for n in (1000, 4000):
        fake_run(root, "r/a", f"n_train={n}-s1", 1, n, n * 15, {"excess/test/excess": 0.1})
    (kept,) = select_runs(["r/a"], None, root)
    err = capsys.readouterr().err
    assert "differ in data.synthetic.n_train=" in err and "make curves" in err
