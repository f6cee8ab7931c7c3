"""Diffusion spaces: where the diffusion variable x0 lives relative to the data.

    space, frozen = build_space(config, key)            # config.diffusion.space picks one
    x0 = space.encode(frozen, images)                   # (B, ..., C) data -> x0
    images = space.decode(frozen, x0)
    sample(..., x0_transform=space.x0_transform)        # None where the range is unknown

A space is a small object chosen ONCE by name (SPACES: name -> builder); builders return
the space and the frozen weights it needs ({} when none), which the caller passes back
as `frozen` (a jit argument, never a constant, never part of the training state):

  "pixel"    images as they come; x0_transform static_clip to the data range (as
             guided-diffusion's clip_denoised=True and diffusers' clip_sample=True).
  "wavelet"  WDM (Friedrich et al. 2024): Haar sub-bands with LLL / 3; x0_transform
             wavelet_clip to the data range (back to the image, clamp, forward again).
  "latent"   a frozen AutoencoderKL (config.vae), loaded from vae.checkpoint each time the
             task is built (training, resume, inference); frozen = {"vae": params}. RGB VAEs
             encode four MRI modalities one at a time, replicated to three channels
             (Shen et al. 2024). No x0_transform (latents have no fixed range).

The data range is the one the config's data task writes (`data_range`): [-1, 1] for
Diff-SCM slices and radiographs, data.value_range for WDM volumes, none (no clip) for
z-scored seg3d volumes and for targets other than the image. Every sampler that runs a
trained model (training previews, load_trained's method models and so the methods) takes
the space's x0_transform, so clipping the x0 estimate is the default wherever the range
is known; the low-level samplers themselves know no range and default to none.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcf import diffusion as D
from jaxcf import models
from jaxcf.errors import InputError
from jaxcf.models import vae as vae_models
from jaxcf.models import wavelet

Transform = Callable[[jax.Array], jax.Array] | None
Range = tuple[float, float] | None

# The value range each data task writes (jaxcf.data.transforms): Diff-SCM slices and CXR
# radiographs in [-1, 1]; WDM volumes in data.value_range; seg3d volumes are z-scored.
_FIXED_RANGES: dict[str, Range] = {"slices2d": (-1.0, 1.0), "cxr": (-1.0, 1.0), "seg3d": None}


def data_range(config: Any) -> Range:
    """(lo, hi) of the data config.diffusion.target is diffused from, or None if unknown."""
    if (config.diffusion.get("target", "image") or "image") != "image":
        return None  # e.g. a segmentation: its labels have no declared value range
    task = config.data.task
    if task == "volumes":
        lo, hi = config.data.value_range
        return float(lo), float(hi)
    return _FIXED_RANGES.get(task)


@functools.cache
def _clip(transform: Callable[..., jax.Array], value_range: Range) -> Transform:
    # Cached: the same range gives the same (hashable, comparable) function every time.
    if value_range is None:
        return None
    return functools.partial(transform, value=value_range)


@dataclasses.dataclass(frozen=True)
class PixelSpace:
    """x0 = the data itself; value_range: the data's (lo, hi), None if unknown."""

    value_range: Range = (-1.0, 1.0)
    name: str = "pixel"

    def encode(self, frozen: dict, images: jax.Array) -> jax.Array:
        return images

    def decode(self, frozen: dict, x0: jax.Array) -> jax.Array:
        return x0

    @property
    def x0_transform(self) -> Transform:
        return _clip(D.static_clip, self.value_range)


@dataclasses.dataclass(frozen=True)
class WaveletSpace:
    """x0 = WDM's scaled Haar coefficients: (B, h, w, 4C) / (B, d, h, w, 8C);
    value_range: the images' (lo, hi), None if unknown."""

    value_range: Range = (-1.0, 1.0)
    name: str = "wavelet"

    def encode(self, frozen: dict, images: jax.Array) -> jax.Array:
        return wavelet.to_wavelet(images)

    def decode(self, frozen: dict, x0: jax.Array) -> jax.Array:
        return wavelet.from_wavelet(x0)

    @property
    def x0_transform(self) -> Transform:
        return _clip(wavelet.wavelet_clip, self.value_range)


@dataclasses.dataclass(frozen=True)
class LatentSpace:
    """x0 = scaled VAE latents; the VAE's weights are frozen["vae"].

    graphdef: the VAE's nnx graph; mode: "per_modality" (an RGB VAE, each modality
    replicated to three channels) or "joint" (all channels at once)."""

    graphdef: Any
    mode: str
    name: str = "latent"

    def encode(self, frozen: dict, images: jax.Array) -> jax.Array:
        vae = nnx.merge(self.graphdef, frozen["vae"])
        if self.mode == "per_modality":
            return vae_models.encode_modalities(vae, images)
        return vae.encode_latents(images)

    def decode(self, frozen: dict, x0: jax.Array) -> jax.Array:
        vae = nnx.merge(self.graphdef, frozen["vae"])
        if self.mode == "per_modality":
            return vae_models.decode_modalities(vae, x0)
        return vae.decode_latents(x0)

    @property
    def x0_transform(self) -> Transform:
        return None


Space = PixelSpace | WaveletSpace | LatentSpace


def _pixel(config: Any, key: jax.Array, restoring: bool) -> tuple[Space, dict]:
    return PixelSpace(data_range(config)), {}


def _wavelet(config: Any, key: jax.Array, restoring: bool) -> tuple[Space, dict]:
    return WaveletSpace(data_range(config)), {}


def _latent(config: Any, key: jax.Array, restoring: bool) -> tuple[Space, dict]:
    graphdef, params, mode = build_vae(config.vae, key, restoring)
    return LatentSpace(graphdef, mode), {"vae": params}


# name -> builder(config, key, restoring) -> (space, frozen weights it adds)
SPACES: dict[str, Callable[[Any, jax.Array, bool], tuple[Space, dict]]] = {
    "pixel": _pixel,
    "wavelet": _wavelet,
    "latent": _latent,
}


def build_space(config: Any, key: jax.Array, *, restoring: bool = False) -> tuple[Space, dict]:
    """(space, frozen) for config.diffusion.space. key seeds networks built from scratch
    (an untrained smoke-run VAE: the same key gives the same weights). restoring: see
    build_vae."""
    name = config.diffusion.space
    if name not in SPACES:
        raise InputError(f"diffusion.space must be one of {sorted(SPACES)}, got {name!r}")
    return SPACES[name](config, key, restoring)


# -- the frozen autoencoder of latent models ---------------------------------------------------


def check_vae(vae: Any) -> None:
    """Refuse an empty vae.checkpoint (ValueError naming the fields) unless
    vae.allow_untrained, then warn loudly. Called before any data work or training."""
    if not vae.checkpoint:
        if not vae.get("allow_untrained", False):
            raise InputError(
                "vae.checkpoint is empty: the latent model would train on an untrained VAE "
                "whose latents mean nothing; set vae.checkpoint=PATH (a diffusers "
                "AutoencoderKL or a configs/vae_brats.py workdir) or "
                "--config.vae.allow_untrained=True for a smoke run"
            )
        print(
            "WARNING: vae.checkpoint is empty and vae.allow_untrained=True: the latent model "
            "uses an untrained VAE whose latents mean nothing (smoke runs only)",
            file=sys.stderr,
        )


def build_vae(vae: Any, key: jax.Array, restoring: bool = False):
    """(graphdef, params, mode) of the frozen latent autoencoder: vae.checkpoint's weights,
    or (empty checkpoint) the untrained VAE initialised from `key`, deterministic, so the
    training run, its resumption and inference all rebuild the same weights from
    train.seed. restoring: a trained diffusion model is being loaded (the run that trained
    it already passed check_vae), so an empty vae.checkpoint is accepted without a word."""
    if not restoring:
        check_vae(vae)
    network = {"family": "vae", "preset": vae.preset}
    scale = float(vae.get("scaling_factor", 0.0))
    if scale < 0:
        raise InputError(f"vae.scaling_factor must be > 0 (or 0: the preset's), got {scale}")
    if scale > 0:
        network["scaling_factor"] = scale
    module = models.build_module(network, key)
    graphdef, params = nnx.split(module)
    if vae.checkpoint:
        params = load_vae_params(vae.checkpoint, params)
    mode = vae.mode
    if mode == "auto":
        mode = "per_modality" if module.encoder.conv_in.in_features == 3 else "joint"
    if mode not in ("per_modality", "joint"):
        raise InputError(f"vae.mode must be auto, per_modality or joint, got {vae.mode!r}")
    return graphdef, params, mode


def load_vae_params(path: str, params: nnx.State) -> nnx.State:
    """A diffusers AutoencoderKL file / folder, or a jaxcf workdir trained with a vae config."""
    from jaxcf.checkpoint import Checkpoints, abstract_like
    from jaxcf.convert.diffusers_vae import load_vae_checkpoint

    folder = pathlib.Path(path)
    if (folder / "checkpoints").is_dir():
        ckpt = Checkpoints(folder)
        try:
            if ckpt.latest_step is None:
                raise InputError(f"vae.checkpoint: {folder} has no checkpoint yet")
            # The VAE run's EMA weights, restored into this VAE's own state structure (a raw
            # restore gives nnx's {"value": ...} leaves, which replace_by_pure_dict refuses).
            restored = ckpt.restore_subtrees({"ema": {"model": abstract_like(params)}})
        finally:
            ckpt.close()
        return jax.tree.map(jnp.asarray, restored["ema"]["model"])
    return load_vae_checkpoint(path, params)
