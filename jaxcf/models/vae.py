"""AutoencoderKL: the Stable Diffusion VAE (Rombach et al. 2022, "High-resolution image
synthesis with latent diffusion models"), 2-D and 3-D, channels-last.

Encoder: conv_in; per level `layers_per_block` ResBlocks then a stride-2 conv (not at the
last level); a mid block (ResBlock -> single-head self-attention -> ResBlock); GroupNorm ->
SiLU -> conv_out to 2 * latent channels (mean and log-variance). A 1x1 `quant_conv` and
`post_quant_conv` sit either side of the latent. Decoder: conv_in, mid block, levels from
the lowest resolution up with `layers_per_block + 1` ResBlocks and nearest-2x + conv3x3
upsampling (not at the last level), GroupNorm -> SiLU -> conv_out.

The layout follows diffusers' `AutoencoderKL` so its checkpoints (e.g. the SD v1 VAE) load
with :func:`jaxcf.convert.diffusers_vae.load_vae_checkpoint`. Latent diffusion runs on
`scaling_factor * z`: :meth:`AutoencoderKL.encode_latents` / :meth:`decode_latents`.

Shapes: an input (B, *S, C) with S = (H, W) or (D, H, W) gives latents
(B, *S / f, latent_channels) with f = 2 ** (len(block_out_channels) - 1) (8 for "sd").
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcf.errors import InputError
from jaxcf.models.layers import GroupNorm, ResBlock, Upsample, attention, conv, linear

Dtype = Any
NORM_EPS = 1e-6  # every GroupNorm of the LDM autoencoder (torch's default is 1e-5)
# The posterior's log-variance is clamped as in LDM's DiagonalGaussianDistribution, so that
# exp(logvar) neither underflows to 0 nor overflows early in training.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0

PRESETS: dict[str, dict[str, Any]] = {
    # The Stable Diffusion v1 VAE (CompVis kl-f8; stabilityai/sd-vae-ft-mse has the same
    # shapes): 83,653,863 parameters, latents at 1/8 resolution.
    "sd": dict(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
    ),
    # A VAE to train on the four BraTS modalities at once (T1, T1ce, T2, FLAIR), 1/8
    # resolution. Its scaling_factor should be re-estimated after training
    # (estimate_scaling_factor), the SD value is only a placeholder.
    "mri4": dict(
        in_channels=4,
        out_channels=4,
        latent_channels=4,
        block_out_channels=(64, 128, 256, 256),
        layers_per_block=2,
    ),
    # Volumetric latents: one-channel volumes, 1/4 resolution per axis.
    "mri3d": dict(
        in_channels=1,
        out_channels=1,
        latent_channels=4,
        block_out_channels=(32, 64, 128),
        layers_per_block=2,
        spatial_dims=3,
        # Self-attention over every latent voxel (32^3 tokens: ~4 GB of logits per volume)
        # does not fit; MAISI's 3-D autoencoder has none either.
        mid_attention=False,
    ),
}
# One-channel radiographs at 1/4 resolution and a CPU-trainable width: paper 003's phantom
# proof (configs/vae_cxr.py: 64 px chest phantoms -> 16 x 16 x 4 latents).
PRESETS["cxr_small"] = dict(
    in_channels=1,
    out_channels=1,
    latent_channels=4,
    block_out_channels=(16, 32, 64),
    layers_per_block=1,
    norm_num_groups=8,
)
# mri3d's layout at a CPU-trainable width (the phantom32 proof of paper 004's latent models:
# 32^3 volumes -> 8^3 x 4 latents); mri3d itself takes ~11 s per batch of four 32^3
# volumes on two CPU cores.
PRESETS["mri3d_small"] = dict(
    PRESETS["mri3d"], block_out_channels=(8, 16, 32), layers_per_block=1, norm_num_groups=8
)


def _call(module: nnx.Module, x: jax.Array, remat: bool) -> jax.Array:
    """module(x), rematerialised in the backward pass when asked (3-D training memory)."""
    if not remat:
        return module(x)
    # graph_updates=False: gradients with respect to the input alone (parameters from an
    # outer trace, e.g. decoding latents inside guidance) must keep working.
    return nnx.remat(lambda m, h: m(h), graph_updates=False)(module, x)


class Downsample(nnx.Module):
    """Halve every spatial axis with a 3x3 stride-2 conv after zero-padding one element at
    the *end* of each axis (LDM's asymmetric padding, kept by diffusers as padding=0 plus
    F.pad(0, 1, 0, 1)). Symmetric padding would shift the sampling grid by one input pixel
    and pretrained weights would no longer reproduce their latents."""

    def __init__(self, spatial_dims: int, channels: int, *, dtype: Dtype = None, rngs: nnx.Rngs):
        pad = ((0, 1),) * spatial_dims
        self.conv = conv(
            spatial_dims, channels, channels, 3, stride=2, padding=pad, dtype=dtype, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x)


class MidAttention(nnx.Module):
    """Single-head self-attention over all positions, GroupNorm in front and a residual
    around it (the autoencoder's mid block; separate q / k / v / out projections as in the
    checkpoints). x (B, *S, C) -> (B, *S, C)."""

    def __init__(self, channels: int, groups: int, *, dtype: Dtype = None, rngs: nnx.Rngs):
        self.norm = GroupNorm(channels, groups, NORM_EPS, rngs=rngs)
        lin = lambda: linear(channels, channels, dtype=dtype, rngs=rngs)
        self.q, self.k, self.v, self.out = lin(), lin(), lin(), lin()

    def __call__(self, x: jax.Array) -> jax.Array:
        b, c = x.shape[0], x.shape[-1]
        tokens = self.norm(x).reshape(b, -1, 1, c)  # (B, N, heads=1, C)
        h, _ = attention(self.q(tokens), self.k(tokens), self.v(tokens))
        return x + self.out(h.reshape(b, -1, c)).reshape(x.shape).astype(x.dtype)


def _resblock(sd: int, cin: int, cout: int, groups: int, dtype: Dtype, rngs: nnx.Rngs):
    # No time embedding, eps 1e-6, and the second conv is randomly initialised: unlike a
    # diffusion UNet, the autoencoder has no reason to start each block as the identity.
    return ResBlock(
        sd, cin, cout, None, groups=groups, eps=NORM_EPS, zero_out=False, dtype=dtype, rngs=rngs
    )


class MidBlock(nnx.Module):
    """ResBlock -> (MidAttention) -> ResBlock at the lowest resolution."""

    def __init__(
        self, sd: int, channels: int, groups: int, attn: bool, *, dtype: Dtype, rngs: nnx.Rngs
    ):
        self.res1 = _resblock(sd, channels, channels, groups, dtype, rngs)
        self.attn = MidAttention(channels, groups, dtype=dtype, rngs=rngs) if attn else None
        self.res2 = _resblock(sd, channels, channels, groups, dtype, rngs)

    def __call__(self, x: jax.Array, remat: bool = False) -> jax.Array:
        x = _call(self.res1, x, remat)
        if self.attn is not None:
            x = _call(self.attn, x, remat)
        return _call(self.res2, x, remat)


class Level(nnx.Module):
    """ResBlocks at one resolution, then an optional resampling module."""

    def __init__(self, resnets: list[ResBlock], resample: nnx.Module | None):
        self.resnets = nnx.List(resnets)
        self.resample = resample

    def __call__(self, x: jax.Array, remat: bool = False) -> jax.Array:
        for block in self.resnets:
            x = _call(block, x, remat)
        return x if self.resample is None else self.resample(x)


class Encoder(nnx.Module):
    """(B, *S, in_channels) -> (B, *S / f, out_channels)."""

    def __init__(
        self,
        sd: int,
        in_channels: int,
        out_channels: int,
        channels: tuple[int, ...],
        layers_per_block: int,
        groups: int,
        mid_attention: bool,
        *,
        dtype: Dtype,
        rngs: nnx.Rngs,
    ):
        self.conv_in = conv(sd, in_channels, channels[0], dtype=dtype, rngs=rngs)
        levels, cin = [], channels[0]
        for i, cout in enumerate(channels):
            resnets = [
                _resblock(sd, cin if j == 0 else cout, cout, groups, dtype, rngs)
                for j in range(layers_per_block)
            ]
            last = i == len(channels) - 1
            down = None if last else Downsample(sd, cout, dtype=dtype, rngs=rngs)
            levels.append(Level(resnets, down))
            cin = cout
        self.down = nnx.List(levels)
        self.mid = MidBlock(sd, channels[-1], groups, mid_attention, dtype=dtype, rngs=rngs)
        self.norm_out = GroupNorm(channels[-1], groups, NORM_EPS, rngs=rngs)
        self.conv_out = conv(sd, channels[-1], out_channels, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, remat: bool = False) -> jax.Array:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h, remat)
        h = self.mid(h, remat)
        return self.conv_out(jax.nn.silu(self.norm_out(h)))


class Decoder(nnx.Module):
    """(B, *s, in_channels) -> (B, *s * f, out_channels); `up` is ordered from the lowest
    resolution, as diffusers' up_blocks."""

    def __init__(
        self,
        sd: int,
        in_channels: int,
        out_channels: int,
        channels: tuple[int, ...],
        layers_per_block: int,
        groups: int,
        mid_attention: bool,
        *,
        dtype: Dtype,
        rngs: nnx.Rngs,
    ):
        rev = tuple(reversed(channels))
        self.conv_in = conv(sd, in_channels, rev[0], dtype=dtype, rngs=rngs)
        self.mid = MidBlock(sd, rev[0], groups, mid_attention, dtype=dtype, rngs=rngs)
        levels, cin = [], rev[0]
        for i, cout in enumerate(rev):
            # One block more than the encoder per level (LDM's num_res_blocks + 1).
            resnets = [
                _resblock(sd, cin if j == 0 else cout, cout, groups, dtype, rngs)
                for j in range(layers_per_block + 1)
            ]
            last = i == len(rev) - 1
            up = None if last else Upsample(sd, cout, cout, dtype=dtype, rngs=rngs)
            levels.append(Level(resnets, up))
            cin = cout
        self.up = nnx.List(levels)
        self.norm_out = GroupNorm(channels[0], groups, NORM_EPS, rngs=rngs)
        self.conv_out = conv(sd, channels[0], out_channels, dtype=dtype, rngs=rngs)

    def __call__(self, z: jax.Array, remat: bool = False) -> jax.Array:
        h = self.mid(self.conv_in(z), remat)
        for level in self.up:
            h = level(h, remat)
        return self.conv_out(jax.nn.silu(self.norm_out(h)))


class AutoencoderKL(nnx.Module):
    """KL-regularised autoencoder (Rombach et al. 2022, Sec. 3.1 and App. G).

    Parameters are float32; `dtype` is the compute dtype (e.g. jnp.bfloat16); GroupNorm and
    the posterior run in float32 and every output is float32. Spatial sizes must be
    divisible by `downsample_factor`. `remat=True` recomputes each block in the backward
    pass (for 3-D training). `mid_attention=False` drops the mid-block attention (an
    option in diffusers too; useful for large 3-D latents, where it attends over every
    voxel).
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        out_channels: int = 3,
        latent_channels: int = 4,
        block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        spatial_dims: int = 2,
        scaling_factor: float = 0.18215,
        mid_attention: bool = True,
        dtype: Dtype = None,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        if spatial_dims not in (2, 3):
            raise InputError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if not block_out_channels or layers_per_block < 1:
            raise InputError("block_out_channels must be non-empty and layers_per_block >= 1")
        ch = tuple(int(c) for c in block_out_channels)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.latent_channels, self.spatial_dims = latent_channels, spatial_dims
        self.scaling_factor = float(scaling_factor)
        self.downsample_factor = 2 ** (len(ch) - 1)
        self.dtype, self.remat = dtype, remat
        common = dict(dtype=dtype, rngs=rngs)
        args = (ch, layers_per_block, norm_num_groups, mid_attention)
        self.encoder = Encoder(spatial_dims, in_channels, 2 * latent_channels, *args, **common)
        self.quant_conv = conv(spatial_dims, 2 * latent_channels, 2 * latent_channels, 1, **common)
        self.post_quant_conv = conv(spatial_dims, latent_channels, latent_channels, 1, **common)
        self.decoder = Decoder(spatial_dims, latent_channels, out_channels, *args, **common)

    # --- shape checks ---------------------------------------------------------------------

    def _check(self, x: jax.Array, channels: int, what: str, factor: int) -> None:
        if x.ndim != self.spatial_dims + 2 or x.shape[-1] != channels:
            want = "(B, " + "D, " * (self.spatial_dims == 3) + f"H, W, {channels})"
            raise InputError(f"{what}: expected shape {want}, got {tuple(x.shape)}")
        if any(s % factor for s in x.shape[1:-1]):
            raise InputError(
                f"{what}: spatial sizes {tuple(x.shape[1:-1])} must be divisible by {factor}"
            )

    def _compute(self, x: jax.Array) -> jax.Array:
        return jnp.asarray(x, self.dtype or jnp.float32)

    # --- the autoencoder ------------------------------------------------------------------

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x (B, *S, in_channels) -> posterior mean, logvar, each (B, *S / f, latent)
        float32; logvar clamped to [-30, 20]."""
        self._check(x, self.in_channels, "encode", self.downsample_factor)
        moments = self.quant_conv(self.encoder(self._compute(x), self.remat))
        mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
        return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z: jax.Array) -> jax.Array:
        """Unscaled latents z (B, *s, latent) -> (B, *s * f, out_channels) float32."""
        self._check(z, self.latent_channels, "decode", 1)
        h = self.post_quant_conv(self._compute(z))
        return self.decoder(h, self.remat).astype(jnp.float32)

    def __call__(
        self, x: jax.Array, *, rngs: nnx.Rngs | jax.Array | None = None, sample: bool = False
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Reconstruct x (B, *S, in_channels) -> (reconstruction (B, *S, out_channels),
        mean, logvar (B, *S / f, latent)). sample=True decodes z = mean + std * eps with eps
        drawn from `rngs` (an nnx.Rngs or a PRNG key; the training objective), otherwise
        the posterior mean (deterministic)."""
        mean, logvar = self.encode(x)
        z = sample_posterior(mean, logvar, _key(rngs)) if sample else mean
        return self.decode(z), mean, logvar

    # --- latent-diffusion interface -------------------------------------------------------

    def encode_latents(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """x (B, *S, in_channels) -> scaled latents scaling_factor * z (B, *S / f, latent),
        the space the diffusion model is trained in (LDM Sec. 4.3.2: unit variance). z is
        the posterior mean, or a posterior sample when a PRNG key is given."""
        mean, logvar = self.encode(x)
        z = mean if key is None else sample_posterior(mean, logvar, key)
        return z * self.scaling_factor

    def decode_latents(self, z_scaled: jax.Array) -> jax.Array:
        """Scaled latents (B, *s, latent) -> images (B, *s * f, out_channels) float32."""
        return self.decode(z_scaled / self.scaling_factor)


def from_preset(name: str, *, rngs: nnx.Rngs, **overrides: Any) -> AutoencoderKL:
    """AutoencoderKL(**PRESETS[name], **overrides), e.g. from_preset("sd", dtype=jnp.bfloat16,
    rngs=nnx.Rngs(0))."""
    if name not in PRESETS:
        raise InputError(f"unknown VAE preset {name!r}; choose from {sorted(PRESETS)}")
    return AutoencoderKL(**{**PRESETS[name], **overrides}, rngs=rngs)


# --- posterior --------------------------------------------------------------------------------


def _key(rngs: nnx.Rngs | jax.Array | None) -> jax.Array:
    if rngs is None:
        raise InputError("sample=True needs rngs (an nnx.Rngs or a PRNG key)")
    return rngs.sample() if isinstance(rngs, nnx.Rngs) else rngs


def sample_posterior(mean: jax.Array, logvar: jax.Array, key: jax.Array) -> jax.Array:
    """z = mean + exp(logvar / 2) * eps, eps ~ N(0, I) (the reparameterisation trick,
    Kingma & Welling 2014), all (B, *s, latent) float32."""
    eps = jax.random.normal(key, mean.shape, jnp.float32)
    return mean + jnp.exp(0.5 * logvar) * eps


def kl_divergence(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)) per sample: (B, ...) -> (B,) float32, summed over
    every latent dimension (LDM's KL regulariser, weighted by a small factor in training)."""
    mean, logvar = jnp.asarray(mean, jnp.float32), jnp.asarray(logvar, jnp.float32)
    terms = jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar
    return 0.5 * jnp.sum(terms, axis=tuple(range(1, mean.ndim)))


def estimate_scaling_factor(latents: jax.Array) -> float:
    """1 / std of unscaled latents from a batch of training images, so that the diffusion
    model sees roughly unit-variance inputs (how LDM set 0.18215 for the SD VAE)."""
    return float(1.0 / jnp.std(jnp.asarray(latents, jnp.float32)))


# --- multi-modality MRI through an RGB VAE ------------------------------------------------------


def encode_modalities(vae: AutoencoderKL, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """Encode each MRI modality separately with an RGB autoencoder (the pretrained SD VAE).

    Promptable counterfactual diffusion (paper 000, Sec. 2, DiT branch): the SD VAE expects
    3-channel images, so every modality is replicated to 3 channels and encoded on its own;
    the per-modality latents are concatenated along channels. All modalities go through
    the VAE in one batch. Intensities should be in [-1, 1], as for RGB images.

    x (B, *S, M) -> scaled latents (B, *S / f, M * latent); modality m occupies channels
    [m * latent, (m + 1) * latent). For BraTS: (B, 128, 128, 4) -> (B, 16, 16, 16).
    """
    b, *spatial, m = x.shape
    per = jnp.moveaxis(jnp.asarray(x), -1, 1).reshape(b * m, *spatial, 1)
    per = jnp.broadcast_to(per, (*per.shape[:-1], vae.in_channels))
    z = vae.encode_latents(per, key)  # (B * M, *s, latent)
    z = jnp.moveaxis(z.reshape(b, m, *z.shape[1:]), 1, -2)  # (B, *s, M, latent)
    return z.reshape(*z.shape[:-2], m * vae.latent_channels)


def decode_modalities(vae: AutoencoderKL, z: jax.Array) -> jax.Array:
    """Inverse of :func:`encode_modalities`: scaled latents (B, *s, M * latent) -> images
    (B, *s * f, M) float32; each modality's decoded RGB channels are averaged back to one
    (they differ slightly, the decoder being trained on colour images)."""
    b, *spatial, c = z.shape
    lc = vae.latent_channels
    if c % lc:
        raise InputError(f"decode_modalities: {c} channels is not a multiple of {lc}")
    m = c // lc
    per = jnp.moveaxis(z.reshape(b, *spatial, m, lc), -2, 1).reshape(b * m, *spatial, lc)
    img = jnp.mean(vae.decode_latents(per), axis=-1)  # (B * M, *S)
    return jnp.moveaxis(img.reshape(b, m, *img.shape[1:]), 1, -1)
