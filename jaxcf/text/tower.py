"""A pretrained text tower (BERT: BiomedCLIP's PubMedBERT or any BERT; CLIP: Stable
Diffusion 1.5's ViT-L/14 text transformer) as a frozen prompt encoder that runs on the fly,
inside the compiled training step and sampler (text.encoder = "tower"):

    python -m jaxcf.train --config=configs/wdm_ms.py --config.text.encoder=tower \\
        --config.text.checkpoint=/models/BiomedCLIP --config.text.dim=768

The data pipeline tokenises prompts with the dataset's word-level tokenizer
(jaxcf.data.text: lowercase alphanumeric words). The tower reads those words joined by
spaces, i.e. the text `Tokenizer.decode(ids)`, tokenised by its own tokenizer. Both
WordPiece and CLIP's BPE split on whitespace before anything else, so the tower's ids of
that text are the concatenation of each word's ids: a (V, K) table of every data word's
tower ids, built once, turns (B, L) data ids into (B, length) tower ids with a gather and
a cumulative-sum scatter (`Retokenizer`), exactly as the tower's tokenizer would, inside
jit. The null prompt (<bos> alone) reads as the empty text.

The tower's weights are frozen (task.frozen["text"], reloaded from text.checkpoint whenever
the task is built, never trained nor checkpointed). Samplers encode the prompts once per
call, not once per step (DiffusionTask.prepare_cond).
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcf.data.text import BOS, EOS, PAD
from jaxcf.errors import InputError

TOWERS = ("bert", "clip")
# Data-tokenizer tokens the tower never reads: decode() drops them.
_SILENT = (PAD, BOS, EOS)


@dataclasses.dataclass(frozen=True)
class Retokenizer:
    """Data-tokenizer ids -> a tower's ids of the same words.

    table (V, K) int32: the tower ids of data word v in its first lengths[v] entries (0 for
    <pad>, <bos>, <eos>). length: the tower's sequence length; start / end: the ids around
    the words ([CLS] [SEP] or <|startoftext|> <|endoftext|>); pad: the padding id. Words
    beyond length - 2 tower tokens are cut, the end token kept (as both tokenizers do)."""

    table: np.ndarray
    lengths: np.ndarray
    length: int
    start: int
    end: int
    pad: int

    @classmethod
    def build(
        cls,
        data_vocab: Sequence[str],
        tokenize: Callable[[str], list[int]],
        *,
        length: int,
        start: int,
        end: int,
        pad: int,
    ) -> Retokenizer:
        """tokenize(word) -> the tower's ids of one word, without start / end tokens."""
        if length < 2:
            raise InputError(f"a tower sequence of length {length} leaves no room for words")
        rows = [[] if word in _SILENT else list(tokenize(word)) for word in data_vocab]
        width = max([1, *map(len, rows)])
        table = np.full((len(rows), width), pad, np.int32)
        for i, row in enumerate(rows):
            table[i, : len(row)] = row
        lengths = np.array([len(r) for r in rows], np.int32)
        return cls(table, lengths, int(length), int(start), int(end), int(pad))

    def _slots(self, ids: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(where (B, L*K): the tower position of each data word piece, self.length for
        padding and pieces past the cut (dropped by scatters); used (B,): pieces kept)."""
        b = ids.shape[0]
        width = self.table.shape[-1]
        real = jnp.arange(width) < jnp.asarray(self.lengths)[ids][..., None]
        real = (real & mask[..., None].astype(bool)).reshape(b, -1)
        room = self.length - 2
        count = jnp.cumsum(real, axis=1)  # the n-th real piece goes to position n
        where = jnp.where(real & (count <= room), count, self.length)
        return where, jnp.minimum(count[:, -1], room)

    def __call__(self, ids: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        """ids, mask (B, L) of the data tokenizer -> (tower ids (B, length) int32, mask
        (B, length) bool: True on the start token, the word pieces and the end token)."""
        b = ids.shape[0]
        where, used = self._slots(ids, mask)
        pieces = jnp.asarray(self.table)[ids].reshape(b, -1)  # (B, L*K)
        rows = jnp.arange(b)[:, None]
        out = jnp.full((b, self.length), self.pad, jnp.int32).at[:, 0].set(self.start)
        out = out.at[rows, where].set(pieces, mode="drop")
        out = out.at[jnp.arange(b), used + 1].set(self.end)
        return out, jnp.arange(self.length)[None] <= (used + 1)[:, None]

    def spread(self, ids: jax.Array, mask: jax.Array, values: jax.Array) -> jax.Array:
        """values (B, L) per data token -> (B, length) float32 at the tower positions of
        each token's word pieces, 0 elsewhere (start, end, padding): e.g. which context
        positions hold a pathology word."""
        b = ids.shape[0]
        where, _ = self._slots(ids, mask)
        per_piece = jnp.repeat(values.astype(jnp.float32), self.table.shape[-1], axis=1)
        out = jnp.zeros((b, self.length), jnp.float32)
        return out.at[jnp.arange(b)[:, None], where].set(per_piece, mode="drop")


@dataclasses.dataclass
class Tower:
    """A loaded text tower: kind ("bert" | "clip"), model (nnx Module), tokenizer (the
    tower's own: WordPieceTokenizer / CLIPTokenizer), dim (its token width)."""

    kind: str
    model: Any
    tokenizer: Any
    dim: int

    def word_ids(self, word: str) -> list[int]:
        """The tower's ids of one word, without start / end tokens."""
        if self.kind == "bert":
            return [self.tokenizer.vocab[p] for p in self.tokenizer.tokenize(word)]
        return list(self.tokenizer.tokenize(word))

    def retokenizer(self, data_vocab: Sequence[str]) -> Retokenizer:
        t = self.tokenizer
        if self.kind == "bert":
            ends = {"length": t.max_len, "start": t.cls_id, "end": t.sep_id, "pad": t.pad_id}
        else:
            ends = {"length": t.context_length, "start": t.sot_id, "end": t.eot_id}
            ends["pad"] = t.pad_id
        return Retokenizer.build(data_vocab, self.word_ids, **ends)

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Texts -> (ids (N, length) int32, mask (N, length) bool) by the tower's tokenizer."""
        if self.kind == "bert":
            return self.tokenizer.encode_batch(list(texts))
        ids = self.tokenizer(list(texts))
        return ids, self.tokenizer.attention_mask(ids)


def encode_tokens(kind: str, model: Any, ids: jax.Array, mask: jax.Array):
    """Tower ids (B, L) and mask -> (tokens (B, L, D) float32, their mask (B, L)): BERT's last
    hidden states with the tokens' mask; CLIP's final-LayerNorm states at all L positions,
    padding included, under the causal mask alone (Stable Diffusion's conditioning)."""
    if kind == "bert":
        return model(ids, mask), mask
    hidden = model(ids)["last_hidden_state"]
    return hidden, jnp.ones(hidden.shape[:2], bool)


def detect_tower(checkpoint: str | pathlib.Path) -> str:
    """ "bert" or "clip" from the checkpoint's tensor names."""
    from jaxcf.convert.common import load_state_dict, resolve_checkpoint

    names = ("model.safetensors", "pytorch_model.bin")
    file = resolve_checkpoint(checkpoint, names, subfolders=("text_encoder",))
    if file.suffix == ".safetensors":  # names only: a single-file SD checkpoint is 4 GB
        from safetensors import safe_open

        with safe_open(str(file), "np") as handle:
            keys = list(handle.keys())
    else:
        keys = list(load_state_dict(file))
    if any("token_embedding.weight" in k for k in keys):
        return "clip"
    if any("word_embeddings.weight" in k for k in keys):
        return "bert"
    raise InputError(f"{checkpoint} holds neither a BERT nor a CLIP text tower")


def load_tower(
    checkpoint: str | pathlib.Path,
    *,
    kind: str = "auto",
    vocab: str | pathlib.Path | None = None,
    max_len: int = 64,
    num_heads: int | None = None,
) -> Tower:
    """A tower from local files: BERT with the WordPiece vocab.txt beside the checkpoint (or
    `vocab`), `max_len` tokens; CLIP with the BPE merges of the open-clip-torch package (or
    `vocab`), 77 tokens padded with <|endoftext|> (SD 1.5's tokenizer)."""
    if kind not in ("auto", *TOWERS):
        raise InputError(f"text tower must be one of {('auto', *TOWERS)}, got {kind!r}")
    kind = detect_tower(checkpoint) if kind == "auto" else kind
    if kind == "bert":
        from jaxcf.convert.bert import load_bert
        from jaxcf.data.wordpiece import WordPieceTokenizer

        model, config = load_bert(checkpoint, num_heads=num_heads)
        folder = pathlib.Path(checkpoint)
        vocab = vocab or (folder if folder.is_dir() else folder.parent) / "vocab.txt"
        tokenizer = WordPieceTokenizer.from_vocab(vocab, max_len=max_len)
        return Tower(kind, model, tokenizer, int(config.hidden_size))
    from jaxcf.convert.clip_text import load_clip_text
    from jaxcf.data.clip_bpe import CLIPTokenizer

    model, config = load_clip_text(checkpoint, num_heads=num_heads)
    tokenizer = CLIPTokenizer.from_file(vocab) if vocab else CLIPTokenizer.from_open_clip()
    return Tower(kind, model, tokenizer, int(config.hidden_size))


def frozen_tower(text: Any) -> tuple[Callable, nnx.State]:
    """(apply(state, ids, mask) -> (context (B, L2, D), mask (B, L2)), state) of config.text
    with encoder = "tower": text.checkpoint, text.tower (auto | bert | clip), text.vocab
    (the tower's vocabulary file; default beside the checkpoint / open-clip-torch's),
    text.tower_max_len (BERT tokens), text.tower_heads (0: from config.json), text.data_vocab
    (the dataset tokenizer's words, which jaxcf.train records) and text.dim (must be the
    tower's width: it is the denoiser's context_dim). apply.retokenizer is the Retokenizer
    (its spread places per-prompt-token values at the context's positions)."""
    if not text.get("checkpoint"):
        raise InputError("text.encoder='tower' needs text.checkpoint (a BERT or CLIP folder)")
    if not text.get("data_vocab"):
        raise InputError(
            "text.data_vocab is empty: the tower reads the dataset tokenizer's words, which "
            "jaxcf.train records from the prepared data"
        )
    tower = load_tower(
        text.checkpoint,
        kind=text.get("tower", "auto"),
        vocab=text.get("vocab") or None,
        max_len=int(text.get("tower_max_len", 64)),
        num_heads=int(text.get("tower_heads", 0)) or None,
    )
    if int(text.dim) != tower.dim:
        raise InputError(
            f"text.dim={text.dim} but the tower in {text.checkpoint} gives {tower.dim}-d "
            f"tokens (the denoiser's context width): set --config.text.dim={tower.dim}"
        )
    retokenize = tower.retokenizer(list(text.data_vocab))
    graphdef, state = nnx.split(tower.model)
    kind = tower.kind

    def apply(state, ids, mask):
        tower_ids, tower_mask = retokenize(ids, mask)
        model = nnx.merge(graphdef, jax.lax.stop_gradient(state))
        return encode_tokens(kind, model, tower_ids, tower_mask)

    apply.retokenizer = retokenize  # type: ignore[attr-defined]
    return apply, state


__all__ = [
    "TOWERS",
    "Retokenizer",
    "Tower",
    "detect_tower",
    "encode_tokens",
    "frozen_tower",
    "load_tower",
]
