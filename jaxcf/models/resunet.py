"""Residual U-Net for 2-D / 3-D segmentation, in MONAI's layout: the coarse segmenter of
paper 002 (a U-Net whose encoder and decoder stages are residual units, Eq. 1:
y = F(x) + W_s x, with W_s the identity or a projection convolution).

    model(x, *, rngs=None) -> logits (B, *spatial, out_channels) float32
x (B, *spatial, C) channels-last, every side divisible by prod(strides); rngs (nnx.Rngs
with "dropout") enables dropout.

Same function, parameter for parameter, as monai.networks.nets.UNet(spatial_dims,
in_channels, out_channels, channels, strides, kernel_size, up_kernel_size, num_res_units,
act="PRELU", norm="INSTANCE", dropout, bias, adn_ordering); jaxcf.convert.monai_unet reads
its state dicts and tests/test_resunet.py compares the two number for number. With
L = len(channels) - 1 resolution levels:

  level i (0 <= i < L) down:  channels[i-1] (in_channels at i = 0) -> channels[i], stride
                              strides[i]: a residual unit of num_res_units convolutions
                              (the first strided), or one strided convolution if 0;
  bottom:                     channels[L-1] -> channels[L], stride 1, same kind;
  level i up:                 concat(down_i output, the level below's output) ->
                              channels[i-1] (out_channels at i = 0): a transposed
                              convolution (stride strides[i]) then, with residual units, a
                              one-convolution residual unit.
Every convolution is followed by its "ADN" (norm, dropout, activation in `adn_ordering`)
except, on the top level's output, the last convolution (logits stay linear).

A residual unit's shortcut is the identity when neither the stride nor the width changes,
a 1-voxel convolution when only the width changes, and a convolution with the unit's
kernel and stride otherwise (MONAI's choice). Padding is (k - 1) / 2 (odd kernels only);
a transposed convolution pads by the same and adds stride - 1 output voxels, so it
exactly inverts its level's strided convolution when the side is divisible by the
stride. Other sides would not line up at the skip concatenation (MONAI fails there too):
they are refused with an InputError.

Normalisation: instance norm (MONAI's default, no affine parameters unless norm_affine),
statistics per item and channel over space, in float32. BatchNorm, the other common
MONAI choice, is refused: jaxcf's training state is a pure pytree updated only by the
optimizer, with no collection for running statistics, so BatchNorm would normalise with
batch statistics at evaluation too and a volume's segmentation would depend on the rest
of its batch (see jaxcf.models.densenet). Activation: PReLU with one learnable slope per
layer (initial 0.25, MONAI's default), or ReLU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from jaxcf.errors import InputError
from jaxcf.models import conv3d, init
from jaxcf.models import layers as L

__all__ = ["PRESETS", "ResUNet"]

_NORMS = ("instance",)
_ACTS = ("prelu", "relu")
_DIMENSION_NUMBERS = {2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}


def _conv(spatial_dims, cin, cout, kernel, stride, padding, bias, *, dtype, rngs) -> nnx.Conv:
    """A convolution with PyTorch's default weight init (MONAI's UNet keeps it), zero bias."""
    return L.conv(spatial_dims, cin, cout, kernel, stride=stride, padding=padding, bias=bias,
                  dtype=dtype, rngs=rngs)  # fmt: skip


class _ConvTranspose(nnx.Module):
    """torch's ConvTransposeNd(cin, cout, k, stride, padding, output_padding), channels-last.

    `kernel` (*k, cin, cout) is torch's weight (cin, cout, *k) with its channel axes moved
    last, not flipped. Computed as a stride-1 convolution of the input with stride - 1
    zeros inserted between voxels, padded by k - 1 - padding (plus output_padding at the
    far end), with the spatially flipped kernel: on CPU the 3-D case then runs through
    jaxcf.models.conv3d's depth-offset decomposition, which has no input dilation.
    """

    def __init__(
        self, spatial_dims, cin, cout, kernel, stride, padding, output_padding, bias, *, dtype, rngs
    ):
        self.spatial_dims, self.stride, self.dtype = spatial_dims, stride, dtype
        self.kernel_size, self.padding, self.output_padding = kernel, padding, output_padding
        shape = (kernel,) * spatial_dims + (cin, cout)
        # PyTorch draws a transposed kernel U(-b, b), b = 1 / sqrt(cout * k^d) (its fan_in is
        # the weight's second axis); torch_default would use cin.
        draw = init.torch_default()(rngs.params(), shape)  # U(-1, 1) / sqrt(cin * k^d)
        self.kernel = nnx.Param(draw * math.sqrt(cin / cout))
        self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32)) if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        spatial = tuple(range(self.spatial_dims))
        w = jnp.flip(self.kernel[...], axis=spatial).astype(dtype)
        lo = self.kernel_size - 1 - self.padding
        inner = (lo, lo + self.output_padding, self.stride - 1)  # (low, high, interior)
        pads = [(0, 0, 0), *(inner,) * self.spatial_dims, (0, 0, 0)]
        x = lax.pad(x.astype(dtype), jnp.zeros((), dtype), pads)
        y = conv3d.conv_general_dilated(
            x,
            w,
            (1,) * self.spatial_dims,
            ((0, 0),) * self.spatial_dims,
            dimension_numbers=_DIMENSION_NUMBERS[self.spatial_dims],
        )
        return y if self.bias is None else y + self.bias[...].astype(dtype)


class _InstanceNorm(nnx.Module):
    """Per item and channel, over every spatial axis; float32 statistics (two-pass, biased
    variance, as torch's InstanceNorm), returned in the input dtype."""

    def __init__(self, channels: int, affine: bool, eps: float = 1e-5):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((channels,), jnp.float32)) if affine else None
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32)) if affine else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = L.instance_norm(x.astype(jnp.float32), self.eps)
        if self.scale is not None:
            y = y * self.scale[...] + self.bias[...]
        return y.astype(x.dtype)


class _PReLU(nnx.Module):
    """max(0, x) + a min(0, x) with one learnable slope `weight` (shape (1,), initial 0.25)."""

    def __init__(self):
        self.weight = nnx.Param(jnp.full((1,), 0.25, jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.where(x >= 0, x, self.weight[...].astype(x.dtype) * x)


class _ConvADN(nnx.Module):
    """A (transposed) convolution, then norm / dropout / activation in `ordering` unless
    conv_only (MONAI's Convolution block)."""

    def __init__(
        self,
        spatial_dims,
        cin,
        cout,
        kernel,
        stride,
        *,
        transposed=False,
        conv_only=False,
        opts: dict,
        dtype,
        rngs,
    ):
        padding = (kernel - 1) // 2
        if transposed:
            self.conv = _ConvTranspose(
                spatial_dims,
                cin,
                cout,
                kernel,
                stride,
                padding,
                stride - 1,
                opts["bias"],
                dtype=dtype,
                rngs=rngs,
            )
        else:
            self.conv = _conv(
                spatial_dims,
                cin,
                cout,
                kernel,
                stride,
                padding,
                opts["bias"],
                dtype=dtype,
                rngs=rngs,
            )
        ordering = "" if conv_only else opts["adn_ordering"]
        self.ordering = ordering
        self.norm = _InstanceNorm(cout, opts["norm_affine"]) if "N" in ordering else None
        self.act = _PReLU() if "A" in ordering and opts["act"] == "prelu" else None
        self.relu = "A" in ordering and opts["act"] == "relu"
        use_dropout = "D" in ordering and opts["dropout"] > 0
        self.dropout = nnx.Dropout(opts["dropout"]) if use_dropout else None

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
        h = self.conv(x)
        for op in self.ordering:
            if op == "N":
                h = self.norm(h)
            elif op == "D" and self.dropout is not None:
                h = self.dropout(h, deterministic=rngs is None, rngs=rngs)
            elif op == "A":
                h = jax.nn.relu(h) if self.relu else self.act(h)
        return h


class _ResidualUnit(nnx.Module):
    """`subunits` ConvADNs (the first strided and changing the width) plus a shortcut: the
    identity, a 1-voxel convolution (width change only) or a strided kernel-sized one."""

    def __init__(
        self,
        spatial_dims,
        cin,
        cout,
        kernel,
        stride,
        subunits,
        *,
        last_conv_only=False,
        opts: dict,
        dtype,
        rngs,
    ):
        units = []
        for j in range(subunits):
            units.append(
                _ConvADN(
                    spatial_dims,
                    cin if j == 0 else cout,
                    cout,
                    kernel,
                    stride if j == 0 else 1,
                    conv_only=last_conv_only and j == subunits - 1,
                    opts=opts,
                    dtype=dtype,
                    rngs=rngs,
                )
            )
        self.units = nnx.List(units)
        if stride != 1 or cin != cout:
            k, pad = (kernel, (kernel - 1) // 2) if stride != 1 else (1, 0)
            self.residual = _conv(
                spatial_dims, cin, cout, k, stride, pad, opts["bias"], dtype=dtype, rngs=rngs
            )
        else:
            self.residual = None

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
        shortcut = x if self.residual is None else self.residual(x)
        h = x
        for unit in self.units:
            h = unit(h, rngs)
        return h + shortcut.astype(h.dtype)


class _UpBlock(nnx.Module):
    """A transposed ConvADN (`up`), then with residual units a one-convolution unit (`res`)."""

    def __init__(
        self,
        spatial_dims,
        cin,
        cout,
        stride,
        is_top,
        *,
        num_res_units,
        kernel,
        up_kernel,
        opts: dict,
        dtype,
        rngs,
    ):
        kw = dict(opts=opts, dtype=dtype, rngs=rngs)
        self.up = _ConvADN(
            spatial_dims,
            cin,
            cout,
            up_kernel,
            stride,
            transposed=True,
            conv_only=is_top and num_res_units == 0,
            **kw,
        )
        self.res = (
            _ResidualUnit(spatial_dims, cout, cout, kernel, 1, 1, last_conv_only=is_top, **kw)
            if num_res_units > 0
            else None
        )

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
        h = self.up(x, rngs)
        return h if self.res is None else self.res(h, rngs)


class ResUNet(nnx.Module):
    """MONAI's (residual) UNet; see the module docstring.

    channels: widths per level, the last the bottom's (at least two); strides: one per
    level (len(channels) - 1; extra entries are ignored, as MONAI does with a warning).
    kernel_size / up_kernel_size: odd ints. num_res_units: convolutions per encoder residual
    unit (0: plain convolution blocks). act: "prelu" | "relu". norm: "instance" (norm_affine
    adds a scale and bias per channel). adn_ordering: a string over N, D, A. remat:
    recompute each level in the backward pass instead of keeping its activations.
    """

    def __init__(
        self,
        *,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        strides: Sequence[int] = (2, 2, 2, 2),
        kernel_size: int = 3,
        up_kernel_size: int = 3,
        num_res_units: int = 2,
        act: str = "prelu",
        norm: str = "instance",
        norm_affine: bool = False,
        dropout: float = 0.0,
        bias: bool = True,
        adn_ordering: str = "NDA",
        dtype: Any = None,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        if spatial_dims not in (2, 3):
            raise InputError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        channels, strides = tuple(channels), tuple(strides)
        if len(channels) < 2:
            raise InputError(
                f"channels needs at least two widths (a level and the bottom): {channels}"
            )
        if len(strides) < len(channels) - 1:
            raise InputError(
                f"strides needs one entry per level (len(channels) - 1 = {len(channels) - 1}): "
                f"{strides}"
            )
        strides = strides[: len(channels) - 1]
        if min(strides) < 1 or min(channels) < 1:
            raise InputError(f"channels and strides must be positive: {channels}, {strides}")
        for name, k in (("kernel_size", kernel_size), ("up_kernel_size", up_kernel_size)):
            if not isinstance(k, int) or k < 1 or k % 2 == 0:
                raise InputError(f"{name} must be an odd int (same padding), got {k!r}")
        if num_res_units < 0:
            raise InputError(f"num_res_units must be >= 0, got {num_res_units}")
        norm, act = str(norm).lower(), str(act).lower()
        if norm == "batch":
            raise InputError(
                "norm='batch' is not supported: jaxcf keeps no running statistics (its training "
                "state is updated only by the optimizer), so BatchNorm would use batch "
                "statistics at evaluation; use norm='instance' (MONAI's UNet default)"
            )
        if norm not in _NORMS:
            raise InputError(f"norm must be one of {_NORMS}, got {norm!r}")
        if act not in _ACTS:
            raise InputError(f"act must be one of {_ACTS}, got {act!r}")
        if not set(adn_ordering) <= set("NDA") or len(set(adn_ordering)) != len(adn_ordering):
            raise InputError(
                f"adn_ordering must use each of N, D, A at most once: {adn_ordering!r}"
            )
        if not 0.0 <= dropout < 1.0:
            raise InputError(f"dropout must be in [0, 1), got {dropout}")
        self.spatial_dims, self.in_channels, self.out_channels = (
            spatial_dims,
            in_channels,
            out_channels,
        )
        self.channels, self.strides, self.dtype = channels, strides, dtype
        self.downsampling = math.prod(strides)
        opts = dict(
            act=act, norm_affine=norm_affine, dropout=dropout, bias=bias, adn_ordering=adn_ordering
        )
        kw = dict(opts=opts, dtype=dtype, rngs=rngs)

        def block(cin, cout, stride):
            if num_res_units > 0:
                return _ResidualUnit(
                    spatial_dims, cin, cout, kernel_size, stride, num_res_units, **kw
                )
            return _ConvADN(spatial_dims, cin, cout, kernel_size, stride, **kw)

        levels = len(channels) - 1
        down, up = [], []
        for i in range(levels):
            outer = in_channels if i == 0 else channels[i - 1]
            down.append(block(outer, channels[i], strides[i]))
            below = channels[i + 1] if i == levels - 1 else channels[i]
            target = out_channels if i == 0 else channels[i - 1]
            up.append(
                _UpBlock(
                    spatial_dims,
                    channels[i] + below,
                    target,
                    strides[i],
                    i == 0,
                    num_res_units=num_res_units,
                    kernel=kernel_size,
                    up_kernel=up_kernel_size,
                    **kw,
                )
            )
        self.down, self.up = nnx.List(down), nnx.List(up)
        self.bottom = block(channels[-2], channels[-1], 1)
        self.remat = remat

    def _check(self, x: jax.Array) -> None:
        spatial = "D, H, W" if self.spatial_dims == 3 else "H, W"
        if x.ndim != self.spatial_dims + 2 or x.shape[-1] != self.in_channels:
            raise InputError(
                f"this {self.spatial_dims}-D ResUNet expects x of shape (B, {spatial}, "
                f"{self.in_channels}), got {x.shape}"
            )
        if any(n % self.downsampling for n in x.shape[1:-1]):
            raise InputError(
                f"ResUNet input of shape {x.shape}: every spatial side must be divisible by "
                f"{self.downsampling} (the product of strides {self.strides}), or the skip "
                "connections do not line up; pad or crop the input"
            )

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """x (B, *spatial, C_in) -> logits (B, *spatial, out_channels) float32."""
        self._check(x)
        h = x.astype(self.dtype or x.dtype)
        skips = []
        for block in self.down:
            h = self._block(block, h, rngs)
            skips.append(h)
        h = self._block(self.bottom, h, rngs)
        for block, skip in zip(reversed(self.up), reversed(skips), strict=True):
            h = self._block(block, jnp.concatenate([skip, h.astype(skip.dtype)], axis=-1), rngs)
        return h.astype(jnp.float32)

    def _block(self, block: nnx.Module, h: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
        # remat keeps only each level's input for the backward pass (3-D crops of 96^3 hold
        # most of their memory in activations)
        return L.remat_call(block, h, rngs) if self.remat else block(h, rngs)


_PEDS = dict(
    spatial_dims=3,
    in_channels=4,
    out_channels=4,
    channels=(16, 32, 64, 128, 256),
    strides=(2, 2, 2, 2),
    num_res_units=2,
)

PRESETS: dict[str, dict] = {
    # Paper 002's coarse segmenter: MONAI's usual 3-D residual UNet (five widths, four
    # halvings, two-convolution residual units), four MRI sequences in, four labels out.
    "peds": _PEDS,
    # The phantom proof's (configs/resunet_peds.py:phantom48): three halvings, 32^3 crops.
    "small": dict(_PEDS, channels=(16, 32, 64, 128), strides=(2, 2, 2)),
    # Small ones for CPU tests and phantoms (sides divisible by 4).
    "toy": dict(
        _PEDS, in_channels=1, out_channels=2, channels=(8, 16, 32), strides=(2, 2), num_res_units=1
    ),
    "toy2d": dict(
        _PEDS,
        spatial_dims=2,
        in_channels=1,
        out_channels=2,
        channels=(8, 16, 32),
        strides=(2, 2),
        num_res_units=1,
    ),
}
