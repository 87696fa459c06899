"""Data pipeline: sources, tokenizers, token streams, blocks, cache, errors (fast, tiny fixtures)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from depenc.data import sources
from depenc.data.datamodule import IGNORE_INDEX, LMDataModule, compute_cache_key, normalise_data_cfg
from depenc.data.sources import DataUnavailableError, brown_split, load_corpus
from depenc.data.tokenizers import build_tokenizer, load_tokenizer

SHARED_DATA = Path(os.environ.get("DEPENC_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
BROWN_ZIP = SHARED_DATA / "nltk_data" / "corpora" / "brown.zip"

NOUNS = ["cat", "dog", "bird", "horse", "teacher", "farmer"]
VERBS = ["sees", "likes", "chases", "greets"]


def _sentences(n: int, offset: int = 0) -> list[str]:
    out = []
    for i in range(n):
        j = i + offset
        a, b = NOUNS[j % len(NOUNS)], NOUNS[(j * 5 + 1) % len(NOUNS)]
        v = VERBS[(j // 3) % len(VERBS)]
        out.append(f"the {a} {v} a {b} .")
    return out


@pytest.fixture
def text_files(tmp_path):
    train = _sentences(60)
    valid = _sentences(10, offset=7) + ["the zebra sees a cat ."]  # 'zebra' only in validation
    test = _sentences(12, offset=3)
    paths = {}
    for name, lines in (("train", train), ("validation", valid), ("test", test)):
        p = tmp_path / f"{name}.txt"
        # a blank line between two documents: empty documents are dropped
        p.write_text("\n".join(lines[:2] + [""] + lines[2:]) + "\n", encoding="utf-8")
        paths[name] = p
    return {"paths": paths, "lines": {"train": train, "validation": valid, "test": test}}


def _cfg(tmp_path, files, **over):
    cfg = {
        "source": "text",
        "tokenizer": "word",
        "vocab_size": 0,
        "block_size": 8,
        "batch_size": 4,
        "cache_dir": str(tmp_path / "cache"),
        "text": {s: str(p) for s, p in files["paths"].items()},
    }
    cfg["text"]["by"] = "line"
    cfg["text"]["whitespace"] = True
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


def _dm(cfg, seed=0):
    dm = LMDataModule(cfg, seed=seed)
    dm.setup()
    return dm


# ------------------------------------------------------------------------------------ splits


def test_text_splits_and_stats(tmp_path, text_files):
    dm = _dm(_cfg(tmp_path, text_files))
    lines = text_files["lines"]
    for split in ("train", "validation", "test"):
        st = dm.split_stats[split]
        docs = lines[split]
        assert st["n_docs"] == len(docs)
        assert st["n_words"] == sum(len(d.split()) for d in docs) + len(docs)
        assert st["n_tokens"] == st["n_words"]  # word tokenizer: one token per word, one <eos> per doc
        assert st["n_bytes"] == len(("\n".join(docs) + "\n").encode())
        assert [d.text for d in dm.documents(split)] == docs
    assert dm.eval_set_names == ["validation"]
    assert dm.test_set_names == ["test"]
    assert dm.corpus_info["whitespace_tokenised"] is True
    assert dm.vocab_size == dm.tokenizer.vocab_size


def test_dictconfig_is_accepted(tmp_path, text_files):
    from omegaconf import OmegaConf

    plain = _dm(_cfg(tmp_path, text_files))
    dm = _dm(OmegaConf.create(_cfg(tmp_path, text_files)))
    assert dm.cache_hit is True and dm.cache_key == plain.cache_key


def test_documents_by_paragraph_and_file(tmp_path):
    paras = ["one two\nthree four", "five six seven", "eight\nnine"]
    f = tmp_path / "p.txt"
    f.write_text("\n\n".join(paras) + "\n", encoding="utf-8")
    g = tmp_path / "q.txt"
    g.write_text("ten eleven\ntwelve\n", encoding="utf-8")
    base = {"source": "text", "cache_dir": str(tmp_path / "c")}
    c = load_corpus({**base, "text": {"train": [str(f)] * 3, "validation": str(f), "test": str(g), "by": "paragraph"}})
    assert [d.text for d in c.splits["validation"]] == paras
    assert len(c.splits["train"]) == 9
    c = load_corpus({**base, "text": {"train": [str(f), str(g)], "validation": str(f), "test": str(g), "by": "file"}})
    assert [d.text for d in c.splits["train"]] == ["\n\n".join(paras), "ten eleven\ntwelve"]


def test_missing_splits_are_held_out_from_train(tmp_path, text_files):
    cfg = _cfg(tmp_path, text_files, text={"validation": None, "test": None})
    c = load_corpus(cfg)
    train = text_files["lines"]["train"]
    n = len(c.splits["validation"])
    assert n == len(c.splits["test"]) >= 1
    assert [d.text for d in c.splits["train"] + c.splits["validation"] + c.splits["test"]] == train


def test_no_document_in_two_splits_and_max_train_docs(tmp_path, text_files):
    dm = _dm(_cfg(tmp_path, text_files, max_train_docs=20))
    assert dm.split_stats["train"]["n_docs"] == 20
    assert [d.text for d in dm.documents("train")] == text_files["lines"]["train"][:20]


# ------------------------------------------------------------------------------------ streams, blocks


def test_stream_layout_and_train_blocks(tmp_path, text_files):
    dm = _dm(_cfg(tmp_path, text_files))
    tok, T = dm.tokenizer, dm.block_size
    stream = np.asarray(dm.stream("train"))
    docs = text_files["lines"]["train"]
    expected = [tok.eos_id]
    for d in docs:
        expected += tok.encode(d) + [tok.eos_id]
    assert stream.tolist() == expected
    starts = dm.doc_offsets("train")
    assert len(starts) == len(docs) and stream[starts[0] - 1] == tok.eos_id

    # one chunk: non-overlapping blocks of T + 1 tokens, in stream order without shuffling
    ds = dm.train_dataset(shuffle=False)
    assert ds.n_blocks == len(ds) == len(stream) // (T + 1)
    for i, item in enumerate(ds):
        s = ds.block_start(i)
        assert s == i * (T + 1)
        assert item["input_ids"].tolist() == stream[s : s + T].tolist()
        assert item["targets"].tolist() == stream[s + 1 : s + T + 1].tolist()
    assert i == ds.n_blocks - 1

    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "targets"}
    assert batch["input_ids"].shape == (4, T) and batch["input_ids"].dtype == torch.long
    assert batch["targets"].dtype == torch.long
    # seeded shuffling: the same seed gives the same order, another seed another order
    again = next(iter(_dm(_cfg(tmp_path, text_files), seed=0).train_dataloader()))
    other = next(iter(_dm(_cfg(tmp_path, text_files), seed=1).train_dataloader()))
    assert torch.equal(batch["input_ids"], again["input_ids"])
    assert not torch.equal(batch["input_ids"], other["input_ids"])


def test_train_chunks_do_not_depend_on_the_build_workers(tmp_path, monkeypatch):
    """A corpus of several shards and groups: built in this process (build_workers=1) and by two
    litdata.optimize workers, the train split has the same chunks; its stream is the documents in order,
    its document offsets point at them, and every training block sits where block_start says."""
    from depenc.data import pipeline

    monkeypatch.setattr(sources, "SHARD_BYTES", 600)
    monkeypatch.setattr(pipeline, "GROUP_BYTES", 250)
    lines = _sentences(120)
    paths = []
    for k in range(2):
        p = tmp_path / f"train{k}.txt"
        p.write_text("\n".join(lines[60 * k : 60 * (k + 1)]) + "\n", encoding="utf-8")
        paths.append(str(p))
    cfg = {"source": "text", "tokenizer": "word", "block_size": 8, "batch_size": 4,
           "text": {"train": paths, "validation": paths[0], "test": paths[1], "whitespace": True}}
    built = {}
    for workers in (1, 2):
        dm = _dm({**cfg, "build_workers": workers, "cache_dir": str(tmp_path / f"cache{workers}")})
        with open(os.path.join(dm.cache_path, "train", "index.json")) as f:
            chunks = [c["dim"] for c in json.load(f)["chunks"]]
        built[workers] = (chunks, np.asarray(dm.stream("train")), np.asarray(dm.doc_offsets("train")),
                          sorted(os.listdir(dm.cache_path)))
    assert built[1][0] == built[2][0] and len(built[1][0]) > 4  # several shards of several groups
    assert built[1][3] == built[2][3]  # nothing of the workers' scratch left behind
    assert np.array_equal(built[1][1], built[2][1]) and np.array_equal(built[1][2], built[2][2])
    stream, starts = built[2][1], built[2][2]
    tok = dm.tokenizer
    assert stream.tolist() == [tok.eos_id] + [i for line in lines for i in tok.encode(line) + [tok.eos_id]]
    assert [tok.decode(stream[a : b - 1]) for a, b in zip(starts, list(starts[1:]) + [len(stream)])] == lines
    ds = dm.train_dataset(shuffle=False)
    assert ds.n_blocks == sum(n // 9 for n in built[2][0])
    for i, item in enumerate(ds):
        s = ds.block_start(i)
        assert item["input_ids"].tolist() == stream[s : s + 8].tolist() and item["targets"][-1] == stream[s + 8]


@pytest.mark.parametrize("kind", ["word", "char", "bpe"])
def test_eval_blocks_count_every_token_once(tmp_path, text_files, kind):
    dm = _dm(_cfg(tmp_path, text_files, tokenizer=kind, vocab_size=300, block_size=7))
    for loaders, names in ((dm.val_dataloader(), dm.eval_set_names), (dm.test_dataloader(), dm.test_set_names)):
        assert len(loaders) == len(names)
        for loader, name in zip(loaders, names):
            stream = np.asarray(dm.stream(name))
            targets, inputs = [], []
            for b in loader:
                assert b["input_ids"].shape == b["targets"].shape and b["input_ids"].shape[1] == 7
                keep = b["targets"] != IGNORE_INDEX
                targets.append(b["targets"][keep])
                inputs.append(b["input_ids"][keep])
                assert (b["input_ids"][~keep] == dm.tokenizer.eos_id).all()
            targets, inputs = torch.cat(targets), torch.cat(inputs)
            assert len(targets) == dm.split_stats[name]["n_tokens"] == len(stream) - 1
            assert targets.tolist() == stream[1:].tolist()  # in order, none dropped, none twice
            assert inputs.tolist() == stream[:-1].tolist()


def test_split_smaller_than_a_block_is_an_error(tmp_path, text_files):
    with pytest.raises(ValueError, match=r"split 'validation' has \d+ tokens"):
        _dm(_cfg(tmp_path, text_files, block_size=100))


# ------------------------------------------------------------------------------------ tokenizers


ROUND_TRIP = "the cat sees a dog .\nthe farmer likes a horse ."


@pytest.mark.parametrize("kind", ["word", "char", "bpe"])
def test_tokenizer_round_trip_and_save(tmp_path, kind):
    train = _sentences(50) + [ROUND_TRIP]
    tok = build_tokenizer(kind, train, vocab_size=300)
    assert tok.kind == kind and tok.eos_id == 0 and tok.id_to_token(0) == "<eos>"
    if kind != "bpe":
        assert tok.unk_id == 1 and tok.id_to_token(1) == "<unk>"
    for text in train[:5] + [ROUND_TRIP]:
        ids = tok.encode(text)
        assert tok.eos_id not in ids
        if kind == "word":
            assert tok.decode(ids) == " ".join(text.split())
        else:
            assert tok.decode(ids) == text
        words = tok.words_of(ids)
        assert len(words) == len(ids)
        assert words[0] == 0 and max(words) == len(text.split()) - 1
        assert words == sorted(words)
    ids = [0] + tok.encode("the cat") + [0] + tok.encode("a dog") + [0]
    assert tok.decode(ids) == "\nthe cat\na dog\n"
    w = tok.words_of(ids)
    assert w[0] == -1 and w[-1] == -1 and max(w) == 3
    path = tmp_path / "tok.json"
    tok.save(path)
    again = load_tokenizer(path)
    assert again.kind == kind and again.vocab_size == tok.vocab_size
    assert again.encode(ROUND_TRIP) == tok.encode(ROUND_TRIP)
    assert [again.id_to_token(i) for i in range(tok.vocab_size)] == [tok.id_to_token(i) for i in range(tok.vocab_size)]


def test_bpe_word_starts_and_determinism():
    train = _sentences(80)
    a = build_tokenizer("bpe", train, vocab_size=1000)
    b = build_tokenizer("bpe", train, vocab_size=1000)
    assert a.encode(ROUND_TRIP) == b.encode(ROUND_TRIP)
    ids = a.encode("the cat sees")
    starts = [a.is_word_start(i) for i in ids]
    assert starts[0] is False  # first word has no leading space
    assert sum(starts) == 2
    assert a.token_to_id("no-such-token-anywhere") is None
    assert a.token_to_id("<eos>") == 0


def test_word_vocabulary_from_train_only(tmp_path, text_files):
    dm = _dm(_cfg(tmp_path, text_files))
    tok = dm.tokenizer
    assert tok.encode("zebra") == [tok.unk_id]
    assert tok.token_to_id("zebra") is None
    assert tok.token_to_id("cat") > 1
    valid = np.asarray(dm.stream("validation"))
    assert (valid == tok.unk_id).sum() == 1
    assert (np.asarray(dm.stream("train")) != tok.unk_id).all()


def test_word_vocabulary_limits_and_fixed_vocab():
    train = ["a a a b b c", "a b d"]
    tok = build_tokenizer("word", train, vocab_size=4)
    assert [tok.id_to_token(i) for i in range(tok.vocab_size)] == ["<eos>", "<unk>", "a", "b"]
    tok = build_tokenizer("word", train, vocab_size=0, min_freq=2)
    assert tok.vocab_size == 4
    tok = build_tokenizer("word", train, vocab_size=0, lowercase=True)
    assert tok.encode("A B") == tok.encode("a b")
    tok = build_tokenizer("word", train, vocab_size=2, fixed_vocab=["x", "a", "y"])
    assert [tok.id_to_token(i) for i in range(tok.vocab_size)] == ["<eos>", "<unk>", "x", "a", "y"]
    assert tok.encode("b") == [1]


# ------------------------------------------------------------------------------------ cache


def test_cache_reused_then_rebuilt(tmp_path, text_files, monkeypatch):
    cfg = _cfg(tmp_path, text_files)
    first = _dm(cfg)
    assert first.cache_hit is False
    assert sorted(os.listdir(first.cache_path)) == [
        "meta.json", "test.docs.npy", "test.npy", "test.text.jsonl", "tokenizer.json",
        "train", "train.docs.npy", "validation.docs.npy", "validation.npy", "validation.text.jsonl",
    ]

    def no_loading(*a, **k):
        raise AssertionError("the corpus must not be read on a cache hit")

    with monkeypatch.context() as m:
        m.setattr(sources, "plan_corpus", no_loading)
        second = _dm({**cfg, "batch_size": 2, "num_workers": 0, "block_size": 4})  # not in the key
        assert second.cache_hit is True and second.cache_path == first.cache_path
        assert second.split_stats["train"]["n_tokens"] == first.split_stats["train"]["n_tokens"]
        assert second.tokenizer.encode(ROUND_TRIP) == first.tokenizer.encode(ROUND_TRIP)
        assert next(iter(second.train_dataloader()))["input_ids"].shape == (2, 4)
        # an evaluation split's documents come from the cache
        assert [d.text for d in second.documents("test")] == text_files["lines"]["test"]
    # setup is idempotent
    second.setup("fit")
    assert second.cache_hit is True

    changed = _dm({**cfg, "lowercase": True})
    assert changed.cache_hit is False and changed.cache_path != first.cache_path
    # a changed source file changes the key
    p = text_files["paths"]["train"]
    p.write_text(p.read_text() + "the dog sees a bird .\n")
    os.utime(p, ns=(time.time_ns(), time.time_ns() + 10**9))
    edited = _dm(cfg)
    assert edited.cache_hit is False
    assert edited.split_stats["train"]["n_docs"] == first.split_stats["train"]["n_docs"] + 1
    assert not [n for n in os.listdir(tmp_path / "cache") if n.startswith(".tmp")]

    run_dir = tmp_path / "run"
    dst = edited.save_tokenizer(run_dir)
    assert load_tokenizer(dst).encode(ROUND_TRIP) == edited.tokenizer.encode(ROUND_TRIP)


def test_incomplete_cache_is_rebuilt(tmp_path, text_files):
    cfg = _cfg(tmp_path, text_files)
    first = _dm(cfg)
    os.remove(os.path.join(first.cache_path, "validation.npy"))
    again = _dm(cfg)
    assert again.cache_hit is False
    assert os.path.isfile(os.path.join(again.cache_path, "validation.npy"))
    chunk = next((Path(again.cache_path) / "train").glob("chunk-*.bin"))
    chunk.write_bytes(chunk.read_bytes()[:-3])  # truncated
    third = _dm(cfg)
    assert third.cache_hit is False and chunk.stat().st_size == len(chunk.read_bytes()) > 0
    assert np.array_equal(np.asarray(third.stream("train")), np.asarray(first.stream("train")))


def test_cache_from_a_remote_dir(tmp_path, text_files, monkeypatch):
    """A cache built with data.remote_dir is copied there; a machine without it uses that copy (small files
    fetched, train chunks read in place) without reading the corpus, and gives the same batches."""
    remote = tmp_path / "remote"
    cfg = _cfg(tmp_path, text_files, remote_dir=str(remote))
    first = _dm(cfg)
    key = first.cache_key[:16]
    assert (remote / key / "meta.json").is_file() and list((remote / key / "train").glob("chunk-*.bin"))
    monkeypatch.setattr(sources, "plan_corpus", lambda *a, **k: pytest.fail("the corpus was read"))
    other = _dm({**cfg, "cache_dir": str(tmp_path / "elsewhere")})
    assert other.cache_key == first.cache_key and not list(Path(other.cache_path).glob("train/chunk-*"))
    assert torch.equal(next(iter(other.train_dataloader()))["input_ids"], next(iter(first.train_dataloader()))["input_ids"])
    assert np.array_equal(np.asarray(other.stream("validation")), np.asarray(first.stream("validation")))
    assert _dm({**cfg, "cache_dir": str(tmp_path / "elsewhere")}).cache_hit is True


# ------------------------------------------------------------------------------------ eval sets


def test_extra_eval_sets(tmp_path, text_files):
    ood = tmp_path / "ood.txt"
    ood.write_text("\n".join(_sentences(8, offset=11)) + "\n")
    cfg = _cfg(tmp_path, text_files, eval_sets={"ood": {"path": str(ood), "by": "line", "whitespace": True}})
    dm = _dm(cfg)
    assert dm.eval_set_names == ["validation", "ood"]
    assert dm.test_set_names == ["test", "ood"]
    assert len(dm.val_dataloader()) == 2 and len(dm.test_dataloader()) == 2
    assert dm.split_stats["ood"]["n_docs"] == 8 and dm.split_stats["ood"]["n_words"] is not None
    cfg2 = _cfg(tmp_path, text_files, eval_sets={"ood": {"path": str(ood), "whitespace": False}})
    assert _dm(cfg2).split_stats["ood"]["n_words"] is None
    bad = _cfg(tmp_path, text_files, eval_sets={"ood": {"path": str(tmp_path / "nope.txt")}})
    with pytest.raises(DataUnavailableError, match=r"data\.eval_sets\.ood\.path.*nope\.txt"):
        _dm(bad)


# ------------------------------------------------------------------------------------ errors


def test_missing_text_path(tmp_path, text_files):
    cfg = _cfg(tmp_path, text_files, text={"train": str(tmp_path / "missing.txt")})
    with pytest.raises(DataUnavailableError, match=r"data\.text\.train.*missing\.txt"):
        _dm(cfg)


def test_unknown_source_and_tokenizer(tmp_path, text_files):
    with pytest.raises(ValueError, match="synthetic, text, hf, brown"):
        LMDataModule(_cfg(tmp_path, text_files, source="wiki"))
    with pytest.raises(ValueError, match="word, bpe, char"):
        LMDataModule(_cfg(tmp_path, text_files, tokenizer="sentencepiece"))
    with pytest.raises(ValueError, match="synthetic, text, hf, brown"):
        load_corpus({"source": "nope"})


def test_hf_unreachable_is_a_clear_error(tmp_path, monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg = {"source": "hf", "hf": {"name": "depenc-no-such-org/no-such-dataset", "config": "x"},
           "cache_dir": str(tmp_path / "cache")}
    t0 = time.perf_counter()
    with pytest.raises(DataUnavailableError) as e:
        _dm(cfg)
    assert time.perf_counter() - t0 < 15
    msg = str(e.value)
    assert "could not be downloaded" in msg and "unreachable" in msg
    assert "data.source=text data.text.train=" in msg


def _no_default_nltk_paths(monkeypatch):
    import nltk

    monkeypatch.delenv("NLTK_DATA", raising=False)
    monkeypatch.setattr(nltk.data, "path", [])


def test_brown_missing_is_a_clear_error(tmp_path, monkeypatch):
    _no_default_nltk_paths(monkeypatch)
    empty = tmp_path / "nltk_data"
    empty.mkdir()
    cfg = {"source": "brown", "brown": {"nltk_data": str(empty)}, "cache_dir": str(tmp_path / "cache")}
    with pytest.raises(DataUnavailableError) as e:
        _dm(cfg)
    msg = str(e.value)
    assert 'nltk.download("brown")' in msg and "data.brown.nltk_data" in msg and "NLTK_DATA" in msg


# ------------------------------------------------------------------------------------ Brown


FAKE_GENRES = {"news": "a", "humor": "r", "learned": "j"}
FAKE_COUNTS = {"news": 10, "humor": 3, "learned": 20}


@pytest.fixture
def fake_brown(tmp_path, monkeypatch):
    """A tiny corpus in the Brown layout: nltk_data/corpora/brown/{c?NN, cats.txt}."""
    _no_default_nltk_paths(monkeypatch)
    root = tmp_path / "nltk_data" / "corpora" / "brown"
    root.mkdir(parents=True)
    cats = []
    k = 0
    for genre, n in FAKE_COUNTS.items():
        for i in range(1, n + 1):
            fid = f"c{FAKE_GENRES[genre]}{i:02d}"
            sents = _sentences(4, offset=k)
            k += 4
            body = "".join(
                "\n\n\t" + " ".join(f"{w}/{'.' if w == '.' else 'nn'}" for w in s.split()) + "\n" for s in sents
            )
            (root / fid).write_text(body, encoding="ascii")
            cats.append(f"{fid} {genre}")
    (root / "cats.txt").write_text("\n".join(cats) + "\n", encoding="ascii")
    return tmp_path / "nltk_data"


def test_fake_brown_split_and_datamodule(tmp_path, fake_brown):
    cfg = {"source": "brown", "tokenizer": "word", "block_size": 8, "batch_size": 2,
           "brown": {"nltk_data": str(fake_brown), "split": [0.8, 0.1, 0.1], "split_seed": 0},
           "cache_dir": str(tmp_path / "cache")}
    c = load_corpus(cfg)
    ids = {s: [d.meta["fileid"] for d in docs] for s, docs in c.splits.items()}
    all_ids = ids["train"] + ids["validation"] + ids["test"]
    assert len(all_ids) == len(set(all_ids)) == sum(FAKE_COUNTS.values())
    for split in ("validation", "test"):  # every genre with >= 3 documents is in every split
        assert {d.meta["genre"] for d in c.splits[split]} == set(FAKE_GENRES)
    first = c.splits["train"][0]
    assert first.text.split("\n")[0] == first.text.split("\n")[0].strip() and len(first.text.split("\n")) == 4
    assert c.whitespace_tokenised is True

    dm = _dm(cfg)
    assert dm.corpus_info["genres"]["validation"] == {"humor": 1, "learned": 2, "news": 1}
    meta = dm.document_meta("test")
    assert [m["fileid"] for m in meta] == ids["test"]
    assert list(dm.doc_offsets("test")) == [m["start"] for m in meta]
    assert _dm(cfg).cache_hit is True


def test_fake_brown_by_sentence_puts_eos_between_sentences(tmp_path, fake_brown):
    """data.brown.by=sentence: the same document split, every sentence a document of its own (an <eos> after
    each, as the inducer needs); the default keeps the cache key it had before the option existed."""
    base = {"source": "brown", "tokenizer": "word", "block_size": 8, "batch_size": 2,
            "brown": {"nltk_data": str(fake_brown), "split": [0.8, 0.1, 0.1], "split_seed": 0},
            "cache_dir": str(tmp_path / "cache")}
    by_doc = load_corpus(base)
    by_sent = load_corpus({**base, "brown": {**base["brown"], "by": "sentence"}})
    for split, docs in by_doc.splits.items():
        want = [(d.meta["fileid"], line) for d in docs for line in d.text.split("\n")]
        assert [(d.meta["fileid"], d.text) for d in by_sent.splits[split]] == want
    assert [d.meta["sentence"] for d in by_sent.splits["train"][:4]] == [0, 1, 2, 3]
    key = lambda brown: compute_cache_key(normalise_data_cfg({**base, "brown": {**base["brown"], **brown}}))[0]
    assert key({}) == key({"by": "document"}) != key({"by": "sentence"})
    dm = _dm({**base, "brown": {**base["brown"], "by": "sentence"}})
    stream = np.asarray(dm.stream("train"))
    assert int((stream == dm.tokenizer.eos_id).sum()) == len(by_sent.splits["train"]) + 1  # + the leading one


def test_brown_split_function():
    genres = {f"c{g}{i:02d}": g for g, n in (("a", 44), ("b", 6), ("c", 9), ("d", 2)) for i in range(n)}
    a = brown_split(genres, (0.8, 0.1, 0.1), seed=0)
    assert a == brown_split(dict(reversed(list(genres.items()))), (0.8, 0.1, 0.1), seed=0)
    assert a != brown_split(genres, (0.8, 0.1, 0.1), seed=1)
    flat = a["train"] + a["validation"] + a["test"]
    assert sorted(flat) == sorted(genres)
    count = lambda s, g: sum(genres[f] == g for f in a[s])  # noqa: E731
    assert (count("train", "a"), count("validation", "a"), count("test", "a")) == (36, 4, 4)
    assert (count("train", "b"), count("validation", "b"), count("test", "b")) == (4, 1, 1)
    assert count("train", "d") == 2


@pytest.mark.skipif(not BROWN_ZIP.is_file(), reason=f"reference Brown corpus not present at {BROWN_ZIP}")
def test_real_brown_split_is_stratified_deterministic_and_disjoint():
    genres = sources.brown_genres(str(SHARED_DATA / "nltk_data"))
    assert len(genres) == 500
    parts = brown_split(genres, (0.8, 0.1, 0.1), seed=0)
    assert parts == brown_split(genres, (0.8, 0.1, 0.1), seed=0)
    sets = {k: set(v) for k, v in parts.items()}
    assert not (sets["train"] & sets["validation"]) and not (sets["train"] & sets["test"])
    assert not (sets["validation"] & sets["test"])
    assert set().union(*sets.values()) == set(genres)
    for g in set(genres.values()):
        n = sum(1 for v in genres.values() if v == g)
        share = {k: sum(genres[f] == g for f in v) for k, v in parts.items()}
        assert share["validation"] >= 1 and share["test"] >= 1
        assert abs(share["train"] - 0.8 * n) <= 2
    assert 390 <= len(parts["train"]) <= 410


# ------------------------------------------------------------------------------------ synthetic


def test_synthetic_source(tmp_path):
    synthetic = pytest.importorskip("depenc.data.synthetic", reason="synthetic grammar module not written yet")
    cfg = {"source": "synthetic", "tokenizer": "word", "block_size": 16, "batch_size": 4,
           "cache_dir": str(tmp_path / "cache"),
           "synthetic": {"n_train": 200, "n_validation": 30, "n_test": 30, "n_test_long": 10}}
    dm = _dm(cfg)
    assert dm.test_set_names == ["test", "test_long"]
    assert dm.eval_set_names == ["validation"]
    assert dm.split_stats["train"]["n_docs"] == 200
    assert dm.corpus_info["fixed_vocab"] is True and dm.corpus_info["whitespace_tokenised"] is True
    vocab = synthetic.vocabulary(synthetic.SyntheticConfig.from_dict(cfg["synthetic"]))
    assert dm.vocab_size == 2 + len(vocab)
    for name in dm.split_stats:
        assert (np.asarray(dm.stream(name)) != dm.tokenizer.unk_id).all()
    assert len(dm.test_dataloader()) == 2
    assert _dm(cfg).cache_hit is True


def test_train_blocks_carry_the_gold_arcs_of_their_place_in_the_stream(tmp_path):
    """Oracle mode: each (shuffled) training block's gold_M is the gold matrix at its own stream offset."""
    from depenc.data.gold import GoldArcs

    cfg = {"source": "synthetic", "tokenizer": "word", "block_size": 16, "batch_size": 4,
           "cache_dir": str(tmp_path / "cache"),
           "synthetic": {"n_train": 60, "n_validation": 20, "n_test": 20, "n_test_long": 5}}
    dm = _dm(cfg)
    dm.enable_gold_arcs("next")
    stream, gold = np.asarray(dm.stream("train")), dm._gold["train"]
    assert isinstance(gold, GoldArcs)
    ds = dm.train_dataset()
    starts = {ds.block_start(i): i for i in range(ds.n_blocks)}
    seen = 0
    for item in ds:
        matches = [s for s in starts if stream[s : s + 16].tolist() == item["input_ids"].tolist()]
        assert any(torch.equal(item["gold_M"], gold.matrix(s, 16)) for s in matches)
        seen += 1
    assert seen == ds.n_blocks and bool(item["gold_M"].sum() > 0)


# ------------------------------------------------------------------------------------ Hugging Face (local folder)


@pytest.mark.parametrize("streaming", [True, False])
def test_hf_local_folder_streamed_or_downloaded_equals_the_text_source(tmp_path, text_files, monkeypatch, streaming):
    """data.source=hf reads a local folder of JSONL files as datasets.load_dataset does (one split per
    file); streamed (data.hf.streaming) or not, its streams are those of the same documents as text files."""
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)
    folder = tmp_path / "corpus"
    folder.mkdir()
    for split, lines in text_files["lines"].items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(lines)))
    hf = _dm({"source": "hf", "tokenizer": "word", "block_size": 8, "batch_size": 4, "cache_dir": str(tmp_path / "c"),
              "hf": {"name": str(folder), "streaming": streaming, "whitespace": True}})
    text = _dm(_cfg(tmp_path, text_files))
    for split in ("train", "validation", "test"):
        assert np.array_equal(np.asarray(hf.stream(split)), np.asarray(text.stream(split))), split
        assert hf.split_stats[split] == text.split_stats[split]
    bad = {"source": "hf", "cache_dir": str(tmp_path / "c"), "hf": {"name": str(folder), "text_field": "body",
                                                                       "streaming": streaming}}
    with pytest.raises(ValueError, match="text_field='body' is not a column"):
        _dm(bad)


def test_eval_shards_cover_every_block_once():
    """Under DDP each rank evaluates a contiguous share of the blocks: all of them, none twice, no padding."""
    from depenc.data.datamodule import EvalShard

    for n in (7, 10, 3):
        for world in (1, 2, 3):
            shares = [list(EvalShard(range(n), world, rank)) for rank in range(world)]
            assert [i for share in shares for i in share] == list(range(n))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1
            assert [len(EvalShard(range(n), world, rank)) for rank in range(world)] == list(map(len, shares))


def test_concurrent_setups_build_the_cache_once(tmp_path, text_files, monkeypatch):
    """Processes (here threads) that start together -- torchrun's ranks -- build the cache once: the first
    takes the build lock, the others wait for it and then find the cache."""
    import threading

    from depenc.data import pipeline

    builds, real_build = [], pipeline.build

    def slow_build(*args, **kwargs):
        builds.append(threading.get_ident())
        time.sleep(0.3)  # the other setups arrive while this one builds
        return real_build(*args, **kwargs)

    monkeypatch.setattr(pipeline, "build", slow_build)
    dms = [LMDataModule(_cfg(tmp_path, text_files)) for _ in range(3)]
    threads = [threading.Thread(target=dm.setup) for dm in dms]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and sorted(dm.cache_hit for dm in dms) == [False, True, True]
    assert len({dm.cache_path for dm in dms}) == 1 and all(dm.split_stats == dms[0].split_stats for dm in dms)
