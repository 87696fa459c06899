"""``data.tokenizer: file``: a byte-level BPE tokenizer.json of Hugging Face's (GPT-2's kind), read offline,
with the file's own end-of-text token as ``<eos>``; one-line errors for a missing or unusable file; and one
tiny training run with it (and ``eval.stride``) whose validation numbers ``evaluate ppl`` reproduces."""

import json
import math

import pytest

from conftest import NO_CALLBACKS, tiny_overrides
from depenc.data.tokenizers import FileTokenizer, load_tokenizer

EOT = "<|endoftext|>"
TEXTS = ["the cat sees the dog .", "a dog sees a cat near the house .", "héllo wörld — naïve café ☕",
         "the house near the dog sees the cat ."]


def write_tokenizer_json(path, eos: str | None = EOT, byte_level: bool = True):
    """Train a tiny tokenizer and save it as tokenizer.json: byte-level BPE with the end-of-text token added
    after the merges (a high id, as GPT-2's 50256), or a word-level one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if byte_level:
        hf = Tokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
    else:
        hf = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        hf.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.WordLevelTrainer(special_tokens=["[UNK]"], show_progress=False)
    hf.train_from_iterator(TEXTS * 20, trainer=trainer)
    if eos:
        hf.add_special_tokens([eos])
    hf.save(str(path))
    return path


def test_file_tokenizer_takes_its_eos_and_keeps_every_byte(tmp_path):
    tok = FileTokenizer.from_file(write_tokenizer_json(tmp_path / "tokenizer.json"))
    assert tok.kind == "file" and tok.eos_id == tok.vocab_size - 1 == tok.token_to_id(EOT) and tok.unk_id is None
    for text in TEXTS + ["unseen wørds 🙂 too"]:
        ids = tok.encode(text)
        assert tok.eos_id not in ids and tok.decode(ids) == text
        assert b"".join(tok.token_bytes(i) for i in ids) == text.encode("utf-8")  # bits per byte count these
    assert tok.token_bytes(tok.eos_id) == b""
    ids = tok.encode("the cat") + [tok.eos_id] + tok.encode("a dog")
    assert tok.decode(ids) == "the cat\na dog"
    assert tok.words_of(ids) == [0] * len(tok.encode("the")) + [1] * len(tok.encode(" cat")) + [-1] + \
        [2] * len(tok.encode("a")) + [3] * len(tok.encode(" dog"))
    tok.save(tmp_path / "saved.json")
    again = load_tokenizer(tmp_path / "saved.json")  # what a run folder holds: no need of the original file
    assert type(again) is FileTokenizer and again.eos_id == tok.eos_id and again.encode(TEXTS[2]) == tok.encode(TEXTS[2])


def test_unusable_tokenizer_files_give_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="data.tokenizer_file: no such file"):
        FileTokenizer.from_file(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not a Hugging Face tokenizer.json"):
        FileTokenizer.from_file(tmp_path / "junk.json")
    with pytest.raises(ValueError, match="has no end-of-text token .*<\\|endoftext\\|>"):
        FileTokenizer.from_file(write_tokenizer_json(tmp_path / "no_eos.json", eos=None))
    with pytest.raises(ValueError, match="needs a byte-level BPE tokenizer.json"):
        FileTokenizer.from_file(write_tokenizer_json(tmp_path / "words.json", byte_level=False))


@pytest.fixture(scope="module")
def file_run(tmp_path_factory):
    """One tiny run (1 step, validation at the end) on local text with data.tokenizer=file, eval.stride=8."""
    from depenc.train import main

    tmp = tmp_path_factory.mktemp("tokfile")
    lines = {split: [f"{TEXTS[(i + k) % 4]} {i}" for i in range(n)] for k, (split, n) in
             enumerate((("train", 40), ("validation", 12), ("test", 12)))}
    for split, docs in lines.items():
        (tmp / f"{split}.txt").write_text("\n".join(docs) + "\n", encoding="utf-8")
    tok_file = write_tokenizer_json(tmp / "gpt2-like.json")
    args = tiny_overrides(tmp, "data.source=text", *(f"data.text.{s}={tmp / s}.txt" for s in lines),
                          "data.tokenizer=file", f"data.tokenizer_file={tok_file}", "data.block_size=16",
                          "eval.stride=8", "trainer.max_steps=1", "trainer.val_check_interval=1", "trainer.log_every_n_steps=1",
                          "trainer.checkpoint_every_n_steps=1", "trainer.test_at_end=false", *NO_CALLBACKS)
    assert main(["debug", *args]) == 0
    (run_dir,) = (tmp / "runs" / "debug").iterdir()
    return run_dir, tmp, lines, FileTokenizer.from_file(tok_file)


def test_training_with_a_tokenizer_file_and_evaluate_ppl_agree(file_run, capsys):
    import csv

    from depenc.evaluate import main as evaluate

    run_dir, tmp, lines, tok = file_run
    saved = json.loads((run_dir / "tokenizer.json").read_text())
    assert saved["kind"] == "file"
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    val = {k: float(v) for row in rows for k, v in row.items() if k.startswith("val/validation/") and v}
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    capsys.readouterr()
    results = {}
    for flag in ([], ["--stride", "0"], ["--stride", "3"]):
        assert evaluate(["ppl", "--ckpt", ckpt, "--text", str(tmp / "validation.txt"), "--device", "cpu", *flag]) == 0
        results[tuple(flag)] = json.loads(capsys.readouterr().out)
    run = results[()]
    assert run["stride"] == 8  # the run's eval.stride by default
    docs = lines["validation"]
    assert run["n_tokens"] == sum(len(tok.encode(d)) + 1 for d in docs)
    assert run["n_bytes"] == sum(len(d.encode("utf-8")) + 1 for d in docs)  # bytes of the text, not of tokens
    # the LightningModule's validation (strided windows of the same stream) gives the same numbers
    assert run["ppl"] == pytest.approx(val["val/validation/ppl"], rel=1e-4)
    assert run["bpb"] == pytest.approx(val["val/validation/bpb"], rel=1e-4)
    assert run["bpb"] == pytest.approx(run["loss"] * run["n_tokens"] / math.log(2) / run["n_bytes"], rel=1e-9)
    for other in (results[("--stride", "0")], results[("--stride", "3")]):
        assert other["n_tokens"] == run["n_tokens"] and other["stride"] in (16, 3)


def test_evaluate_ppl_stride_is_checked(file_run, capsys):
    from depenc.evaluate import main as evaluate

    run_dir, tmp, _, _ = file_run
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    for stride, message in (("17", "--stride must be <= the model's block size 16, got 17"),
                            ("-1", "--stride must be >= 0, got -1")):
        assert evaluate(["ppl", "--ckpt", ckpt, "--text", str(tmp / "validation.txt"), "--stride", stride]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_training_refuses_a_missing_tokenizer_file_in_one_line(tmp_path, capsys):
    from depenc.train import main

    args = tiny_overrides(tmp_path, "data.tokenizer=file", f"data.tokenizer_file={tmp_path / 'nope.json'}")
    assert main(["debug", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.tokenizer_file: file not found" in err[0]
    assert main(["debug", *tiny_overrides(tmp_path, "data.tokenizer=file")]) == 2
    assert "needs data.tokenizer_file=PATH" in capsys.readouterr().err
