"""Prompt encoders: token ids -> context tokens (B, L, D) for cross-attention.

Two kinds until pretrained text towers (BiomedCLIP, CLIP) are wired in:
  - PromptEncoder: a small transformer trained with the denoiser on the dataset's own
    word-level vocabulary (jaxcf.data.text.Tokenizer);
  - precomputed: embeddings read from a file, one (L, D) sequence per known prompt, looked
    up by matching the batch's token ids against the file's tokenised prompts.
The null prompt for classifier-free guidance is the bare <bos> token (never fully masked,
so cross-attention always has one key).
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcf.errors import InputError
from jaxcf.models import init
from jaxcf.models.layers import AttentionEdit, attention, context_key_mask, linear


class _TextBlock(nnx.Module):
    """Pre-norm transformer encoder block with a key-padding mask."""

    def __init__(self, dim: int, heads: int, *, dtype=None, rngs: nnx.Rngs):
        self.heads = heads
        self.norm1 = nnx.LayerNorm(dim, dtype=jnp.float32, rngs=rngs)
        self.qkv = linear(dim, 3 * dim, dtype=dtype, rngs=rngs)
        self.proj = linear(dim, dim, dtype=dtype, rngs=rngs)
        self.norm2 = nnx.LayerNorm(dim, dtype=jnp.float32, rngs=rngs)
        self.fc1 = linear(dim, 4 * dim, dtype=dtype, rngs=rngs)
        self.fc2 = linear(4 * dim, dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        b, n, d = x.shape
        q, k, v = (
            a.reshape(b, n, self.heads, d // self.heads)
            for a in jnp.split(self.qkv(self.norm1(x).astype(x.dtype)), 3, -1)
        )
        out, _ = attention(q, k, v, AttentionEdit(mask=context_key_mask(mask)))
        x = x + self.proj(out.reshape(b, n, d))
        return x + self.fc2(jax.nn.gelu(self.fc1(self.norm2(x).astype(x.dtype))))


class PromptEncoder(nnx.Module):
    """Word embeddings + learned positions + `depth` transformer blocks -> (B, L, dim)."""

    def __init__(
        self,
        vocab_size: int,
        *,
        dim: int = 256,
        max_len: int = 16,
        depth: int = 2,
        heads: int = 4,
        dtype: Any = None,
        rngs: nnx.Rngs,
    ):
        if dim % heads:
            raise InputError(f"text.dim={dim} does not split into text.heads={heads}")
        self.embed = nnx.Embed(vocab_size, dim, embedding_init=init.normal(0.02), rngs=rngs)
        self.pos = nnx.Param(init.normal(0.02)(rngs.params(), (max_len, dim)))
        self.blocks = nnx.List(
            [_TextBlock(dim, heads, dtype=dtype, rngs=rngs) for _ in range(depth)]
        )
        self.norm = nnx.LayerNorm(dim, dtype=jnp.float32, rngs=rngs)
        self.dtype = dtype

    def __call__(self, ids: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        """ids (B, L) int32, mask (B, L) bool -> (context (B, L, dim) float32, mask)."""
        x = self.embed(ids) + self.pos[None, : ids.shape[1]]
        x = x.astype(self.dtype or x.dtype)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x.astype(jnp.float32)), mask


class PrecomputedText(nnx.Module):
    """Fixed embeddings from a file: `prompt_ids` (P, L) int32 as the tokenizer writes them,
    `embeddings` (P, L2, D) float32 and `mask` (P, L2) bool. A batch row whose ids equal
    row p of prompt_ids gets embeddings[p]; ids matching no row are an error at load time
    only (jax cannot raise inside jit), so the file must cover every prompt used,
    the null prompt (<bos> only) included."""

    def __init__(self, path: str | pathlib.Path):
        with np.load(path) as data:
            missing = {"prompt_ids", "embeddings", "mask"} - set(data.files)
            if missing:
                raise InputError(f"{path}: missing arrays {sorted(missing)}")
            self.table = nnx.Variable(jnp.asarray(data["prompt_ids"], jnp.int32))
            self.embeddings = nnx.Variable(jnp.asarray(data["embeddings"], jnp.float32))
            self.mask = nnx.Variable(jnp.asarray(data["mask"], bool))

    def __call__(self, ids: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        """-> (context (B, L2, D), context mask (B, L2))."""
        match = jnp.all(ids[:, None, :] == self.table[None], axis=-1)  # (B, P)
        index = jnp.argmax(match, axis=1)
        return self.embeddings[index], self.mask[index]
