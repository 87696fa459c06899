"""Tests for depenc.data.treebanks (tiny fixtures) and the chain reference on the real treebanks."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from depenc.data.treebanks import (
    TreebankSentence,
    is_punct,
    load_treebank,
    read_conllu,
    read_dp,
)
from depenc.metrics.alignment import score_reference

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
EWT_DEV = DATA / "ud_english_ewt" / "en_ewt-ud-dev.conllu"
WSJ_ZIP = DATA / "nltk_data" / "corpora" / "dependency_treebank.zip"

CONLLU = """\
# sent_id = 1
# text = Don't go.
1-2\tDon't\t_\t_\t_\t_\t_\t_\t_\t_
1\tDo\tdo\tAUX\tVBP\t_\t3\taux\t_\t_
2\tn't\tnot\tPART\tRB\t_\t3\tadvmod\t_\t_
3\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\t_
3.1\tgone\tgo\tVERB\tVBN\t_\t_\t_\t3:conj\t_
4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_

# sent_id = 2
1\tHi\thi\tINTJ\tUH\t_\t0\troot\t_\t_
"""

DP_1 = "Pierre\tNNP\t2\nVinken\tNNP\t0\n.\t.\t2\n\nHe\tPRP\t2\nleft\tVBD\t0\n"
DP_2 = "Yes\tUH\t0\n"


def test_read_conllu(tmp_path: Path) -> None:
    p = tmp_path / "tiny.conllu"
    p.write_text(CONLLU, encoding="utf-8")
    sents = read_conllu(p)
    assert len(sents) == 2
    s = sents[0]
    assert s.words == ["Do", "n't", "go", "."]
    assert s.heads == [3, 3, 0, 3]
    assert s.upos == ["AUX", "PART", "VERB", "PUNCT"]
    assert s.xpos == ["VBP", "RB", "VB", "."]
    assert s.punct_mask() == [False, False, False, True]
    assert len(s) == 4 and s.text == "Do n't go ."
    assert sents[1] == TreebankSentence(["Hi"], [0], ["INTJ"], ["UH"])
    assert load_treebank(p) == sents


def test_read_conllu_rejects_bad_heads(tmp_path: Path) -> None:
    p = tmp_path / "bad.conllu"
    p.write_text("1\ta\ta\tX\tX\t_\t5\tdep\t_\t_\n", encoding="utf-8")
    with pytest.raises(ValueError):
        read_conllu(p)


def test_read_dp_file_dir_zip(tmp_path: Path) -> None:
    d = tmp_path / "dependency_treebank"
    d.mkdir()
    (d / "wsj_0001.dp").write_text(DP_1, encoding="utf-8")
    (d / "wsj_0002.dp").write_text(DP_2, encoding="utf-8")
    expected = [
        TreebankSentence(["Pierre", "Vinken", "."], [2, 0, 2], None, ["NNP", "NNP", "."]),
        TreebankSentence(["He", "left"], [2, 0], None, ["PRP", "VBD"]),
        TreebankSentence(["Yes"], [0], None, ["UH"]),
    ]
    assert read_dp(d / "wsj_0001.dp") == expected[:2]
    assert read_dp(d) == expected
    z = tmp_path / "dependency_treebank.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("dependency_treebank/", "")
        # written out of order: reading sorts by name
        zf.writestr("dependency_treebank/wsj_0002.dp", DP_2)
        zf.writestr("dependency_treebank/wsj_0001.dp", DP_1)
    assert read_dp(z) == expected
    assert load_treebank(z) == expected
    assert load_treebank(d) == expected
    assert load_treebank(d / "wsj_0002.dp") == expected[2:]
    assert expected[0].punct_mask() == [False, False, True]


def test_read_dp_tolerates_blank_runs_and_crlf(tmp_path: Path) -> None:
    p = tmp_path / "x.dp"
    p.write_text("\n\na\tDT\t2\r\nb\tNN\t0\r\n\r\n\r\nc\tNN\t0", encoding="utf-8")
    sents = read_dp(p)
    assert [s.words for s in sents] == [["a", "b"], ["c"]]
    assert [s.heads for s in sents] == [[2, 0], [0]]


def test_load_treebank_missing_says_what_and_how(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="UD_English-EWT"):
        load_treebank(tmp_path / "en_ewt-ud-dev.conllu")
    with pytest.raises(FileNotFoundError, match="dependency_treebank"):
        load_treebank(tmp_path / "dependency_treebank.zip")


def test_load_treebank_unknown_format(tmp_path: Path) -> None:
    p = tmp_path / "x.txt"
    p.write_text("hello\n")
    with pytest.raises(ValueError):
        load_treebank(p)


def test_is_punct() -> None:
    assert is_punct(".", "PUNCT")
    assert not is_punct("$", "SYM")
    assert is_punct(",", None, ",")
    assert is_punct("-LRB-", None, "-LRB-")
    assert not is_punct("$", None, "$")
    assert is_punct("...", None)
    assert is_punct("«", None)
    assert not is_punct("dog", None)
    assert not is_punct("", None)


# --------------------------------------------------------------------------------------------
# real data (skipped when the shared data folder is absent)


@pytest.mark.skipif(not EWT_DEV.exists(), reason=f"UD EWT dev not available at {EWT_DEV}")
def test_chain_uuas_ewt_dev() -> None:
    sents = load_treebank(EWT_DEV)
    assert len(sents) == 2001
    r = score_reference("chain", [s.heads for s in sents])
    assert r["uuas"] == pytest.approx(0.404, abs=0.005)
    assert r["uuas_len_1-10"] == pytest.approx(0.49, abs=0.005)
    assert r["uuas_len_11-20"] == pytest.approx(0.39, abs=0.005)
    assert r["uuas_len_21-40"] == pytest.approx(0.38, abs=0.005)
    assert r["uuas_len_>40"] == pytest.approx(0.37, abs=0.005)
    assert r["recall_arc_1"] == 1.0 and r["recall_arc_2"] == 0.0


@pytest.mark.skipif(
    not WSJ_ZIP.exists(), reason=f"NLTK dependency_treebank.zip not available at {WSJ_ZIP}"
)
def test_chain_uuas_wsj_sample() -> None:
    sents = load_treebank(WSJ_ZIP)
    assert len(sents) > 3800
    r = score_reference("chain", [s.heads for s in sents])
    assert r["uuas"] == pytest.approx(0.475, abs=0.005)
