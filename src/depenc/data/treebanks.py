"""Readers for gold dependency treebanks: CoNLL-U (UD) and the NLTK WSJ ``.dp`` sample.

Every reader returns a list of :class:`TreebankSentence` with 1-based heads (0 = root), in file
order; directories and zip archives are read file by file in sorted name order.
"""

from __future__ import annotations

import re
import unicodedata
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "PTB_PUNCT_TAGS",
    "TreebankSentence",
    "is_punct",
    "load_treebank",
    "parse_conllu",
    "parse_dp",
    "read_conllu",
    "read_dp",
]

#: Penn Treebank tags of punctuation (``$`` and ``#`` are symbols, not punctuation, as in UD).
PTB_PUNCT_TAGS = frozenset({",", ".", ":", "``", "''", "-LRB-", "-RRB-", "(", ")", "HYPH", "NFP"})

_WSJ_NAME = re.compile(r"(^|/)wsj_\d+\.dp$")


@dataclass
class TreebankSentence:
    """One gold-parsed sentence.

    ``heads[i]`` is the 1-based head of word ``i`` (0 = root). ``upos`` holds UD universal tags
    (CoNLL-U); ``xpos`` holds language-specific tags (CoNLL-U column 5, or the PTB tag of a
    ``.dp`` file, which has no ``upos``).
    """

    words: list[str]
    heads: list[int]
    upos: list[str] | None = None
    xpos: list[str] | None = None

    def __len__(self) -> int:
        return len(self.words)

    @property
    def text(self) -> str:
        """The words joined by single spaces."""
        return " ".join(self.words)

    def punct_mask(self) -> list[bool]:
        """Per word, whether it is punctuation (see :func:`is_punct`)."""
        return [
            is_punct(
                w,
                self.upos[i] if self.upos is not None else None,
                self.xpos[i] if self.xpos is not None else None,
            )
            for i, w in enumerate(self.words)
        ]


def is_punct(word: str, upos: str | None = None, xpos: str | None = None) -> bool:
    """Whether a word is punctuation.

    Uses the UD tag when given (``PUNCT``), else the PTB tag (:data:`PTB_PUNCT_TAGS`), else the
    word itself (non-empty and every character in a Unicode punctuation category).
    """
    if upos is not None and upos != "_":
        return upos == "PUNCT"
    if xpos is not None and xpos != "_":
        return xpos in PTB_PUNCT_TAGS
    return bool(word) and all(unicodedata.category(c).startswith("P") for c in word)


def _check_heads(heads: Sequence[int], where: str) -> None:
    """ValueError unless ``heads`` (1-based, 0 = root) form one tree: heads in range, exactly one root,
    no cycle. ``where`` names the sentence."""
    n = len(heads)
    for i, h in enumerate(heads):
        if not 0 <= h <= n or h == i + 1:
            raise ValueError(f"{where}: word {i + 1} has invalid head {h} (sentence of {n} words)")
    roots = [i + 1 for i, h in enumerate(heads) if h == 0]
    if len(roots) != 1:
        which = "no word has head 0" if not roots else f"words {', '.join(map(str, roots))} all have head 0"
        raise ValueError(f"{where}: not a tree with one root ({which})")
    for start in range(1, n + 1):  # from every word, following heads must reach the root
        path, j = [start], heads[start - 1]
        while j != 0:
            if j in path:
                cycle = path[path.index(j):] + [j]
                raise ValueError(f"{where}: word {start}'s heads form a cycle ({' -> '.join(map(str, cycle))})")
            path.append(j)
            j = heads[j - 1]


# --------------------------------------------------------------------------------------------
# CoNLL-U


def parse_conllu(lines: Iterable[str], source: str = "<conllu>") -> list[TreebankSentence]:
    """Parse CoNLL-U lines; skips comments, multiword ranges (``1-2``), empty nodes (``1.1``)."""
    sentences: list[TreebankSentence] = []
    words: list[str] = []
    heads: list[int] = []
    upos: list[str] = []
    xpos: list[str] = []

    def flush(lineno: int) -> None:
        nonlocal words, heads, upos, xpos
        if words:
            _check_heads(heads, f"{source}, sentence {len(sentences) + 1} (ending line {lineno})")
            sentences.append(TreebankSentence(words, heads, upos, xpos))
        words, heads, upos, xpos = [], [], [], []

    lineno = 0
    for lineno, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            flush(lineno)
            continue
        if line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) != 10:
            raise ValueError(
                f"{source}:{lineno}: expected 10 tab-separated columns, got {len(cols)}"
            )
        tid = cols[0]
        if "-" in tid or "." in tid:
            continue
        if int(tid) != len(words) + 1:
            raise ValueError(f"{source}:{lineno}: token id {tid} out of sequence")
        try:
            head = int(cols[6])
        except ValueError:
            raise ValueError(f"{source}:{lineno}: head {cols[6]!r} is not an integer") from None
        words.append(cols[1])
        upos.append(cols[3])
        xpos.append(cols[4])
        heads.append(head)
    flush(lineno + 1)
    return sentences


def read_conllu(path: str | Path) -> list[TreebankSentence]:
    """Read a CoNLL-U file (UTF-8)."""
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        return parse_conllu(f, source=str(path))


# --------------------------------------------------------------------------------------------
# NLTK dependency_treebank (.dp)


def parse_dp(text: str, source: str = "<dp>") -> list[TreebankSentence]:
    """Parse the ``.dp`` format: ``word<TAB>POS<TAB>head`` per line, blank line between sentences.

    Also accepts a fourth column (relation) and 10-column CoNLL lines, as NLTK's reader does.
    """
    sentences: list[TreebankSentence] = []
    words: list[str] = []
    heads: list[int] = []
    tags: list[str] = []

    def flush(lineno: int) -> None:
        nonlocal words, heads, tags
        if words:
            _check_heads(heads, f"{source}, sentence {len(sentences) + 1} (ending line {lineno})")
            sentences.append(TreebankSentence(words, heads, None, tags))
        words, heads, tags = [], [], []

    lines = text.splitlines()
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            flush(lineno)
            continue
        cols = line.split("\t") if "\t" in line else line.split()
        if len(cols) in (3, 4):
            word, tag, head_s = cols[0], cols[1], cols[2]
        elif len(cols) == 10:
            word, tag, head_s = cols[1], cols[4], cols[6]
        else:
            raise ValueError(f"{source}:{lineno}: expected 3, 4 or 10 columns, got {len(cols)}")
        try:
            head = int(head_s)
        except ValueError:
            raise ValueError(f"{source}:{lineno}: head {head_s!r} is not an integer") from None
        words.append(word)
        tags.append(tag)
        heads.append(head)
    flush(len(lines) + 1)
    return sentences


def read_dp(path_or_dir: str | Path) -> list[TreebankSentence]:
    """Read ``.dp`` data from a file, a directory of ``wsj_*.dp`` files, or a zip archive.

    A directory or zip is read in sorted file-name order; it uses the ``wsj_*.dp`` files, or every
    ``*.dp`` file when there is no ``wsj_*.dp``. A zip is read in place (e.g. NLTK's
    ``dependency_treebank.zip`` with ``dependency_treebank/wsj_*.dp``).
    """
    path = Path(path_or_dir)
    out: list[TreebankSentence] = []
    if path.is_dir():
        files = sorted(path.glob("wsj_*.dp")) or sorted(path.glob("*.dp"))
        if not files:
            raise ValueError(f"no .dp files in directory {path}")
        for f in files:
            out.extend(parse_dp(f.read_text(encoding="utf-8"), source=str(f)))
        return out
    if path.suffix.lower() == ".zip":
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
            chosen = sorted(n for n in names if _WSJ_NAME.search(n)) or sorted(
                n for n in names if n.endswith(".dp")
            )
            if not chosen:
                raise ValueError(f"no .dp files in archive {path}")
            for name in chosen:
                text = zf.read(name).decode("utf-8")
                out.extend(parse_dp(text, source=f"{path}:{name}"))
        return out
    return parse_dp(path.read_text(encoding="utf-8"), source=str(path))


# --------------------------------------------------------------------------------------------
# dispatch


def _missing_message(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".conllu", ".conll"):
        what = (
            "a Universal Dependencies treebank in CoNLL-U format; for English EWT get "
            "en_ewt-ud-dev.conllu (or -train / -test) from the "
            "UniversalDependencies/UD_English-EWT repository"
        )
    else:
        what = (
            "the NLTK WSJ dependency treebank sample (dependency_treebank.zip with "
            "dependency_treebank/wsj_*.dp, or a directory or file of .dp files); get it with "
            "python -c \"import nltk; nltk.download('dependency_treebank')\" and pass "
            "<nltk_data>/corpora/dependency_treebank.zip"
        )
    return f"treebank not found: {path}. Expected {what}."


def load_treebank(path: str | Path) -> list[TreebankSentence]:
    """Load a treebank, dispatching on the path: ``.conllu``/``.conll``, ``.dp``, ``.zip`` or a
    directory (of ``.dp`` files, else of ``.conllu`` files read in sorted order).

    Raises ``FileNotFoundError`` (saying what the file is and how to get it) for a missing path.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(_missing_message(path))
    sentences = _load_any(path)
    if not sentences:
        raise ValueError(f"treebank {path} holds no sentences")
    return sentences


def _load_any(path: Path) -> list[TreebankSentence]:
    if path.is_dir():
        if any(path.glob("*.dp")):
            return read_dp(path)
        conllu = sorted(path.glob("*.conllu"))
        if conllu:
            return [s for f in conllu for s in read_conllu(f)]
        raise ValueError(f"directory {path} holds no .dp or .conllu files")
    suffix = path.suffix.lower()
    if suffix in (".conllu", ".conll"):
        return read_conllu(path)
    if suffix in (".dp", ".zip"):
        return read_dp(path)
    raise ValueError(
        f"unknown treebank format for {path}; expected .conllu, .dp, .zip or a directory"
    )
