"""MedSegDiff (Wu et al. 2023; paper 002, Sec. 3.4, Eqs. 10-12): a 2-D segmentation
denoiser with a highway (calibration) network and FF-Parsers that work at any input size.

    model(x, t, cond=None, *, rngs=None, control=None) -> (B, H, W, 2K) float32
x = [I; s_t] (B, H, W, C_img + K) or [I; s_t; C] (+ K: the conditional variant, C the
coarse prior); t (B,). The output stacks two predictions along channels:
    [..., :K]   eps_hat, the noise in the mask channels s_t (the diffusion branch, Eq. 10)
    [..., K:]   c, the highway network's calibration logits G(I, [C]) (Eq. 12's DiceCE term)

Structure (paper 002 Sec. 3.4 names the parts; the sizes are jaxcf's):
  highway G     a small UNet without time on [I; C]: an encoder of residual blocks whose
                per-level features g_l also condition the denoiser, a decoder to K logits
  denoiser      an ADM-style UNet on x_t with time embedding; at the end of each encoder
                level its feature h_l is filtered by an FF-Parser and the highway feature
                of that level is added, h_l <- FFParser_l(h_l) + W_l g_l (W_l: 1x1 conv),
                which is also the level's skip
  FF-Parser     Eq. 11: F_hat = IFFT2(A . FFT2(F)) with A a learnable complex spectral map.
                MedSegDiff's reference stores A at the feature map's own size, so a network
                built for 256 px cannot run on any other size. jaxcf stores A on a fixed grid
                of normalised frequencies (spectral_size x spectral_size // 2 + 1, rows
                -1/2 ... 1/2 - 1/spectral_size, periodic; columns 0 ... 1/2) and resamples
                it bilinearly to the input's rfft2 grid,
                so the same weights filter any H x W; at H = W = spectral_size it is the grid
                itself. A starts at 1 (identity), the reference's at 0.02 * N(0, 1).
The highway reads neither s_t nor t, so its calibration map is the same at every step of a
sampler (jaxcf.counterfactual.medsegdiff).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcf.errors import InputError
from jaxcf.models import layers as L


def _interpolation_matrix(coords: np.ndarray, size: int, periodic: bool) -> np.ndarray:
    """(len(coords), size) linear-interpolation weights at fractional grid positions in
    [0, size - 1] (periodic: [0, size), the last cell wrapping round to the first)."""
    low = np.floor(coords).astype(int)
    high = (low + 1) % size if periodic else np.minimum(low + 1, size - 1)
    frac = coords - low
    weights = np.zeros((len(coords), size), np.float32)
    rows = np.arange(len(coords))
    np.add.at(weights, (rows, low), 1.0 - frac)
    np.add.at(weights, (rows, high), frac)
    return weights


def spectral_resampling(height: int, width: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows (H, grid), cols (W // 2 + 1, grid // 2 + 1)): linear-interpolation weights
    from the spectral grid (rows: fftshift(fftfreq(grid)), -1/2 ... 1/2 - 1/grid, periodic
    as the spectrum is, so frequencies above 1/2 - 1/grid blend into the -1/2 row; cols:
    rfftfreq(grid), 0 ... 1/2) to the frequencies of an H x W rfft2 (rows: fftfreq(H),
    cols: rfftfreq(W))."""
    row_pos = np.fft.fftfreq(height) * grid + grid // 2  # in [0, grid)
    col_pos = np.fft.rfftfreq(width) * grid  # in [0, grid / 2]
    return (
        _interpolation_matrix(row_pos, grid, periodic=True),
        _interpolation_matrix(col_pos, grid // 2 + 1, periodic=False),
    )


class FFParser(nnx.Module):
    """Eq. 11 at any size: x (B, H, W, C) -> IFFT2(A(H, W) . FFT2(x)), same shape and dtype."""

    def __init__(self, channels: int, spectral_size: int = 32, *, rngs: nnx.Rngs):
        if spectral_size < 2 or spectral_size % 2:
            raise InputError(f"spectral_size must be an even number >= 2, got {spectral_size}")
        self.spectral_size = spectral_size
        shape = (spectral_size, spectral_size // 2 + 1, channels)
        self.real = nnx.Param(jnp.ones(shape, jnp.float32))
        self.imag = nnx.Param(jnp.zeros(shape, jnp.float32))

    def spectral_map(self, height: int, width: int) -> jax.Array:
        """A resampled to an H x W rfft2 grid: (H, W // 2 + 1, C) complex64."""
        rows, cols = spectral_resampling(height, width, self.spectral_size)
        resample = lambda a: jnp.einsum("hg,gvc,wv->hwc", rows, a, cols)
        return jax.lax.complex(resample(self.real[...]), resample(self.imag[...]))

    def __call__(self, x: jax.Array) -> jax.Array:
        height, width = x.shape[1:3]
        spectrum = jnp.fft.rfft2(x.astype(jnp.float32), axes=(1, 2))
        filtered = spectrum * self.spectral_map(height, width)
        return jnp.fft.irfft2(filtered, s=(height, width), axes=(1, 2)).astype(x.dtype)


class _Highway(nnx.Module):
    """G(I, [C]): a time-free UNet; returns (per-level encoder features, K logits)."""

    def __init__(self, cin, widths, num_classes, groups, dtype, rngs):
        self.conv_in = L.conv(2, cin, widths[0], dtype=dtype, rngs=rngs)
        block = lambda a, b, **kw: L.ResBlock(2, a, b, groups=groups, dtype=dtype, rngs=rngs, **kw)
        enc, down, ch = [], [], widths[0]
        for level, width in enumerate(widths):
            enc.append(block(ch, width))
            ch = width
            if level < len(widths) - 1:
                down.append(block(ch, ch, down=True))
        dec, up = [], []
        for level in reversed(range(len(widths) - 1)):
            up.append(block(ch, ch, up=True))
            dec.append(block(ch + widths[level], widths[level]))
            ch = widths[level]
        self.enc, self.down = nnx.List(enc), nnx.List(down)
        self.dec, self.up = nnx.List(dec), nnx.List(up)
        self.norm_out = L.GroupNorm(ch, groups, rngs=rngs)
        self.conv_out = L.conv(2, ch, num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        h = self.conv_in(x)
        features = []
        for level, block in enumerate(self.enc):
            h = block(h)
            features.append(h)
            if level < len(self.down):
                h = self.down[level](h)
        for up, block, skip in zip(self.up, self.dec, reversed(features[:-1]), strict=True):
            h = block(jnp.concatenate([up(h), skip], axis=-1))
        return features, self.conv_out(jax.nn.silu(self.norm_out(h)))


class MedSegDiff(nnx.Module):
    """See the module docstring. image_channels C_img, num_classes K, prior: whether the
    input carries the coarse prior C (K more channels, fed to both branches)."""

    def __init__(
        self,
        *,
        image_channels: int = 4,
        num_classes: int = 4,
        prior: bool = False,
        model_channels: int = 32,
        channel_mult: Sequence[int] = (1, 2, 4),
        num_res_blocks: int = 1,
        highway_channels: int = 16,
        spectral_size: int = 32,
        groups: int = 8,
        dtype: Any = None,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        self.image_channels, self.num_classes, self.prior = image_channels, num_classes, prior
        self.in_channels = image_channels + num_classes * (2 if prior else 1)
        self.size_multiple = 2 ** (len(channel_mult) - 1)
        self.remat, self.dtype = remat, dtype
        mc, emb_dim = model_channels, 4 * model_channels
        widths = [int(m * mc) for m in channel_mult]
        highway_widths = [int(m * highway_channels) for m in channel_mult]
        self.highway = _Highway(
            image_channels + (num_classes if prior else 0),
            highway_widths,
            num_classes,
            groups,
            dtype,
            rngs,
        )
        self.time_embed = L.TimestepEmbedder(emb_dim, freq_dim=mc, dtype=dtype, rngs=rngs)
        res = lambda a, b, **kw: L.ResBlock(
            2, a, b, emb_dim, groups=groups, dtype=dtype, rngs=rngs, **kw
        )
        self.conv_in = L.conv(2, self.in_channels, widths[0], dtype=dtype, rngs=rngs)
        enc, down, parsers, fuse, ch = [], [], [], [], widths[0]
        for level, width in enumerate(widths):
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(res(ch, width))
                ch = width
            enc.append(nnx.List(blocks))
            parsers.append(FFParser(ch, spectral_size, rngs=rngs))
            fuse.append(L.conv(2, highway_widths[level], ch, 1, dtype=dtype, rngs=rngs))
            if level < len(widths) - 1:
                down.append(res(ch, ch, down=True))
        self.enc, self.down = nnx.List(enc), nnx.List(down)
        self.parsers, self.fuse = nnx.List(parsers), nnx.List(fuse)
        self.mid = nnx.List([res(ch, ch), res(ch, ch)])
        dec, up = [], []
        for level in reversed(range(len(widths) - 1)):
            up.append(res(ch, ch, up=True))
            dec.append(res(ch + widths[level], widths[level]))
            ch = widths[level]
        self.dec, self.up = nnx.List(dec), nnx.List(up)
        self.norm_out = L.GroupNorm(ch, groups, rngs=rngs)
        self.conv_out = L.conv(2, ch, num_classes, zero_init=True, dtype=dtype, rngs=rngs)

    def _check(self, x: jax.Array, t: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            parts = "[I; s_t; C]" if self.prior else "[I; s_t]"
            raise InputError(
                f"MedSegDiff expects x = {parts} of shape (B, H, W, {self.in_channels}), got "
                f"{tuple(x.shape)}"
            )
        if any(n % self.size_multiple for n in x.shape[1:3]):
            raise InputError(
                f"spatial sizes {tuple(x.shape[1:3])} must be multiples of "
                f"{self.size_multiple} (2 ** (levels - 1) for the downsamplings)"
            )
        t = jnp.asarray(t)
        return jnp.full((x.shape[0],), t) if t.ndim == 0 else t

    def _block(self, block, h, emb, rngs):
        if not self.remat:
            return block(h, emb, rngs)
        return nnx.remat(lambda b, h, e: b(h, e, None), graph_updates=False)(block, h, emb)

    def __call__(
        self,
        x: jax.Array,
        t: jax.Array,
        cond: dict | None = None,
        *,
        rngs: nnx.Rngs | None = None,
        control: Any = None,
    ) -> jax.Array:
        """x (B, H, W, C_in), t (B,) -> (B, H, W, 2K) float32: [eps_hat, calibration logits]."""
        if cond or control is not None:
            raise InputError("MedSegDiff takes no cond or attention control")
        t = self._check(x, t)
        x = x.astype(self.dtype or x.dtype)
        image = x[..., : self.image_channels]
        highway_in = image
        if self.prior:
            highway_in = jnp.concatenate([image, x[..., -self.num_classes :]], axis=-1)
        features, calibration = self.highway(highway_in)
        emb = self.time_embed(t)
        h = self.conv_in(x)
        skips = []
        for level, blocks in enumerate(self.enc):
            for block in blocks:
                h = self._block(block, h, emb, rngs)
            h = self.parsers[level](h) + self.fuse[level](features[level])
            skips.append(h)
            if level < len(self.down):
                h = self._block(self.down[level], h, emb, rngs)
        for block in self.mid:
            h = self._block(block, h, emb, rngs)
        for up, block, skip in zip(self.up, self.dec, reversed(skips[:-1]), strict=True):
            h = self._block(up, h, emb, rngs)
            h = self._block(block, jnp.concatenate([h, skip], axis=-1), emb, rngs)
        eps = self.conv_out(jax.nn.silu(self.norm_out(h)))
        return jnp.concatenate([eps, calibration], axis=-1).astype(jnp.float32)


PRESETS: dict[str, dict] = {
    # Paper 002 trains MedSegDiff on 128 x 128 axial slices (Table 2) without naming the
    # widths; jaxcf's: 64 channels, mult 1,2,4,4, two res blocks, a 32-wide highway.
    "medsegdiff_peds": dict(
        model_channels=64,
        channel_mult=(1, 2, 4, 4),
        num_res_blocks=2,
        highway_channels=32,
        spectral_size=64,
        groups=32,
    ),
    # The phantom proof's (configs/medsegdiff_peds.py:phantom48): 32 x 32 slices of 32^3 crops.
    "medsegdiff_small": dict(
        model_channels=16, channel_mult=(1, 2, 4), highway_channels=16, spectral_size=32
    ),
    "toy": dict(model_channels=8, channel_mult=(1, 2), highway_channels=8, spectral_size=8),
}
