"""Tokenizers: word-level, byte-level BPE, characters, and a byte-level BPE ``tokenizer.json`` of
Hugging Face's read from a file (e.g. GPT-2's), behind one small protocol.

Every tokenizer has

- ``kind`` (``"word" | "bpe" | "char" | "file"``), ``vocab_size``,
- ``eos_id``: the ``<eos>`` token, which also serves as beginning-of-sequence (0; for ``file`` the
  file's own end-of-text token, e.g. GPT-2's ``<|endoftext|>`` = 50256),
- ``unk_id``: ``<unk>`` = 1 for word and char, ``None`` for byte-level BPE (it needs none; ``file``:
  the file model's ``unk_token`` if it has one),
- ``encode(text) -> list[int]`` (no ``<eos>`` added), ``decode(ids) -> str`` (``<eos>`` is
  rendered as ``"\\n"``, the separator between documents),
- ``id_to_token(i)``, ``token_to_id(s)`` (``None`` for a string outside the vocabulary, as in
  Hugging Face ``tokenizers``),
- ``words_of(ids) -> list[int]``: for each token the 0-based index of the whitespace-separated
  word it belongs to (``-1`` for ``<eos>``; a whitespace-only token belongs to the word that
  follows it), so token scores can be aggregated to words,
- ``is_word_start(i)``: whether token ``i`` opens a new word even when it follows word characters
  (every word token; a BPE token with leading whitespace and some content; never a character),
- ``save(path)``: one JSON file, read back by :func:`load_tokenizer`.

All vocabularies are learnt from the training split only (:func:`build_tokenizer` is given the
training texts and nothing else), except ``file``'s, which is the file's (``data.tokenizer_file``).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

EOS = "<eos>"
UNK = "<unk>"
TOKENIZER_KINDS = ("word", "bpe", "char", "file")
# end-of-text tokens of common tokenizer.json files, in the order they are looked for (GPT-2 first)
EOS_NAMES = ("<|endoftext|>", "</s>", EOS, "<|eos|>", "<|end_of_text|>")
FORMAT_VERSION = 1

_ASCII_WS = b" \t\n\r\x0b\x0c"  # whitespace bytes for byte-level tokens


def _word_indices(pieces: Iterable[str | None]) -> list[int]:
    """Word index of each piece of text; ``None`` marks a special token (index -1).

    Words are maximal runs of non-whitespace characters across piece boundaries. A piece's index
    is that of the word holding its first non-whitespace character; a whitespace-only piece gets
    the index of the next word (or of the last word when no word follows).
    """
    out: list[int] = []
    word = -1
    in_space = True
    for piece in pieces:
        if piece is None:
            out.append(-1)
            in_space = True
            continue
        first = None
        for ch in piece:
            if ch.isspace():
                in_space = True
            else:
                if in_space:
                    word += 1
                    in_space = False
                if first is None:
                    first = word
        out.append(word + 1 if first is None else first)
    n_words = word + 1
    last = max(n_words - 1, 0)
    return [min(i, last) if i >= 0 else i for i in out]


class Tokenizer:
    """Base class: shared helpers; subclasses implement the vocabulary handling."""

    kind: str = ""
    eos_id: int = 0
    unk_id: int | None = None
    lowercase: bool = False

    @property
    def vocab_size(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:  # pragma: no cover - overridden
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def id_to_token(self, i: int) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def token_to_id(self, s: str) -> int | None:  # pragma: no cover - overridden
        raise NotImplementedError

    def words_of(self, ids: Iterable[int]) -> list[int]:  # pragma: no cover - overridden
        raise NotImplementedError

    def is_word_start(self, i: int) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_dict(self) -> dict:  # pragma: no cover - overridden
        raise NotImplementedError

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer as one JSON file (atomically)."""
        path = os.fspath(path)
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, ensure_ascii=False)
        os.replace(tmp, path)

    def _norm(self, text: str) -> str:
        return text.lower() if self.lowercase else text

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, lowercase={self.lowercase})"


class _VocabTokenizer(Tokenizer):
    """A tokenizer with an explicit list of token strings: ``<eos>`` = 0, ``<unk>`` = 1."""

    unk_id = 1

    def __init__(self, tokens: Sequence[str], lowercase: bool = False):
        tokens = list(tokens)
        if tokens[:2] != [EOS, UNK]:
            raise ValueError(f"the vocabulary must start with {EOS!r}, {UNK!r}; got {tokens[:2]}")
        self.tokens = tokens
        self.index = {t: i for i, t in enumerate(tokens)}
        if len(self.index) != len(tokens):
            raise ValueError("the vocabulary has duplicate tokens")
        self.lowercase = bool(lowercase)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def id_to_token(self, i: int) -> str:
        return self.tokens[int(i)]

    def token_to_id(self, s: str) -> int | None:
        return self.index.get(s)

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "lowercase": self.lowercase,
            "tokens": self.tokens,
        }


class WordTokenizer(_VocabTokenizer):
    """Whitespace-separated words; out-of-vocabulary words become ``<unk>``."""

    kind = "word"

    def encode(self, text: str) -> list[int]:
        get = self.index.get
        return [get(w, 1) for w in self._norm(text).split()]

    def decode(self, ids: Iterable[int]) -> str:
        out: list[str] = []
        line: list[str] = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                out.append(" ".join(line))
                line = []
            else:
                line.append(self.tokens[i])
        out.append(" ".join(line))
        return "\n".join(out)

    def words_of(self, ids: Iterable[int]) -> list[int]:
        out, word = [], 0
        for i in ids:
            if int(i) == self.eos_id:
                out.append(-1)
            else:
                out.append(word)
                word += 1
        return out

    def is_word_start(self, i: int) -> bool:
        return int(i) != self.eos_id

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int = 0,
        min_freq: int = 1,
        lowercase: bool = False,
        fixed_vocab: Sequence[str] | None = None,
    ) -> "WordTokenizer":
        """Vocabulary = the most frequent training words (ties by string), at most ``vocab_size``
        entries including the two specials (0 = no limit), each seen at least ``min_freq`` times;
        with ``fixed_vocab``: exactly the specials followed by ``fixed_vocab``."""
        specials = [EOS, UNK]
        if fixed_vocab is not None:
            words = [w for w in dict.fromkeys(fixed_vocab) if w not in specials]
            return cls(specials + words, lowercase=lowercase)
        counts: Counter[str] = Counter()
        for t in texts:
            counts.update((t.lower() if lowercase else t).split())
        for s in specials:
            counts.pop(s, None)
        ranked = sorted(
            (w for w, c in counts.items() if c >= max(1, int(min_freq))), key=lambda w: (-counts[w], w)
        )
        if vocab_size and vocab_size > 0:
            ranked = ranked[: max(0, int(vocab_size) - len(specials))]
        return cls(specials + ranked, lowercase=lowercase)


class CharTokenizer(_VocabTokenizer):
    """Unicode characters seen in training; unseen characters become ``<unk>``."""

    kind = "char"

    def encode(self, text: str) -> list[int]:
        get = self.index.get
        return [get(c, 1) for c in self._norm(text)]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join("\n" if int(i) == self.eos_id else self.tokens[int(i)] for i in ids)

    def words_of(self, ids: Iterable[int]) -> list[int]:
        return _word_indices(None if int(i) == self.eos_id else self.tokens[int(i)] for i in ids)

    def is_word_start(self, i: int) -> bool:
        return False

    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int = 0, min_freq: int = 1, lowercase: bool = False
    ) -> "CharTokenizer":
        """Characters of the training texts, most frequent first (ties by code point), at most
        ``vocab_size`` entries including the specials (0 = no limit)."""
        counts: Counter[str] = Counter()
        for t in texts:
            counts.update(t.lower() if lowercase else t)
        ranked = sorted(
            (c for c, n in counts.items() if n >= max(1, int(min_freq))), key=lambda c: (-counts[c], c)
        )
        if vocab_size and vocab_size > 0:
            ranked = ranked[: max(0, int(vocab_size) - 2)]
        return cls([EOS, UNK] + ranked, lowercase=lowercase)


def _byte_level_alphabet() -> dict[str, int]:
    """The printable stand-in used by byte-level BPE for each byte value (GPT-2 convention):
    printable Latin-1 bytes stand for themselves, the others are shifted to code points 256+."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    mapping: dict[str, int] = {}
    shift = 0
    for b in range(256):
        if b in keep:
            mapping[chr(b)] = b
        else:
            mapping[chr(256 + shift)] = b
            shift += 1
    return mapping


class BPETokenizer(Tokenizer):
    """Byte-level BPE from the Hugging Face ``tokenizers`` library; ``<eos>`` is special id 0."""

    kind = "bpe"
    unk_id = None

    def __init__(self, hf_tokenizer: Any, lowercase: bool = False):
        self.hf = hf_tokenizer
        self.lowercase = bool(lowercase)
        if self.hf.token_to_id(EOS) != 0:
            raise ValueError(f"{EOS!r} must be id 0 in the BPE vocabulary")
        self._bytes = self._byte_table({0})

    def _byte_table(self, special_ids: set[int]) -> list[bytes]:
        """The bytes of every token (empty for the special tokens)."""
        byte_of = _byte_level_alphabet()
        table: list[bytes] = []
        for i in range(self.hf.get_vocab_size()):
            tok = self.hf.id_to_token(i)
            if tok is None or i in special_ids:
                table.append(b"")
            else:
                table.append(bytes(byte_of.get(ch, 0x3F) for ch in tok))
        return table

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # the same ids as encode_batch, without the character offsets (a third faster)
        return [e.ids for e in self.hf.encode_batch_fast(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        parts: list[list[int]] = [[]]
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                parts.append([])
            else:
                parts[-1].append(i)
        return "\n".join(self.hf.decode(p, skip_special_tokens=False) if p else "" for p in parts)

    def id_to_token(self, i: int) -> str:
        tok = self.hf.id_to_token(int(i))
        if tok is None:
            raise KeyError(i)
        return tok

    def token_to_id(self, s: str) -> int | None:
        return self.hf.token_to_id(s)

    def token_bytes(self, i: int) -> bytes:
        """The UTF-8 bytes this token stands for (empty for ``<eos>``)."""
        return self._bytes[int(i)]

    def words_of(self, ids: Iterable[int]) -> list[int]:
        # Whitespace is judged on ASCII bytes (a multi-byte character is never whitespace here).
        pieces = (
            None if int(i) == self.eos_id else "".join(" " if b in _ASCII_WS else "x" for b in self._bytes[int(i)])
            for i in ids
        )
        return _word_indices(pieces)

    def is_word_start(self, i: int) -> bool:
        b = self._bytes[int(i)]
        return bool(b) and b[0] in _ASCII_WS and any(c not in _ASCII_WS for c in b)

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "lowercase": self.lowercase,
            "hf_tokenizer": json.loads(self.hf.to_str()),
        }

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 8000, lowercase: bool = False, min_freq: int = 2) -> "BPETokenizer":
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

        hf = HFTokenizer(models.BPE())
        if lowercase:
            hf.normalizer = normalizers.Lowercase()
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=int(vocab_size) if vocab_size else 8000,
            min_frequency=max(1, int(min_freq)),
            special_tokens=[EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf, lowercase=lowercase)


class FileTokenizer(BPETokenizer):
    """A byte-level BPE ``tokenizer.json`` of Hugging Face's (GPT-2's, RoBERTa's, Llama 3's kind), read with
    ``tokenizers.Tokenizer.from_file``, offline; ``<eos>`` and ``<unk>`` are the file's own tokens."""

    kind = "file"

    def __init__(self, hf_tokenizer: Any, source: str = ""):
        self.hf = hf_tokenizer
        self.source = source
        self.lowercase = False  # the file's normaliser decides
        spec = json.loads(hf_tokenizer.to_str())
        decoder = spec.get("decoder") or {}
        if decoder.get("type") != "ByteLevel":
            raise ValueError(f"tokenizer file {source or '(given)'}: data.tokenizer=file needs a byte-level BPE "
                             f"tokenizer.json (decoder ByteLevel, as GPT-2's); this one's decoder is {decoder.get('type')}")
        eos = next((i for i in map(hf_tokenizer.token_to_id, EOS_NAMES) if i is not None), None)
        if eos is None:
            raise ValueError(f"tokenizer file {source or '(given)'} has no end-of-text token (looked for "
                             f"{', '.join(EOS_NAMES)}); add one as a special token")
        self.eos_id = eos
        unk = (spec.get("model") or {}).get("unk_token")
        self.unk_id = hf_tokenizer.token_to_id(unk) if unk else None
        specials = {t["id"] for t in spec.get("added_tokens") or [] if t.get("special")}
        self._bytes = self._byte_table(specials | {eos})

    def to_dict(self) -> dict:
        return {**super().to_dict(), "source": self.source}

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "FileTokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        path = os.path.abspath(os.path.expanduser(os.fspath(path)))
        if not os.path.isfile(path):
            raise ValueError(f"data.tokenizer_file: no such file {path}")
        try:
            hf = HFTokenizer.from_file(path)
        except Exception as exc:  # the Rust library's errors: first line only
            raise ValueError(f"data.tokenizer_file {path} is not a Hugging Face tokenizer.json: "
                             f"{(str(exc).splitlines() or [type(exc).__name__])[0][:200]}") from None
        return cls(hf, source=path)


def build_tokenizer(
    kind: str, train_texts: Sequence[str], vocab_size: int, min_freq: int = 1, lowercase: bool = False,
    fixed_vocab: Sequence[str] | None = None, tokenizer_file: str | None = None,
) -> Tokenizer:
    """Learn a tokenizer of ``kind`` from the training texts only (``data.vocab_size``, ``data.min_freq``,
    ``data.lowercase``). ``fixed_vocab`` (word only) fixes the vocabulary to the specials plus exactly these words.
    ``file``: read ``tokenizer_file`` (``data.tokenizer_file``) instead; nothing is learnt.
    """
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"unknown tokenizer {kind!r}: data.tokenizer must be one of {', '.join(TOKENIZER_KINDS)}")
    if kind == "file":
        if not tokenizer_file:
            raise ValueError("data.tokenizer=file needs data.tokenizer_file=PATH (a Hugging Face tokenizer.json)")
        return FileTokenizer.from_file(tokenizer_file)
    if kind == "word":
        return WordTokenizer.train(train_texts, vocab_size, min_freq, lowercase, fixed_vocab=fixed_vocab)
    if kind == "char":
        return CharTokenizer.train(train_texts, vocab_size, min_freq, lowercase)
    # Merges seen once are noise on small corpora; min_freq (default 1) is raised to 2 for BPE.
    return BPETokenizer.train(train_texts, vocab_size or 8000, lowercase, min_freq=max(2, min_freq))


def tokenizer_from_dict(d: Mapping[str, Any]) -> Tokenizer:
    kind = d.get("kind")
    if kind == "word":
        return WordTokenizer(d["tokens"], lowercase=d.get("lowercase", False))
    if kind == "char":
        return CharTokenizer(d["tokens"], lowercase=d.get("lowercase", False))
    if kind == "bpe":
        from tokenizers import Tokenizer as HFTokenizer

        return BPETokenizer(HFTokenizer.from_str(json.dumps(d["hf_tokenizer"])), lowercase=d.get("lowercase", False))
    if kind == "file":
        from tokenizers import Tokenizer as HFTokenizer

        return FileTokenizer(HFTokenizer.from_str(json.dumps(d["hf_tokenizer"])), source=d.get("source", ""))
    raise ValueError(f"unknown tokenizer kind {kind!r} in saved tokenizer; expected one of {', '.join(TOKENIZER_KINDS)}")


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Read a tokenizer written by ``Tokenizer.save``."""
    with open(path, encoding="utf-8") as f:
        return tokenizer_from_dict(json.load(f))
