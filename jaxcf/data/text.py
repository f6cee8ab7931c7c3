"""A tiny word-level tokenizer for the prompt sets (MS lesion load, ADNI diagnosis, CXR
impressions).

It feeds a small trainable prompt encoder until a pretrained text tower (BiomedCLIP / CLIP, as
in papers 003 / 004) is wired in: words are lowercased and split on non-alphanumerics, ids come
from a vocabulary built once from the prompts and stored with the prepared shards, so the same
prompt always gets the same ids.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from jaxcf.data.errors import DataError

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)  # ids 0, 1, 2, 3: <pad> = 0 so zero-filled arrays are padding


def words(text: str) -> list[str]:
    """Lowercased alphanumeric runs: "Subject has Alzheimer's" -> [subject, has, alzheimer, s]."""
    return re.findall(r"[a-z0-9]+", text.lower())


def build_vocab(prompts: Iterable[str], min_count: int = 1) -> list[str]:
    """Specials then the words seen at least ``min_count`` times, most frequent first (ties
    alphabetical, so the vocabulary does not depend on the prompt order)."""
    counts = Counter(w for p in prompts for w in words(p))
    ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return [*SPECIALS, *ranked]


def pad_tokens(toks: Sequence[int], max_len: int, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (at most max_len) -> (ids int32 (max_len,) padded with pad_id, mask bool
    (max_len,) True on the tokens)."""
    ids = np.full(max_len, pad_id, np.int32)
    ids[: len(toks)] = toks
    mask = np.zeros(max_len, bool)
    mask[: len(toks)] = True
    return ids, mask


def encode_all(
    encode: Callable[[str], tuple[np.ndarray, np.ndarray]], texts: Iterable[str], max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """A one-text encoder applied to every text -> (ids (N, max_len), mask (N, max_len))."""
    pairs = [encode(t) for t in texts]
    if not pairs:
        return np.zeros((0, max_len), np.int32), np.zeros((0, max_len), bool)
    ids, mask = zip(*pairs, strict=True)
    return np.stack(ids), np.stack(mask)


class Tokenizer:
    """Word ids with <bos> / <eos>, padded with <pad> to ``max_len``.

    ``encode(text) -> (ids int32 (max_len,), mask bool (max_len,))``; too-long prompts keep
    their first ``max_len - 2`` words and still end with <eos>.
    """

    def __init__(self, vocab: list[str], max_len: int):
        if list(vocab[: len(SPECIALS)]) != list(SPECIALS):
            raise DataError(f"vocabulary must start with {SPECIALS}, got {vocab[:4]}")
        if max_len < 3:
            raise DataError(f"prompt_max_len must be >= 3 (<bos> word <eos>), got {max_len}")
        self.vocab = list(vocab)
        self.max_len = int(max_len)
        self._index = {w: i for i, w in enumerate(self.vocab)}

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """text -> (ids int32 (max_len,), mask bool (max_len,)); mask is True on real tokens."""
        unk = self._index[UNK]
        toks = [self._index.get(w, unk) for w in words(text)][: self.max_len - 2]
        return pad_tokens([self._index[BOS], *toks, self._index[EOS]], self.max_len)

    def encode_batch(self, texts: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """texts -> (ids int32 (N, max_len), mask bool (N, max_len))."""
        return encode_all(self.encode, texts, self.max_len)

    def decode(self, ids: np.ndarray) -> str:
        """ids (L,) -> the words between <bos> and <eos> joined by spaces (<unk> kept)."""
        out = []
        for i in np.asarray(ids).tolist():
            w = self.vocab[i]
            if w == EOS:
                break
            if w not in (PAD, BOS):
                out.append(w)
        return " ".join(out)

    def to_json(self) -> dict:
        return {"vocab": self.vocab, "max_len": self.max_len}

    @classmethod
    def from_json(cls, obj: dict) -> Tokenizer:
        return cls(obj["vocab"], obj["max_len"])

    def save(self, path: str | pathlib.Path) -> None:
        pathlib.Path(path).write_text(json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: str | pathlib.Path) -> Tokenizer:
        path = pathlib.Path(path)
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"cannot read tokenizer {path}: {e}") from e


def known_prompt_tokens(
    tokenizer: Tokenizer, prompts: Sequence[str], field: str
) -> dict[str, np.ndarray]:
    """Prompts -> {"prompt_ids" (N, L) int32, "prompt_mask" (N, L) bool} with the model's
    tokenizer (jaxcf.data.text.Tokenizer). An empty prompt or a word the model never saw
    in training (it would silently become <unk>) is a DataError naming `field`."""
    known = set(tokenizer.vocab)
    for prompt in prompts:
        said = words(prompt)
        if not said:
            raise DataError(f"{field}: the prompt is empty ({prompt!r})")
        unknown = sorted({w for w in said if w not in known})
        if unknown:
            vocab = sorted(w for w in known if not w.startswith("<"))
            raise DataError(
                f"{field}: {unknown} not in the model's prompt vocabulary {vocab} "
                f"(prompt {prompt!r})"
            )
    ids, mask = tokenizer.encode_batch(list(prompts))
    return {"prompt_ids": ids, "prompt_mask": mask}
