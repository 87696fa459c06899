"""Corpus sources: local text files, Hugging Face datasets, NLTK's Brown corpus, the synthetic grammar.

A source is read as *shards*: small picklable descriptions of a run of documents (a byte range of a
text file, row range of a Hugging Face split, shard of a streamed dataset, the Brown files of a split,
the grammar's sentences of a split) whose ``documents()`` yield :class:`Document` objects one at a
time. Nothing here holds a split in memory: the build (:mod:`depenc.data.pipeline`) hands the train
shards to parallel workers and streams the evaluation shards. ``plan_corpus(data_cfg)`` returns a
:class:`CorpusPlan` (named splits of shards: ``train``, ``validation``, ``test``; ``test_long`` for the
synthetic grammar; then one split per entry of ``data.eval_sets``); ``load_corpus`` materialises it
as lists (small corpora, tests). Missing data raises :class:`DataUnavailableError` with one message
that names what is missing and how to get it; nothing falls back silently to other data.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import logging
import os
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

log = logging.getLogger(__name__)

SOURCES = ("synthetic", "text", "hf", "brown")
MAIN_SPLITS = ("train", "validation", "test")
SYNTHETIC_SPLITS = ("train", "validation", "test", "test_long")
BY_VALUES = {"line": "line", "paragraph": "paragraph", "file": "document"}
# Where a source has no validation/test split, this share of the train documents (taken from the
# end, at least one document) becomes each missing split.
HOLDOUT_FRACTION = 0.05
# A line-by-line text file is read as shards of about this many bytes (cut at line starts): the unit
# of parallel tokenisation. Files read by paragraph or whole are one shard each.
SHARD_BYTES = 16 << 20
# Hugging Face splits are cut into row ranges of about this many bytes of Arrow data.
HF_SHARD_BYTES = 64 << 20
_READ_BYTES = 1 << 20

_HF_SPLIT_ALIASES = {
    "train": ("train",),
    "validation": ("validation", "valid", "dev", "val"),
    "test": ("test",),
}
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


class DataUnavailableError(RuntimeError):
    """The configured data cannot be found or downloaded; the message says how to get it."""


@dataclass
class Document:
    text: str
    meta: dict = field(default_factory=dict)


@dataclass
class CorpusPlan:
    """Shards per split, and what the text is like.

    ``whitespace_tokenised``: words are separated by spaces in the main splits, so word-level
    perplexity is meaningful. ``split_whitespace`` says the same per split (extra evaluation sets
    declare their own). ``fixed_vocab``: the exact word vocabulary (synthetic grammar), else None.
    ``extra_splits``: names of the ``data.eval_sets`` splits, in config order.
    """

    splits: dict[str, list]
    whitespace_tokenised: bool
    fixed_vocab: list[str] | None = None
    source: str = ""
    extra_splits: list[str] = field(default_factory=list)
    split_whitespace: dict[str, bool] = field(default_factory=dict)

    def documents(self, split: str) -> Iterator[Document]:
        for shard in self.splits[split]:
            yield from shard.documents()


@dataclass
class Corpus:
    """A :class:`CorpusPlan` read into lists of documents (``load_corpus``)."""

    splits: dict[str, list[Document]]
    whitespace_tokenised: bool
    fixed_vocab: list[str] | None = None
    source: str = ""
    extra_splits: list[str] = field(default_factory=list)
    split_whitespace: dict[str, bool] = field(default_factory=dict)

    def texts(self, split: str) -> list[str]:
        return [d.text for d in self.splits[split]]


# --------------------------------------------------------------------------------------------
# config helpers


def to_plain(cfg: Any) -> Any:
    """DictConfig / dataclass-like / dict -> plain dicts and lists."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(cfg, (DictConfig, ListConfig)):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(cfg, Mapping):
        return {k: to_plain(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [to_plain(v) for v in cfg]
    return cfg


def _section(cfg: Mapping[str, Any], key: str) -> dict:
    value = cfg.get(key)
    return dict(value) if isinstance(value, Mapping) else {}


def _paths(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [os.fspath(value)]
    return [os.fspath(v) for v in value]


def _expand(path: str) -> str:
    return os.path.abspath(os.path.expanduser(os.path.expandvars(path)))


def text_files(data_cfg: Mapping[str, Any]) -> dict[str, list[str]]:
    """Config key -> resolved local files the corpus reads (``text`` source and ``eval_sets``).

    Raises DataUnavailableError for a path that does not exist, naming the config key.
    """
    cfg = to_plain(data_cfg)
    out: dict[str, list[str]] = {}
    if cfg.get("source") == "text":
        tcfg = _section(cfg, "text")
        for split in MAIN_SPLITS:
            paths = _paths(tcfg.get(split))
            if paths:
                out[f"data.text.{split}"] = paths
        if "data.text.train" not in out:
            raise DataUnavailableError(
                "data.source=text needs training files: set data.text.train=PATH "
                "(and data.text.validation / data.text.test; missing ones are held out from train)"
            )
    for name, spec in (cfg.get("eval_sets") or {}).items():
        spec = spec if isinstance(spec, Mapping) else {"path": spec}
        paths = _paths(spec.get("path"))
        if not paths:
            raise DataUnavailableError(f"data.eval_sets.{name}.path is not set")
        out[f"data.eval_sets.{name}.path"] = paths
    resolved: dict[str, list[str]] = {}
    for key, paths in out.items():
        resolved[key] = []
        for p in paths:
            full = _expand(p)
            if not os.path.exists(full):
                raise DataUnavailableError(f"{key}: file not found: {p!r} (resolved to {full})")
            if os.path.isdir(full):
                raise DataUnavailableError(f"{key}: {p!r} is a folder; give text files (a list of paths is fine)")
            if os.path.getsize(full) == 0:
                raise DataUnavailableError(f"{key}: {p!r} is empty (0 bytes)")
            resolved[key].append(full)
    return resolved


def files_fingerprint(paths: Sequence[str]) -> list[list]:
    """(path, size, mtime_ns) of every file (folders: every file below them, sorted)."""
    rows = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(os.path.join(d, f) for d, _, fs in os.walk(p) for f in fs)
        else:
            found = [p]
        for f in found:
            st = os.stat(f)
            rows.append([f, st.st_size, st.st_mtime_ns])
    return rows


# --------------------------------------------------------------------------------------------
# shards that take part of other shards


@dataclass(frozen=True)
class Window:
    """Documents ``skip`` .. ``skip + take`` (None: to the end) of the shards ``parts``, in order."""

    parts: tuple
    skip: int = 0
    take: int | None = None

    def documents(self) -> Iterator[Document]:
        docs = itertools.chain.from_iterable(p.documents() for p in self.parts)
        stop = None if self.take is None else self.skip + self.take
        return itertools.islice(docs, self.skip, stop)


def count_documents(shards: Sequence) -> list[int]:
    """Documents in each shard (one pass over the text, no tokenising)."""
    return [sum(1 for _ in s.documents()) for s in shards]


def doc_range(shards: Sequence, counts: Sequence[int], start: int, stop: int) -> list:
    """The shards covering documents ``start`` .. ``stop`` of the concatenated shards (a shard cut by the
    range becomes a :class:`Window` of it)."""
    out, offset = [], 0
    for shard, n in zip(shards, counts):
        a, b = max(start, offset), min(stop, offset + n)
        if a < b:
            out.append(shard if (a, b) == (offset, offset + n) else Window((shard,), a - offset, b - a))
        offset += n
    return out


def first_documents(shards: Sequence, n: int) -> list:
    """The first ``n`` documents of the shards, as one sequential shard."""
    return [Window(tuple(shards), 0, n)]


def _holdout(splits: dict[str, list], origin: str) -> None:
    """Fill missing validation/test splits with the last documents of train (counted in one pass)."""
    missing = [s for s in ("validation", "test") if not splits.get(s)]
    if not missing:
        return
    shards = splits["train"]
    counts = count_documents(shards)
    total = sum(counts)
    n = max(1, int(round(HOLDOUT_FRACTION * total)))
    if total < n * len(missing) + 1:
        raise ValueError(
            f"{origin}: no {' / '.join(missing)} split given and the train split has only "
            f"{total} documents, too few to hold some out"
        )
    end = total
    for s in reversed(missing):
        splits[s] = doc_range(shards, counts, end - n, end)
        end -= n
    splits["train"] = doc_range(shards, counts, 0, end)
    log.warning("%s: %s held out from the end of train (%d documents each)", origin, ", ".join(missing), n)


# --------------------------------------------------------------------------------------------
# local files


def check_utf8(path: str) -> None:
    """DataUnavailableError naming the byte offset of the first byte that makes ``path`` not UTF-8
    text (a NUL byte counts: a binary file); read in 1 MiB chunks."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            pending = len(decoder.getstate()[0])  # bytes of a character split across chunks
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                at = offset - pending + exc.start
                raise DataUnavailableError(f"{path} is not UTF-8 text: byte {at} (0x{exc.object[exc.start]:02x}) is the "
                                           "first that is not; convert it, e.g. iconv -f latin1 -t utf-8") from None
            if (nul := chunk.find(b"\0")) >= 0:
                raise DataUnavailableError(f"{path} holds a NUL byte at byte {offset + nul}: a binary file, not text")
            if not chunk:
                return
            offset += len(chunk)


def _clean(text: str) -> str | None:
    text = text.strip("\r\n")
    return text if text.strip() else None


@dataclass(frozen=True)
class TextShard:
    """Documents of a local UTF-8 file, as Hugging Face's ``text`` builder cuts them (universal newlines;
    one per line, per paragraph (``\\n\\n``) or the whole file), blank ones dropped; ``by=line`` reads the
    lines that start in bytes ``start`` .. ``end`` (None: the end of the file)."""

    path: str
    by: str = "line"
    start: int = 0
    end: int | None = None

    def documents(self) -> Iterator[Document]:
        if self.by == "line":
            return self._lines()
        return self._paragraphs() if self.by == "paragraph" else self._whole()

    def _lines(self) -> Iterator[Document]:
        end = os.path.getsize(self.path) if self.end is None else self.end
        with open(self.path, "rb") as f:
            f.seek(self.start)
            pos = self.start
            while pos < end:
                block = f.read(min(_READ_BYTES, end - pos))
                if not block:
                    break
                if f.tell() < end:
                    block += f.readline()  # the line that starts here ends before the next shard
                pos = f.tell()
                text = block.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
                for line in text.split("\n"):
                    if (doc := _clean(line)) is not None:
                        yield Document(doc)

    def _paragraphs(self) -> Iterator[Document]:
        carry = ""
        with open(self.path, encoding="utf-8") as f:
            while piece := f.read(_READ_BYTES):
                parts = (carry + piece + f.readline()).split("\n\n")
                carry = parts.pop()
                for p in parts:
                    if p and (doc := _clean(p)) is not None:
                        yield Document(doc)
        if carry and (doc := _clean(carry)) is not None:
            yield Document(doc)

    def _whole(self) -> Iterator[Document]:
        with open(self.path, encoding="utf-8") as f:
            doc = _clean(f.read())
        if doc is not None:
            yield Document(doc)


def file_shards(paths: Sequence[str], by: str) -> list[TextShard]:
    """The shards of local files: by line, ranges of about SHARD_BYTES cut at line starts; else one per file."""
    if by not in BY_VALUES:
        raise ValueError(f"unknown document unit by={by!r}; expected one of {', '.join(BY_VALUES)}")
    shards = []
    for path in paths:
        check_utf8(path)
        if by != "line":
            shards.append(TextShard(path, by))
            continue
        size = os.path.getsize(path)
        cuts = [0]
        with open(path, "rb") as f:
            while cuts[-1] + SHARD_BYTES < size:
                f.seek(cuts[-1] + SHARD_BYTES)
                f.readline()  # to the start of the next line
                if f.tell() >= size:
                    break
                cuts.append(f.tell())
        shards += [TextShard(path, by, a, b) for a, b in zip(cuts, cuts[1:] + [size])]
    return shards


def _plan_text(cfg: dict) -> CorpusPlan:
    tcfg = _section(cfg, "text")
    files = text_files(cfg)
    by = tcfg["by"]
    splits: dict[str, list] = {}
    for split in MAIN_SPLITS:
        key = f"data.text.{split}"
        if key in files:
            splits[split] = file_shards(files[key], by)
            if split != "train" and next(Window(tuple(splits[split])).documents(), None) is None:
                raise ValueError(f"{key}: the files hold no non-empty documents (by={by})")
    _holdout(splits, "data.text")
    return CorpusPlan(splits, whitespace_tokenised=bool(tcfg["whitespace"]), source="text")


# --------------------------------------------------------------------------------------------
# Hugging Face Hub (or a local folder of data files that datasets.load_dataset reads)


def _hf_error(name: str, config: Any, exc: BaseException) -> DataUnavailableError:
    what = f"{name!r}" + (f" (config {config!r})" if config else "")
    return DataUnavailableError(
        f"data.source=hf: the dataset {what} could not be downloaded: the Hugging Face Hub is "
        f"unreachable (or has no such dataset) and no cached copy was found "
        f"[{type(exc).__name__}: {exc}]. "
        "To use local files instead: data.source=text data.text.train=TRAIN.txt "
        "data.text.validation=VALID.txt data.text.test=TEST.txt (data.text.by=line|paragraph|file)."
    )


def _hf_connection_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (ConnectionError, OSError, TimeoutError)
    try:
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

        errors += (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled)
    except ImportError:  # pragma: no cover
        pass
    try:
        from datasets.exceptions import DatasetNotFoundError

        errors += (DatasetNotFoundError,)
    except ImportError:  # pragma: no cover
        pass
    return errors


def _hf_load(name: str, config: str | None, split: str | None = None, streaming: bool = False):
    import datasets

    path = _expand(name) if os.path.isdir(_expand(name)) else name
    try:
        return datasets.load_dataset(path, config, split=split, streaming=streaming)
    except _hf_connection_errors() as e:  # FileNotFoundError is an OSError
        raise _hf_error(name, config, e) from e


@functools.lru_cache(maxsize=8)
def _hf_split(name: str, config: str | None, split: str):
    """A downloaded split (memory-mapped Arrow), opened once per process."""
    return _hf_load(name, config, split)


def _hf_texts(rows: Iterator[Any]) -> Iterator[Document]:
    for text in rows:
        if text is not None and (doc := _clean(text)) is not None:
            yield Document(doc)


@dataclass(frozen=True)
class HFShard:
    """Rows ``start`` .. ``stop`` of a downloaded split, or (``streaming``) shard ``index`` of the
    ``num_shards`` data-file shards of a streamed split; column ``field`` is the text."""

    name: str
    config: str | None
    split: str
    field: str
    streaming: bool = False
    start: int = 0
    stop: int = 0
    index: int = 0
    num_shards: int = 1

    def documents(self) -> Iterator[Document]:
        if self.streaming:
            ds = _hf_load(self.name, self.config, self.split, streaming=True)
            ds = ds.shard(num_shards=self.num_shards, index=self.index) if self.num_shards > 1 else ds
            return _hf_texts(row[self.field] for row in ds)
        ds = _hf_split(self.name, self.config, self.split)
        step = 10_000
        rows = (ds[a : min(a + step, self.stop)][self.field] for a in range(self.start, self.stop, step))
        return _hf_texts(itertools.chain.from_iterable(rows))


def _plan_hf(cfg: dict) -> CorpusPlan:
    hcfg = _section(cfg, "hf")
    name, config, field_name = hcfg.get("name"), hcfg.get("config"), hcfg["text_field"]
    streaming = bool(hcfg.get("streaming"))
    if not name:
        raise ValueError("data.source=hf needs data.hf.name (and data.hf.config where the dataset has configs)")
    dsd = _hf_load(name, config, streaming=streaming)
    available = list(dsd.keys())
    splits: dict[str, list] = {}
    for split, aliases in _HF_SPLIT_ALIASES.items():
        found = next((a for a in aliases if a in dsd), None)
        if found is None:
            continue
        ds = dsd[found]
        columns = ds.column_names or (list(ds.features) if ds.features else None)  # None: a stream not yet read
        if columns is not None and field_name not in columns:
            raise ValueError(
                f"data.hf.text_field={field_name!r} is not a column of {name!r} split {found!r}; "
                f"columns: {', '.join(columns)}"
            )
        if streaming:
            n = ds.num_shards
            splits[split] = [HFShard(name, config, found, field_name, True, index=i, num_shards=n) for i in range(n)]
        else:
            rows = len(ds)
            per = max(1, int(rows * HF_SHARD_BYTES / max(1, ds.data.nbytes)))
            splits[split] = [HFShard(name, config, found, field_name, start=a, stop=min(a + per, rows))
                             for a in range(0, rows, per)]
    if "train" not in splits:
        raise ValueError(f"dataset {name!r} has no train split; its splits: {', '.join(available)}")
    if streaming and not (splits.get("validation") and splits.get("test")):
        raise ValueError(f"data.hf.streaming: dataset {name!r} has no validation and test splits (its splits: "
                         f"{', '.join(available)}); a streamed train split cannot be counted to hold some out: "
                         "download it (data.hf.streaming=false)")
    _holdout(splits, f"data.hf {name}")
    whitespace = hcfg.get("whitespace")
    if whitespace is None:  # WikiText and PTB are distributed tokenised
        whitespace = bool(re.search(r"wikitext|ptb|penn", name.lower()))
    return CorpusPlan(splits, whitespace_tokenised=bool(whitespace), source="hf")


def hf_fingerprint(data_cfg: Mapping[str, Any]) -> list | None:
    """Identity of the files of an hf dataset given as a local folder (None for a Hub dataset)."""
    name = (_section(to_plain(data_cfg), "hf").get("name") or "")
    return files_fingerprint([_expand(name)]) if name and os.path.isdir(_expand(name)) else None


# --------------------------------------------------------------------------------------------
# Brown corpus (NLTK)


def _brown_missing(nltk_data: str | None, exc: BaseException | None = None) -> DataUnavailableError:
    where = f"in data.brown.nltk_data={nltk_data!r} or " if nltk_data else "in "
    return DataUnavailableError(
        f"data.source=brown: the NLTK Brown corpus (corpora/brown.zip) was not found {where}NLTK's "
        "search path (NLTK_DATA and the default folders). Get it with python -c "
        "'import nltk; nltk.download(\"brown\")', or point data.brown.nltk_data (or the NLTK_DATA "
        "environment variable) at a folder holding corpora/brown.zip."
        + (f" [{type(exc).__name__}]" if exc is not None else "")
    )


def find_brown(nltk_data: str | None = None):
    """The Brown corpus root as an NLTK path pointer; ``nltk_data`` is put first on NLTK's path."""
    import nltk

    if nltk_data:
        folder = _expand(nltk_data)
        if not os.path.isdir(folder):
            raise _brown_missing(nltk_data)
        # NLTK only reads data below folders on nltk.data.path, so the folder is added there.
        if folder not in nltk.data.path:
            nltk.data.path.insert(0, folder)
    for name in ("corpora/brown.zip/brown/", "corpora/brown/"):
        try:
            return nltk.data.find(name)
        except LookupError:
            continue
        except (OSError, ValueError) as e:  # unreadable / refused folder
            raise _brown_missing(nltk_data, e) from e
    raise _brown_missing(nltk_data)


def brown_fingerprint(nltk_data: str | None = None) -> list:
    """Identity of the Brown files found (path, size, mtime) for the cache key."""
    root = find_brown(nltk_data)
    zf = getattr(root, "zipfile", None)
    if zf is not None:
        return files_fingerprint([zf.filename])
    return files_fingerprint([root.path if hasattr(root, "path") else str(root)])


def brown_split(
    fileid_genre: Mapping[str, str], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, list[str]]:
    """Deterministic document split stratified by genre.

    Within each genre the sorted fileids are shuffled with a generator seeded by (seed, genre) and
    cut in order train / validation / test; validation and test get at least one document of
    every genre that has three or more.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"data.brown.split must be three non-negative shares, got {list(fractions)}")
    total = float(sum(fractions))
    f_val, f_test = fractions[1] / total, fractions[2] / total
    by_genre: dict[str, list[str]] = defaultdict(list)
    for fid, genre in fileid_genre.items():
        by_genre[genre].append(fid)
    out: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for genre in sorted(by_genre):
        fids = sorted(by_genre[genre])
        random.Random(f"{seed}:{genre}").shuffle(fids)
        n = len(fids)
        n_val = int(round(f_val * n))
        n_test = int(round(f_test * n))
        if n >= 3:
            n_val = max(n_val, 1) if f_val > 0 else 0
            n_test = max(n_test, 1) if f_test > 0 else 0
        n_val = min(n_val, n)
        n_test = min(n_test, n - n_val)
        n_train = n - n_val - n_test
        out["train"] += fids[:n_train]
        out["validation"] += fids[n_train : n_train + n_val]
        out["test"] += fids[n_train + n_val :]
    return out


def brown_reader(nltk_data: str | None = None):
    """NLTK's categorized tagged reader over the Brown corpus (as ``nltk.corpus.brown`` builds it)."""
    from nltk.corpus.reader import CategorizedTaggedCorpusReader

    root = find_brown(nltk_data)
    try:
        reader = CategorizedTaggedCorpusReader(
            root, r"c[a-z]\d\d", cat_file="cats.txt", tagset="brown", encoding="ascii"
        )
    except (OSError, LookupError, ValueError) as e:
        raise _brown_missing(nltk_data, e) from e
    return reader


def brown_genres(nltk_data: str | None = None, reader: Any = None) -> dict[str, str]:
    """fileid -> genre (its first category) for every Brown document."""
    reader = reader if reader is not None else brown_reader(nltk_data)
    try:
        fileids = reader.fileids()
        genre = {f: reader.categories(f)[0] for f in fileids}
    except (OSError, LookupError, IndexError, ValueError) as e:
        raise _brown_missing(nltk_data, e) from e
    if not genre:
        raise _brown_missing(nltk_data)
    return genre


@dataclass(frozen=True)
class BrownShard:
    """Brown documents (``fileids``, their ``genres``): one sentence per line, words space-separated; with
    ``by="sentence"`` every sentence is a document of its own (an ``<eos>`` after each)."""

    nltk_data: str | None
    fileids: tuple
    genres: tuple
    by: str = "document"

    def documents(self) -> Iterator[Document]:
        reader = brown_reader(self.nltk_data)
        for fid, genre in zip(self.fileids, self.genres):
            sents = [" ".join(sent) for sent in reader.sents(fid)]
            if self.by == "sentence":
                yield from (Document(text, {"genre": genre, "fileid": fid, "sentence": i}) for i, text in enumerate(sents))
            else:
                yield Document("\n".join(sents), {"genre": genre, "fileid": fid})


def _plan_brown(cfg: dict) -> CorpusPlan:
    bcfg = _section(cfg, "brown")
    nltk_data = bcfg.get("nltk_data")
    genre = brown_genres(nltk_data, brown_reader(nltk_data))
    parts = brown_split(genre, bcfg["split"], int(bcfg["split_seed"]))
    by = bcfg.get("by", "document")
    splits = {s: [BrownShard(nltk_data, tuple(fids), tuple(genre[f] for f in fids), by)] for s, fids in parts.items()}
    return CorpusPlan(splits, whitespace_tokenised=True, source="brown")


# --------------------------------------------------------------------------------------------
# synthetic grammar


def synthetic_module():
    """The synthetic grammar module (imported lazily: it is only needed for source=synthetic)."""
    from depenc.data import synthetic

    return synthetic


def synthetic_fingerprint() -> str:
    """Hash of the grammar's source files, so a changed grammar invalidates cached streams."""
    mod = synthetic_module()
    # the package lists the files that define the corpus (its __init__ only re-exports)
    paths = list(getattr(mod, "SOURCE_FILES", ())) or [getattr(mod, "__file__", None)]
    h = hashlib.sha256()
    for path in paths:
        if not path or not os.path.exists(path):
            return ""
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


@dataclass(frozen=True)
class SyntheticShard:
    """The grammar's sentences of ``split`` (``cfg``: the SyntheticConfig as sorted items). They come from
    ``make_split``, which the callbacks share and which holds every split it makes anyway: the held-out
    splits are kept disjoint from the train split's sentences."""

    cfg: tuple
    split: str

    def documents(self) -> Iterator[Document]:
        mod = synthetic_module()
        return (Document(s.text) for s in mod.make_split(mod.SyntheticConfig.from_dict(dict(self.cfg)), self.split))


def _plan_synthetic(cfg: dict) -> CorpusPlan:
    mod = synthetic_module()
    scfg = mod.SyntheticConfig.from_dict(dict(cfg.get("synthetic") or {}))
    frozen = tuple(sorted(dataclasses.asdict(scfg).items()))
    depth = mod.DEPTH_SPLITS if scfg.n_test_depth > 0 else ()  # depth generalisation sets, when asked for
    splits = {split: [SyntheticShard(frozen, split)] for split in SYNTHETIC_SPLITS + depth}
    vocab = list(dict.fromkeys(mod.vocabulary(scfg)))
    return CorpusPlan(splits, whitespace_tokenised=True, fixed_vocab=vocab, source="synthetic")


# --------------------------------------------------------------------------------------------
# entry points


def eval_set_specs(data_cfg: Any) -> dict[str, dict]:
    """``data.eval_sets`` as name -> {path: [...], by, whitespace}, validated."""
    cfg = to_plain(data_cfg)
    specs: dict[str, dict] = {}
    reserved = set(SYNTHETIC_SPLITS) | set(synthetic_module().DEPTH_SPLITS)
    for name, spec in (cfg.get("eval_sets") or {}).items():
        name = str(name)
        if name in reserved or not _NAME_RE.match(name):
            raise ValueError(
                f"data.eval_sets: {name!r} is not a usable name (letters, digits, '_', '.', '-'; "
                f"not one of {', '.join(sorted(reserved))})"
            )
        spec = dict(spec) if isinstance(spec, Mapping) else {"path": spec}
        by = spec.get("by") or "line"
        if by not in BY_VALUES:
            raise ValueError(f"data.eval_sets.{name}.by={by!r}: expected one of {', '.join(BY_VALUES)}")
        specs[name] = {"path": _paths(spec.get("path")), "by": by, "whitespace": bool(spec.get("whitespace", False))}
    return specs


def plan_corpus(data_cfg: Any) -> CorpusPlan:
    """The shards of every split of the configured source plus the extra evaluation sets (``data_cfg``
    may be partial: the schema's defaults fill it in); ``data.max_train_docs`` keeps the first train
    documents."""
    from depenc.data.datamodule import normalise_data_cfg

    cfg = normalise_data_cfg(data_cfg)
    source = cfg["source"]
    planners = {"synthetic": _plan_synthetic, "text": _plan_text, "hf": _plan_hf, "brown": _plan_brown}
    if source not in planners:
        raise ValueError(f"unknown data source {source!r}: data.source must be one of {', '.join(SOURCES)}")
    specs = eval_set_specs(cfg)
    files = text_files(cfg)  # checks every local path before any slow loading
    plan = planners[source](cfg)
    if int(cfg.get("max_train_docs") or 0) > 0:
        plan.splits["train"] = first_documents(plan.splits["train"], int(cfg["max_train_docs"]))
    for split in plan.splits:
        plan.split_whitespace.setdefault(split, plan.whitespace_tokenised)
    for name, spec in specs.items():
        shards = file_shards(files[f"data.eval_sets.{name}.path"], spec["by"])
        if next(Window(tuple(shards)).documents(), None) is None:
            raise ValueError(f"data.eval_sets.{name}: the files hold no non-empty documents")
        plan.splits[name] = shards
        plan.extra_splits.append(name)
        plan.split_whitespace[name] = spec["whitespace"]
    return plan


def load_corpus(data_cfg: Any) -> Corpus:
    """Every split of :func:`plan_corpus` read into lists of documents (small corpora and tests)."""
    plan = plan_corpus(data_cfg)
    splits = {s: list(plan.documents(s)) for s in plan.splits}
    return Corpus(splits, plan.whitespace_tokenised, plan.fixed_vocab, plan.source, list(plan.extra_splits),
                  dict(plan.split_whitespace))
