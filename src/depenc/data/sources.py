"""Corpus sources: local text files, Hugging Face datasets, NLTK's Brown corpus, the synthetic grammar.

``load_corpus(data_cfg)`` returns a :class:`Corpus`: named splits of :class:`Document` objects
(``train``, ``validation``, ``test``; ``test_long`` for the synthetic grammar; then one split per
entry of ``data.eval_sets``). Missing data raises :class:`DataUnavailableError` with one message
that names what is missing and how to get it; nothing falls back silently to other data.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

log = logging.getLogger(__name__)

SOURCES = ("synthetic", "text", "hf", "brown")
MAIN_SPLITS = ("train", "validation", "test")
SYNTHETIC_SPLITS = ("train", "validation", "test", "test_long")
BY_VALUES = {"line": "line", "paragraph": "paragraph", "file": "document"}
# Where a source has no validation/test split, this share of the train documents (taken from the
# end, at least one document) becomes each missing split.
HOLDOUT_FRACTION = 0.05

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
class Corpus:
    """Documents per split, and what the text is like.

    ``whitespace_tokenised``: words are separated by spaces in the main splits, so word-level
    perplexity is meaningful. ``split_whitespace`` says the same per split (extra evaluation sets
    declare their own). ``fixed_vocab``: the exact word vocabulary (synthetic grammar), else None.
    ``extra_splits``: names of the ``data.eval_sets`` splits, in config order.
    """

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


def _read_local(paths: Sequence[str], by: str, cache_dir: str | None) -> list[Document]:
    """Documents from local files through datasets' ``text`` builder (one per line, paragraph or file)."""
    if by not in BY_VALUES:
        raise ValueError(f"unknown document unit by={by!r}; expected one of {', '.join(BY_VALUES)}")
    for path in paths:
        check_utf8(path)
    import datasets

    import datasets.config

    kwargs = {}
    if cache_dir:
        kwargs["cache_dir"] = os.path.join(cache_dir, "hf_text")
    # Reading local files needs no network; datasets would otherwise send a download-count request
    # for the "text" builder, which costs seconds on a machine without network.
    counts = getattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", None)
    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
    bars = not datasets.utils.are_progress_bars_disabled()
    if bars:  # a progress bar per small local file is noise
        datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(
            "text", data_files={"train": list(paths)}, sample_by=BY_VALUES[by], split="train", **kwargs
        )
    finally:
        if counts is not None:
            datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = counts
        if bars:
            datasets.enable_progress_bars()
    docs = []
    for text in ds["text"]:
        text = text.strip("\r\n")
        if text.strip():
            docs.append(Document(text))
    return docs


def _holdout(splits: dict[str, list[Document]], origin: str) -> None:
    """Fill missing validation/test splits with the last documents of train."""
    missing = [s for s in ("validation", "test") if not splits.get(s)]
    if not missing:
        return
    train = splits["train"]
    n = max(1, int(round(HOLDOUT_FRACTION * len(train))))
    if len(train) < n * len(missing) + 1:
        raise ValueError(
            f"{origin}: no {' / '.join(missing)} split given and the train split has only "
            f"{len(train)} documents, too few to hold some out"
        )
    for s in reversed(missing):
        splits[s] = train[-n:]
        train = train[:-n]
    splits["train"] = train
    log.warning("%s: %s held out from the end of train (%d documents each)", origin, ", ".join(missing), n)


def _load_text(cfg: dict) -> Corpus:
    tcfg = _section(cfg, "text")
    files = text_files(cfg)
    by = tcfg["by"]
    splits: dict[str, list[Document]] = {}
    for split in MAIN_SPLITS:
        key = f"data.text.{split}"
        if key in files:
            splits[split] = _read_local(files[key], by, cfg.get("cache_dir"))
            if not splits[split]:
                raise ValueError(f"{key}: the files hold no non-empty documents (by={by})")
    _holdout(splits, "data.text")
    whitespace = bool(tcfg["whitespace"])
    return Corpus(splits, whitespace_tokenised=whitespace, source="text")


# --------------------------------------------------------------------------------------------
# Hugging Face Hub


def _hf_error(name: str, config: Any, exc: BaseException) -> DataUnavailableError:
    what = f"{name!r}" + (f" (config {config!r})" if config else "")
    return DataUnavailableError(
        f"data.source=hf: the dataset {what} could not be downloaded: the Hugging Face Hub is "
        f"unreachable (or has no such dataset) and no cached copy was found "
        f"[{type(exc).__name__}: {exc}]. "
        "To use local files instead: data.source=text data.text.train=TRAIN.txt "
        "data.text.validation=VALID.txt data.text.test=TEST.txt (data.text.by=line|paragraph|file)."
    )


def _load_hf(cfg: dict) -> Corpus:
    hcfg = _section(cfg, "hf")
    name, config = hcfg.get("name"), hcfg.get("config")
    field_name = hcfg["text_field"]
    if not name:
        raise ValueError("data.source=hf needs data.hf.name (and data.hf.config where the dataset has configs)")
    import datasets

    connection_errors: tuple[type[BaseException], ...] = (ConnectionError, OSError, TimeoutError)
    try:
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

        connection_errors += (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled)
    except ImportError:  # pragma: no cover
        pass
    try:
        from datasets.exceptions import DatasetNotFoundError

        connection_errors += (DatasetNotFoundError,)
    except ImportError:  # pragma: no cover
        pass
    try:
        dsd = datasets.load_dataset(name, config)
    except connection_errors as e:  # FileNotFoundError is an OSError
        raise _hf_error(name, config, e) from e
    available = list(dsd.keys())
    splits: dict[str, list[Document]] = {}
    for split, aliases in _HF_SPLIT_ALIASES.items():
        found = next((a for a in aliases if a in dsd), None)
        if found is None:
            continue
        ds = dsd[found]
        if field_name not in ds.column_names:
            raise ValueError(
                f"data.hf.text_field={field_name!r} is not a column of {name!r} split {found!r}; "
                f"columns: {', '.join(ds.column_names)}"
            )
        docs = []
        for text in ds[field_name]:
            if text is None:
                continue
            text = text.strip("\r\n")
            if text.strip():
                docs.append(Document(text))
        splits[split] = docs
    if "train" not in splits:
        raise ValueError(f"dataset {name!r} has no train split; its splits: {', '.join(available)}")
    _holdout(splits, f"data.hf {name}")
    whitespace = hcfg.get("whitespace")
    if whitespace is None:  # WikiText and PTB are distributed tokenised
        whitespace = bool(re.search(r"wikitext|ptb|penn", name.lower()))
    return Corpus(splits, whitespace_tokenised=bool(whitespace), source="hf")


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


def _load_brown(cfg: dict) -> Corpus:
    bcfg = _section(cfg, "brown")
    nltk_data = bcfg.get("nltk_data")
    reader = brown_reader(nltk_data)
    genre = brown_genres(nltk_data, reader)
    parts = brown_split(genre, bcfg["split"], int(bcfg["split_seed"]))
    splits: dict[str, list[Document]] = {}
    for split, fids in parts.items():
        docs = []
        for fid in fids:
            text = "\n".join(" ".join(sent) for sent in reader.sents(fid))
            docs.append(Document(text, {"genre": genre[fid], "fileid": fid}))
        splits[split] = docs
    return Corpus(splits, whitespace_tokenised=True, source="brown")


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


def _synthetic_vocab(mod: Any, scfg: Any, splits: Mapping[str, list[Document]]) -> list[str]:
    for attr in ("vocabulary", "lexicon", "vocab"):
        fn = getattr(mod, attr, None)
        if callable(fn):
            try:
                words = fn(scfg)
            except TypeError:
                words = fn()
            return list(dict.fromkeys(words))
    for holder in (scfg,):
        for attr in ("vocabulary", "lexicon", "vocab"):
            words = getattr(holder, attr, None)
            if words is not None and not isinstance(words, (str, bytes)) and not callable(words):
                return list(dict.fromkeys(words))
    # No explicit lexicon: every word the grammar produced in any split, sorted.
    return sorted({w for docs in splits.values() for d in docs for w in d.text.split()})


def _load_synthetic(cfg: dict) -> Corpus:
    mod = synthetic_module()
    scfg = mod.SyntheticConfig.from_dict(dict(cfg.get("synthetic") or {}))
    splits: dict[str, list[Document]] = {}
    for split in SYNTHETIC_SPLITS:
        sentences = mod.make_split(scfg, split)
        splits[split] = [Document(" ".join(s.tokens)) for s in sentences]
    vocab = _synthetic_vocab(mod, scfg, splits)
    return Corpus(splits, whitespace_tokenised=True, fixed_vocab=vocab, source="synthetic")


# --------------------------------------------------------------------------------------------
# entry point


def eval_set_specs(data_cfg: Any) -> dict[str, dict]:
    """``data.eval_sets`` as name -> {path: [...], by, whitespace}, validated."""
    cfg = to_plain(data_cfg)
    specs: dict[str, dict] = {}
    reserved = set(SYNTHETIC_SPLITS)
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


def load_corpus(data_cfg: Any) -> Corpus:
    """Load every split of the configured source plus the extra evaluation sets (``data_cfg`` may be
    partial: the schema's defaults fill it in)."""
    from depenc.data.datamodule import normalise_data_cfg

    cfg = normalise_data_cfg(data_cfg)
    source = cfg["source"]
    loaders = {"synthetic": _load_synthetic, "text": _load_text, "hf": _load_hf, "brown": _load_brown}
    if source not in loaders:
        raise ValueError(f"unknown data source {source!r}: data.source must be one of {', '.join(SOURCES)}")
    specs = eval_set_specs(cfg)
    files = text_files(cfg)  # checks every local path before any slow loading
    corpus = loaders[source](cfg)
    for split in corpus.splits:
        corpus.split_whitespace.setdefault(split, corpus.whitespace_tokenised)
    for name, spec in specs.items():
        docs = _read_local(files[f"data.eval_sets.{name}.path"], spec["by"], cfg.get("cache_dir"))
        if not docs:
            raise ValueError(f"data.eval_sets.{name}: the files hold no non-empty documents")
        corpus.splits[name] = docs
        corpus.extra_splits.append(name)
        corpus.split_whitespace[name] = spec["whitespace"]
    return corpus
