"""CLIP's byte-level BPE tokenizer (Radford et al. 2021), offline: the merges file in,
(77,) id arrays out, as Stable Diffusion 1.x feeds its text encoder.

Steps, as OpenAI's / OpenCLIP's reference tokenizer runs them:
  1. cleanup: ftfy.fix_text when ftfy is installed (else NFC normalisation), HTML entities
     unescaped twice, whitespace runs -> one space, stripped, lowercased;
  2. pre-tokenisation: the special tokens, the contractions 's 't 're 've 'm 'll 'd, runs of
     letters, single digits, runs of other non-space characters;
  3. each piece's UTF-8 bytes as printable characters (the byte -> unicode table), the last
     one marked as a word end (`</w>`), then BPE: merge the best-ranked adjacent pair, all
     its occurrences left to right, until no ranked pair is left;
  4. <|startoftext|> (49406) + ids + <|endoftext|> (49407), truncated to the context length
     with the end token kept, padded with `pad_token`.

Vocabulary (49408): the 256 byte characters (printable bytes first), the same with
`</w>`, one token per merge (the first 48894 lines after the header of
`bpe_simple_vocab_16e6.txt.gz`), the two special tokens. The merges file ships inside
the `open-clip-torch` wheel (:meth:`CLIPTokenizer.from_open_clip` finds it without
importing open_clip).

Without the `regex` package the letter / digit classes of step 2 are built from Python's
own unicodedata tables: the same pieces for every character but U+0345 (which case-folds
into a letter) and characters only one of the two Unicode versions assigns.

Padding: SD 1.5's tokenizer pads with <|endoftext|> (the default here); OpenCLIP's
`tokenize` pads with id 0 (pad_token=0).
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import itertools
import os
import pathlib
import re
import sys
import unicodedata
from collections.abc import Callable, Sequence

import numpy as np

from jaxcf.errors import InputError

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # 48894: CLIP's vocabulary minus bytes and specials
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
SOT_ID, EOT_ID = 49406, 49407
CONTEXT_LENGTH = 77
WORD_END = "</w>"
CONTRACTIONS = r"'s|'t|'re|'ve|'m|'ll|'d"
SPECIALS = f"{re.escape(SOT)}|{re.escape(EOT)}"


# --- bytes as characters ----------------------------------------------------------------------


PRINTABLE_BYTES = (*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100))


@functools.cache
def byte_alphabet() -> tuple[str, ...]:
    """The character standing for each byte 0..255: the 188 printable Latin-1 bytes stand
    for themselves, the others (controls, space, ...) for chr(256), chr(257), ... in byte
    order."""
    others = iter(range(256, 512))
    keep = set(PRINTABLE_BYTES)
    return tuple(chr(b) if b in keep else chr(next(others)) for b in range(256))


def base_symbols() -> list[str]:
    """The 256 byte characters in vocabulary order: the printable bytes, then the others."""
    alphabet = byte_alphabet()
    keep = set(PRINTABLE_BYTES)
    rest = [b for b in range(256) if b not in keep]
    return [alphabet[b] for b in (*PRINTABLE_BYTES, *rest)]


# --- pre-tokenisation ---------------------------------------------------------------------------


# Unicode's White_Space characters (the `regex` package's \s; stdlib re's \s adds \x1c-\x1f).
WHITE_SPACE = r"\t-\r\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


def _is_letter(ch: str) -> bool:
    return ch.isalpha()  # exactly the categories Lu, Ll, Lt, Lm, Lo


def _is_number(ch: str) -> bool:
    return ch.isnumeric() and unicodedata.category(ch)[0] == "N"  # Nd, Nl, No


def _class_of(member: Callable[[str], bool]) -> str:
    """A character-class body (escaped ranges) matching every code point for which
    `member` holds (~0.3 s for all of Unicode)."""
    ranges, start = [], None
    for cp in range(sys.maxunicode + 2):
        inside = cp <= sys.maxunicode and member(chr(cp))
        if inside and start is None:
            start = cp
        elif not inside and start is not None:
            ranges.append(f"{re.escape(chr(start))}-{re.escape(chr(cp - 1))}")
            start = None
    return "".join(ranges)


@functools.cache
def piece_pattern():
    """The compiled pre-tokenisation pattern (the `regex` package's, else stdlib re's)."""
    try:
        import regex
    except ImportError:
        return stdlib_pattern()
    body = rf"{SPECIALS}|{CONTRACTIONS}|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+"
    return regex.compile(body, regex.IGNORECASE)


def stdlib_pattern() -> re.Pattern:
    """The same pattern for stdlib re, letter / number classes from unicodedata."""
    letters, numbers = _class_of(_is_letter), _class_of(_is_number)
    body = (
        rf"{SPECIALS}|{CONTRACTIONS}|[{letters}]+|[{numbers}]|[^{WHITE_SPACE}{letters}{numbers}]+"
    )
    return re.compile(body, re.IGNORECASE)


def _fix_text(text: str) -> str:
    try:
        import ftfy
    except ImportError:
        return unicodedata.normalize("NFC", text)
    return ftfy.fix_text(text)


def clean(text: str) -> str:
    """Step 1 of the module docstring: fixed, unescaped, whitespace-collapsed, lowercased."""
    text = html.unescape(html.unescape(_fix_text(text))).strip()
    return " ".join(text.split()).lower()


# --- the merges file --------------------------------------------------------------------------


def read_merges(path: str | os.PathLike, count: int = NUM_MERGES) -> list[tuple[str, str]]:
    """The first `count` merges (pairs of symbols) after the header line of a CLIP merges
    file (.txt.gz or plain .txt)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no CLIP BPE merges file there")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")[1 : count + 1]
    except (OSError, UnicodeDecodeError, EOFError) as err:
        raise InputError(f"{path}: not a readable CLIP BPE merges file ({err})") from None
    merges = [tuple(line.split()) for line in lines]
    bad = next((i for i, m in enumerate(merges) if len(m) != 2), None)
    if bad is not None or len(merges) < count:
        where = f"line {bad + 2} is {lines[bad]!r}" if bad is not None else f"{len(merges)} lines"
        raise InputError(f"{path}: expected {count} merges 'a b' after the header, {where}")
    return merges  # type: ignore[return-value]


def find_open_clip_vocab() -> pathlib.Path:
    """The merges file inside the installed open_clip package, found without importing it
    (importing open_clip loads torch and torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            f"CLIPTokenizer: no {VOCAB_FILE} given and the open_clip package is not installed "
            "(pip install open-clip-torch, or pass the file to CLIPTokenizer.from_file)"
        )
    for folder in spec.submodule_search_locations:
        file = pathlib.Path(folder) / VOCAB_FILE
        if file.is_file():
            return file
    where = ", ".join(spec.submodule_search_locations)
    raise InputError(
        f"CLIPTokenizer: the installed open_clip package ({where}) has no {VOCAB_FILE}; "
        "pass the file to CLIPTokenizer.from_file"
    )


# --- the tokenizer ------------------------------------------------------------------------------


class CLIPTokenizer:
    """Text -> CLIP token ids (see the module docstring).

    merges: the BPE merges in rank order. context_length: the padded length (77 for every
    CLIP). pad_token: a token (default "<|endoftext|>", SD 1.5's tokenizer) or an id (0:
    OpenCLIP's tokenize).
    """

    def __init__(
        self,
        merges: Sequence[tuple[str, str]],
        *,
        context_length: int = CONTEXT_LENGTH,
        pad_token: str | int = EOT,
    ):
        if context_length < 2:
            raise InputError(f"CLIPTokenizer: context_length={context_length} leaves no room")
        symbols = base_symbols()
        vocab = [*symbols, *(c + WORD_END for c in symbols), *("".join(m) for m in merges)]
        vocab += [SOT, EOT]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = vocab
        self.ranks = {tuple(pair): i for i, pair in enumerate(merges)}
        self.context_length = context_length
        self.sot_id, self.eot_id = self.encoder[SOT], self.encoder[EOT]
        self.pad_id = self._pad_id(pad_token)
        self._byte_chars = byte_alphabet()
        self._cache: dict[str, tuple[int, ...]] = {SOT: (self.sot_id,), EOT: (self.eot_id,)}

    def _pad_id(self, pad_token: str | int) -> int:
        if isinstance(pad_token, int):
            if not 0 <= pad_token < len(self.decoder):
                raise InputError(f"CLIPTokenizer: pad id {pad_token} outside the vocabulary")
            return pad_token
        if pad_token not in self.encoder:
            raise InputError(f"CLIPTokenizer: pad_token {pad_token!r} is not in the vocabulary")
        return self.encoder[pad_token]

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, *, num_merges: int = NUM_MERGES, **kwargs
    ) -> CLIPTokenizer:
        """From a `bpe_simple_vocab_16e6.txt.gz` (or any CLIP merges file, .gz or plain),
        reading its first `num_merges` merges."""
        return cls(read_merges(path, num_merges), **kwargs)

    @classmethod
    def from_open_clip(cls, **kwargs) -> CLIPTokenizer:
        """From the merges file inside the installed `open-clip-torch` package."""
        return cls.from_file(find_open_clip_vocab(), **kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self.decoder)

    def _bpe(self, piece: str) -> tuple[int, ...]:
        """BPE ids of one pre-tokenised piece (cached)."""
        if piece in self._cache:
            return self._cache[piece]
        chars = [self._byte_chars[b] for b in piece.encode("utf-8")]
        symbols = [*chars[:-1], chars[-1] + WORD_END]
        while len(symbols) > 1:
            best = min(
                itertools.pairwise(symbols), key=lambda p: self.ranks.get(p, len(self.ranks))
            )
            if best not in self.ranks:
                break
            symbols = _merge(symbols, best)
        ids = tuple(self.encoder[s] for s in symbols)
        self._cache[piece] = ids
        return ids

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` without start / end tokens, untruncated."""
        ids: list[int] = []
        for piece in piece_pattern().findall(clean(text)):
            ids.extend(self._bpe(piece))
        return ids

    def encode(self, text: str) -> np.ndarray:
        """(context_length,) int32: <|startoftext|>, the ids (truncated), <|endoftext|>,
        padding."""
        body = self.tokenize(text)[: self.context_length - 2]
        ids = np.full(self.context_length, self.pad_id, np.int32)
        ids[: len(body) + 2] = [self.sot_id, *body, self.eot_id]
        return ids

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        """One text -> (1, L) or several -> (B, L) int32, L = context_length."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return np.stack([self.encode(t) for t in texts]).reshape(len(texts), self.context_length)

    def attention_mask(self, ids: np.ndarray) -> np.ndarray:
        """(..., L) ids -> (..., L) bool: True up to and including the first end token
        (the real tokens, also when padding uses the end token)."""
        ids = np.asarray(ids)
        after_end = np.cumsum(ids == self.eot_id, axis=-1) - (ids == self.eot_id)
        return after_end == 0

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text, word ends as spaces: the ids after <|startoftext|> up to the first
        <|endoftext|> (so padding of either kind is left out)."""
        ids = [int(i) for i in ids]
        if ids and ids[0] == self.sot_id:
            ids = ids[1:]
        if self.eot_id in ids:
            ids = ids[: ids.index(self.eot_id)]
        words = "".join(self.decoder[i] for i in ids).split(WORD_END)
        byte_of = {c: b for b, c in enumerate(self._byte_chars)}
        text = [bytes(byte_of[c] for c in w).decode("utf-8", "replace") for w in words]
        return " ".join(w for w in text if w)


def _merge(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """Every non-overlapping occurrence of `pair` in `symbols`, left to right, joined."""
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


__all__ = [
    "CONTEXT_LENGTH",
    "EOT",
    "EOT_ID",
    "NUM_MERGES",
    "SOT",
    "SOT_ID",
    "VOCAB_FILE",
    "CLIPTokenizer",
    "base_symbols",
    "byte_alphabet",
    "clean",
    "find_open_clip_vocab",
    "read_merges",
]
