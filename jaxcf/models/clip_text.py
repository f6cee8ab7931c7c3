"""CLIP's text transformer (Radford et al. 2021) in Flax NNX: Stable Diffusion 1.x's text
encoder (OpenAI CLIP ViT-L/14, 123M parameters).

Token + learned position embeddings, pre-LN transformer layers with a causal attention
mask (plus an optional key-padding mask), a final LayerNorm. The pooled feature is the
final state at the end-of-text token. Checkpoints in the transformers / diffusers layout
(`text_model.*`) and the single-file Stable Diffusion layout
(`cond_stage_model.transformer.text_model.*`) load with
:func:`jaxcf.convert.clip_text.load_clip_text`; prompts are tokenised by
:class:`jaxcf.data.clip_bpe.CLIPTokenizer`.

Clip skip: `skip=k` runs all but the last k layers and applies the final LayerNorm to that
output, as diffusers' `clip_skip=k` (k = 1: the penultimate layer, "clip skip 2" in
some UIs); `skip=0` is the plain model (SD 1.5's own conditioning).

Parameters are float32; `dtype` is the compute dtype of the dense layers (None: float32).
The residual stream, LayerNorms and the softmax stay float32, and so do the outputs. No
dropout: the encoder is meant for inference (a frozen tower).
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
from jaxcf.models.layers import AttentionEdit, attention, linear, torch_layer_norm

Activation = Literal["quick_gelu", "gelu"]

# transformers' marker for "pool at the argmax of the ids" (the EOS id is CLIP's largest).
LEGACY_EOS_ID = 2


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """Sizes of a CLIP text transformer (defaults: OpenAI CLIP ViT-L/14, SD 1.x).

    activation: "quick_gelu" (x * sigmoid(1.702 x), OpenAI CLIP) or "gelu" (exact, erf;
    OpenCLIP-trained towers). eos_token_id: where `pooled` is read: the value 2 (SD 1.5's
    config.json, transformers' legacy marker) pools at the argmax of the ids, which is the
    EOS token for CLIP's vocabulary; any other value pools at its first occurrence.
    """

    vocab_size: int = 49408
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position: int = 77
    activation: Activation = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = LEGACY_EOS_ID

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise InputError(
                f"CLIPTextConfig: hidden_size={self.hidden_size} does not split into "
                f"num_heads={self.num_heads}"
            )
        if self.activation not in ("quick_gelu", "gelu"):
            raise InputError(
                "CLIPTextConfig: activation must be 'quick_gelu' or 'gelu', "
                f"got {self.activation!r}"
            )

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], **overrides: Any) -> CLIPTextConfig:
        """From a transformers CLIPTextConfig dict (a text_encoder/config.json, or the
        "text_config" entry of a CLIPModel's); `overrides` win."""
        hf = hf.get("text_config", hf)
        fields = {
            "vocab_size": hf.get("vocab_size"),
            "hidden_size": hf.get("hidden_size"),
            "num_layers": hf.get("num_hidden_layers"),
            "num_heads": hf.get("num_attention_heads"),
            "intermediate_size": hf.get("intermediate_size"),
            "max_position": hf.get("max_position_embeddings"),
            "activation": hf.get("hidden_act"),
            "layer_norm_eps": hf.get("layer_norm_eps"),
            "eos_token_id": hf.get("eos_token_id"),
        }
        fields = {k: v for k, v in fields.items() if v is not None}
        return cls(**{**fields, **overrides})


# Stable Diffusion 1.x's text encoder (openai/clip-vit-large-patch14's text tower).
CLIP_VIT_L14 = CLIPTextConfig()


def quick_gelu(x: jax.Array) -> jax.Array:
    """x * sigmoid(1.702 x), OpenAI CLIP's GELU approximation."""
    return x * jax.nn.sigmoid(1.702 * x)


def activate(x: jax.Array, name: Activation) -> jax.Array:
    """The MLP nonlinearity: quick_gelu, or exact (erf) GELU as torch's nn.GELU()."""
    return quick_gelu(x) if name == "quick_gelu" else jax.nn.gelu(x, approximate=False)


class CLIPLayer(nnx.Module):
    """Pre-LN layer: x += Attn(LN1(x)) (causal); x += W2 act(W1 LN2(x))."""

    def __init__(self, config: CLIPTextConfig, *, dtype: Any = None, rngs: nnx.Rngs):
        d, h = config.hidden_size, config.intermediate_size
        lin = lambda i, o: linear(i, o, dtype=dtype, rngs=rngs)
        self.heads = config.num_heads
        self.activation = config.activation
        self.norm1 = torch_layer_norm(d, config.layer_norm_eps, rngs)
        self.q, self.k, self.v, self.out = lin(d, d), lin(d, d), lin(d, d), lin(d, d)
        self.norm2 = torch_layer_norm(d, config.layer_norm_eps, rngs)
        self.fc1, self.fc2 = lin(d, h), lin(h, d)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """x (B, L, D) float32, mask (B or 1, 1, L, L) bool (True: may attend) -> (B, L, D)."""
        b, n, d = x.shape
        dtype = self.q.dtype or jnp.float32
        h = self.norm1(x).astype(dtype)
        q, k, v = (
            p(h).reshape(b, n, self.heads, d // self.heads) for p in (self.q, self.k, self.v)
        )
        out, _ = attention(q, k, v, AttentionEdit(mask=mask))
        x = x + self.out(out.reshape(b, n, d)).astype(jnp.float32)
        h = activate(self.fc1(self.norm2(x).astype(dtype)), self.activation)
        return x + self.fc2(h).astype(jnp.float32)


def causal_mask(length: int, padding: jax.Array | None = None) -> jax.Array:
    """Causal mask (1, 1, L, L), combined with a (B, L) key-padding mask (nonzero: a real
    token) into (B, 1, L, L) when given."""
    mask = jnp.tril(jnp.ones((length, length), bool))[None, None]
    if padding is None:
        return mask
    return mask & (jnp.asarray(padding) != 0)[:, None, None, :]


def pool_eos(hidden: jax.Array, input_ids: jax.Array, eos_token_id: int) -> jax.Array:
    """hidden (B, L, D) at the EOS position of each row -> (B, D): the argmax of the ids
    for the legacy id 2, else the first position holding eos_token_id (position 0 if none,
    as transformers)."""
    ids = jnp.asarray(input_ids, jnp.int32)
    where = ids if eos_token_id == LEGACY_EOS_ID else (ids == eos_token_id).astype(jnp.int32)
    index = jnp.argmax(where, axis=-1)
    return jnp.take_along_axis(hidden, index[:, None, None], axis=1)[:, 0]


class CLIPTextModel(nnx.Module):
    """CLIP text transformer: token ids (B, L), L <= max_position -> hidden states."""

    def __init__(self, config: CLIPTextConfig = CLIP_VIT_L14, *, dtype: Any = None, rngs: nnx.Rngs):
        self.config = config
        d = config.hidden_size
        self.token_embedding = nnx.Embed(
            config.vocab_size, d, embedding_init=init.normal(0.02), rngs=rngs
        )
        self.position_embedding = nnx.Embed(
            config.max_position, d, embedding_init=init.normal(0.01), rngs=rngs
        )
        self.layers = nnx.List(
            [CLIPLayer(config, dtype=dtype, rngs=rngs) for _ in range(config.num_layers)]
        )
        self.final_norm = torch_layer_norm(d, config.layer_norm_eps, rngs)

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """Token + position (0, 1, ...) embeddings -> (B, L, D) float32."""
        length = input_ids.shape[1]
        if length > self.config.max_position:
            raise InputError(
                f"CLIPTextModel: {length} tokens, more than max_position={self.config.max_position}"
            )
        x = self.token_embedding(input_ids) + self.position_embedding.embedding[None, :length]
        return x.astype(jnp.float32)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        skip: int = 0,
        output_hidden_states: bool = False,
    ) -> dict[str, Any]:
        """input_ids (B, L) int; attention_mask (B, L) (nonzero: a real token; None: no
        padding mask, only the causal one, as SD 1.5 calls it); skip: leave out the last
        `skip` layers (clip skip, see the module docstring).

        Returns {"last_hidden_state": (B, L, D) after the final LayerNorm, "pooled": (B, D)
        of last_hidden_state at the EOS token} and, with output_hidden_states,
        "hidden_states": the embeddings and each run layer's output, (B, L, D) each,
        before the final LayerNorm (transformers' hidden_states, shortened by `skip`).
        """
        layers = self.config.num_layers
        if not 0 <= skip < layers:
            raise InputError(f"CLIPTextModel: skip={skip} must be in [0, {layers})")
        input_ids = jnp.asarray(input_ids, jnp.int32)
        mask = causal_mask(input_ids.shape[1], attention_mask)
        x = self.embed(input_ids)
        states = [x]
        for layer in self.layers[: layers - skip]:
            x = layer(x, mask)
            states.append(x)
        last = self.final_norm(x)
        out = {
            "last_hidden_state": last,
            "pooled": pool_eos(last, input_ids, self.config.eos_token_id),
        }
        if output_hidden_states:
            out["hidden_states"] = tuple(states)
        return out


def param_count(config: CLIPTextConfig) -> int:
    """Number of parameters of CLIPTextModel(config), without building it."""
    d, h = config.hidden_size, config.intermediate_size
    layer = 4 * (d * d + d) + 4 * d + (d * h + h) + (h * d + d)
    return (config.vocab_size + config.max_position) * d + config.num_layers * layer + 2 * d


__all__ = [
    "CLIP_VIT_L14",
    "LEGACY_EOS_ID",
    "CLIPLayer",
    "CLIPTextConfig",
    "CLIPTextModel",
    "activate",
    "causal_mask",
    "param_count",
    "pool_eos",
    "quick_gelu",
]
