"""The one LightningDataModule: corpus -> tokenizer -> cached token files (LitData) -> blocks.

Token stream of a split: ``[eos] + doc1 + [eos] + doc2 + [eos] + ...`` (``<eos>`` also opens the
stream, so the first token of every document has context).

Training reads the train split with LitData: a ``StreamingDataset`` over the cache's ``train/``
chunks, whose ``TokensLoader`` cuts each chunk into non-overlapping blocks of ``block_size + 1``
tokens (inputs ``x[:-1]``, targets ``x[1:]``; a chunk's last ``< block_size + 1`` tokens are not
used, a few per chunk of ~2M tokens), shuffled by chunk and within chunks, seeded by the run's
seed and the epoch, sharded across ranks, nodes and DataLoader workers by LitData. The loader
(``StreamingDataLoader``) is resumable: Lightning saves its state in every checkpoint and restores
it on a resume, so a resumed run sees exactly the batches an uninterrupted one would.

Evaluation blocks are non-overlapping (or sliding windows, ``eval.stride``) and score every predicted
token exactly once; the final partial block is padded with ``<eos>`` inputs and ``IGNORE_INDEX``
targets. Under DDP each rank evaluates its own contiguous, uneven share of the blocks
(:class:`EvalShard`: no block twice, none left out); the LightningModule all-reduces the sums.

Cache layout (``cache_dir/<key[:16]>/``, built once -- by the first process to take the build lock,
the others wait -- into a temporary folder and renamed; see :mod:`depenc.data.pipeline`):

- ``tokenizer.json``: the tokenizer (``load_tokenizer`` reads it),
- ``train/``: the train split as a LitData dataset (``index.json``, ``chunk-*.bin``),
- ``<split>.npy`` for every evaluation split: its token stream (memory-mapped when read),
- ``<split>.docs.npy``: int64 stream offset of each document's first token (every split),
- ``<split>.meta.jsonl``: per-document meta with its ``start`` (sources that have some, e.g. Brown's
  genre and fileid), read on first use; ``<split>.text.jsonl``: an evaluation split's documents,
- ``meta.json``: key, hashed config, corpus info, per-split statistics, the size of every file
  (a missing or truncated file makes the cache be built again).

The key is the sha256 of the data config (without the keys that do not change the files:
batch_size, num_workers, block_size, cache_dir, build_workers, remote_dir), ``DATA_FORMAT_VERSION``,
and the identity (path, size, mtime) of every local file read (text files, eval sets, the Brown
archive, a local hf folder, a tokenizer file) or the grammar's source (synthetic).

After ``setup`` nothing reads the corpus again: the callbacks get an evaluation split's documents,
document meta and offsets from the cache (``documents``, ``document_meta``, ``doc_offsets``); only
``documents("train")`` reads the source once more.

``data.remote_dir`` (a folder or a URL LitData can stream from: ``s3://``, ``gs://``, ``r2://``) holds
copies of built caches: a cache built here is copied there; a cache missing here but present there is
used from there -- its small files are copied here, its train chunks are streamed (a URL's chunks
through LitData's local chunk cache).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from typing import Any, Iterator, Mapping

import lightning as L
import numpy as np
import torch
from litdata import StreamingDataLoader, StreamingDataset, TokensLoader
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from depenc.data import pipeline, sources
from depenc.data.sources import Document, to_plain
from depenc.data.tokenizers import TOKENIZER_KINDS, Tokenizer, load_tokenizer

log = logging.getLogger(__name__)

DATA_FORMAT_VERSION = 2
IGNORE_INDEX = -100
# Keys that do not change the cached files and so stay out of the cache key.
_NOT_HASHED = ("batch_size", "num_workers", "block_size", "cache_dir", "build_workers", "remote_dir")
REMOTE_FILE = "remote.json"  # in a local copy of a remote cache: where its train chunks stream from


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
    tok_file = os.path.abspath(os.path.expanduser(cfg.get("tokenizer_file") or ""))
    if cfg["tokenizer"] == "file" and os.path.isfile(tok_file):  # a missing one fails when the tokenizer is built
        fingerprint["tokenizer_file"] = sources.files_fingerprint([tok_file])
    if cfg["source"] == "brown":
        fingerprint["brown"] = sources.brown_fingerprint((cfg.get("brown") or {}).get("nltk_data"))
        if (hashed.get("brown") or {}).get("by") == "document":  # the default: caches built before the option stay valid
            hashed["brown"] = {k: v for k, v in hashed["brown"].items() if k != "by"}
    elif cfg["source"] == "hf":
        fingerprint["hf"] = sources.hf_fingerprint(cfg)
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


# ------------------------------------------------------------------------------------ datasets
class TrainBlocks(StreamingDataset):
    """The train split's blocks of ``block_size + 1`` tokens (LitData ``TokensLoader``), as
    ``{"input_ids", "targets"}`` (+ ``gold_M`` in the oracle analysis mode: ``arcs``, a GoldArcs).

    ``chunk_tokens``: the tokens of each chunk, in index order, which place block ``i`` in the stream
    (:meth:`block_start`)."""

    def __init__(self, input_dir: str, block_size: int, chunk_tokens: list[int], seed: int, shuffle: bool = True,
                 arcs=None, cache_dir: str | None = None):
        super().__init__(input_dir, cache_dir=cache_dir, item_loader=TokensLoader(block_size=block_size + 1),
                         shuffle=shuffle, seed=seed)
        self.block_size = block_size
        dims = np.asarray(chunk_tokens, dtype=np.int64)
        blocks = dims // (block_size + 1)
        self.token_begin = np.concatenate([[0], np.cumsum(dims)[:-1]])
        self.block_begin = np.concatenate([[0], np.cumsum(blocks)[:-1]])
        self.n_blocks = int(blocks.sum())
        self.arcs = arcs

    def block_start(self, index: int) -> int:
        """Stream position of block ``index``'s first token."""
        chunk = int(np.searchsorted(self.block_begin, index, side="right")) - 1  # the last chunk starting <= index
        return int(self.token_begin[chunk] + (index - self.block_begin[chunk]) * (self.block_size + 1))

    def __getitem__(self, index) -> dict[str, torch.Tensor]:
        x = torch.as_tensor(super().__getitem__(index)).long()
        item = {"input_ids": x[:-1], "targets": x[1:]}
        if self.arcs is not None:
            i = index if isinstance(index, int) else index.index
            item["gold_M"] = self.arcs.matrix(self.block_start(i), self.block_size)
        return item


class TrainLoader(StreamingDataLoader):
    """LitData's resumable loader; a state saved with the cache in another folder (``data.cache_dir``
    may change on a resume: the content is fixed by the key) is restored against this one."""

    def __iter__(self) -> Iterator[Any]:
        for i, batch in enumerate(super().__iter__()):
            if i == 0:
                # the restored position is taken: the next iteration is a new epoch (LitData clears the flag only
                # when an epoch runs into its StopIteration, which Lightning, knowing the length, never asks for)
                self.restore = False
            yield batch

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        here = {"input_dir_path": self.dataset.input_dir.path, "input_dir_url": self.dataset.input_dir.url,
                "cache_dir_path": self.dataset.cache_dir.path}
        super().load_state_dict({**obj, "dataset": {**obj["dataset"], **here}})


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


class EvalShard(DistributedSampler):
    """Rank r of W evaluates blocks ``r * n // W`` .. ``(r + 1) * n // W``: every block on exactly one
    rank, no padding with repeated blocks (a DistributedSampler, so Lightning keeps it)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        n = len(dataset)
        self.start, self.stop = rank * n // num_replicas, (rank + 1) * n // num_replicas
        self.num_samples, self.total_size = self.stop - self.start, n

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


# ------------------------------------------------------------------------------------ copies of caches
def _is_url(path: str) -> bool:
    return "://" in path


class _Remote:
    """Copies files to and from ``data.remote_dir`` (a folder, or a URL through LitData's storage providers)."""

    def __init__(self, root: str):
        self.root = root.rstrip("/") if _is_url(root) else os.path.abspath(os.path.expanduser(root))
        if _is_url(root):
            from litdata.streaming.fs_provider import _get_fs_provider

            self.fs = _get_fs_provider(self.root)
        else:
            self.fs = None

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts]) if self.fs else os.path.join(self.root, *parts)

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts)) if self.fs else os.path.exists(self.path(*parts))

    def get(self, rel: str, local: str) -> None:
        os.makedirs(os.path.dirname(local), exist_ok=True)
        if self.fs:
            self.fs.download_file(self.path(*rel.split("/")), local)
        else:
            shutil.copyfile(self.path(*rel.split("/")), local)

    def put(self, local: str, rel: str) -> None:
        if self.fs:
            self.fs.upload_file(local, self.path(*rel.split("/")))
        else:
            dst = self.path(*rel.split("/"))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copyfile(local, dst + ".tmp")
            os.replace(dst + ".tmp", dst)


def _cache_files(path: str) -> dict[str, int]:
    """relative path ('/'-separated) -> size of every file of a built cache folder but meta.json."""
    out = {}
    for d, _, names in os.walk(path):
        for n in names:
            rel = os.path.relpath(os.path.join(d, n), path).replace(os.sep, "/")
            if rel not in ("meta.json", REMOTE_FILE):
                out[rel] = os.path.getsize(os.path.join(d, n))
    return dict(sorted(out.items()))


# ------------------------------------------------------------------------------------ the DataModule
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
        self.streams: dict[str, np.ndarray] = {}  # evaluation splits (memory maps)
        self._meta: dict[str, Any] = {}
        self._train_dir: str | None = None  # where the train chunks stream from
        self._train_chunk_cache: str | None = None  # LitData's local copies of a URL's chunks
        self._doc_meta: dict[str, list[dict]] = {}
        self._gold: dict = {}
        self._ready = False

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Build (or fetch from ``data.remote_dir``) the cache if it is missing; safe on every rank."""
        self._ensure_cache()

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        t0 = time.perf_counter()
        meta = self._ensure_cache()
        self._load(meta)
        self._check_sizes()
        self.setup_seconds = time.perf_counter() - t0
        self._ready = True
        log.info(
            "data: %s (%s) in %.2fs, cache %s at %s",
            self.cfg["source"], self.cfg["tokenizer"], self.setup_seconds,
            "hit" if self.cache_hit else "built", self.cache_path,
        )

    # ------------------------------------------------------------------ cache
    def _ensure_cache(self) -> dict:
        key, payload = compute_cache_key(self.cfg)
        self.cache_key = key
        root = os.path.dirname(self.cache_folder())
        self.cache_path = os.path.join(root, key[:16])
        meta = self._read_cache(self.cache_path, key)
        self.cache_hit = meta is not None
        if meta is None:
            os.makedirs(root, exist_ok=True)
            with self._build_lock(root, key):
                meta = self._read_cache(self.cache_path, key)  # another process may have built it meanwhile
                self.cache_hit = meta is not None
                if meta is None:
                    meta = self._fetch_remote(root, key) or self._build(root, key, payload)
        return meta

    def cache_folder(self) -> str:
        """Where this config's cache is (or will be): ``cache_dir/<key[:16]>``."""
        key, _ = compute_cache_key(self.cfg)
        return os.path.join(os.path.abspath(os.path.expanduser(str(self.cfg["cache_dir"]))), key[:16])

    @staticmethod
    @contextlib.contextmanager
    def _build_lock(root: str, key: str):
        from filelock import FileLock, Timeout

        lock = FileLock(os.path.join(root, f".{key[:16]}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("data: another process is building the cache %s; waiting for it", key[:16])
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    @staticmethod
    def _read_cache(path: str, key: str) -> dict | None:
        """meta.json of a complete cache at ``path`` for ``key`` (every file present at its size), else None."""
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
        streamed = os.path.isfile(os.path.join(path, REMOTE_FILE))  # its train chunks live in remote_dir
        for rel, size in meta.get("files", {}).items():
            if streamed and rel.startswith("train/chunk-"):
                continue
            full = os.path.join(path, *rel.split("/"))
            if not os.path.isfile(full) or os.path.getsize(full) != size:
                log.warning("data: cache %s is damaged (%s missing or truncated); building it again", path, rel)
                shutil.rmtree(path, ignore_errors=True)
                return None
        return meta

    def _build(self, root: str, key: str, payload: dict) -> dict:
        t0 = time.perf_counter()
        plan = sources.plan_corpus(self.cfg)
        workers = int(self.cfg["build_workers"]) or (os.cpu_count() or 1)
        tmp = tempfile.mkdtemp(prefix=f".tmp-{key[:16]}-", dir=root)
        try:
            built = pipeline.build(plan, self.cfg, tmp, workers)
            main = list(sources.SYNTHETIC_SPLITS if "test_long" in plan.splits else sources.MAIN_SPLITS)
            meta = {
                "format_version": DATA_FORMAT_VERSION,
                "key": key,
                "hashed": payload,
                "corpus": {
                    "source": self.cfg["source"],
                    "whitespace_tokenised": plan.whitespace_tokenised,
                    "fixed_vocab": plan.fixed_vocab is not None,
                    "extra_splits": list(plan.extra_splits),
                    "split_whitespace": dict(plan.split_whitespace),
                },
                **built,
                "split_order": main + [s for s in plan.splits if s not in main],
                "files": _cache_files(tmp),
            }
            meta["build"]["total_s"] = round(time.perf_counter() - t0, 3)
            with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=1)
            final = os.path.join(root, key[:16])
            shutil.rmtree(final, ignore_errors=True)  # stale or damaged (a complete one was a cache hit)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("data: built cache %s in %.1fs", final, time.perf_counter() - t0)
        if self.cfg.get("remote_dir"):
            self._push_remote(final, key)
        return meta

    def _push_remote(self, path: str, key: str) -> None:
        """Copy a built cache to ``data.remote_dir`` (meta.json last: a copy without it is incomplete)."""
        remote = _Remote(str(self.cfg["remote_dir"]))
        for rel in _cache_files(path):
            remote.put(os.path.join(path, *rel.split("/")), f"{key[:16]}/{rel}")
        remote.put(os.path.join(path, "meta.json"), f"{key[:16]}/meta.json")
        log.info("data: copied cache %s to %s", key[:16], remote.path(key[:16]))

    def _fetch_remote(self, root: str, key: str) -> dict | None:
        """The cache from ``data.remote_dir`` (its small files copied here; its train chunks stay there), or None."""
        if not self.cfg.get("remote_dir"):
            return None
        remote = _Remote(str(self.cfg["remote_dir"]))
        if not remote.exists(key[:16], "meta.json"):
            return None
        tmp = tempfile.mkdtemp(prefix=f".tmp-{key[:16]}-", dir=root)
        try:
            remote.get(f"{key[:16]}/meta.json", os.path.join(tmp, "meta.json"))
            with open(os.path.join(tmp, "meta.json"), encoding="utf-8") as f:
                meta = json.load(f)
            if meta.get("key") != key or meta.get("format_version") != DATA_FORMAT_VERSION:
                shutil.rmtree(tmp, ignore_errors=True)
                return None
            for rel in meta["files"]:
                if not rel.startswith("train/chunk-"):
                    remote.get(f"{key[:16]}/{rel}", os.path.join(tmp, *rel.split("/")))
            with open(os.path.join(tmp, REMOTE_FILE), "w", encoding="utf-8") as f:
                json.dump({"train": remote.path(key[:16], "train")}, f)
            final = os.path.join(root, key[:16])
            shutil.rmtree(final, ignore_errors=True)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("data: using cache %s from %s", key[:16], remote.path(key[:16]))
        return meta

    def _load(self, meta: dict) -> None:
        path = self.cache_path
        self._meta = meta
        self.tokenizer = load_tokenizer(os.path.join(path, "tokenizer.json"))
        order = meta["split_order"]
        evals = [s for s in order if s != "train"]
        self.streams = {s: np.load(os.path.join(path, f"{s}.npy"), mmap_mode="r") for s in evals}
        self.split_stats = {s: {k: meta["splits"][s][k] for k in ("n_tokens", "n_bytes", "n_words", "n_docs")}
                            for s in order}
        remote_file = os.path.join(path, REMOTE_FILE)
        if os.path.isfile(remote_file):
            with open(remote_file, encoding="utf-8") as f:
                self._train_dir = json.load(f)["train"]
            self._train_chunk_cache = os.path.join(path, "train-chunks") if _is_url(self._train_dir) else None
        else:
            self._train_dir, self._train_chunk_cache = os.path.join(path, "train"), None
        extra = list(meta["corpus"]["extra_splits"])
        self.eval_set_names = ["validation"] + extra
        held_out = [s for s in order if s not in ("train", "validation", "test", *extra)]  # test_long, test_depth*
        self.test_set_names = ["test"] + held_out + extra
        self.corpus_info = dict(meta["corpus"])
        self.corpus_info.update(
            tokenizer=meta["tokenizer"]["kind"],
            vocab_size=meta["tokenizer"]["vocab_size"],
            cache_key=meta["key"],
            cache_path=path,
            splits=list(order),
            genres={s: meta["splits"][s]["genres"] for s in order if "genres" in meta["splits"][s]},
            build=meta["build"],
        )

    def _check_sizes(self) -> None:
        for split, stats in self.split_stats.items():
            if split != "train" and stats["n_tokens"] < self.block_size:
                raise ValueError(
                    f"split {split!r} has {stats['n_tokens']} tokens, fewer than one block "
                    f"(data.block_size={self.block_size}): lower data.block_size or give it more text"
                )
        if max(self._meta["splits"]["train"]["chunk_tokens"]) < self.block_size + 1:
            raise ValueError(
                f"split 'train' has no chunk of {self.block_size + 1} tokens, one training block "
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
        """The token stream of a split: an evaluation split's memory map; the train split assembled from
        its chunks (in memory: for small corpora, e.g. the PPMI embedding initialisation)."""
        self._require_setup()
        if split != "train":
            return self.streams[split]
        if _is_url(self._train_dir):
            raise ValueError(f"the train split streams from {self._train_dir}; its whole stream needs a local copy")
        with open(os.path.join(self._train_dir, "index.json"), encoding="utf-8") as f:
            chunks = json.load(f)["chunks"]
        dtype = np.dtype(self._meta["tokenizer"]["dtype"])
        # a chunk file: uint32 item count, uint32 offsets (count + 1), then the items (here one token array)
        return np.concatenate([np.memmap(os.path.join(self._train_dir, c["filename"]), dtype=dtype, mode="r",
                                         offset=(2 + c["chunk_size"]) * 4, shape=(c["dim"],)) for c in chunks])

    def doc_offsets(self, split: str) -> np.ndarray:
        """Stream position of the first token of every document (its closing <eos> is at the next start - 1)."""
        self._require_setup()
        return np.load(os.path.join(self.cache_path, f"{split}.docs.npy"), mmap_mode="r")

    def document_meta(self, split: str) -> list[dict]:
        """Per-document meta stored in the cache (Brown: genre, fileid, start), without loading the corpus."""
        self._require_setup()
        if split not in self._doc_meta:
            path = os.path.join(self.cache_path, f"{split}.meta.jsonl")
            rows = []
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    rows = [json.loads(line) for line in f]
            self._doc_meta[split] = rows
        return list(self._doc_meta[split])

    def documents(self, split: str) -> list[Document]:
        """Documents of a split: an evaluation split's from the cache; the train split read again from its source."""
        self._require_setup()
        if split == "train":
            return list(sources.plan_corpus(self.cfg).documents("train"))
        meta = self.document_meta(split)
        with open(os.path.join(self.cache_path, f"{split}.text.jsonl"), encoding="utf-8") as f:
            texts = [json.loads(line) for line in f]
        return [Document(t, {k: v for k, v in m.items() if k != "start"}) for t, m in
                zip(texts, meta or [{}] * len(texts))]

    def save_tokenizer(self, run_dir: str | os.PathLike) -> str:
        """Copy tokenizer.json into the run folder; returns its path."""
        self._require_setup()
        os.makedirs(run_dir, exist_ok=True)
        dst = os.path.join(os.fspath(run_dir), "tokenizer.json")
        shutil.copyfile(os.path.join(self.cache_path, "tokenizer.json"), dst)
        return dst

    # ------------------------------------------------------------------ loaders
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
        for split in self._meta["split_order"]:
            sentences = synthetic.make_split(scfg, split)
            starts = self.doc_offsets(split)
            if split == "train" and self.cfg.get("max_train_docs"):
                sentences = sentences[: len(starts)]
            if len(sentences) != len(starts):
                raise ValueError(f"gold arcs: {len(sentences)} sentences but {len(starts)} documents in split {split}")
            length = self._meta["splits"]["train"]["n_stream"] if split == "train" else len(self.streams[split])
            self._gold[split] = GoldArcs([s.heads for s in sentences], starts, length, target)

    def train_dataset(self, shuffle: bool = True) -> TrainBlocks:
        """The train blocks (for this process's rank: build it after the process group starts)."""
        self._require_setup()
        return TrainBlocks(self._train_dir, self.block_size, self._meta["splits"]["train"]["chunk_tokens"],
                           self.seed, shuffle=shuffle, arcs=self._gold.get("train"), cache_dir=self._train_chunk_cache)

    def eval_dataset(self, split: str) -> EvalBlocks:
        self._require_setup()
        return EvalBlocks(self.streams[split], self.block_size, pad_id=self.tokenizer.eos_id,
                          arcs=self._gold.get(split), stride=self.eval_stride)

    def train_dataloader(self) -> TrainLoader:
        return TrainLoader(self.train_dataset(), batch_size=self.batch_size, num_workers=self.num_workers,
                           pin_memory=torch.cuda.is_available())

    def _eval_loader(self, split: str) -> DataLoader:
        dataset = self.eval_dataset(split)
        sampler = None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
            if world > 1:
                if len(dataset) < world:  # a rank without a batch would not take part in DDP's first forward
                    raise ValueError(f"split {split!r} has {len(dataset)} evaluation blocks, fewer than the {world} "
                                     "processes: lower data.block_size or give it more text")
                sampler = EvalShard(dataset, world, rank)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, sampler=sampler,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> list[DataLoader]:
        return [self._eval_loader(s) for s in self.eval_set_names]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._eval_loader(s) for s in self.test_set_names]
