"""Building blocks shared by the denoisers: embeddings, N-d ResBlock, attention with an
attention-control interface, and the adaLN-Zero transformer block.

Conventions: channels-last; `spatial_dims` is 2 or 3; parameters are float32 and
`dtype` is the compute dtype (bf16 on accelerators); normalisations and softmax run in
float32. Dropout is active only when a call gets `rngs` (an `nnx.Rngs` with a "dropout"
stream); without it every module is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from jaxcf.errors import InputError
from jaxcf.models import conv3d, init

Dtype = Any
zeros = nnx.initializers.zeros_init()


def linear(
    cin: int,
    cout: int,
    *,
    zero_init: bool = False,
    kernel_init=None,
    use_bias: bool = True,
    dtype: Dtype = None,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """A dense layer with float32 parameters, PyTorch's default init (host-sampled, see
    jaxcf.models.init) unless zero_init or kernel_init says otherwise."""
    kernel_init = zeros if zero_init else (kernel_init or init.torch_default())
    return nnx.Linear(cin, cout, use_bias=use_bias, kernel_init=kernel_init, dtype=dtype, rngs=rngs)


# --- embeddings -----------------------------------------------------------------------------


def remat_call(module: nnx.Module, h: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
    """module(h, rngs), recomputed in the backward pass instead of keeping its activations.
    graph_updates=False keeps gradients with respect to the input alone working; inside a
    remat the Rngs counter does not advance, so the dropout key is drawn outside and handed
    in as a fresh Rngs."""
    key = None if rngs is None else rngs.dropout()
    return nnx.remat(_call_with_dropout_key, graph_updates=False)(module, h, key)


def _call_with_dropout_key(module: nnx.Module, h: jax.Array, key: jax.Array | None) -> jax.Array:
    return module(h, None if key is None else nnx.Rngs(dropout=key))


def timestep_embedding(
    t: jax.Array, dim: int, *, max_period: float = 10000.0, freq_shift: float = 0.0
) -> jax.Array:
    """Sinusoidal embedding [cos(t f), sin(t f)] of (B,) times -> (B, dim) float32.

    f_i = max_period ** (-i / (half - freq_shift)), i < half = dim // 2 (Vaswani et al.
    2017; guided-diffusion and DiT use freq_shift = 0, diffusers' DiT uses 1).
    """
    half = dim // 2
    freqs = jnp.exp(
        -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
    )
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    return jnp.pad(emb, ((0, 0), (0, dim % 2)))


class EmbeddingMLP(nnx.Module):
    """Linear -> SiLU -> Linear, the projection every conditioning vector goes through."""

    def __init__(
        self,
        din: int,
        hidden: int,
        *,
        dtype: Dtype = None,
        init_std: float | None = None,
        rngs: nnx.Rngs,
    ):
        kernel_init = None if init_std is None else init.normal(init_std)
        self.fc1 = linear(din, hidden, kernel_init=kernel_init, dtype=dtype, rngs=rngs)
        self.fc2 = linear(hidden, hidden, kernel_init=kernel_init, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.silu(self.fc1(x)))


class TimestepEmbedder(EmbeddingMLP):
    """Sinusoidal features of t -> Linear -> SiLU -> Linear."""

    def __init__(
        self,
        hidden: int,
        *,
        freq_dim: int = 256,
        freq_shift: float = 0.0,
        dtype: Dtype = None,
        init_std: float | None = None,
        rngs: nnx.Rngs,
    ):
        super().__init__(freq_dim, hidden, dtype=dtype, init_std=init_std, rngs=rngs)
        self.freq_dim, self.freq_shift = freq_dim, freq_shift

    def __call__(self, t: jax.Array) -> jax.Array:
        t = jnp.asarray(t)
        return super().__call__(timestep_embedding(t, self.freq_dim, freq_shift=self.freq_shift))


class LabelEmbedder(nnx.Module):
    """Class labels -> vectors, with a null row at index num_classes for classifier-free
    guidance (the condition that training replaces labels with, and sampling guides away
    from).

    zero_null: the null row embeds to zeros and never trains (PyTorch's padding_idx, as
    Diff-SCM's label table). Labels outside [0, num_classes] give NaN vectors (Embed's
    out-of-range fill), so a wrong label cannot pass unnoticed.
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        *,
        zero_null: bool = False,
        dtype: Dtype = None,
        rngs: nnx.Rngs,
    ):
        self.num_classes, self.zero_null = num_classes, zero_null
        self.table = nnx.Embed(
            num_classes + 1,
            dim,
            dtype=dtype,
            embedding_init=init.normal(0.02),
            rngs=rngs,
        )

    def __call__(self, labels: jax.Array) -> jax.Array:
        labels = jnp.asarray(labels, jnp.int32)
        e = self.table(labels)
        if self.zero_null:
            e = jnp.where((labels == self.num_classes)[..., None], 0.0, e).astype(e.dtype)
        return e


# --- normalisation, convolution, resampling --------------------------------------------------


class GroupNorm(nnx.Module):
    """GroupNorm computed in float32, returned in the input dtype (guided-diffusion's
    GroupNorm32). Parameters live in an `nnx.GroupNorm` (`.norm.scale`, `.norm.bias`, the
    names converters and checkpoints use); the statistics are computed here.

    Why not nnx.GroupNorm's own call: it reduces over (spatial, channels-in-group) of a
    (B, ..., G, C/G) view, which XLA:CPU runs 3-6x slower than reducing the spatial axes
    first (a (B, C) column sum, vectorised over channels) and then the small group axis.
    The statistics are two-pass (mean, then the mean of squared deviations), as torch's
    GroupNorm, rather than E[x^2] - E[x]^2.
    """

    def __init__(self, channels: int, groups: int = 32, eps: float = 1e-5, *, rngs: nnx.Rngs):
        groups = math.gcd(groups, channels)  # toy widths below 32 still normalise in groups
        self.groups, self.eps = groups, eps
        self.norm = nnx.GroupNorm(
            channels, num_groups=groups, epsilon=eps, dtype=jnp.float32, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, ..., C) -> (B, ..., C), statistics over every axis but B, per channel group."""
        h = x.astype(jnp.float32)
        batch, channels = h.shape[0], h.shape[-1]
        spatial = tuple(range(1, h.ndim - 1))
        count = math.prod(h.shape[1:-1]) * (channels // self.groups)

        def group_mean(v: jax.Array) -> jax.Array:  # (B, ..., C) -> (B, 1.., C), per group
            per_group = v.sum(spatial).reshape(batch, self.groups, -1).sum(-1) / count
            per_channel = jnp.repeat(per_group, channels // self.groups, axis=1)
            return per_channel.reshape((batch,) + (1,) * len(spatial) + (channels,))

        centred = h - group_mean(h)
        inv_std = lax.rsqrt(group_mean(jnp.square(centred)) + self.eps)
        y = centred * (inv_std * self.norm.scale[...]) + self.norm.bias[...]
        return y.astype(x.dtype)


def conv(
    spatial_dims: int,
    cin: int,
    cout: int,
    kernel: int = 3,
    *,
    stride: int = 1,
    padding: Any = "SAME",
    zero_init: bool = False,
    bias: bool = True,
    kernel_init: Callable | None = None,
    dtype: Dtype = None,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """An N-d convolution with float32 parameters; 3-D ones run as 2-D convolutions over
    depth offsets on CPU (jaxcf.models.conv3d), natively elsewhere. padding: "SAME", or an
    int p for p voxels on each side of every axis. The kernel starts as PyTorch's default
    (kernel_init replaces it; zero_init: zeros), the bias at zero."""
    if isinstance(padding, int):
        padding = ((padding, padding),) * spatial_dims
    if kernel_init is None:
        kernel_init = zeros if zero_init else init.torch_default()
    return nnx.Conv(
        cin,
        cout,
        (kernel,) * spatial_dims,
        strides=(stride,) * spatial_dims,
        padding=padding,
        use_bias=bias,
        kernel_init=kernel_init,
        dtype=dtype,
        conv_general_dilated=conv3d.conv_general_dilated,
        rngs=rngs,
    )


def instance_norm(x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Instance norm without affine (torch InstanceNormNd's defaults): per item and channel
    over space, two-pass statistics in float32. x (B, *spatial, C)."""
    h = x.astype(jnp.float32)
    axes = tuple(range(1, h.ndim - 1))
    centred = h - h.mean(axes, keepdims=True)
    var = jnp.square(centred).mean(axes, keepdims=True)
    return (centred * lax.rsqrt(var + eps)).astype(x.dtype)


def avg_pool2(x: jax.Array) -> jax.Array:
    """2x average pooling over every spatial axis of (B, ..., C)."""
    split = [x.shape[0]]
    for n in x.shape[1:-1]:
        split += [n // 2, 2]
    pooled = x.reshape((*split, x.shape[-1]))
    return pooled.mean(axis=tuple(range(2, 2 * (x.ndim - 2) + 1, 2)))


def upsample_nearest2(x: jax.Array) -> jax.Array:
    """2x nearest-neighbour upsampling over every spatial axis of (B, ..., C)."""
    for axis in range(1, x.ndim - 1):
        x = jnp.repeat(x, 2, axis=axis)
    return x


class Downsample(nnx.Module):
    """Halve the resolution: strided 3x3 conv, or average pooling when use_conv=False."""

    def __init__(
        self,
        spatial_dims: int,
        cin: int,
        cout: int,
        use_conv: bool = True,
        *,
        dtype=None,
        rngs: nnx.Rngs,
    ):
        if not use_conv and cin != cout:
            raise InputError("pooling cannot change the channel count")
        self.op = (
            conv(spatial_dims, cin, cout, 3, stride=2, padding=1, dtype=dtype, rngs=rngs)
            if use_conv
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return avg_pool2(x) if self.op is None else self.op(x)


class Upsample(nnx.Module):
    """Double the resolution: nearest neighbour, then an optional 3x3 conv."""

    def __init__(
        self,
        spatial_dims: int,
        cin: int,
        cout: int,
        use_conv: bool = True,
        *,
        dtype=None,
        rngs: nnx.Rngs,
    ):
        if not use_conv and cin != cout:
            raise InputError("nearest upsampling cannot change the channel count")
        self.op = conv(spatial_dims, cin, cout, 3, dtype=dtype, rngs=rngs) if use_conv else None

    def __call__(self, x: jax.Array) -> jax.Array:
        x = upsample_nearest2(x)
        return x if self.op is None else self.op(x)


# --- ResBlock ---------------------------------------------------------------------------------


class ResBlock(nnx.Module):
    """ADM residual block (Dhariwal & Nichol 2021), N-d.

    GroupNorm -> SiLU -> [resample] -> conv3x3, embedding projection (added, or
    scale-shift "AdaGN": norm(h) * (1 + scale) + shift), GroupNorm -> SiLU -> dropout ->
    zero-initialised conv3x3; skip is identity or a 1x1 conv. up/down resample both paths
    inside the block (nearest / average pooling), as guided-diffusion's resblock_updown.
    emb_dim=None makes an unconditional block (the VAE's).
    """

    def __init__(
        self,
        spatial_dims: int,
        cin: int,
        cout: int,
        emb_dim: int | None = None,
        *,
        dropout: float = 0.0,
        scale_shift: bool = True,
        up: bool = False,
        down: bool = False,
        groups: int = 32,
        eps: float = 1e-5,
        zero_out: bool = True,
        dtype: Dtype = None,
        rngs: nnx.Rngs,
    ):
        self.up, self.down, self.scale_shift = up, down, scale_shift
        self.norm1 = GroupNorm(cin, groups, eps, rngs=rngs)
        self.conv1 = conv(spatial_dims, cin, cout, dtype=dtype, rngs=rngs)
        width = 2 * cout if scale_shift else cout
        self.emb_proj = None if emb_dim is None else linear(emb_dim, width, dtype=dtype, rngs=rngs)
        self.norm2 = GroupNorm(cout, groups, eps, rngs=rngs)
        self.dropout = nnx.Dropout(dropout)
        self.conv2 = conv(spatial_dims, cout, cout, zero_init=zero_out, dtype=dtype, rngs=rngs)
        self.skip = (
            None if cin == cout else conv(spatial_dims, cin, cout, 1, dtype=dtype, rngs=rngs)
        )

    def _resample(self, x: jax.Array) -> jax.Array:
        if self.up:
            return upsample_nearest2(x)
        return avg_pool2(x) if self.down else x

    def __call__(self, x: jax.Array, emb: jax.Array | None = None, rngs: nnx.Rngs | None = None):
        h = jax.nn.silu(self.norm1(x))
        h = self.conv1(self._resample(h))
        x = self._resample(x)
        if self.emb_proj is not None:
            e = self.emb_proj(jax.nn.silu(emb)).astype(h.dtype)
            e = e.reshape(e.shape[:1] + (1,) * (h.ndim - 2) + e.shape[1:])
            if self.scale_shift:
                scale, shift = jnp.split(e, 2, axis=-1)
                h = self.norm2(h) * (1 + scale) + shift
            else:
                h = self.norm2(h + e)
        else:
            h = self.norm2(h)
        h = self.dropout(jax.nn.silu(h), deterministic=rngs is None, rngs=rngs)
        h = self.conv2(h)
        return (x if self.skip is None else self.skip(x)) + h


# --- attention ------------------------------------------------------------------------------


class AttentionEdit(NamedTuple):
    """Edits one attention layer applies (all optional, broadcastable to (B, H, Q, K)).

    bias: added to the logits. mask: bool, False blocks a query-key pair.
    prob_scale: multiplies the softmax probabilities (e.g. (1 + eta * Omega) on one
    context token, Zhang et al. 2025); renormalize: rescale rows to sum to 1 afterwards.
    return_probs: record the probabilities (after edits) as this layer's attention map.
    """

    bias: jax.Array | None = None
    mask: jax.Array | None = None
    prob_scale: jax.Array | None = None
    renormalize: bool = False
    return_probs: bool = False


def with_mask(edit: AttentionEdit | None, mask: jax.Array | None) -> AttentionEdit | None:
    """`edit` with a key-padding mask added (combined with any mask the edit already has)."""
    if mask is None:
        return edit
    edit = edit or AttentionEdit()
    return edit._replace(mask=mask if edit.mask is None else mask & edit.mask)


def context_key_mask(context_mask: jax.Array | None) -> jax.Array | None:
    """(B, L) validity of context tokens -> (B, 1, 1, L) boolean attention mask."""
    return None if context_mask is None else context_mask.astype(bool)[:, None, None, :]


# control(layer_name, kind, spatial_shape) -> AttentionEdit | None; kind is "self" or "cross".
AttentionControl = Callable[[str, str, tuple], AttentionEdit | None]


def attention(
    q: jax.Array, k: jax.Array, v: jax.Array, edit: AttentionEdit | None = None
) -> tuple[jax.Array, jax.Array | None]:
    """Multi-head attention; q (B, Q, H, D), k / v (B, K, H, D) -> ((B, Q, H, D), probs).

    Without probability edits or maps this is jax.nn.dot_product_attention: on a GPU with
    bf16 / fp16 inputs it asks for cuDNN's fused flash attention and falls back to XLA's
    implementation where cuDNN refuses the shapes (the XLA path materialises the (B, H, Q,
    K) logits; untested here: this project's machines have no GPU). Otherwise an explicit
    float32 softmax path gives the same numbers plus the (B, H, Q, K) probabilities.
    """
    edit = edit or AttentionEdit()
    if edit.prob_scale is None and not edit.return_probs:
        return _fused_attention(q, k, v, edit.bias, edit.mask), None
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    logits = logits / math.sqrt(q.shape[-1])
    if edit.bias is not None:
        logits = logits + edit.bias
    if edit.mask is not None:
        logits = jnp.where(edit.mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    if edit.prob_scale is not None:
        probs = probs * edit.prob_scale
        if edit.renormalize:
            probs = probs / jnp.sum(probs, axis=-1, keepdims=True)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)
    return out, probs


def _fused_attention(q, k, v, bias, mask) -> jax.Array:
    if jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16):
        try:
            return jax.nn.dot_product_attention(
                q, k, v, bias=bias, mask=mask, implementation="cudnn"
            )
        except (NotImplementedError, ValueError, TypeError):
            pass  # shapes or masks cuDNN does not support: use XLA below
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask)


def _heads(x: jax.Array, heads: int) -> jax.Array:
    return x.reshape((*x.shape[:2], heads, x.shape[-1] // heads))


class SpatialAttention(nnx.Module):
    """Self-attention over the positions of a 2-D or 3-D feature map (ADM AttentionBlock),
    optionally with cross-attention to context tokens.

    kv_context_dim: GLIDE / Diff-SCM attention conditioning: context tokens are projected
    (the per-block "encoder_kv") and concatenated to this block's keys and values.
    cross_context_dim: a separate cross-attention sub-block (queries from the map, keys and
    values from context tokens, e.g. text), added after self-attention.
    Both projections out are zero-initialised, so a new block starts as the identity.
    """

    def __init__(
        self,
        channels: int,
        *,
        heads: int = 1,
        head_channels: int | None = None,
        groups: int = 32,
        kv_context_dim: int | None = None,
        cross_context_dim: int | None = None,
        self_attention: bool = True,
        name: str = "attn",
        dtype: Dtype = None,
        rngs: nnx.Rngs,
    ):
        if head_channels:
            if channels % head_channels:
                raise InputError(f"{channels} channels do not split into heads of {head_channels}")
            heads = channels // head_channels
        if channels % heads:
            raise InputError(f"{channels} channels do not split into {heads} heads")
        self.heads, self.name = heads, name
        lin = lambda i, o, **kw: linear(i, o, dtype=dtype, rngs=rngs, **kw)
        self.norm = GroupNorm(channels, groups, rngs=rngs) if self_attention else None
        self.qkv = lin(channels, 3 * channels) if self_attention else None
        self.context_kv = (
            lin(kv_context_dim, 2 * channels) if kv_context_dim and self_attention else None
        )
        self.proj = lin(channels, channels, zero_init=True) if self_attention else None
        self.cross = (
            CrossAttention(
                channels,
                cross_context_dim,
                heads=heads,
                groups=groups,
                name=f"{name}.cross",
                dtype=dtype,
                rngs=rngs,
            )
            if cross_context_dim
            else None
        )

    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        context_mask: jax.Array | None = None,
        control: AttentionControl | None = None,
        kv_context: jax.Array | None = None,
    ) -> jax.Array:
        """x (B, *spatial, C); context (B, L, D) for cross-attention with its (B, L) mask;
        kv_context (B, L', D') tokens appended to the keys and values (defaults to context)."""
        spatial = x.shape[1:-1]
        kv_context = context if kv_context is None else kv_context
        kv_mask = context_mask if kv_context is context else None
        if self.qkv is not None:
            tokens = self.norm(x).reshape(x.shape[0], -1, x.shape[-1])
            q, k, v = jnp.split(self.qkv(tokens), 3, axis=-1)
            mask = None
            if self.context_kv is not None:
                if kv_context is None:
                    raise InputError(f"{self.name}: attention conditioning needs context tokens")
                ck, cv = jnp.split(self.context_kv(kv_context.astype(tokens.dtype)), 2, axis=-1)
                k, v = jnp.concatenate([k, ck], 1), jnp.concatenate([v, cv], 1)
                if kv_mask is not None:
                    own = jnp.ones((x.shape[0], tokens.shape[1]), bool)
                    mask = jnp.concatenate([own, kv_mask.astype(bool)], 1)[:, None, None, :]
            edit = control(self.name, "self", spatial) if control else None
            edit = with_mask(edit, mask)
            out, probs = attention(
                _heads(q, self.heads), _heads(k, self.heads), _heads(v, self.heads), edit
            )
            if probs is not None and edit.return_probs:
                self.sow(nnx.Intermediate, "attention_probs", probs)
            out = self.proj(out.reshape(tokens.shape))
            x = x + out.reshape(x.shape).astype(x.dtype)
        if self.cross is not None:
            x = self.cross(x, context, context_mask, control)
        return x


class CrossAttention(nnx.Module):
    """Cross-attention from a feature map (B, ..., C) to context tokens (B, L, D)."""

    def __init__(
        self,
        channels: int,
        context_dim: int,
        *,
        heads: int = 1,
        groups: int = 32,
        name: str = "cross",
        dtype: Dtype = None,
        rngs: nnx.Rngs,
    ):
        self.heads, self.name = heads, name
        self.norm = GroupNorm(channels, groups, rngs=rngs)
        self.q = linear(channels, channels, use_bias=False, dtype=dtype, rngs=rngs)
        self.kv = linear(context_dim, 2 * channels, use_bias=False, dtype=dtype, rngs=rngs)
        self.proj = linear(channels, channels, zero_init=True, dtype=dtype, rngs=rngs)

    def __call__(self, x, context, context_mask=None, control=None):
        if context is None:
            raise InputError(f"{self.name}: cross-attention needs context tokens (cond['context'])")
        tokens = self.norm(x).reshape(x.shape[0], -1, x.shape[-1])
        q = _heads(self.q(tokens), self.heads)
        k, v = (
            _heads(a, self.heads) for a in jnp.split(self.kv(context.astype(tokens.dtype)), 2, -1)
        )
        edit = control(self.name, "cross", x.shape[1:-1]) if control else None
        edit = with_mask(edit, context_key_mask(context_mask))
        out, probs = attention(q, k, v, edit)
        if probs is not None and edit.return_probs:
            self.sow(nnx.Intermediate, "attention_probs", probs)
        out = self.proj(out.reshape(tokens.shape))
        return x + out.reshape(x.shape).astype(x.dtype)


# --- adaLN-Zero transformer block ---------------------------------------------------------------


def torch_layer_norm(dim: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """An affine LayerNorm computed as torch.nn.LayerNorm does (float32, two-pass variance):
    BERT's eps of 1e-12 leaves no slack for E[x^2] - E[x]^2 cancellation, and converted
    text towers must match their torch originals."""
    return nnx.LayerNorm(dim, epsilon=eps, dtype=jnp.float32, use_fast_variance=False, rngs=rngs)


def layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """LayerNorm over the last axis without affine parameters, computed in float32 (DiT's
    norms, whose scale and shift come from adaLN instead)."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, -1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), -1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """x * (1 + scale) + shift with per-sample (B, D) shift / scale over tokens (B, N, D)."""
    return x * (1 + scale[:, None]) + shift[:, None]


class AdaLNZeroBlock(nnx.Module):
    """DiT block with adaLN-Zero conditioning (Peebles & Xie 2023, Fig. 3).

    (shift, scale, gate) x 2 come from a zero-initialised projection of the conditioning
    vector, so every block starts as the identity. Attention uses one fused qkv projection
    (the reference checkpoint layout); an optional cross-attention sub-block attends to
    context tokens.
    """

    def __init__(
        self,
        hidden: int,
        heads: int,
        *,
        mlp_ratio: float = 4.0,
        context_dim: int | None = None,
        name: str = "block",
        dtype: Dtype = None,
        rngs: nnx.Rngs,
    ):
        xavier = init.xavier_uniform()
        lin = lambda i, o, k=xavier: linear(i, o, kernel_init=k, dtype=dtype, rngs=rngs)
        self.heads, self.name = heads, name
        self.qkv = lin(hidden, 3 * hidden)
        self.proj = lin(hidden, hidden)
        mlp_hidden = int(hidden * mlp_ratio)
        self.fc1 = lin(hidden, mlp_hidden)
        self.fc2 = lin(mlp_hidden, hidden)
        self.ada = lin(hidden, 6 * hidden, zeros)
        has_cross = bool(context_dim)
        self.cross_norm = (
            nnx.LayerNorm(hidden, epsilon=1e-6, dtype=jnp.float32, rngs=rngs) if has_cross else None
        )
        self.cross_q = lin(hidden, hidden) if has_cross else None
        self.cross_kv = lin(context_dim, 2 * hidden) if has_cross else None
        self.cross = lin(hidden, hidden, zeros) if has_cross else None

    def __call__(self, x, c, context=None, context_mask=None, control=None, grid=None):
        """x (B, N, D) tokens, c (B, D) conditioning vector."""
        shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(self.ada(jax.nn.silu(c)), 6, -1)
        h = modulate(layer_norm(x), shift1, scale1)
        q, k, v = (_heads(a, self.heads) for a in jnp.split(self.qkv(h), 3, -1))
        edit = control(self.name, "self", grid) if control else None
        out, probs = attention(q, k, v, edit)
        if probs is not None and edit.return_probs:
            self.sow(nnx.Intermediate, "attention_probs", probs)
        x = x + gate1[:, None] * self.proj(out.reshape(x.shape))
        if self.cross is not None:
            if context is None:
                raise InputError(
                    f"{self.name}: cross-attention needs context tokens (cond['context'])"
                )
            hq = _heads(
                self.cross_q(self.cross_norm(x.astype(jnp.float32)).astype(x.dtype)), self.heads
            )
            ck, cv = (
                _heads(a, self.heads)
                for a in jnp.split(self.cross_kv(context.astype(x.dtype)), 2, -1)
            )
            cedit = control(f"{self.name}.cross", "cross", grid) if control else None
            cedit = with_mask(cedit, context_key_mask(context_mask))
            cout, cprobs = attention(hq, ck, cv, cedit)
            if cprobs is not None and cedit.return_probs:
                self.sow(nnx.Intermediate, "cross_attention_probs", cprobs)
            x = x + self.cross(cout.reshape(x.shape))
        h = modulate(layer_norm(x), shift2, scale2)
        x = x + gate2[:, None] * self.fc2(jax.nn.gelu(self.fc1(h), approximate=True))
        return x
