"""scripts/study2_screen.py, the second structure study's tables, on hand-written run folders with known
numbers: every table reads the keys the training run, `evaluate align` and `evaluate excess` write."""

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import study2_screen  # noqa: E402


def _run(root: Path, exp: str, name: str, summary: dict) -> Path:
    run = root / exp / name
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_tables_read_summary_alignment_and_ablation(tmp_path, capsys):
    summary = {"excess/test/excess": 0.0240, "excess/test/kl": 0.0211, "excess/test_long/excess": 0.05,
               "excess/validation/excess": 0.023, "agree/test_long/acc": 0.91,
               "agree/test_long/margin_dist_>12": 1.5, "agree/test_long/margin_dist_>12_lo": 1.25,
               "agree/test_long/margin_dist_>12_hi": 1.75, "perf/tokens_per_s": 3950.4, "perf/peak_rss_mb": 994.4, "best_step": 800,
               "agree/test_long/acc_dist_>12": 0.8, "agree/test_long/acc_dist_>12_lo": 0.75,
               "agree/test_long/acc_dist_>12_hi": 0.85, "excess/test/cat/noun/excess": 0.0125,
               "excess/test/cat/eos/kl": 0.002, "excess/test_depth3/excess": 0.0625, "excess/test_depth6/excess": 0.5}
    run = _run(tmp_path / "runs", "inducer_exp", "s1", summary)
    other = _run(tmp_path / "runs", "matched", "s1", {"excess/test/excess": 0.0312})
    align, ablate = tmp_path / "align", tmp_path / "ablate"
    align.mkdir()
    ablate.mkdir()
    sources = {"parser": {"uuas": 0.5, "uuas_len_>40": 0.25, "recall_arc_>8": 0.125},
               "inducer": {"uuas": 0.75}, "chain": {"uuas": 0.4, "recall_arc_1": 1.0}, "random": {"uuas": 0.1}}
    (align / "inducer_exp-s1.json").write_text(json.dumps({"sources": sources}))
    (ablate / "inducer_exp-s1.json").write_text(json.dumps({"ablate": ["zero_gate"],
                                                            "metrics": {"excess/test/excess": 0.0300}}))
    assert study2_screen.main([str(run), str(other), "--align-dir", str(align), "--ablate-dir", str(ablate)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    row = next(l for l in lines if l.startswith("| inducer_exp-s1 | 0.0240"))
    assert "| 0.0211 | 0.0500 | 0.0230 | 0.910 | 1.50 [1.25, 1.75] | 3950 | 994 | 800 |" in row
    assert "| matched-s1 | 0.0312 | - | - | - | - | - | - | - | - |" in lines
    assert any(l.startswith("| inducer_exp-s1 |") and l.endswith("| 0.800 [0.750, 0.850] | - | - | - | - |")
               for l in lines)  # agreement: >12 is the last distance bucket, attractors absent
    assert "| inducer_exp-s1 | parser | 0.500 | nan | nan | nan | 0.250 |" in lines
    assert "| inducer_exp-s1 | inducer | 0.750 | nan | nan | nan | nan |" in lines
    assert "| (reference) | chain | 1.000 | nan | nan | nan | nan |" in lines  # recall of 1-word arcs
    assert "| inducer_exp-s1 | parser | nan | nan | nan | nan | 0.125 |" in lines
    assert "| inducer_exp-s1 | zero_gate | 0.0240 | 0.0300 | +0.0060 |" in lines
    assert not any("matched-s1 | parser" in l or "matched-s1 | zero_gate" in l for l in lines)
    # by category: excess then KL tables, columns det noun ... eos
    assert "| inducer_exp-s1 | - | 0.0125 | - | - | - | - | - | - | - | - | - |" in lines
    assert "| inducer_exp-s1 | - | - | - | - | - | - | - | - | - | - | 0.0020 |" in lines
    # depth sets: only runs that have them
    assert "| inducer_exp-s1 | 0.0240 | 0.0625 | - | - | 0.5000 |" in lines
    assert not any(l.startswith("| matched-s1 | 0.0312 | -") and l.count("|") == 7 for l in lines)


def test_a_folder_without_summary_is_one_line_and_exit_2(tmp_path, capsys):
    assert study2_screen.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no summary.json" in err[0]
