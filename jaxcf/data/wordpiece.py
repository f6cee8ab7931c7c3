"""BERT's WordPiece tokenizer, offline: a vocab.txt in, (ids, mask) arrays out.

Two stages (Devlin et al. 2019; Wu et al. 2016 for WordPiece), as BERT's reference
tokenizer and Hugging Face's BertTokenizer run them:
  1. basic tokenization: drop NUL / U+FFFD / control characters and map whitespace to a
     space; put spaces around CJK ideographs; split on whitespace; lowercase and strip
     accents (NFD, drop combining marks) for uncased vocabularies; split off every
     punctuation character (ASCII symbols count as punctuation, as in BERT);
  2. WordPiece: greedy longest-match-first over each word, continuations prefixed with
     "##"; a word with no full segmentation, or longer than 100 characters, is [UNK].
Special tokens written inside the text (e.g. "[MASK]") are not recognised: they are split
like any other text. No NFC composition first (as Google's BERT and HF's fast tokenizer;
HF's legacy slow one composes, which can differ only for cased vocabularies).
"""

from __future__ import annotations

import os
import pathlib
import unicodedata
from collections.abc import Iterable

import numpy as np

from jaxcf.data.text import encode_all, pad_tokens
from jaxcf.errors import InputError

CLS, SEP, PAD, UNK = "[CLS]", "[SEP]", "[PAD]", "[UNK]"
MAX_WORD_CHARS = 100  # longer words become [UNK] (BERT's max_input_chars_per_word)
# CJK Unified Ideographs blocks BERT splits per character (not Hangul / kana: those are
# written with spaces).
CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


class VocabFileError(InputError, FileNotFoundError):
    """A vocabulary file that does not exist (an InputError and a FileNotFoundError)."""


# --- character classes ------------------------------------------------------------------------


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    # Tab / newline / CR are whitespace, not control, for BERT.
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    # All non-alphanumeric ASCII symbols ($, ^, `, ...) count, though Unicode files some
    # under S*, not P*.
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in CJK_RANGES)


# --- basic tokenization -------------------------------------------------------------------------


def clean_text(text: str) -> str:
    """Drop NUL, U+FFFD and control characters; every whitespace character -> " "."""
    out = []
    for ch in text:
        if ch in "\x00\ufffd" or _is_control(ch):
            continue
        out.append(" " if _is_whitespace(ch) else ch)
    return "".join(out)


def strip_accents(word: str) -> str:
    """Canonical decomposition (NFD) without the combining marks (category Mn): é -> e."""
    return "".join(c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn")


def split_punctuation(word: str) -> list[str]:
    """ "lesion,load!" -> ["lesion", ",", "load", "!"]: each punctuation char alone."""
    pieces: list[str] = []
    current: list[str] = []
    for ch in word:
        if _is_punctuation(ch):
            if current:
                pieces.append("".join(current))
                current = []
            pieces.append(ch)
        else:
            current.append(ch)
    if current:
        pieces.append("".join(current))
    return pieces


def basic_tokenize(
    text: str, *, lowercase: bool = True, accents: bool | None = None, split_cjk: bool = True
) -> list[str]:
    """BERT's pre-tokenization of `text` into words and punctuation marks.

    accents: strip accents (None: when lowercasing, as BERT's uncased models do).
    """
    strip = lowercase if accents is None else accents
    text = clean_text(text)
    if split_cjk:
        text = "".join(f" {ch} " if _is_cjk(ch) else ch for ch in text)
    words: list[str] = []
    for word in text.split():
        if lowercase:
            word = word.lower()
        if strip:
            word = strip_accents(word)
        words.extend(split_punctuation(word))
    return words


# --- WordPiece ----------------------------------------------------------------------------------


def wordpiece(word: str, vocab: dict[str, int], unk: str = UNK) -> list[str]:
    """Greedy longest-match-first segmentation of one word: "hyperintense" -> ["hyper",
    "##int", "##ense"] (with a fitting vocabulary); [unk] when no segmentation exists."""
    if len(word) > MAX_WORD_CHARS:
        return [unk]
    pieces: list[str] = []
    start = 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = word[start:end] if start == 0 else f"##{word[start:end]}"
            if piece in vocab:
                break
            end -= 1
        if end == start:  # not even one character matched
            return [unk]
        pieces.append(piece)
        start = end
    return pieces


def load_vocab(path: str | os.PathLike) -> dict[str, int]:
    """vocab.txt (one token a line, id = line number) -> {token: id}; a repeated token
    keeps its last id."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise VocabFileError(f"{path}: no such WordPiece vocabulary file (vocab.txt)")
    with open(path, encoding="utf-8") as f:
        return {line.rstrip("\n"): i for i, line in enumerate(f)}


class WordPieceTokenizer:
    """Text -> [CLS] wordpieces [SEP] ids padded with [PAD] to max_len, and a mask.

    max_len defaults to 256, the context length of BiomedCLIP's text tower and
    all-MiniLM-L6-v2's max_seq_length; longer texts keep their first max_len - 2
    wordpieces (Hugging Face's truncation=True).
    """

    def __init__(
        self,
        vocab: dict[str, int],
        *,
        lowercase: bool = True,
        strip_accents: bool | None = None,
        max_len: int = 256,
    ):
        missing = [t for t in (CLS, SEP, PAD, UNK) if t not in vocab]
        if missing:
            raise InputError(f"WordPiece vocabulary lacks the special tokens {missing}")
        if max_len < 2:
            raise InputError(f"max_len must be >= 2 ([CLS] [SEP]), got {max_len}")
        self.vocab = dict(vocab)
        self.lowercase, self.strip_accents, self.max_len = lowercase, strip_accents, int(max_len)
        self.cls_id, self.sep_id = vocab[CLS], vocab[SEP]
        self.pad_id, self.unk_id = vocab[PAD], vocab[UNK]

    @classmethod
    def from_vocab(
        cls,
        path: str | os.PathLike,
        lowercase: bool = True,
        max_len: int = 256,
        strip_accents: bool | None = None,
    ) -> WordPieceTokenizer:
        """A tokenizer for a BERT vocab.txt (lowercase=True for uncased models)."""
        return cls(
            load_vocab(path), lowercase=lowercase, strip_accents=strip_accents, max_len=max_len
        )

    @property
    def vocab_size(self) -> int:
        return max(self.vocab.values()) + 1

    def tokenize(self, text: str) -> list[str]:
        """text -> wordpieces, without [CLS] / [SEP] and untruncated."""
        words = basic_tokenize(text, lowercase=self.lowercase, accents=self.strip_accents)
        return [piece for word in words for piece in wordpiece(word, self.vocab)]

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """text -> (ids int32 (max_len,), mask bool (max_len,)); mask is True on [CLS],
        the wordpieces and [SEP], False on padding."""
        pieces = self.tokenize(text)[: self.max_len - 2]
        toks = [self.cls_id, *(self.vocab[p] for p in pieces), self.sep_id]
        return pad_tokens(toks, self.max_len, self.pad_id)

    def encode_batch(self, texts: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """texts -> (ids int32 (N, max_len), mask bool (N, max_len))."""
        return encode_all(self.encode, texts, self.max_len)


__all__ = [
    "VocabFileError",
    "WordPieceTokenizer",
    "basic_tokenize",
    "load_vocab",
    "wordpiece",
]
