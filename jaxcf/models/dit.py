"""Diffusion Transformer (DiT; Peebles & Xie 2023, "Scalable Diffusion Models with
Transformers") for channels-last latents.

x (B, H, W, C) -> patchify (conv, kernel = stride = p) -> (H/p * W/p) tokens + fixed 2-D
sin-cos position embedding -> `depth` adaLN-Zero blocks conditioned on
c = embed(t) + embed(label) -> final adaLN layer -> linear to p*p*out values per token ->
unpatchify to (B, H, W, out). With learn_sigma, out = 2C: the first C channels are the
noise (or x0 / v) prediction, the last C the interpolation weights of the learned
variance (improved DDPM, Nichol & Dhariwal 2021), as in the reference.

Tokens are numbered row-major over the patch grid (token n = row * W/p + col), and each
token's output vector is ordered (row in patch, column in patch, channel): exactly the
facebookresearch and diffusers layouts, so their final linear maps onto ours unchanged and
only the image axes move (channels-last here, channels-first there).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcf.errors import InputError
from jaxcf.models import init
from jaxcf.models.layers import (
    AdaLNZeroBlock,
    AttentionControl,
    Dtype,
    LabelEmbedder,
    TimestepEmbedder,
    layer_norm,
    linear,
    modulate,
)

# DiT initialises the patch conv like a Linear on its flattened (C*p*p -> hidden) weight, so
# the fan-in is C*p*p and the fan-out is hidden (flax's default conv fans would multiply
# the fan-out by p*p as well).
patch_kernel_init = init.xavier_uniform_flat()


# --- fixed position embedding ------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def sincos_pos_embed_2d(dim: int, grid: int) -> np.ndarray:
    """Fixed 2-D sin-cos position embedding (grid*grid, dim) float32 (DiT Sec. 3.2, after MAE).

    Token (row i, column j) gets [sin(j w), cos(j w), sin(i w), cos(i w)] with
    w_k = 10000 ** (-k / (dim/4)), k < dim/4: the first half of the channels encodes the
    column, the second half the row (the reference meshgrid puts the width axis first).
    Computed in float64 like the reference, then rounded to float32. Read-only.
    """
    if dim % 4:
        raise InputError(f"hidden size {dim} must be a multiple of 4 for the 2-D sin-cos embedding")
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")

    def encode(pos: np.ndarray) -> np.ndarray:
        angles = pos.reshape(-1, 1).astype(np.float64) * omega[None]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    emb = np.concatenate([encode(cols), encode(rows)], axis=1).astype(np.float32)
    emb.flags.writeable = False
    return emb


def unpatchify(tokens: jax.Array, grid: tuple[int, int], patch: int, channels: int) -> jax.Array:
    """(B, gh*gw, p*p*C) tokens -> (B, gh*p, gw*p, C) image; each token's vector is ordered
    (row in patch, column in patch, channel)."""
    b = tokens.shape[0]
    gh, gw = grid
    x = tokens.reshape(b, gh, gw, patch, patch, channels)
    x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))  # (B, gh, p, gw, p, C)
    return x.reshape(b, gh * patch, gw * patch, channels)


# --- modules ---------------------------------------------------------------------------------


class FinalLayer(nnx.Module):
    """DiT final layer: adaLN (shift, scale) of an affine-free LayerNorm, then a linear map
    to p*p*out values per token. Both projections start at zero (adaLN-Zero), so a new DiT
    predicts exactly zero."""

    def __init__(self, hidden: int, patch: int, out_channels: int, *, dtype: Dtype, rngs):
        lin = lambda i, o: linear(i, o, zero_init=True, dtype=dtype, rngs=rngs)
        self.ada = lin(hidden, 2 * hidden)
        self.linear = lin(hidden, patch * patch * out_channels)

    def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
        """x (B, N, D) tokens, c (B, D) conditioning -> (B, N, p*p*out)."""
        shift, scale = jnp.split(self.ada(jax.nn.silu(c)), 2, -1)
        return self.linear(modulate(layer_norm(x), shift, scale))


class DiT(nnx.Module):
    """Diffusion Transformer on channels-last latents (B, H, W, C), H = W = input_size.

    num_classes: 0 for an unconditional model; otherwise labels in [0, num_classes), and
    num_classes itself is the null label (classifier-free guidance).
    context_dim: adds cross-attention to context tokens (B, L, context_dim) in every block.
    freq_shift: timestep-embedding frequency shift; 0 matches facebookresearch/DiT, 1
    matches diffusers' DiTTransformer2DModel (whose Timesteps use downscale_freq_shift=1),
    so a model that receives diffusers weights must be built with freq_shift=1.
    dtype: compute dtype (parameters stay float32); the output is always float32.
    remat: recompute each block's activations in the backward pass (memory for compute);
    calls given an attention `control` run without it, so that attention maps can be recorded.
    """

    def __init__(
        self,
        *,
        input_size: int,
        patch_size: int,
        in_channels: int,
        hidden_size: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        num_classes: int = 0,
        learn_sigma: bool = True,
        context_dim: int | None = None,
        freq_shift: float = 0.0,
        dtype: Dtype = None,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        if input_size % patch_size:
            raise InputError(f"input_size {input_size} is not a multiple of patch {patch_size}")
        if hidden_size % num_heads:
            raise InputError(f"hidden_size {hidden_size} does not split into {num_heads} heads")
        self.input_size, self.patch_size, self.in_channels = input_size, patch_size, in_channels
        self.hidden_size, self.num_classes, self.context_dim = hidden_size, num_classes, context_dim
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.dtype, self.remat = dtype, remat
        self.grid = input_size // patch_size
        sincos_pos_embed_2d(hidden_size, self.grid)  # fail early on a bad hidden size
        self.patch_embed = nnx.Conv(
            in_channels,
            hidden_size,
            (patch_size, patch_size),
            strides=(patch_size, patch_size),
            padding="VALID",
            kernel_init=patch_kernel_init,
            dtype=dtype,
            rngs=rngs,
        )
        self.t_embed = TimestepEmbedder(
            hidden_size, freq_dim=256, freq_shift=freq_shift, init_std=0.02, dtype=dtype, rngs=rngs
        )
        self.y_embed = (
            LabelEmbedder(num_classes, hidden_size, dtype=dtype, rngs=rngs) if num_classes else None
        )
        self.blocks = nnx.List(
            [
                AdaLNZeroBlock(
                    hidden_size,
                    num_heads,
                    mlp_ratio=mlp_ratio,
                    context_dim=context_dim,
                    name=f"blocks.{i}",
                    dtype=dtype,
                    rngs=rngs,
                )
                for i in range(depth)
            ]
        )
        self.final = FinalLayer(hidden_size, patch_size, self.out_channels, dtype=dtype, rngs=rngs)

    def _conditioning(self, t: jax.Array, cond: dict, batch: int) -> jax.Array:
        """c = embed(t) + embed(label): the (B, D) vector every adaLN layer reads."""
        c = self.t_embed(jnp.broadcast_to(jnp.asarray(t), (batch,)))
        label = cond.get("label")
        if self.y_embed is None:
            if label is not None:
                raise InputError("cond['label'] given to an unconditional DiT (num_classes=0)")
            return c
        if label is None:
            raise InputError(
                f"this DiT is class-conditional: give cond['label'] (B,) int32 in "
                f"[0, {self.num_classes}], {self.num_classes} being the null label"
            )
        return c + self.y_embed(jnp.broadcast_to(jnp.asarray(label), (batch,)))

    def __call__(
        self,
        x: jax.Array,
        t: jax.Array,
        cond: dict[str, Any] | None = None,
        *,
        rngs: nnx.Rngs | None = None,
        control: AttentionControl | None = None,
    ) -> jax.Array:
        """x (B, H, W, C), t (B,) (or a scalar), cond {"label": (B,), "context": (B, L, Dc),
        "context_mask": (B, L)} -> (B, H, W, out) float32.

        rngs is accepted for the denoiser interface and unused: DiT has no dropout (label
        dropout for guidance belongs to the training objective). control is called per
        block with names "blocks.{i}" / "blocks.{i}.cross" and grid (H/p, W/p).
        """
        del rngs
        b, h, w, ch = x.shape
        if (h, w, ch) != (self.input_size, self.input_size, self.in_channels):
            raise InputError(
                f"DiT expects latents (B, {self.input_size}, {self.input_size}, "
                f"{self.in_channels}), got {x.shape}"
            )
        cond = cond or {}
        context, context_mask = cond.get("context"), cond.get("context_mask")
        if context is not None and not self.context_dim:
            raise InputError("cond['context'] given to a DiT without cross-attention (context_dim)")
        c = self._conditioning(t, cond, b)
        if self.dtype is not None:
            x = x.astype(self.dtype)
        tokens = self.patch_embed(x)  # (B, H/p, W/p, D), row-major patch grid
        grid = tokens.shape[1:3]
        pos = jnp.asarray(sincos_pos_embed_2d(self.hidden_size, self.grid))
        tokens = tokens.reshape(b, -1, self.hidden_size) + pos.astype(tokens.dtype)

        def run(block: AdaLNZeroBlock, tokens: jax.Array, c: jax.Array, context, context_mask):
            return block(tokens, c, context, context_mask, control, grid)

        # graph_updates=False: in nnx.remat's default graph mode a block whose parameters are
        # constants of an outer trace (a gradient w.r.t. x only) fails to run. Nothing a
        # rematerialised block sows can leave it, so with an attention control (which may
        # record maps) blocks run without remat: same numbers, more memory.
        remat = self.remat and control is None
        run_block = nnx.remat(run, graph_updates=False) if remat else run
        for block in self.blocks:
            tokens = run_block(block, tokens, c, context, context_mask)
        out = self.final(tokens, c)
        return unpatchify(out, grid, self.patch_size, self.out_channels).astype(jnp.float32)


# --- published sizes ----------------------------------------------------------------------------

# (depth, hidden, heads): DiT paper Table 1.
_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}


def _imagenet(size: str, patch: int) -> dict[str, Any]:
    depth, hidden, heads = _SIZES[size]
    # ImageNet 256x256 through the SD VAE (8x down) -> 32x32x4 latents, 1000 classes.
    return dict(
        input_size=32,
        patch_size=patch,
        in_channels=4,
        hidden_size=hidden,
        depth=depth,
        num_heads=heads,
        num_classes=1000,
        learn_sigma=True,
    )


PRESETS: dict[str, dict[str, Any]] = {
    f"DiT-{size}/{patch}": _imagenet(size, patch) for size in _SIZES for patch in (2, 4, 8)
}
# Promptable counterfactual diffusion (paper 000, Sec. 2 "Transformer-based Denoising Network"):
# DiT-B/2 on Stable-Diffusion-VAE latents of 128x128 BraTS slices. The SD VAE takes RGB, so
# each of the 4 modalities (T1, T1-ce, T2, FLAIR) is replicated to 3 channels and encoded
# separately into a 16x16x4 latent; the 4 latents are concatenated to 16 channels. Labels:
# 0 healthy slice, 1 slice with tumour (2 = null label for guidance).
PRESETS["pcf_dit_brats128"] = dict(
    PRESETS["DiT-B/2"], input_size=16, in_channels=16, num_classes=2, learn_sigma=True
)


def dit_param_count_formula(
    depth: int,
    hidden: int,
    patch: int,
    in_channels: int,
    num_classes: int,
    learn_sigma: bool,
    mlp_ratio: float = 4,
    freq_dim: int = 256,
) -> int:
    """Trainable parameters of a DiT without cross-attention (the fixed position embedding
    is not a parameter). Linear(i, o) has i*o + o parameters."""
    lin = lambda i, o: i * o + o
    d, mlp = hidden, int(hidden * mlp_ratio)
    out = 2 * in_channels if learn_sigma else in_channels
    patch_embed = lin(patch * patch * in_channels, d)
    t_embed = lin(freq_dim, d) + lin(d, d)
    y_embed = (num_classes + 1) * d if num_classes else 0  # + the null-label row
    block = lin(d, 3 * d) + lin(d, d) + lin(d, mlp) + lin(mlp, d) + lin(d, 6 * d)
    final = lin(d, 2 * d) + lin(d, patch * patch * out)
    return patch_embed + t_embed + y_embed + depth * block + final
