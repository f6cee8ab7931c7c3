"""A BERT text encoder (Devlin et al. 2019) in Flax NNX, for pretrained text towers.

Post-LN transformer encoder with learned absolute positions and token-type embeddings,
exact (erf) GELU and a key-padding mask: the layout of Hugging Face `BertModel`, so its
checkpoints load with :func:`jaxcf.convert.bert.load_bert`. Covers e.g.
sentence-transformers' all-MiniLM-L6-v2 (mean pooling, :func:`mean_pool`) and the
PubMedBERT text tower of BiomedCLIP (Zhang et al. 2023), which OpenCLIP's `HFTextEncoder`
pools from the [CLS] token's last hidden state and projects with a bias-free MLP
Linear(768 -> 640) -> GELU -> Linear(640 -> 512) (:meth:`Bert.encode_text`).

Parameters are float32; `dtype` is the compute dtype of the dense layers (None: float32).
LayerNorms and the softmax run in float32, and the outputs are float32. No dropout: the
encoder is meant for inference (frozen towers).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcf.errors import InputError
from jaxcf.models import init
from jaxcf.models.layers import AttentionEdit, attention, context_key_mask, linear, torch_layer_norm

ProjType = Literal["mlp", "linear"]

# BERT's initializer_range: N(0, 0.02^2) weights, for randomly initialised models.
INIT_STD = 0.02


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Sizes of a BERT encoder (defaults: BERT-base uncased / PubMedBERT).

    proj, proj_dim: an OpenCLIP `HFTextEncoder` projection of the pooled [CLS] state:
    "mlp" (hidden width (hidden_size + proj_dim) // 2, BiomedCLIP) or "linear"; None for
    a bare encoder.
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    proj: ProjType | None = None
    proj_dim: int | None = None

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise InputError(
                f"BertConfig: hidden_size={self.hidden_size} does not split into "
                f"num_heads={self.num_heads}"
            )
        if self.proj not in (None, "mlp", "linear"):
            raise InputError(f"BertConfig: proj must be None, 'mlp' or 'linear', got {self.proj!r}")
        if (self.proj is None) != (self.proj_dim is None):
            raise InputError("BertConfig: proj and proj_dim go together (both set or both None)")

    @property
    def proj_hidden(self) -> int | None:
        """Hidden width of the "mlp" projection, as OpenCLIP sets it."""
        if self.proj != "mlp":
            return None
        return (self.hidden_size + self.proj_dim) // 2

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], **overrides: Any) -> BertConfig:
        """From a Hugging Face BertConfig dict (config.json); `overrides` win."""
        act = hf.get("hidden_act", "gelu")
        if act != "gelu":
            raise InputError(f"BertConfig: hidden_act={act!r} is not supported (only 'gelu')")
        pos = hf.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise InputError(f"BertConfig: position_embedding_type={pos!r} is not supported")
        fields = {
            "vocab_size": hf.get("vocab_size"),
            "hidden_size": hf.get("hidden_size"),
            "num_layers": hf.get("num_hidden_layers"),
            "num_heads": hf.get("num_attention_heads"),
            "intermediate_size": hf.get("intermediate_size"),
            "max_position": hf.get("max_position_embeddings"),
            "type_vocab_size": hf.get("type_vocab_size"),
            "layer_norm_eps": hf.get("layer_norm_eps"),
        }
        fields = {k: v for k, v in fields.items() if v is not None}
        return cls(**{**fields, **overrides})


# all-MiniLM-L6-v2 (sentence-transformers; nreimers/MiniLM-L6-H384-uncased).
MINILM_L6 = BertConfig(hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536)
# BiomedCLIP's text tower: PubMedBERT-base (vocab of 30522 PubMed wordpieces) + MLP head.
BIOMEDCLIP_TEXT = BertConfig(proj="mlp", proj_dim=512)


class BertLayer(nnx.Module):
    """One post-LN encoder layer: x = LN(x + Attn(x)); x = LN(x + W2 GELU(W1 x))."""

    def __init__(self, config: BertConfig, *, dtype: Any = None, rngs: nnx.Rngs):
        d, h = config.hidden_size, config.intermediate_size
        lin = lambda i, o: linear(i, o, kernel_init=init.normal(INIT_STD), dtype=dtype, rngs=rngs)
        self.heads = config.num_heads
        self.query, self.key, self.value = lin(d, d), lin(d, d), lin(d, d)
        self.attn_out = lin(d, d)
        self.attn_norm = torch_layer_norm(d, config.layer_norm_eps, rngs)
        self.fc1 = lin(d, h)  # HF: intermediate.dense
        self.fc2 = lin(h, d)  # HF: output.dense
        self.out_norm = torch_layer_norm(d, config.layer_norm_eps, rngs)

    def __call__(self, x: jax.Array, key_mask: jax.Array) -> jax.Array:
        """x (B, L, D) float32, key_mask (B, 1, 1, L) bool -> (B, L, D) float32."""
        b, n, d = x.shape
        h = x.astype(self.query.dtype or x.dtype)
        q, k, v = (
            proj(h).reshape(b, n, self.heads, d // self.heads)
            for proj in (self.query, self.key, self.value)
        )
        out, _ = attention(q, k, v, AttentionEdit(mask=key_mask))
        x = self.attn_norm(x + self.attn_out(out.reshape(b, n, d)).astype(jnp.float32))
        h = jax.nn.gelu(self.fc1(x.astype(h.dtype)), approximate=False)  # BERT: erf GELU
        return self.out_norm(x + self.fc2(h).astype(jnp.float32))


class TextProjection(nnx.Module):
    """OpenCLIP's HFTextEncoder projection (bias-free): "mlp" = Linear -> GELU -> Linear,
    "linear" = one Linear."""

    def __init__(self, config: BertConfig, *, dtype: Any = None, rngs: nnx.Rngs):
        lin = lambda i, o: linear(i, o, use_bias=False, dtype=dtype, rngs=rngs)
        if config.proj == "mlp":
            self.fc1 = lin(config.hidden_size, config.proj_hidden)
            self.fc2 = lin(config.proj_hidden, config.proj_dim)
        else:
            self.fc1, self.fc2 = lin(config.hidden_size, config.proj_dim), None

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, D) -> (B, proj_dim) float32."""
        x = self.fc1(x)
        if self.fc2 is not None:
            x = self.fc2(jax.nn.gelu(x, approximate=False))  # torch nn.GELU(): exact
        return x.astype(jnp.float32)


class Bert(nnx.Module):
    """BERT encoder: token ids -> last hidden states (B, L, hidden_size)."""

    def __init__(self, config: BertConfig, *, dtype: Any = None, rngs: nnx.Rngs):
        self.config = config
        d, embed_init = config.hidden_size, init.normal(INIT_STD)
        embed = lambda n: nnx.Embed(n, d, embedding_init=embed_init, rngs=rngs)
        self.word_embeddings = embed(config.vocab_size)
        self.position_embeddings = embed(config.max_position)
        self.token_type_embeddings = embed(config.type_vocab_size)
        self.embed_norm = torch_layer_norm(d, config.layer_norm_eps, rngs)
        self.layers = nnx.List(
            [BertLayer(config, dtype=dtype, rngs=rngs) for _ in range(config.num_layers)]
        )
        self.proj = None if config.proj is None else TextProjection(config, dtype=dtype, rngs=rngs)

    def embed(self, input_ids: jax.Array, token_type_ids: jax.Array | None = None) -> jax.Array:
        """Word + position (0, 1, ...) + token-type embeddings, then LayerNorm -> (B, L, D)."""
        length = input_ids.shape[1]
        if length > self.config.max_position:
            raise InputError(
                f"Bert: {length} tokens, more than max_position={self.config.max_position}"
            )
        types = jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(types)
        x = x + self.position_embeddings.embedding[None, :length]
        return self.embed_norm(x.astype(jnp.float32))

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
    ) -> jax.Array:
        """input_ids (B, L) int, attention_mask (B, L) bool / int (nonzero: a real token;
        None: all real), token_type_ids (B, L) int (None: zeros) -> (B, L, D) float32.

        Padded positions get outputs too (they attend to the real tokens), as in BertModel;
        the real positions do not depend on the padding.
        """
        input_ids = jnp.asarray(input_ids, jnp.int32)
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, bool)
        key_mask = context_key_mask(jnp.asarray(attention_mask) != 0)
        x = self.embed(input_ids, token_type_ids)
        for layer in self.layers:
            x = layer(x, key_mask)
        return x

    def encode_text(
        self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *, normalize=False
    ) -> jax.Array:
        """CLIP text features (B, proj_dim): the [CLS] (first) token's last hidden state
        through the projection head (OpenCLIP cls_last_hidden_state_pooler + proj);
        L2-normalised when `normalize` (as CLIP's encode_text(normalize=True))."""
        if self.proj is None:
            raise InputError("Bert.encode_text needs a projection head (BertConfig.proj)")
        feats = self.proj(self(input_ids, attention_mask)[:, 0])
        if normalize:
            feats = feats / jnp.linalg.norm(feats, axis=-1, keepdims=True)
        return feats


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of the real tokens' states: hidden (B, L, D), mask (B, L) -> (B, D) float32
    (sentence-transformers' mean pooling, e.g. all-MiniLM-L6-v2; that model then
    L2-normalises). A row without real tokens gives zeros."""
    m = (jnp.asarray(mask) != 0).astype(jnp.float32)[..., None]
    total = jnp.sum(hidden.astype(jnp.float32) * m, axis=1)
    return total / jnp.maximum(jnp.sum(m, axis=1), 1e-9)


def param_count(config: BertConfig) -> int:
    """Number of parameters of Bert(config), without building it."""
    d, h, layers = config.hidden_size, config.intermediate_size, config.num_layers
    embed = (config.vocab_size + config.max_position + config.type_vocab_size) * d + 2 * d
    layer = 4 * (d * d + d) + 2 * d + (d * h + h) + (h * d + d) + 2 * d
    proj = 0
    if config.proj == "mlp":
        proj = d * config.proj_hidden + config.proj_hidden * config.proj_dim
    elif config.proj == "linear":
        proj = d * config.proj_dim
    return embed + layers * layer + proj


__all__ = [
    "BIOMEDCLIP_TEXT",
    "MINILM_L6",
    "Bert",
    "BertConfig",
    "BertLayer",
    "TextProjection",
    "mean_pool",
    "param_count",
]
