"""Swin-UNETR (Hatamizadeh et al. 2022) for 2-D / 3-D segmentation, in MONAI's layout:
the transformer segmenter of paper 002.

    model(x, *, rngs=None) -> logits (B, *spatial, out_channels) float32
x (B, *spatial, C_in) channels-last; every spatial side a multiple of patch_size ** 5 (32
for the usual patch of 2: the patch embedding and four patch mergings each halve it), and
not all of them equal to it (the deepest map would be one voxel, which instance norm
cannot normalise: torch raises there, so MONAI's network cannot run such inputs either).

Layout (monai.networks.nets.SwinUNETR with use_v2=False, parameter for parameter):

encoder, `swin_vit` (MONAI's swinViT): a patch embedding (conv, kernel = stride = patch,
with bias) to `feature_size` channels, then four stages; stage i works at width
feature_size * 2**i and holds depths[i] Swin blocks followed by a patch merging (the
2 x 2 (x 2) neighbours concatenated, LayerNorm, bias-free linear to twice the width). A
Swin block is pre-norm: LayerNorm -> window attention -> residual, LayerNorm -> MLP
(linear, exact GELU, linear; hidden mlp_ratio x width) -> residual. Window attention
splits the (zero-padded) map into windows of `window_size` tokens and attends inside each
with one learnt bias per relative offset and head; every second block rolls the map by
half a window first (shifted windows) and masks pairs of tokens that the roll brought
together from opposite borders (logit -100). The window shrinks to the map on sides not
larger than it, without shift there. The embedding and the output of every stage are
taken as skip features, each LayerNorm-ed without parameters when `normalize`.

decoder: residual conv blocks (UnetResBlock: conv 3 -> instance norm -> LeakyReLU(0.01)
-> conv 3 -> instance norm, plus the input (through conv 1 + instance norm when the width
changes), LeakyReLU) on the input (`encoder1`) and on the skip features (`encoder2-4`, and
`encoder10` on the deepest); up blocks (`decoder5-1`: bias-free transposed conv of kernel
and stride 2, concatenation with the skip, residual conv block) back to full resolution,
then a 1x1 conv with bias (`out`). All decoder convolutions except `out` are bias-free.

Instance norm is MONAI's default ("instance": InstanceNorm without affine parameters, eps
1e-5, statistics of each item and channel over space), so it holds no parameters and needs
no running statistics: unlike BatchNorm (jaxcf.models.densenet says why jaxcf avoids it),
an item's logits never depend on its batch. Other norm_name values are not supported.

Quirk kept for checkpoint parity: where the window shrinks to the map (the deep stages at
small inputs), MONAI takes the top-left n x n corner of the full window's relative-position
index, not the index of the smaller window; this module does the same, so converted
checkpoints give MONAI's numbers.

Inference only in the sense of rates: dropout, attention dropout and drop path are MONAI's
0 defaults and not implemented; `rngs` is accepted for the common model interface.
tests/test_swin_unetr.py checks the logits against MONAI's SwinUNETR
(jaxcf.convert.swin_unetr converts its state dicts).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcf.errors import InputError
from jaxcf.models import init
from jaxcf.models import layers as L

__all__ = ["PRESETS", "SwinUNETR", "window_and_shift"]

_LN_EPS = 1e-5  # torch.nn.LayerNorm's and F.layer_norm's default
_MASKED = -100.0  # MONAI's logit offset for token pairs from different regions


# --- geometry -----------------------------------------------------------------------------------


def window_and_shift(
    size: Sequence[int], window: Sequence[int], shift: Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The window and shift used on a map of `size`: on a side not larger than the window,
    the window is the side and there is no shift (MONAI's get_window_size)."""
    win = tuple(s if s <= w else w for s, w in zip(size, window, strict=True))
    sh = tuple(0 if s <= w else h for s, w, h in zip(size, window, shift, strict=True))
    return win, sh


def _partition(x: jax.Array, window: Sequence[int]) -> jax.Array:
    """(B, *S, C) with S a multiple of `window` -> (B, windows, tokens per window, C); windows
    in row-major order of their grid, tokens row-major inside a window (jax or numpy)."""
    b, *sizes, c = x.shape
    split = [b]
    for s, w in zip(sizes, window, strict=True):
        split += [s // w, w]
    n = len(sizes)
    grid_axes = [1 + 2 * i for i in range(n)]
    inner_axes = [2 + 2 * i for i in range(n)]
    x = x.reshape(*split, c).transpose(0, *grid_axes, *inner_axes, 2 * n + 1)
    return x.reshape(b, -1, math.prod(window), c)


def _merge_windows(x: jax.Array, window: Sequence[int], sizes: Sequence[int]) -> jax.Array:
    """The inverse of _partition: (B, windows, tokens, C) -> (B, *sizes, C)."""
    b, c, n = x.shape[0], x.shape[-1], len(sizes)
    grid = [s // w for s, w in zip(sizes, window, strict=True)]
    x = x.reshape(b, *grid, *window, c)
    order = [0]
    for i in range(n):
        order += [1 + i, 1 + n + i]
    return x.transpose(*order, 2 * n + 1).reshape(b, *sizes, c)


def _relative_index(window: Sequence[int]) -> np.ndarray:
    """(N, N) row into the relative-position bias table for each pair of tokens of a window
    of N = prod(window) tokens: the offset per axis, shifted to >= 0, read as a mixed-radix
    number with radices 2 w - 1."""
    coords = np.stack(np.meshgrid(*[np.arange(w) for w in window], indexing="ij"), -1)
    coords = coords.reshape(-1, len(window))
    offsets = coords[:, None, :] - coords[None, :, :] + (np.asarray(window) - 1)
    radices = [2 * w - 1 for w in window]
    weights = [math.prod(radices[i + 1 :]) for i in range(len(window))]
    return (offsets * np.asarray(weights)).sum(-1)


def _shift_mask(padded: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> np.ndarray:
    """(windows, N, N) additive mask for a rolled map of `padded` size: along each axis the
    last window is cut where the roll wrapped around (regions [0, P - w), [P - w, P - s),
    [P - s, P), assigned in that order so that later ones win, as MONAI's slices); pairs of
    tokens from different regions get -100."""
    labels = []
    for p, w, s in zip(padded, window, shift, strict=True):
        lab = np.zeros(p, np.int64)
        lab[slice(None, -w)] = 0
        lab[slice(-w, -s if s else 0)] = 1  # -0 == 0: empty, as MONAI's slice(-w, -0)
        lab[slice(-s, None)] = 2  # s = 0: slice(0, None), the whole axis
        labels.append(lab)
    region = np.zeros(tuple(padded), np.int64)
    for axis, lab in enumerate(labels):
        shape = [1] * len(padded)
        shape[axis] = -1
        region = region * 3 + lab.reshape(shape)
    tokens = _partition(region[None, ..., None], window)[0, ..., 0]  # numpy: a constant
    differs = tokens[:, None, :] != tokens[:, :, None]
    return np.where(differs, _MASKED, 0.0).astype(np.float32)


# --- layers -------------------------------------------------------------------------------------


def _conv(dims, cin, cout, kernel, *, stride=1, padding=0, bias=False, dtype, rngs) -> nnx.Conv:
    """A convolution with PyTorch's default init (MONAI's Convolution keeps it)."""
    return L.conv(dims, cin, cout, kernel, stride=stride, padding=padding, bias=bias, dtype=dtype,
                  rngs=rngs)  # fmt: skip


def _lrelu(x: jax.Array) -> jax.Array:
    return jax.nn.leaky_relu(x, 0.01)


class _TransposedConv(nnx.Module):
    """Bias-free transposed convolution with kernel = stride = `factor` (no overlap, no
    padding): each input voxel writes one factor^dims block. kernel (*k, C_in, C_out)."""

    def __init__(self, dims: int, cin: int, cout: int, factor: int = 2, *, dtype, rngs):
        self.dims, self.factor, self.dtype = dims, factor, dtype
        shape = (factor,) * dims + (cin, cout)
        self.kernel = nnx.Param(init.torch_default()(rngs.params(), shape, jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        k = self.kernel[...].astype(dtype)
        b, *sizes, _ = x.shape
        if self.dims == 3:
            y = jnp.einsum("bdhwc,xyzco->bdxhywzo", x.astype(dtype), k)
        else:
            y = jnp.einsum("bhwc,xyco->bhxwyo", x.astype(dtype), k)
        return y.reshape(b, *(s * self.factor for s in sizes), k.shape[-1])


class _ResBlock(nnx.Module):
    """MONAI's UnetResBlock (stride 1, kernel 3, instance norm, LeakyReLU 0.01)."""

    def __init__(self, dims: int, cin: int, cout: int, *, dtype, rngs):
        kw = dict(dtype=dtype, rngs=rngs)
        self.conv1 = _conv(dims, cin, cout, 3, padding=1, **kw)
        self.conv2 = _conv(dims, cout, cout, 3, padding=1, **kw)
        self.conv3 = _conv(dims, cin, cout, 1, **kw) if cin != cout else None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = _lrelu(L.instance_norm(self.conv1(x)))
        h = L.instance_norm(self.conv2(h))
        skip = x if self.conv3 is None else L.instance_norm(self.conv3(x))
        return _lrelu(h + skip)


class _UpBlock(nnx.Module):
    """MONAI's UnetrUpBlock with res_block=True: transposed conv 2 -> concat skip -> res
    block."""

    def __init__(self, dims: int, cin: int, cout: int, *, dtype, rngs):
        self.transp_conv = _TransposedConv(dims, cin, cout, dtype=dtype, rngs=rngs)
        self.conv_block = _ResBlock(dims, 2 * cout, cout, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, skip: jax.Array) -> jax.Array:
        h = self.transp_conv(x)
        return self.conv_block(jnp.concatenate([h, skip.astype(h.dtype)], axis=-1))


def _ln(dim: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return L.torch_layer_norm(dim, _LN_EPS, rngs)


class _WindowAttention(nnx.Module):
    """Multi-head self-attention inside windows with a learnt relative-position bias."""

    def __init__(self, dim, heads, window, qkv_bias, *, dtype, rngs):
        self.heads, self.window = heads, tuple(window)
        self.qkv = L.linear(dim, 3 * dim, use_bias=qkv_bias, dtype=dtype, rngs=rngs)
        self.proj = L.linear(dim, dim, dtype=dtype, rngs=rngs)
        rows = math.prod(2 * w - 1 for w in window)
        table = init.normal(0.02)(rngs.params(), (rows, heads), jnp.float32)
        self.relative_position_bias_table = nnx.Param(table)

    def __call__(self, tokens: jax.Array, mask: np.ndarray | None) -> jax.Array:
        """tokens (B, windows, N, C); mask (windows, N, N) or None -> (B, windows, N, C)."""
        b, nw, n, c = tokens.shape
        q, k, v = jnp.split(self.qkv(tokens.reshape(b * nw, n, c)), 3, axis=-1)
        q, k, v = (a.reshape(b * nw, n, self.heads, c // self.heads) for a in (q, k, v))
        # MONAI reads the first n x n entries of the full window's index, also when the
        # window shrank to a smaller map (module docstring).
        index = _relative_index(self.window)[:n, :n]
        bias = self.relative_position_bias_table[...][index.reshape(-1)]
        bias = bias.reshape(n, n, self.heads).transpose(2, 0, 1)[None]  # (1, H, N, N)
        if mask is not None:
            bias = bias + jnp.asarray(mask)[:, None]  # (windows, H, N, N)
            bias = jnp.broadcast_to(bias[None], (b, nw, self.heads, n, n))
            bias = bias.reshape(b * nw, self.heads, n, n)
        out, _ = L.attention(q, k, v, L.AttentionEdit(bias=bias.astype(q.dtype)))
        return self.proj(out.reshape(b * nw, n, c)).reshape(b, nw, n, c)


class _Mlp(nnx.Module):
    def __init__(self, dim, hidden, *, dtype, rngs):
        self.linear1 = L.linear(dim, hidden, dtype=dtype, rngs=rngs)
        self.linear2 = L.linear(hidden, dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear2(jax.nn.gelu(self.linear1(x), approximate=False))


class _SwinBlock(nnx.Module):
    """Pre-norm (shifted-)window attention and MLP, each with a residual."""

    def __init__(self, dim, heads, window, shift, mlp_ratio, qkv_bias, *, dtype, rngs):
        self.window, self.shift = tuple(window), tuple(shift)
        self.norm1 = _ln(dim, rngs)
        self.attn = _WindowAttention(dim, heads, window, qkv_bias, dtype=dtype, rngs=rngs)
        self.norm2 = _ln(dim, rngs)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio), dtype=dtype, rngs=rngs)

    def _attend(self, x: jax.Array) -> jax.Array:
        sizes = x.shape[1:-1]
        window, shift = window_and_shift(sizes, self.window, self.shift)
        h = self.norm1(x.astype(jnp.float32)).astype(x.dtype)
        pads = [(-s) % w for s, w in zip(sizes, window, strict=True)]
        h = jnp.pad(h, [(0, 0), *((0, p) for p in pads), (0, 0)])
        padded = h.shape[1:-1]
        axes = tuple(range(1, len(sizes) + 1))
        shifted = any(shift)
        mask = None
        if shifted:
            h = jnp.roll(h, [-s for s in shift], axes)
            mask = _shift_mask(padded, window, shift)
        h = self.attn(_partition(h, window), mask)
        h = _merge_windows(h, window, padded)
        if shifted:
            h = jnp.roll(h, list(shift), axes)
        return h[(slice(None), *(slice(0, s) for s in sizes))]

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self._attend(x)
        return x + self.mlp(self.norm2(x.astype(jnp.float32)).astype(x.dtype))


# Concatenation order of the 2^dims neighbours in a patch merging (offsets per axis).
_MERGE_ORDER = {
    ("merging", 3): [
        *[(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)],
        *[(1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1)],
    ],
    ("mergingv2", 3): list(itertools.product(range(2), repeat=3)),
    ("merging", 2): [(0, 0), (1, 0), (0, 1), (1, 1)],
    ("mergingv2", 2): [(0, 0), (1, 0), (0, 1), (1, 1)],
}


class _PatchMerging(nnx.Module):
    """2x downsampling: neighbours concatenated -> LayerNorm -> bias-free linear to 2 dim."""

    def __init__(self, dims, dim, mode, *, dtype, rngs):
        self.order = tuple(_MERGE_ORDER[(mode, dims)])  # static: hashable in the graphdef
        self.norm = _ln(2**dims * dim, rngs)
        self.reduction = L.linear(2**dims * dim, 2 * dim, use_bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        sizes = x.shape[1:-1]
        x = jnp.pad(x, [(0, 0), *((0, s % 2) for s in sizes), (0, 0)])
        parts = [x[(slice(None), *(slice(o, None, 2) for o in offs))] for offs in self.order]
        h = jnp.concatenate(parts, axis=-1)
        return self.reduction(self.norm(h.astype(jnp.float32)).astype(x.dtype))


class _Stage(nnx.Module):
    """depth Swin blocks (every second one shifted) and a patch merging."""

    def __init__(self, dims, dim, depth, heads, window, mlp_ratio, qkv_bias, mode, *, dtype, rngs):
        half = tuple(w // 2 for w in window)
        self.blocks = nnx.List(
            [
                _SwinBlock(
                    dim,
                    heads,
                    window,
                    half if i % 2 else (0,) * dims,
                    mlp_ratio,
                    qkv_bias,
                    dtype=dtype,
                    rngs=rngs,
                )
                for i in range(depth)
            ]
        )
        self.downsample = _PatchMerging(dims, dim, mode, dtype=dtype, rngs=rngs)
        self.remat = False  # SwinUNETR(remat=True) sets it (MONAI's use_checkpoint)

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in self.blocks:
            # remat: keep each block's input only; its attention is recomputed backward
            x = nnx.remat(_run_block, graph_updates=False)(block, x) if self.remat else block(x)
        return self.downsample(x)


def _run_block(block: nnx.Module, x: jax.Array) -> jax.Array:
    return block(x)


class _SwinTransformer(nnx.Module):
    """Patch embedding and four Swin stages; returns the five skip features."""

    def __init__(
        self,
        dims,
        cin,
        dim,
        patch,
        depths,
        heads,
        window,
        mlp_ratio,
        qkv_bias,
        mode,
        *,
        dtype,
        rngs,
    ):
        self.patch_embed = _conv(
            dims, cin, dim, patch, stride=patch, bias=True, dtype=dtype, rngs=rngs
        )
        self.layers = nnx.List(
            [
                _Stage(
                    dims,
                    dim * 2**i,
                    depth,
                    h,
                    window,
                    mlp_ratio,
                    qkv_bias,
                    mode,
                    dtype=dtype,
                    rngs=rngs,
                )
                for i, (depth, h) in enumerate(zip(depths, heads, strict=True))
            ]
        )

    def __call__(self, x: jax.Array, normalize: bool) -> list[jax.Array]:
        def out(h):  # parameter-free LayerNorm over channels (MONAI's proj_out)
            return L.layer_norm(h, _LN_EPS) if normalize else h

        h = self.patch_embed(x)
        features = [out(h)]
        for stage in self.layers:
            h = stage(h)
            features.append(out(h))
        return features


class SwinUNETR(nnx.Module):
    """Swin-UNETR segmenter; see the module docstring.

    window_size: an int or one per axis; feature_size: a multiple of 12 (as MONAI asks);
    depths / num_heads: four stages, num_heads[i] dividing feature_size * 2**i;
    downsample: "merging" (MONAI's default, v0.9.0 neighbour order) or "mergingv2".
    remat: recompute each Swin block in the backward pass (MONAI's use_checkpoint).
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        out_channels: int = 2,
        patch_size: int = 2,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int | Sequence[int] = 7,
        feature_size: int = 24,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_name: str = "instance",
        normalize: bool = True,
        spatial_dims: int = 3,
        downsample: str = "merging",
        dtype: Any = None,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        if spatial_dims not in (2, 3):
            raise InputError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if norm_name != "instance":
            raise InputError(f"norm_name {norm_name!r}: only 'instance' (MONAI's default) is built")
        if downsample not in ("merging", "mergingv2"):
            raise InputError(f"downsample must be 'merging' or 'mergingv2', got {downsample!r}")
        if feature_size % 12:
            raise InputError(f"feature_size must be a multiple of 12, got {feature_size}")
        if len(depths) != 4 or len(num_heads) != 4 or min(depths) < 1:
            raise InputError(
                f"Swin-UNETR has four stages: depths {tuple(depths)} and num_heads "
                f"{tuple(num_heads)} need four entries, depths >= 1"
            )
        for i, h in enumerate(num_heads):
            if h < 1 or (feature_size * 2**i) % h:
                raise InputError(
                    f"num_heads[{i}] = {h} does not divide stage {i}'s width {feature_size * 2**i}"
                )
        window = (window_size,) * spatial_dims if isinstance(window_size, int) else window_size
        window = tuple(int(w) for w in window)
        if len(window) != spatial_dims or min(window) < 1:
            raise InputError(f"window_size {window_size} for {spatial_dims} spatial dims")
        self.spatial_dims, self.in_channels, self.out_channels = (
            spatial_dims,
            in_channels,
            out_channels,
        )
        self.patch_size, self.normalize, self.dtype = patch_size, normalize, dtype
        dims, f = spatial_dims, feature_size
        kw = dict(dtype=dtype, rngs=rngs)
        self.swin_vit = _SwinTransformer(
            dims, in_channels, f, patch_size, depths, num_heads, window, mlp_ratio, qkv_bias,
            downsample, **kw,
        )  # fmt: skip
        for stage in self.swin_vit.layers:
            stage.remat = remat
        self.encoder1 = _ResBlock(dims, in_channels, f, **kw)
        self.encoder2 = _ResBlock(dims, f, f, **kw)
        self.encoder3 = _ResBlock(dims, 2 * f, 2 * f, **kw)
        self.encoder4 = _ResBlock(dims, 4 * f, 4 * f, **kw)
        self.encoder10 = _ResBlock(dims, 16 * f, 16 * f, **kw)
        self.decoder5 = _UpBlock(dims, 16 * f, 8 * f, **kw)
        self.decoder4 = _UpBlock(dims, 8 * f, 4 * f, **kw)
        self.decoder3 = _UpBlock(dims, 4 * f, 2 * f, **kw)
        self.decoder2 = _UpBlock(dims, 2 * f, f, **kw)
        self.decoder1 = _UpBlock(dims, f, f, **kw)
        self.out = _conv(dims, f, out_channels, 1, bias=True, **kw)

    def _check(self, x: jax.Array) -> None:
        spatial = "D, H, W" if self.spatial_dims == 3 else "H, W"
        if x.ndim != self.spatial_dims + 2 or x.shape[-1] != self.in_channels:
            raise InputError(
                f"this {self.spatial_dims}-D SwinUNETR expects x of shape (B, {spatial}, "
                f"{self.in_channels}), got {x.shape}"
            )
        multiple = self.patch_size**5
        if any(n % multiple for n in x.shape[1:-1]):
            raise InputError(
                f"SwinUNETR needs spatial sides divisible by patch_size**5 = {multiple} "
                f"(patch embedding and four mergings), got an input of shape {x.shape}"
            )
        if all(n == multiple for n in x.shape[1:-1]):
            raise InputError(
                f"an input of shape {x.shape} leaves one voxel per channel at the deepest "
                "stage, where instance norm has no statistics (torch's InstanceNorm, and so "
                "MONAI's SwinUNETR, refuses it too): make one side at least "
                f"{2 * multiple}"
            )

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """x (B, *spatial, C_in) -> logits (B, *spatial, out_channels) float32."""
        del rngs  # no dropout (MONAI's rates of 0)
        self._check(x)
        x = x.astype(self.dtype or x.dtype)
        hidden = self.swin_vit(x, self.normalize)
        enc0 = self.encoder1(x)
        enc1 = self.encoder2(hidden[0])
        enc2 = self.encoder3(hidden[1])
        enc3 = self.encoder4(hidden[2])
        dec4 = self.encoder10(hidden[4])
        dec3 = self.decoder5(dec4, hidden[3])
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        dec0 = self.decoder2(dec1, enc1)
        return self.out(self.decoder1(dec0, enc0)).astype(jnp.float32)


PRESETS: dict[str, dict] = {
    # MONAI's BraTS 2021 tutorial network (research-contributions SwinUNETR/BRATS21):
    # four MRI sequences in, three tumour sub-regions (TC, WT, ET) out, 128^3 crops.
    "brats": dict(
        spatial_dims=3,
        in_channels=4,
        out_channels=3,
        feature_size=48,
        depths=(2, 2, 2, 2),
        num_heads=(3, 6, 12, 24),
        window_size=7,
    ),
    # Paper 002's Swin-UNETR: the same network with four classes out (background, NC, ED,
    # ET; softmax), 96^3 crops (configs/swinunetr_peds.py).
    "peds": dict(
        spatial_dims=3,
        in_channels=4,
        out_channels=4,
        feature_size=48,
        depths=(2, 2, 2, 2),
        num_heads=(3, 6, 12, 24),
        window_size=7,
    ),
    # A CPU-sized twin for training tests: widths 12, 24, 48, 96 (heads divide them), one
    # unshifted block a stage, windows of 4 (64^3 inputs: 32^3 ... 2^3 maps); the shifted
    # blocks are checked against MONAI on tests/test_swin_unetr.py's two-block network.
    "toy": dict(
        spatial_dims=3,
        in_channels=1,
        out_channels=2,
        feature_size=12,
        depths=(1, 1, 1, 1),
        num_heads=(1, 2, 3, 4),
        window_size=4,
    ),
}
