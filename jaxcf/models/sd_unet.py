"""Stable Diffusion 1.x's latent UNet (Rombach et al. 2022) in Flax NNX: the architecture
of diffusers' `UNet2DConditionModel` as SD 1.5 configures it (860M parameters).

    model(x, t, context, *, context_mask=None, control=None, return_attention=False)
        -> eps (B, H, W, C_out) float32            [, maps {layer name: (B, heads, Q, K)}]

x (B, H, W, 4) channels-last latents, H and W multiples of 2 ** (levels - 1); t (B,) or
a scalar, int or float training timesteps; context (B, L, D) text tokens (CLIP ViT-L/14's
last hidden state for SD 1.5); context_mask (B, L) (nonzero: a real token; diffusers'
`encoder_attention_mask`; SD 1.5 itself runs without one).

Layout (diffusers' names, which the converter jaxcf.convert.diffusers_unet maps 1:1):
conv_in; time_embedding (sinusoid of width C0, then Linear-SiLU-Linear to 4 C0);
down_blocks (ResBlocks, each followed by a Transformer2D in the cross-attention blocks,
then a stride-2 conv except in the last block); mid_block (ResBlock, Transformer2D,
ResBlock); up_blocks (layers_per_block + 1 ResBlocks on [h, skip] concatenations, the
transformers, nearest 2x + conv except in the last block); GroupNorm-SiLU-conv_out.

Attention control: every attention (self and cross) asks `control(name, kind, (h, w))`
for an :class:`jaxcf.models.layers.AttentionEdit`, with names as diffusers' attention
modules (`down_blocks.0.attentions.1.transformer_blocks.0.attn1`, kind "self";
`....attn2`, kind "cross"; `mid_block...`, `up_blocks...`) and (h, w) the feature-map
size, so a control picks layers by name, kind or resolution (see :func:`select_maps`).
return_attention=True records every layer's (B, heads, h*w, K) probabilities.

Parameters are float32; `dtype` is the compute dtype of convs and dense layers (None:
float32); norms and softmax run in float32; the output is float32.

As a jaxcf denoiser, `jaxcf.models.build({"family": "sd_unet", "preset": "sd15"}, key)`
builds :class:`SDUNetDenoiser` (presets in PRESETS: "sd15", "sd21", "tiny"; fields are
SDUNetConfig's): apply_fn(params, x, t, {"context": ..., "context_mask": ...}) with the
same parameters, so the converter fills them, and the registry's attention maps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcf.errors import InputError
from jaxcf.models import layers as L

Dtype = Any
Maps = dict[str, jax.Array]

CROSS_DOWN, PLAIN_DOWN = "CrossAttnDownBlock2D", "DownBlock2D"
CROSS_UP, PLAIN_UP = "CrossAttnUpBlock2D", "UpBlock2D"
MID = "UNetMidBlock2DCrossAttn"


def _per_block(value: int | tuple[int, ...], n: int, name: str) -> tuple[int, ...]:
    """An int broadcast to n blocks, or a length-n tuple (diffusers accepts both)."""
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise InputError(f"SDUNetConfig: {name} needs {n} entries, got {value}")
    return value


@dataclasses.dataclass(frozen=True)
class SDUNetConfig:
    """Sizes of the UNet (defaults: Stable Diffusion 1.5, runwayml/stable-diffusion-v1-5).

    attention_head_dim: as in diffusers' UNet2DConditionModel config this is the NUMBER
    OF HEADS per attention layer, not their width (a historical misnomer diffusers keeps
    for compatibility: SD 1.5's 8 means 8 heads of 320/8, 640/8, 1280/8 channels); an int
    or one value per down block. num_attention_heads, when set, wins (diffusers' newer
    field with the same meaning). transformer_layers_per_block: BasicTransformerBlocks in
    each Transformer2D (int, or one per down block; the up blocks reuse them reversed).
    use_linear_projection: proj_in / proj_out are Linear layers (SD 2.x) instead of 1x1
    convs (SD 1.x).
    """

    in_channels: int = 4
    out_channels: int = 4
    sample_size: int = 64
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: tuple[str, ...] = (CROSS_DOWN, CROSS_DOWN, CROSS_DOWN, PLAIN_DOWN)
    up_block_types: tuple[str, ...] = (PLAIN_UP, CROSS_UP, CROSS_UP, CROSS_UP)
    layers_per_block: int = 2
    cross_attention_dim: int = 768
    attention_head_dim: int | tuple[int, ...] = 8
    num_attention_heads: int | tuple[int, ...] | None = None
    transformer_layers_per_block: int | tuple[int, ...] = 1
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    use_linear_projection: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0

    def __post_init__(self):
        n = len(self.block_out_channels)
        object.__setattr__(self, "block_out_channels", tuple(self.block_out_channels))
        for name in ("down_block_types", "up_block_types"):
            types = tuple(getattr(self, name))
            object.__setattr__(self, name, types)
            if len(types) != n:
                raise InputError(f"SDUNetConfig: {name} needs {n} entries, got {types}")
        for t in self.down_block_types:
            if t not in (CROSS_DOWN, PLAIN_DOWN):
                raise InputError(f"SDUNetConfig: unsupported down block type {t!r}")
        for t in self.up_block_types:
            if t not in (CROSS_UP, PLAIN_UP):
                raise InputError(f"SDUNetConfig: unsupported up block type {t!r}")
        for i, (ch, heads) in enumerate(zip(self.block_out_channels, self.heads, strict=True)):
            if ch % heads:
                raise InputError(
                    f"SDUNetConfig: block {i} has {ch} channels, not divisible into {heads} heads"
                )
            if ch % self.norm_num_groups:
                raise InputError(
                    f"SDUNetConfig: block {i} has {ch} channels, not divisible into "
                    f"norm_num_groups={self.norm_num_groups}"
                )
        _per_block(self.transformer_layers_per_block, n, "transformer_layers_per_block")

    @property
    def heads(self) -> tuple[int, ...]:
        """Heads per down block (diffusers: num_attention_heads or attention_head_dim)."""
        value = self.num_attention_heads or self.attention_head_dim
        return _per_block(value, len(self.block_out_channels), "attention_head_dim")

    @property
    def depths(self) -> tuple[int, ...]:
        """BasicTransformerBlocks per Transformer2D, per down block."""
        return _per_block(
            self.transformer_layers_per_block,
            len(self.block_out_channels),
            "transformer_layers_per_block",
        )

    @classmethod
    def from_diffusers(cls, cfg: Mapping[str, Any], **overrides: Any) -> SDUNetConfig:
        """From a diffusers UNet2DConditionModel config.json dict; options this
        implementation does not have (class embeddings, SDXL's added embeddings, other
        block types, ...) raise InputError naming the field."""
        # Fields whose non-default values change the network beyond this implementation.
        defaults = {
            "center_input_sample": False,
            "mid_block_type": MID,
            "only_cross_attention": False,
            "downsample_padding": 1,
            "mid_block_scale_factor": 1,
            "act_fn": "silu",
            "encoder_hid_dim": None,
            "dual_cross_attention": False,
            "class_embed_type": None,
            "addition_embed_type": None,
            "num_class_embeds": None,
            "resnet_time_scale_shift": "default",
            "resnet_skip_time_act": False,
            "resnet_out_scale_factor": 1.0,
            "time_embedding_type": "positional",
            "time_embedding_dim": None,
            "time_embedding_act_fn": None,
            "timestep_post_act": None,
            "time_cond_proj_dim": None,
            "conv_in_kernel": 3,
            "conv_out_kernel": 3,
            "attention_type": "default",
            "class_embeddings_concat": False,
            "mid_block_only_cross_attention": None,
            "cross_attention_norm": None,
            "reverse_transformer_layers_per_block": None,
        }
        for name, want in defaults.items():
            got = cfg.get(name, want)
            if got != want:
                raise InputError(
                    f"diffusers UNet config: {name}={got!r} is not supported (only {want!r})"
                )
        # Not checked: dropout (inference only) and upcast_attention (SD 2.1: float32
        # attention logits, as here in float32 compute and on the explicit-softmax path;
        # bf16 compute without maps or edits uses the fused kernel's precision).
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in cfg.items() if k in names and v is not None}
        for k, v in fields.items():
            if isinstance(v, list):
                fields[k] = tuple(v)
        if isinstance(fields.get("cross_attention_dim"), tuple):
            raise InputError(
                "diffusers UNet config: per-block cross_attention_dim is not supported"
            )
        fields.setdefault("sample_size", 64)
        return cls(**{**fields, **overrides})


# Stable Diffusion 1.5's UNet (also 1.1-1.4: the same architecture).
SD15 = SDUNetConfig()


# --- attention ------------------------------------------------------------------------------


class Attention(nnx.Module):
    """diffusers' Attention as SD uses it: to_q / to_k / to_v without bias, to_out with
    bias; scale 1 / sqrt(head width); heads split as (heads, width) along channels.

    sow_maps (static; set by :class:`SDUNetDenoiser`): sow the probabilities of an edit
    with return_probs=True as nnx.Intermediate "attention_probs", the registry's way
    (jaxcf.models.registry.attention_maps) of collecting maps under nnx.capture.
    """

    sow_maps: bool = False

    def __init__(
        self, dim: int, context_dim: int, heads: int, *, dtype: Dtype = None, rngs: nnx.Rngs
    ):
        lin = lambda i, o, bias: L.linear(i, o, use_bias=bias, dtype=dtype, rngs=rngs)
        self.heads = heads
        self.to_q = lin(dim, dim, False)
        self.to_k = lin(context_dim, dim, False)
        self.to_v = lin(context_dim, dim, False)
        self.to_out = lin(dim, dim, True)

    def __call__(
        self, x: jax.Array, context: jax.Array, edit: L.AttentionEdit | None
    ) -> tuple[jax.Array, jax.Array | None]:
        """x (B, Q, C), context (B, K, D) -> ((B, Q, C), probabilities (B, heads, Q, K) or
        None)."""
        split = lambda a: a.reshape((*a.shape[:2], self.heads, -1))  # (B, N, heads, width)
        q, k, v = split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))
        out, probs = L.attention(q, k, v, edit)
        if self.sow_maps and probs is not None and edit.return_probs:
            self.sow(nnx.Intermediate, "attention_probs", probs)
        return self.to_out(out.reshape((*x.shape[:2], -1))), probs


class FeedForward(nnx.Module):
    """GEGLU feed-forward (Shazeer 2020): proj to 2 x 4C, value * GELU(gate) (exact,
    erf; the value is the first half, as diffusers' GEGLU), then back to C."""

    def __init__(self, dim: int, *, mult: int = 4, dtype: Dtype = None, rngs: nnx.Rngs):
        self.proj = L.linear(dim, 2 * mult * dim, dtype=dtype, rngs=rngs)
        self.out = L.linear(mult * dim, dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        value, gate = jnp.split(self.proj(x), 2, axis=-1)
        return self.out(value * jax.nn.gelu(gate, approximate=False))


def _control_edit(control, name, kind, spatial, record: Maps | None) -> L.AttentionEdit | None:
    edit = control(name, kind, spatial) if control is not None else None
    if record is not None:
        edit = (edit or L.AttentionEdit())._replace(return_probs=True)
    return edit


class BasicTransformerBlock(nnx.Module):
    """Pre-LN block: x += attn1(LN1 x) (self); x += attn2(LN2 x, context) (cross);
    x += FF(LN3 x). LayerNorms are torch's (eps 1e-5, float32)."""

    def __init__(
        self,
        dim: int,
        context_dim: int,
        heads: int,
        *,
        name: str,
        dtype: Dtype = None,
        rngs: nnx.Rngs,
    ):
        self.name, self.dtype = name, dtype
        self.norm1 = L.torch_layer_norm(dim, 1e-5, rngs)
        self.attn1 = Attention(dim, dim, heads, dtype=dtype, rngs=rngs)
        self.norm2 = L.torch_layer_norm(dim, 1e-5, rngs)
        self.attn2 = Attention(dim, context_dim, heads, dtype=dtype, rngs=rngs)
        self.norm3 = L.torch_layer_norm(dim, 1e-5, rngs)
        self.ff = FeedForward(dim, dtype=dtype, rngs=rngs)

    def __call__(self, x, context, context_mask, spatial, control, record: Maps | None):
        """x (B, N, C) float32, context (B, L, D) -> (B, N, C) float32."""
        dtype = self.dtype or jnp.float32
        h = self.norm1(x).astype(dtype)
        edit = _control_edit(control, f"{self.name}.attn1", "self", spatial, record)
        out, probs = self.attn1(h, h, edit)
        if record is not None:
            record[f"{self.name}.attn1"] = probs
        x = x + out.astype(jnp.float32)
        h = self.norm2(x).astype(dtype)
        edit = _control_edit(control, f"{self.name}.attn2", "cross", spatial, record)
        edit = L.with_mask(edit, L.context_key_mask(context_mask))
        out, probs = self.attn2(h, context.astype(dtype), edit)
        if record is not None:
            record[f"{self.name}.attn2"] = probs
        x = x + out.astype(jnp.float32)
        return x + self.ff(self.norm3(x).astype(dtype)).astype(jnp.float32)


class Transformer2D(nnx.Module):
    """diffusers' Transformer2DModel on a feature map: GroupNorm (eps 1e-6) -> proj_in
    (1x1 conv, or Linear with use_linear_projection) -> BasicTransformerBlocks over the
    h*w positions (row-major, as torch's flatten of NCHW) -> proj_out -> + input."""

    def __init__(
        self,
        channels: int,
        context_dim: int,
        heads: int,
        *,
        depth: int = 1,
        groups: int = 32,
        linear_projection: bool = False,
        name: str,
        dtype: Dtype = None,
        rngs: nnx.Rngs,
    ):
        self.norm = L.GroupNorm(channels, groups, 1e-6, rngs=rngs)
        proj = (
            (lambda: L.linear(channels, channels, dtype=dtype, rngs=rngs))
            if linear_projection
            else (lambda: L.conv(2, channels, channels, 1, dtype=dtype, rngs=rngs))
        )
        self.proj_in = proj()
        self.transformer_blocks = nnx.List(
            [
                BasicTransformerBlock(
                    channels,
                    context_dim,
                    heads,
                    name=f"{name}.transformer_blocks.{i}",
                    dtype=dtype,
                    rngs=rngs,
                )
                for i in range(depth)
            ]
        )
        self.proj_out = proj()

    def __call__(self, x, context, context_mask, control, record: Maps | None):
        """x (B, h, w, C) -> (B, h, w, C)."""
        b, hh, ww, c = x.shape
        # A 1x1 conv and a Linear on channels-last positions are the same map.
        h = self.proj_in(self.norm(x)).reshape(b, hh * ww, c).astype(jnp.float32)
        for block in self.transformer_blocks:
            h = block(h, context, context_mask, (hh, ww), control, record)
        h = self.proj_out(h.astype(x.dtype).reshape(b, hh, ww, c))
        return x + h.astype(x.dtype)


# --- the UNet -------------------------------------------------------------------------------


class _Block(nnx.Module):
    """A down / up block: resnets, optional transformers after each, optional resampler."""

    def __init__(self, resnets, attentions, resample):
        self.resnets = nnx.List(resnets)
        self.attentions = nnx.List(attentions) if attentions else None
        self.resample = resample

    def layer(self, j, h, emb, context, context_mask, control, record):
        h = self.resnets[j](h, emb)
        if self.attentions is not None:
            h = self.attentions[j](h, context, context_mask, control, record)
        return h


class SDUNet(nnx.Module):
    """Stable Diffusion's conditional latent UNet; see the module docstring."""

    def __init__(
        self,
        config: SDUNetConfig = SD15,
        *,
        dtype: Dtype = None,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        self.config, self.dtype, self.remat = config, dtype, remat
        cfg, chans = config, config.block_out_channels
        groups, eps, ctx = config.norm_num_groups, config.norm_eps, config.cross_attention_dim
        c0, emb_dim, n = chans[0], 4 * chans[0], len(chans)

        def res(cin, cout):
            # diffusers' ResnetBlock2D ("default" time shift): the time projection is added
            # between conv1 and norm2 (AdaGN off); dropout 0 at inference.
            return L.ResBlock(
                2, cin, cout, emb_dim, scale_shift=False, groups=groups, eps=eps,
                dtype=dtype, rngs=rngs,
            )  # fmt: skip

        def transformer(ch, level, name):
            return Transformer2D(
                ch, ctx, cfg.heads[level], depth=cfg.depths[level], groups=groups,
                linear_projection=cfg.use_linear_projection, name=name, dtype=dtype, rngs=rngs,
            )  # fmt: skip

        self.conv_in = L.conv(2, cfg.in_channels, c0, dtype=dtype, rngs=rngs)
        self.time_embedding = L.EmbeddingMLP(c0, emb_dim, dtype=dtype, rngs=rngs)
        skips, down, ch = [c0], [], c0
        for i, (cout, kind) in enumerate(zip(chans, cfg.down_block_types, strict=True)):
            resnets, attns = [], []
            for j in range(cfg.layers_per_block):
                resnets.append(res(ch, cout))
                if kind == CROSS_DOWN:
                    attns.append(transformer(cout, i, f"down_blocks.{i}.attentions.{j}"))
                ch = cout
                skips.append(ch)
            resample = None
            if i < n - 1:  # padding 1 on both sides, as diffusers' downsample_padding=1
                resample = L.Downsample(2, ch, ch, True, dtype=dtype, rngs=rngs)
                skips.append(ch)
            down.append(_Block(resnets, attns, resample))
        self.down_blocks = nnx.List(down)
        self.mid_block = _Block(
            [res(ch, ch), res(ch, ch)], [transformer(ch, n - 1, "mid_block.attentions.0")], None
        )
        up = []
        for i, kind in enumerate(cfg.up_block_types):
            level = n - 1 - i
            cout, resnets, attns = chans[level], [], []
            for j in range(cfg.layers_per_block + 1):
                resnets.append(res(ch + skips.pop(), cout))
                if kind == CROSS_UP:
                    attns.append(transformer(cout, level, f"up_blocks.{i}.attentions.{j}"))
                ch = cout
            resample = L.Upsample(2, ch, ch, True, dtype=dtype, rngs=rngs) if level else None
            up.append(_Block(resnets, attns, resample))
        self.up_blocks = nnx.List(up)
        self.conv_norm_out = L.GroupNorm(ch, groups, eps, rngs=rngs)
        self.conv_out = L.conv(2, ch, cfg.out_channels, dtype=dtype, rngs=rngs)

    def time_features(self, t: jax.Array) -> jax.Array:
        """(B,) timesteps -> (B, C0) sinusoid: [cos, sin] with flip_sin_to_cos (SD), else
        [sin, cos]; frequencies 10000 ** (-i / (C0 / 2 - freq_shift))."""
        c0 = self.config.block_out_channels[0]
        emb = L.timestep_embedding(t, c0, freq_shift=self.config.freq_shift)
        if not self.config.flip_sin_to_cos:
            emb = jnp.concatenate([emb[:, c0 // 2 :], emb[:, : c0 // 2]], axis=-1)
        return emb

    def _check(self, x: jax.Array, t: jax.Array, context: jax.Array) -> jax.Array:
        cfg = self.config
        multiple = 2 ** (len(cfg.block_out_channels) - 1)
        if x.ndim != 4 or x.shape[-1] != cfg.in_channels:
            raise InputError(f"SDUNet: x must be (B, H, W, {cfg.in_channels}), got {x.shape}")
        if x.shape[1] % multiple or x.shape[2] % multiple:
            raise InputError(f"SDUNet: H and W must be multiples of {multiple}, got {x.shape}")
        if context is None or context.ndim != 3 or context.shape[-1] != cfg.cross_attention_dim:
            got = None if context is None else context.shape
            raise InputError(
                f"SDUNet: context must be (B, L, {cfg.cross_attention_dim}), got {got}"
            )
        t = jnp.asarray(t)
        if t.ndim == 0:
            t = jnp.full((x.shape[0],), t)
        if t.shape != (x.shape[0],):
            raise InputError(f"SDUNet: t must be a scalar or ({x.shape[0]},), got {t.shape}")
        return t

    def _layer(self, block: _Block, j: int, h: jax.Array, *args) -> jax.Array:
        """block.layer(j, h, emb, context, context_mask, control, record); with remat its
        activations are recomputed in the backward pass. graph_updates=False keeps a
        gradient with respect to the input alone working (parameters from an outer trace);
        a control may record maps (sow), so with one (or a record) the layer runs as is."""
        emb, context, context_mask, control, record = args
        if not self.remat or control is not None or record is not None:
            return block.layer(j, h, *args)

        def run(block, h, emb, context, context_mask):
            return block.layer(j, h, emb, context, context_mask, None, None)

        return nnx.remat(run, graph_updates=False)(block, h, emb, context, context_mask)

    def __call__(
        self,
        x: jax.Array,
        t: jax.Array,
        context: jax.Array,
        *,
        context_mask: jax.Array | None = None,
        control: L.AttentionControl | None = None,
        return_attention: bool = False,
    ) -> jax.Array | tuple[jax.Array, Maps]:
        """x (B, H, W, C_in), t (B,), context (B, L, D) -> (B, H, W, C_out) float32; with
        return_attention also {layer name: (B, heads, h*w, K) probabilities} for every
        self- (attn1) and cross- (attn2) attention, after the control's edits."""
        t = self._check(x, t, context)
        record: Maps | None = {} if return_attention else None
        dtype = self.dtype or jnp.float32
        emb = self.time_embedding(self.time_features(t).astype(dtype))
        args = (emb, context, context_mask, control, record)
        h = self.conv_in(x.astype(dtype))
        skips = [h]
        for block in self.down_blocks:
            for j in range(len(block.resnets)):
                h = self._layer(block, j, h, *args)
                skips.append(h)
            if block.resample is not None:
                h = block.resample(h)
                skips.append(h)
        mid = self.mid_block
        h = mid.attentions[0](mid.resnets[0](h, emb), context, context_mask, control, record)
        h = mid.resnets[1](h, emb)
        for block in self.up_blocks:
            for j in range(len(block.resnets)):
                # diffusers concatenates [h, skip] along channels, most recent skip first.
                h = self._layer(block, j, jnp.concatenate([h, skips.pop()], axis=-1), *args)
            if block.resample is not None:
                h = block.resample(h)
        out = self.conv_out(jax.nn.silu(self.conv_norm_out(h))).astype(jnp.float32)
        return (out, record) if return_attention else out


# --- the jaxcf.models.build family ("sd_unet") ------------------------------------------------


class SDUNetDenoiser(SDUNet):
    """SDUNet as the registry family "sd_unet": built from SDUNetConfig's fields as flat
    keyword arguments (defaults: SD 1.5), called as every jaxcf denoiser,

        model(x, t, cond, *, rngs=None, control=None) -> eps (B, H, W, C_out) float32

    with cond {"context": (B, L, D), "context_mask": (B, L) (optional)}. The parameters
    are SDUNet's, path for path, so jaxcf.convert.diffusers_unet fills them
    (`sd_unet_params(state, params, module.config)`). Attention maps leave by the registry's
    route: the layers whose control returns an AttentionEdit with return_probs=True sow
    their probabilities, and `apply_fn(..., control=c, return_attention=True)` names them
    as the control saw them (`down_blocks.0.attentions.0.transformer_blocks.0.attn2`: the
    sow path `<layer>.attn2.attention_probs` less its suffix). rngs is accepted for the
    contract and unused (SD's UNet has no dropout at inference).

    Note the call signature differs from SDUNet's (cond dict instead of context): an
    SDUNetDenoiser is an SDUNet for the converter and inspection, not for SDUNet's callers.
    """

    def __init__(
        self,
        *,
        in_channels: int = SD15.in_channels,
        out_channels: int = SD15.out_channels,
        sample_size: int = SD15.sample_size,
        block_out_channels: tuple[int, ...] = SD15.block_out_channels,
        down_block_types: tuple[str, ...] = SD15.down_block_types,
        up_block_types: tuple[str, ...] = SD15.up_block_types,
        layers_per_block: int = SD15.layers_per_block,
        cross_attention_dim: int = SD15.cross_attention_dim,
        attention_head_dim: int | tuple[int, ...] = SD15.attention_head_dim,
        num_attention_heads: int | tuple[int, ...] | None = SD15.num_attention_heads,
        transformer_layers_per_block: int | tuple[int, ...] = SD15.transformer_layers_per_block,
        norm_num_groups: int = SD15.norm_num_groups,
        norm_eps: float = SD15.norm_eps,
        use_linear_projection: bool = SD15.use_linear_projection,
        flip_sin_to_cos: bool = SD15.flip_sin_to_cos,
        freq_shift: float = SD15.freq_shift,
        dtype: Dtype = None,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        fields = dict(locals())
        config = SDUNetConfig(**{f.name: fields[f.name] for f in dataclasses.fields(SDUNetConfig)})
        super().__init__(config, dtype=dtype, remat=remat, rngs=rngs)
        for _, module in nnx.iter_modules(self):
            if isinstance(module, Attention):
                module.sow_maps = True

    def __call__(  # type: ignore[override]
        self,
        x: jax.Array,
        t: jax.Array,
        cond: Mapping[str, jax.Array] | None,
        *,
        rngs: nnx.Rngs | None = None,
        control: L.AttentionControl | None = None,
    ) -> jax.Array:
        """x (B, H, W, C_in), t (B,) or a scalar, cond {"context": (B, L, D),
        "context_mask": (B, L)} -> (B, H, W, C_out) float32."""
        del rngs  # no dropout
        if cond is None or cond.get("context") is None:
            got = None if cond is None else sorted(cond)
            raise InputError(
                "sd_unet: cond must hold the prompt's tokens, {'context': (B, L, "
                f"{self.config.cross_attention_dim}), 'context_mask': (B, L)}}; got {got}"
            )
        if cond.get("label") is not None:
            raise InputError(
                "sd_unet: cond['label'] given to the SD UNet, which has no class conditioning"
            )
        return super().__call__(
            x, t, cond["context"], context_mask=cond.get("context_mask"), control=control
        )


def sd_unet_config(model_config: Any) -> SDUNetConfig:
    """The SDUNetConfig of an "sd_unet" model config (preset and overrides applied), e.g.
    to convert a checkpoint into `models.build(model_config, key)`'s params."""
    from jaxcf.models.registry import model_kwargs  # the registry imports this module lazily

    family, kwargs = model_kwargs(model_config)
    if family != "sd_unet":
        raise InputError(f"sd_unet_config: model.family must be 'sd_unet', got {family!r}")
    kwargs.pop("dtype", None)
    kwargs.pop("remat", None)
    return SDUNetConfig(**kwargs)


def _preset(config: SDUNetConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


# The registry's presets (model config fields are SDUNetConfig's).
PRESETS: dict[str, dict[str, Any]] = {
    # runwayml/stable-diffusion-v1-5 (1.1-1.4 share it): 859,520,964 parameters.
    "sd15": _preset(SD15),
    # stabilityai/stable-diffusion-2-1 (768 px, v-prediction; 2-base has sample_size 64):
    # per-block heads of width 64, OpenCLIP ViT-H/14 context of width 1024, linear
    # proj_in / proj_out; 865,910,724 parameters (diffusers' count on torch's meta device).
    # Its upcast_attention holds in float32 compute; see SDUNetConfig.from_diffusers.
    "sd21": _preset(
        dataclasses.replace(
            SD15,
            sample_size=96,
            attention_head_dim=(5, 10, 20, 20),
            cross_attention_dim=1024,
            use_linear_projection=True,
        )
    ),
    # CPU tests: two levels, cross-attention at the top one (2 heads of 16), 8x8 latents.
    "tiny": _preset(
        SDUNetConfig(
            sample_size=8,
            block_out_channels=(32, 64),
            down_block_types=(CROSS_DOWN, PLAIN_DOWN),
            up_block_types=(PLAIN_UP, CROSS_UP),
            layers_per_block=1,
            cross_attention_dim=32,
            attention_head_dim=2,
            norm_num_groups=8,
        )
    ),
}


def select_maps(
    maps: Mapping[str, jax.Array],
    *,
    kind: str | None = None,
    place: str | None = None,
    size: tuple[int, int] | None = None,
) -> dict[str, jax.Array]:
    """The maps of `return_attention` filtered by kind ("self" / "cross"), place ("down",
    "mid", "up") and feature-map size (h, w) (matched by the query count h * w)."""
    keep = {}
    for name, probs in maps.items():
        if kind is not None and name.endswith(".attn1") != (kind == "self"):
            continue
        if place is not None and not name.startswith(f"{place}_block"):
            continue
        if size is not None and probs.shape[2] != size[0] * size[1]:
            continue
        keep[name] = probs
    return keep


def param_count(model: nnx.Module) -> int:
    """Number of parameters (works on abstract models from nnx.eval_shape)."""
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


__all__ = [
    "PRESETS",
    "SD15",
    "Attention",
    "BasicTransformerBlock",
    "FeedForward",
    "SDUNet",
    "SDUNetConfig",
    "SDUNetDenoiser",
    "Transformer2D",
    "param_count",
    "sd_unet_config",
    "select_maps",
]
