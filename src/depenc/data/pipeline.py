"""The build of the data cache: corpus shards -> tokenizer -> token files, on LitData.

One pass over the train texts trains the tokenizer (streamed to it; the synthetic grammar's fixed
vocabulary needs none). Then every split is tokenised *group by group*: a group is a run of whole
documents of one shard with about ``GROUP_BYTES`` of text, encoded in batches of ``ENCODE_BATCH``
documents into ``doc tokens + <eos>`` per document (the split's first group also opens with
``<eos>``), so memory never depends on the size of the corpus.

- **train**: a LitData dataset (``train/index.json`` + ``chunk-*.bin``) written by ``litdata.optimize``,
  whose workers (``data.build_workers``) tokenise the shards in parallel, each writing its groups as
  it goes; a corpus of one shard is written in this process by LitData's own chunk writer. Every group
  is one item and one chunk (``chunk_size=1``: a chunk closes after each item), so the chunk layout --
  and the training blocks, which ``TokensLoader`` cuts within chunks -- depends on the corpus alone,
  not on the number of workers. Per-group side files (document lengths, statistics, document meta)
  are merged after the workers finish into ``train.docs.npy`` / ``train.meta.jsonl``.
- **evaluation splits** (validation, test, ...): small, and read by position (sentence-aligned
  scoring, gold arcs, the callbacks), so they are kept as one memory-mapped token array per split,
  appended to group by group in this process (``<split>.npy``), with ``<split>.docs.npy`` (document
  starts), ``<split>.text.jsonl`` (the documents, for the callbacks) and ``<split>.meta.jsonl``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import signal
import time
from dataclasses import dataclass
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from depenc.data.sources import CorpusPlan, Document
from depenc.data.tokenizers import Tokenizer, build_tokenizer, load_tokenizer

log = logging.getLogger(__name__)

GROUP_BYTES = 8 << 20  # text per group (= per train chunk, about 2M tokens of BPE)
ENCODE_BATCH = 256  # documents per encode_batch call


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32)


class NpyAppender:
    """A 1-D ``.npy`` file written piece by piece: numpy's header leaves room for the length to grow
    to 21 digits, so the final length is written over the placeholder in place."""

    def __init__(self, path: str, dtype: Any):
        self.dtype = np.dtype(dtype)
        self.n = 0
        self.f = open(path, "wb")
        self._header()
        self.data_start = self.f.tell()

    def _header(self) -> None:
        self.f.seek(0)
        np.lib.format.write_array_header_1_0(self.f, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                      "fortran_order": False, "shape": (self.n,)})

    def append(self, values: np.ndarray) -> None:
        self.f.write(np.ascontiguousarray(values, dtype=self.dtype).tobytes())
        self.n += len(values)

    def close(self) -> None:
        end = self.f.tell()
        self._header()
        if self.f.tell() != self.data_start:  # cannot happen with numpy's growth padding; never corrupt silently
            raise RuntimeError(f"{self.f.name}: the .npy header changed size")
        self.f.seek(end)
        self.f.close()


# ----------------------------------------------------------------------------------- encoding
@dataclass
class Group:
    tokens: np.ndarray  # every document's tokens + <eos> (after a leading <eos> on the split's first group)
    lengths: np.ndarray  # int64 tokens of each document, its <eos> included
    n_bytes: int  # UTF-8 bytes of the documents
    n_words: int  # whitespace-separated words (0 unless counted)
    docs: list[Document]


def _encode(docs: list[Document], tok: Tokenizer, dtype: np.dtype, lead_eos: bool, count_words: bool) -> Group:
    eos = tok.eos_id
    lengths = np.empty(len(docs), dtype=np.int64)
    pieces = [np.full(1, eos, dtype=dtype)] if lead_eos else []
    n_bytes = n_words = 0
    for a in range(0, len(docs), ENCODE_BATCH):
        texts = [d.text for d in docs[a : a + ENCODE_BATCH]]
        flat: list[int] = []
        for j, ids in enumerate(tok.encode_batch(texts)):
            flat.extend(ids)
            flat.append(eos)
            lengths[a + j] = len(ids) + 1
        pieces.append(np.array(flat, dtype=dtype))
        n_bytes += sum(len(t.encode("utf-8")) for t in texts)
        if count_words:
            n_words += sum(len(t.split()) for t in texts)
    return Group(np.concatenate(pieces), lengths, n_bytes, n_words, docs)


def encode_groups(shard: Any, tok: Tokenizer, dtype: np.dtype, lead_eos: bool, count_words: bool) -> Iterator[Group]:
    """The shard's documents in groups of about GROUP_BYTES of text, tokenised."""
    pending: list[Document] = []
    size = 0
    for doc in shard.documents():
        pending.append(doc)
        size += len(doc.text)
        if size >= GROUP_BYTES:
            yield _encode(pending, tok, dtype, lead_eos, count_words)
            pending, size, lead_eos = [], 0, False
    if pending:
        yield _encode(pending, tok, dtype, lead_eos, count_words)


class SplitStats:
    """Documents, tokens (each document's + its closing <eos>), bytes and words (+ one per <eos>)."""

    def __init__(self):
        self.n_docs = self.n_doc_tokens = self.n_bytes = self.n_words = 0
        self.genres: dict[str, int] = {}

    def add(self, n_docs: int, n_tokens: int, n_bytes: int, n_words: int, meta: Sequence[dict] = ()) -> None:
        self.n_docs += n_docs
        self.n_doc_tokens += n_tokens
        self.n_bytes += n_bytes
        self.n_words += n_words
        for m in meta:
            if "genre" in m:
                self.genres[m["genre"]] = self.genres.get(m["genre"], 0) + 1

    def entry(self, whitespace: bool) -> dict:
        out = {"n_docs": self.n_docs, "n_tokens": self.n_doc_tokens, "n_bytes": self.n_bytes + self.n_docs,
               "n_words": self.n_words + self.n_docs if whitespace else None}
        if self.genres:
            out["genres"] = dict(sorted(self.genres.items()))
        return out


def _lead_tokens(group: Group) -> int:
    return len(group.tokens) - int(group.lengths.sum())  # 1 for the split's first group, else 0


# ----------------------------------------------------------------------------------- evaluation splits
def write_eval_split(shards: Sequence, tok: Tokenizer, prefix: str, dtype: np.dtype, whitespace: bool) -> dict:
    """``<prefix>.npy`` (the token stream), ``.docs.npy``, ``.text.jsonl``, ``.meta.jsonl`` (if any meta)."""
    stats = SplitStats()
    tokens, starts = NpyAppender(prefix + ".npy", dtype), NpyAppender(prefix + ".docs.npy", np.int64)
    any_meta = False
    with open(prefix + ".text.jsonl", "w", encoding="utf-8") as texts, \
            open(prefix + ".meta.jsonl", "w", encoding="utf-8") as metas:
        for i, shard in enumerate(shards):
            for group in encode_groups(shard, tok, dtype, i == 0, whitespace):
                first = tokens.n + _lead_tokens(group)
                doc_starts = first + np.concatenate([[0], np.cumsum(group.lengths[:-1])])
                tokens.append(group.tokens)
                starts.append(doc_starts)
                for d, s in zip(group.docs, doc_starts):
                    texts.write(json.dumps(d.text, ensure_ascii=False) + "\n")
                    metas.write(json.dumps({**d.meta, "start": int(s)}, ensure_ascii=False) + "\n")
                    any_meta = any_meta or bool(d.meta)
                stats.add(len(group.docs), int(group.lengths.sum()), group.n_bytes, group.n_words,
                          [d.meta for d in group.docs])
    tokens.close()
    starts.close()
    if not any_meta:
        os.remove(prefix + ".meta.jsonl")
    return stats.entry(whitespace)


# ----------------------------------------------------------------------------------- train split
class TrainShardWriter:
    """The optimize function: the groups of one ``(index, shard)`` job as token arrays (LitData items),
    with each group's document lengths, statistics and meta written to ``parts_dir`` on the side."""

    def __init__(self, tokenizer_path: str, parts_dir: str, dtype: np.dtype, count_words: bool):
        self.tokenizer_path, self.parts_dir, self.dtype, self.count_words = tokenizer_path, parts_dir, dtype, count_words
        self._tok: Tokenizer | None = None

    def __call__(self, job: tuple[int, Any]) -> Iterator[np.ndarray]:
        index, shard = job
        if self._tok is None:
            self._tok = load_tokenizer(self.tokenizer_path)
        for g, group in enumerate(encode_groups(shard, self._tok, self.dtype, index == 0, self.count_words)):
            stem = os.path.join(self.parts_dir, f"{index:06d}-{g:06d}")
            np.save(stem + ".npy", group.lengths)
            meta = [d.meta for d in group.docs] if any(d.meta for d in group.docs) else None
            with open(stem + ".json", "w", encoding="utf-8") as f:
                json.dump({"n_tokens": len(group.tokens), "n_bytes": group.n_bytes, "n_words": group.n_words,
                           "meta": meta}, f, ensure_ascii=False)
            yield group.tokens


def _optimize(fn: TrainShardWriter, jobs: list, out_dir: str, workers: int, scratch: str) -> None:
    """``litdata.optimize`` over the jobs in order (worker w takes a contiguous run of them; the index lists
    worker 0's chunks first), with LitData's scratch folders private to this build, the tokenizers
    library told not to use threads in the forked workers, and the process's multiprocessing start
    method and SIGINT handler (both of which optimize sets) restored."""
    from litdata import optimize
    from litdata.streaming.item_loader import TokensLoader

    env = {"DATA_OPTIMIZER_CACHE_FOLDER": os.path.join(scratch, "chunks"),
           "DATA_OPTIMIZER_DATA_CACHE_FOLDER": os.path.join(scratch, "data"), "TOKENIZERS_PARALLELISM": "false"}
    saved = {k: os.environ.get(k) for k in env}
    method = multiprocessing.get_start_method(allow_none=True)
    handler = signal.getsignal(signal.SIGINT)
    os.environ.update(env)
    try:
        optimize(fn=fn, inputs=jobs, output_dir=out_dir, chunk_size=1, num_workers=workers, item_loader=TokensLoader(),
                 keep_data_ordered=True, reorder_files=False, start_method="fork", verbose=False)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        multiprocessing.set_start_method(method, force=True)
        signal.signal(signal.SIGINT, handler)


def write_train_split(shards: Sequence, tokenizer_path: str, folder: str, dtype: np.dtype, whitespace: bool,
                      workers: int) -> dict:
    """The train split under ``folder``: ``train/`` (LitData chunks), ``train.docs.npy``, ``train.meta.jsonl``."""
    out_dir, parts = os.path.join(folder, "train"), os.path.join(folder, ".parts")
    os.makedirs(parts)
    fn = TrainShardWriter(tokenizer_path, parts, dtype, whitespace)
    jobs = list(enumerate(shards))
    workers = min(workers, len(jobs))
    if workers > 1:
        scratch = os.path.join(folder, ".litdata")
        _optimize(fn, jobs, out_dir, workers, scratch)
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        from litdata.streaming.cache import Cache
        from litdata.streaming.item_loader import TokensLoader

        cache = Cache(out_dir, chunk_size=1, item_loader=TokensLoader())
        i = 0
        for job in jobs:
            for tokens in fn(job):
                cache[i] = tokens
                i += 1
        cache.done()
        cache.merge()
    index_path = os.path.join(out_dir, "index.json")
    if not os.path.isfile(index_path):
        raise ValueError("the train split holds no documents (no non-empty text)")
    with open(index_path, encoding="utf-8") as f:
        chunk_dims = [c["dim"] for c in json.load(f)["chunks"]]
    stems = sorted(n[:-5] for n in os.listdir(parts) if n.endswith(".json"))
    stats = SplitStats()
    starts = NpyAppender(os.path.join(folder, "train.docs.npy"), np.int64)
    pos, any_meta = 0, False
    with open(os.path.join(folder, "train.meta.jsonl"), "w", encoding="utf-8") as metas:
        for stem, dim in zip(stems, chunk_dims, strict=True):
            with open(os.path.join(parts, stem + ".json"), encoding="utf-8") as f:
                part = json.load(f)
            lengths = np.load(os.path.join(parts, stem + ".npy"))
            if part["n_tokens"] != dim:
                raise RuntimeError(f"train chunk {stem} holds {dim} tokens, its side file says {part['n_tokens']}")
            first = pos + part["n_tokens"] - int(lengths.sum())
            doc_starts = first + np.concatenate([[0], np.cumsum(lengths[:-1])])
            starts.append(doc_starts)
            for m, s in zip(part["meta"] or [{}] * len(lengths), doc_starts):
                metas.write(json.dumps({**m, "start": int(s)}, ensure_ascii=False) + "\n")
            any_meta = any_meta or part["meta"] is not None
            stats.add(len(lengths), int(lengths.sum()), part["n_bytes"], part["n_words"], part["meta"] or ())
            pos += part["n_tokens"]
    starts.close()
    if not any_meta:
        os.remove(os.path.join(folder, "train.meta.jsonl"))
    for name in os.listdir(parts):
        os.remove(os.path.join(parts, name))
    os.rmdir(parts)
    return {**stats.entry(whitespace), "n_stream": pos, "chunk_tokens": chunk_dims}


# ----------------------------------------------------------------------------------- the whole cache
def build(plan: CorpusPlan, cfg: dict, folder: str, workers: int) -> dict:
    """Tokenizer and every split of ``plan`` into ``folder``; returns the meta.json fields of the build."""
    t0 = time.perf_counter()
    # one pass over the train texts, streamed (the fixed vocabularies read none)
    train_texts = (d.text for d in plan.documents("train"))
    tok = build_tokenizer(cfg["tokenizer"], train_texts, cfg["vocab_size"], cfg["min_freq"], cfg["lowercase"],
                          fixed_vocab=plan.fixed_vocab, tokenizer_file=cfg.get("tokenizer_file"))
    tok_path = os.path.join(folder, "tokenizer.json")
    tok.save(tok_path)
    t_tok = time.perf_counter() - t0
    dtype = token_dtype(tok.vocab_size)
    splits: dict[str, dict] = {}
    for split, shards in plan.splits.items():
        if split != "train":
            splits[split] = write_eval_split(shards, tok, os.path.join(folder, split), dtype,
                                             plan.split_whitespace.get(split, False))
            if splits[split]["n_docs"] == 0:
                raise ValueError(f"split {split!r} holds no documents (no non-empty text)")
    t_eval = time.perf_counter() - t0 - t_tok
    splits["train"] = write_train_split(plan.splits["train"], tok_path, folder, dtype,
                                        plan.split_whitespace.get("train", False), workers)
    t_train = time.perf_counter() - t0 - t_tok - t_eval
    return {
        "tokenizer": {"kind": tok.kind, "vocab_size": tok.vocab_size, "dtype": dtype.name},
        "splits": splits,
        "build": {"workers": max(1, min(workers, len(plan.splits["train"]))), "train_shards": len(plan.splits["train"]),
                  "train_tokenizer_s": round(t_tok, 3), "encode_eval_s": round(t_eval, 3),
                  "encode_train_s": round(t_train, 3)},
    }
