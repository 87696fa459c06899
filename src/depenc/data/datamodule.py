"""The one LightningDataModule: corpus -> tokenizer -> cached token streams -> blocks.

Token stream of a split: ``[eos] + doc1 + [eos] + doc2 + [eos] + ...`` (``<eos>`` also opens the
stream, so the first token of every document has context). Training blocks are ``block_size + 1``
tokens cut at stride ``block_size`` (inputs ``x[:-1]``, targets ``x[1:]``), shuffled each epoch by
a seeded generator. Evaluation blocks are non-overlapping (or sliding windows, ``eval.stride``) and
score every predicted token exactly once; the final partial block is padded with ``<eos>`` inputs and
``IGNORE_INDEX`` targets.

Cache layout (``cache_dir/<key[:16]>/``, written to a temporary folder and renamed):

- ``tokenizer.json``: the tokenizer (``load_tokenizer`` reads it),
- ``<split>.npy``: the token stream (uint16 when the vocabulary fits, else int32),
- ``<split>.docs.npy``: int64 stream offset of each document's first token,
- ``meta.json``: key, hashed config, corpus info, per-split statistics (and per-document meta
  such as Brown's genre and fileid).

The key is the sha256 of the data config (without batch_size, num_workers, block_size and
cache_dir, which do not change the streams), ``DATA_FORMAT_VERSION``, and the identity (path,
size, mtime) of every local file read (text files, eval sets, the Brown archive) or the grammar's
source (synthetic).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from typing import Any, Mapping

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from depenc.data import sources
from depenc.data.sources import Corpus, Document, to_plain
from depenc.data.tokenizers import TOKENIZER_KINDS, Tokenizer, build_tokenizer, load_tokenizer

log = logging.getLogger(__name__)

DATA_FORMAT_VERSION = 1
IGNORE_INDEX = -100
# Keys that do not change the tokenised streams and so stay out of the cache key.
_NOT_HASHED = ("batch_size", "num_workers", "block_size", "cache_dir")

def normalise_data_cfg(data_cfg: Any) -> dict:
    """Plain dict with every key present: ``data_cfg`` (possibly partial) merged into the schema's
    defaults (:class:`depenc.schema.DataConfig`), so its types and choices are checked."""
    from omegaconf.errors import OmegaConfBaseException

    from depenc.config import with_defaults

    try:
        cfg = with_defaults("data", to_plain(data_cfg))
    except OmegaConfBaseException as exc:
        raise ValueError(f"data config: {str(exc).splitlines()[0]}") from None
    if cfg["source"] not in sources.SOURCES:
        raise ValueError(
            f"unknown data source {cfg['source']!r}: data.source must be one of {', '.join(sources.SOURCES)}"
        )
    if cfg["tokenizer"] not in TOKENIZER_KINDS:
        raise ValueError(
            f"unknown tokenizer {cfg['tokenizer']!r}: data.tokenizer must be one of {', '.join(TOKENIZER_KINDS)}"
        )
    if int(cfg["block_size"]) < 1:
        raise ValueError(f"data.block_size must be positive, got {cfg['block_size']}")
    return cfg


def compute_cache_key(cfg: Mapping[str, Any]) -> tuple[str, dict]:
    """(sha256 hex, the hashed payload) for a normalised data config."""
    hashed = {k: v for k, v in cfg.items() if k not in _NOT_HASHED}
    files = sources.text_files(cfg)  # raises DataUnavailableError on a missing path
    fingerprint: dict[str, Any] = {key: sources.files_fingerprint(paths) for key, paths in sorted(files.items())}
    if cfg["source"] == "brown":
        fingerprint["brown"] = sources.brown_fingerprint((cfg.get("brown") or {}).get("nltk_data"))
    elif cfg["source"] == "synthetic":
        try:
            fingerprint["synthetic"] = sources.synthetic_fingerprint()
            mod = sources.synthetic_module()
            parsed = mod.SyntheticConfig.from_dict(dict(cfg.get("synthetic") or {}))
            hashed["synthetic"] = dataclasses.asdict(parsed)  # {} and explicit defaults: one key
        except ImportError:
            fingerprint["synthetic"] = None
    payload = {"format_version": DATA_FORMAT_VERSION, "config": hashed, "files": fingerprint}
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest(), payload


class TrainBlocks(Dataset):
    """Blocks of ``block_size + 1`` tokens at stride ``block_size``; the tail that does not fill a block is dropped."""

    def __init__(self, stream: np.ndarray, block_size: int, arcs=None):
        self.stream = stream
        self.block_size = block_size
        self.arcs = arcs  # GoldArcs (oracle analysis mode) or None
        self.n = (len(stream) - 1) // block_size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        s = i * self.block_size
        x = torch.from_numpy(np.asarray(self.stream[s : s + self.block_size + 1], dtype=np.int64))
        item = {"input_ids": x[:-1], "targets": x[1:]}
        if self.arcs is not None:
            item["gold_M"] = self.arcs.matrix(s, self.block_size)
        return item


class EvalBlocks(Dataset):
    """Windows of ``block_size`` inputs that score every predicted token (stream[1:]) exactly once.

    ``stride`` 0 (= block_size): non-overlapping blocks. A stride S < T: window i starts at token i * S and
    scores only the tokens no earlier window scored (the first window all, later ones their last S), so
    every token after the first window is predicted with at least T - S tokens of context (Hugging Face's
    "perplexity of fixed-length models"). Unscored targets are ``IGNORE_INDEX``: the loss sums need no mask
    of their own."""

    def __init__(self, stream: np.ndarray, block_size: int, pad_id: int = 0, arcs=None, stride: int = 0):
        self.stream = stream
        self.block_size = block_size
        self.stride = int(stride) or block_size
        if not 0 < self.stride <= block_size:
            raise ValueError(f"eval stride must be in [0, block_size={block_size}], got {stride}")
        self.pad_id = pad_id
        self.arcs = arcs  # GoldArcs (oracle analysis mode) or None
        self.n_predicted = len(stream) - 1
        # the first window, then one per stride until the last token is scored
        self.n = 1 + math.ceil(max(0, self.n_predicted - block_size) / self.stride) if self.n_predicted > 0 else 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        T = self.block_size
        s = i * self.stride
        m = min(T, self.n_predicted - s)  # predicted tokens in this window
        seen = 0 if i == 0 else T - self.stride  # its first tokens, scored by the window before
        chunk = np.asarray(self.stream[s : s + m + 1], dtype=np.int64)
        x = torch.full((T,), self.pad_id, dtype=torch.long)
        y = torch.full((T,), IGNORE_INDEX, dtype=torch.long)
        x[:m] = torch.from_numpy(chunk[:-1])
        y[seen:m] = torch.from_numpy(chunk[1 + seen :])
        item = {"input_ids": x, "targets": y}
        if self.arcs is not None:
            item["gold_M"] = self.arcs.matrix(s, T)
        return item


def _split_stats(docs: list[Document], n_tokens_docs: int, whitespace: bool) -> dict:
    n_docs = len(docs)
    return {
        "n_docs": n_docs,
        "n_tokens": n_tokens_docs + n_docs,  # every document's tokens + its closing <eos>
        "n_bytes": sum(len(d.text.encode("utf-8")) for d in docs) + n_docs,
        "n_words": (sum(len(d.text.split()) for d in docs) + n_docs) if whitespace else None,
    }


class LMDataModule(L.LightningDataModule):
    """Language-modelling data for both models: see the module docstring for streams, blocks and cache.

    After ``setup()``: ``tokenizer``, ``corpus_info``, ``eval_set_names`` (``validation`` first,
    then the extra ``eval_sets``), ``test_set_names`` (``test``, ``test_long`` for synthetic, then
    the extra sets), ``split_stats[name]`` (``n_tokens`` predicted incl. ``<eos>``, ``n_bytes``,
    ``n_words`` or None, ``n_docs``), ``cache_key``, ``cache_path``, ``cache_hit``.
    """

    def __init__(self, data_cfg: Any, seed: int = 0, eval_stride: int = 0):
        super().__init__()
        self.cfg = normalise_data_cfg(data_cfg)
        self.seed = int(seed)
        self.eval_stride = int(eval_stride)  # eval.stride: windows of the validation/test sets (EvalBlocks)
        self.block_size = int(self.cfg["block_size"])
        self.batch_size = int(self.cfg["batch_size"])
        self.num_workers = int(self.cfg["num_workers"])
        self.tokenizer: Tokenizer | None = None
        self.corpus_info: dict[str, Any] = {}
        self.eval_set_names: list[str] = []
        self.test_set_names: list[str] = []
        self.split_stats: dict[str, dict] = {}
        self.cache_key: str | None = None
        self.cache_path: str | None = None
        self.cache_hit: bool = False
        self.setup_seconds: float | None = None
        self.streams: dict[str, np.ndarray] = {}
        self._doc_meta: dict[str, list[dict]] = {}
        self._corpus: Corpus | None = None
        self._ready = False

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Nothing heavy here: ``setup`` builds or reuses the cache (atomically, safe on every rank)."""

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        t0 = time.perf_counter()
        key, payload = compute_cache_key(self.cfg)
        self.cache_key = key
        root = os.path.abspath(os.path.expanduser(str(self.cfg["cache_dir"])))
        self.cache_path = os.path.join(root, key[:16])
        meta = self._read_cache(self.cache_path, key)
        self.cache_hit = meta is not None
        if meta is not None:
            try:
                self._load_from_cache(self.cache_path, meta)
            except (OSError, ValueError, KeyError) as exc:  # a truncated or hand-edited file: build it anew
                log.warning("data: cache %s is damaged (%s); rebuilding it", self.cache_path, str(exc).splitlines()[0])
                shutil.rmtree(self.cache_path, ignore_errors=True)
                meta = None
                self.cache_hit = False
        if meta is None:
            meta = self._build_cache(root, key, payload)
            self._load_from_cache(self.cache_path, meta)
        self._check_sizes()
        self.setup_seconds = time.perf_counter() - t0
        self._ready = True
        log.info(
            "data: %s (%s) in %.2fs, cache %s at %s",
            self.cfg["source"], self.cfg["tokenizer"], self.setup_seconds,
            "hit" if self.cache_hit else "built", self.cache_path,
        )

    # ------------------------------------------------------------------ cache
    @staticmethod
    def _read_cache(path: str, key: str) -> dict | None:
        meta_path = os.path.join(path, "meta.json")
        if not os.path.isfile(meta_path):
            return None
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, ValueError):
            return None
        if meta.get("key") != key or meta.get("format_version") != DATA_FORMAT_VERSION:
            return None
        needed = ["tokenizer.json"] + [f"{s}.npy" for s in meta.get("splits", {})]
        if not all(os.path.isfile(os.path.join(path, n)) for n in needed):
            return None
        return meta

    def _load_corpus(self) -> Corpus:
        corpus = sources.load_corpus(self.cfg)
        n = int(self.cfg.get("max_train_docs") or 0)
        if n > 0:
            corpus.splits["train"] = corpus.splits["train"][:n]
        return corpus

    def _build_cache(self, root: str, key: str, payload: dict) -> dict:
        t0 = time.perf_counter()
        corpus = self._load_corpus()
        self._corpus = corpus
        t_load = time.perf_counter() - t0
        c = self.cfg
        tok = build_tokenizer(c["tokenizer"], corpus.texts("train"), c["vocab_size"], c["min_freq"], c["lowercase"],
                              fixed_vocab=corpus.fixed_vocab)
        t_tok = time.perf_counter() - t0 - t_load
        dtype = np.uint16 if tok.vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
        main = list(sources.SYNTHETIC_SPLITS if "test_long" in corpus.splits else sources.MAIN_SPLITS)
        order = main + [s for s in corpus.splits if s not in main]
        os.makedirs(root, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".tmp-{key[:16]}-", dir=root)
        try:
            splits_meta: dict[str, dict] = {}
            for split in order:
                docs = corpus.splits[split]
                encoded = tok.encode_batch([d.text for d in docs])
                lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
                n_doc_tokens = int(lengths.sum())
                stream = np.empty(n_doc_tokens + len(docs) + 1, dtype=dtype)
                stream[0] = tok.eos_id
                starts = np.empty(len(docs), dtype=np.int64)
                pos = 1
                for j, ids in enumerate(encoded):
                    starts[j] = pos
                    stream[pos : pos + len(ids)] = ids
                    pos += len(ids)
                    stream[pos] = tok.eos_id
                    pos += 1
                np.save(os.path.join(tmp, f"{split}.npy"), stream)
                np.save(os.path.join(tmp, f"{split}.docs.npy"), starts)
                stats = _split_stats(docs, n_doc_tokens, corpus.split_whitespace.get(split, False))
                entry: dict[str, Any] = dict(stats)
                if any(d.meta for d in docs):
                    entry["documents"] = [dict(d.meta, start=int(s)) for d, s in zip(docs, starts)]
                    if any("genre" in d.meta for d in docs):
                        genres: dict[str, int] = {}
                        for d in docs:
                            g = d.meta.get("genre")
                            genres[g] = genres.get(g, 0) + 1
                        entry["genres"] = genres
                splits_meta[split] = entry
            tok.save(os.path.join(tmp, "tokenizer.json"))
            meta = {
                "format_version": DATA_FORMAT_VERSION,
                "key": key,
                "hashed": payload,
                "corpus": {
                    "source": self.cfg["source"],
                    "whitespace_tokenised": corpus.whitespace_tokenised,
                    "fixed_vocab": corpus.fixed_vocab is not None,
                    "extra_splits": list(corpus.extra_splits),
                    "split_whitespace": dict(corpus.split_whitespace),
                },
                "tokenizer": {"kind": tok.kind, "vocab_size": tok.vocab_size, "dtype": np.dtype(dtype).name},
                "split_order": order,
                "splits": splits_meta,
                "timings_s": {
                    "load_corpus": round(t_load, 3),
                    "train_tokenizer": round(t_tok, 3),
                    "encode_and_write": round(time.perf_counter() - t0 - t_load - t_tok, 3),
                },
            }
            with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=1)
            final = os.path.join(root, key[:16])
            if os.path.isdir(final):  # stale or incomplete (a complete one was a cache hit)
                if self._read_cache(final, key) is not None:  # another process just finished it
                    shutil.rmtree(tmp, ignore_errors=True)
                    return self._read_cache(final, key)
                shutil.rmtree(final, ignore_errors=True)
            try:
                os.rename(tmp, final)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
                done = self._read_cache(final, key)
                if done is None:
                    raise
                return done
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("data: built cache %s in %.1fs", final, time.perf_counter() - t0)
        return meta

    def _load_from_cache(self, path: str, meta: dict) -> None:
        self.tokenizer = load_tokenizer(os.path.join(path, "tokenizer.json"))
        order = meta["split_order"]
        self.streams = {s: np.load(os.path.join(path, f"{s}.npy"), mmap_mode="r") for s in order}
        self.split_stats = {
            s: {k: meta["splits"][s][k] for k in ("n_tokens", "n_bytes", "n_words", "n_docs")} for s in order
        }
        for s in order:
            self.split_stats[s]["n_blocks"] = math.ceil(self.split_stats[s]["n_tokens"] / self.block_size)
        self._doc_meta = {s: meta["splits"][s].get("documents", []) for s in order}
        extra = list(meta["corpus"]["extra_splits"])
        self.eval_set_names = ["validation"] + extra
        self.test_set_names = ["test"] + (["test_long"] if "test_long" in order else []) + extra
        self.corpus_info = dict(meta["corpus"])
        self.corpus_info.update(
            tokenizer=meta["tokenizer"]["kind"],
            vocab_size=meta["tokenizer"]["vocab_size"],
            cache_key=meta["key"],
            cache_path=path,
            splits=list(order),
            genres={s: meta["splits"][s]["genres"] for s in order if "genres" in meta["splits"][s]},
        )

    def _check_sizes(self) -> None:
        for split, stats in self.split_stats.items():
            if stats["n_tokens"] < self.block_size:
                raise ValueError(
                    f"split {split!r} has {stats['n_tokens']} tokens, fewer than one block "
                    f"(data.block_size={self.block_size}): lower data.block_size or give it more text"
                )

    # ------------------------------------------------------------------ public helpers
    @property
    def vocab_size(self) -> int:
        self._require_setup()
        return self.tokenizer.vocab_size

    def _require_setup(self) -> None:
        if not self._ready:
            raise RuntimeError("LMDataModule.setup() has not run yet")

    def stream(self, split: str) -> np.ndarray:
        """The token stream of a split (read-only memory map)."""
        self._require_setup()
        return self.streams[split]

    def doc_offsets(self, split: str) -> np.ndarray:
        """Stream position of the first token of every document (its closing <eos> is at the next start - 1)."""
        self._require_setup()
        return np.load(os.path.join(self.cache_path, f"{split}.docs.npy"))

    def document_meta(self, split: str) -> list[dict]:
        """Per-document meta stored in the cache (Brown: genre, fileid, start), without loading the corpus."""
        self._require_setup()
        return list(self._doc_meta.get(split, []))

    def documents(self, split: str) -> list[Document]:
        """Raw documents of a split (the corpus is loaded on first use when setup hit the cache)."""
        self._require_setup()
        if self._corpus is None:
            self._corpus = self._load_corpus()
        return self._corpus.splits[split]

    def save_tokenizer(self, run_dir: str | os.PathLike) -> str:
        """Copy tokenizer.json into the run folder; returns its path."""
        self._require_setup()
        os.makedirs(run_dir, exist_ok=True)
        dst = os.path.join(os.fspath(run_dir), "tokenizer.json")
        shutil.copyfile(os.path.join(self.cache_path, "tokenizer.json"), dst)
        return dst

    # ------------------------------------------------------------------ loaders
    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=False,
        )

    def enable_gold_arcs(self, target: str) -> None:
        """Oracle analysis mode: every batch also carries ``gold_M`` (B, T, T) built from the synthetic
        corpus's gold trees (depenc.data.gold). Needs data.source=synthetic and the word tokenizer."""
        self._require_setup()
        if self.cfg["source"] != "synthetic" or self.tokenizer.kind != "word":
            raise ValueError("gold arcs (depenc.parser=oracle) need data.source=synthetic with data.tokenizer=word")
        from depenc.data import synthetic
        from depenc.data.gold import GoldArcs

        scfg = synthetic.SyntheticConfig.from_dict(dict(self.cfg.get("synthetic") or {}))
        self._gold = {}
        for split in self.streams:
            sentences = synthetic.make_split(scfg, split)
            starts = self.doc_offsets(split)
            if split == "train" and self.cfg.get("max_train_docs"):
                sentences = sentences[: len(starts)]
            if len(sentences) != len(starts):
                raise ValueError(f"gold arcs: {len(sentences)} sentences but {len(starts)} documents in split {split}")
            self._gold[split] = GoldArcs([s.heads for s in sentences], starts, len(self.streams[split]), target)

    def train_dataset(self) -> TrainBlocks:
        self._require_setup()
        return TrainBlocks(self.streams["train"], self.block_size, arcs=getattr(self, "_gold", {}).get("train"))

    def eval_dataset(self, split: str) -> EvalBlocks:
        self._require_setup()
        return EvalBlocks(self.streams[split], self.block_size, pad_id=self.tokenizer.eos_id,
                          arcs=getattr(self, "_gold", {}).get(split), stride=self.eval_stride)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset(), shuffle=True)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.eval_dataset(s), shuffle=False) for s in self.eval_set_names]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.eval_dataset(s), shuffle=False) for s in self.test_set_names]
