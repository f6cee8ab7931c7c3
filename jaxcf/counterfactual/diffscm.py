"""Diff-SCM counterfactuals (Sanchez et al. 2022, "What is healthy?", Alg. 1).

    latent = DDIM-encode(x, null condition)               Alg. 1 "Encoding", eq. 2 run upward
    x_cf   = DDIM-decode(latent, CFG toward the target)   Alg. 1 "Decoding", eq. 2 + Sec. 3.2
    heatmap = mean_c |x - x_cf|                           Alg. 1, last line

Both halves apply dynamic normalisation (Sec. 3.4) to the x0 estimate of every step. The
encoding stops at level L = strength * num_steps of the respaced chain (paper / reference:
ddim100, L = 0.75, w = 3, s = 0.99): deep enough that the lesion can be rewritten, shallow
enough that the anatomy survives. Everything is composed from `jaxcf.diffusion`; nothing
here is a sampler of its own.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxcf.counterfactual.model import MethodModel
from jaxcf.diffusion.guidance import (
    broadcast_null,
    classifier_free_guidance,
    prediction_channels,
)
from jaxcf.diffusion.samplers import (
    ModelFn,
    Transform,
    ddim_invert,
    ddim_sample,
    flow_invert,
    flow_sample,
)
from jaxcf.diffusion.schedules import Schedule
from jaxcf.diffusion.transforms import dynamic_normalization
from jaxcf.errors import InputError

DiffSCMFn = Callable[[Any, jax.Array, Any, Any], dict[str, jax.Array]]
MethodFn = Callable[[Any, dict, jax.Array], dict[str, jax.Array]]


def difference_map(x: jax.Array, x_cf: jax.Array) -> jax.Array:
    """Channel mean of |x - x_cf|: (B, ..., C) pair -> (B, ...) float32 heatmap."""
    return jnp.mean(jnp.abs(x.astype(jnp.float32) - x_cf.astype(jnp.float32)), axis=-1)


def _check(x: jax.Array, strength: float, guidance_scale: float) -> None:
    if x.ndim < 3:
        raise InputError(
            f"x must be channels-last (B, ..., C) with >= 1 spatial axis, got {x.shape}"
        )
    if not 0.0 < strength <= 1.0:
        raise InputError(
            f"strength (the encoding depth L / num_steps) must be in (0, 1], got {strength}"
        )
    if isinstance(guidance_scale, int | float) and guidance_scale < 0:
        raise InputError(f"guidance_scale must be >= 0, got {guidance_scale}")


def diffscm(
    model_fn: ModelFn,
    schedule: Schedule,
    x: jax.Array,
    *,
    null_cond: Any,
    target_cond: Any,
    num_steps: int = 100,
    strength: float = 0.75,
    guidance_scale: float | jax.Array = 3.0,
    quantile: float | None = 0.99,
    x0_transform: Transform = None,
    model_time: str = "current",
    spacing: str = "leading",
) -> dict[str, jax.Array]:
    """Diff-SCM counterfactual of a batch of images (Sanchez et al. 2022, Alg. 1).

    Args:
      model_fn: conditional denoiser trained with condition dropout, model_fn(x_t, t, cond).
      schedule: its noise schedule. Discrete schedules encode / decode with DDIM (the
        paper); rectified-flow schedules with flow_invert / flow_sample on the same grid.
      x: (B, ..., C) factual images, channels-last, in the model's intensity range.
      null_cond: the null condition; each leaf broadcastable to target_cond's leaf
        (e.g. {"label": jnp.array([num_classes])}), as classifier_free_guidance expects.
      target_cond: the intervention, e.g. {"label": (B,) int32} = healthy.
      num_steps: respaced DDIM steps of the full chain (paper: ddim100).
      strength: encoding depth L as a fraction of num_steps (paper: 0.75).
      guidance_scale: w in eps = w eps(c) + (1 - w) eps(null) (paper: 3).
      quantile: s of dynamic normalisation (paper: 0.99); None disables it.
      x0_transform: the x0 transform used where quantile is None (e.g. the space's
        data-range clip: jaxcf.counterfactual.MethodModel.x0_transform).
      model_time: "current" evaluates the encoder's denoiser at the level of its input,
        as guided-diffusion's ddim_reverse_sample (Diff-SCM's reference); "target" at the
        level it steps to (see jaxcf.diffusion.ddim_invert).
      spacing: respacing of the chain ("leading" equals guided-diffusion's "ddim100");
        discrete schedules only (model_time too).
    Returns:
      {"counterfactual": (B, ..., C), "latent": (B, ..., C) x encoded to level L,
       "heatmap": (B, ...) channel mean of |x - counterfactual|}.
    """
    x = jnp.asarray(x, jnp.float32)
    _check(x, strength, guidance_scale)
    # Sec. 3.4: th = max(1, quantile(|x0|, s)); x0 <- clip(x0, -th, th) / th at EVERY step of
    # both halves, so guided x0 estimates never saturate and the latent stays manipulable.
    norm = (
        x0_transform
        if quantile is None
        else functools.partial(dynamic_normalization, quantile=quantile)
    )
    # Alg. 1 "Encoding": eq. 2 with t -> t + 1 and c = null, L steps. The encoder needs the
    # null condition per example (the same pytree shapes as the target).
    common = dict(num_steps=num_steps, strength=strength, x0_transform=norm)
    if schedule.is_flow:
        # A rectified-flow model: the deterministic ODE run up to level L (flow_invert) and
        # back down (flow_sample) over the same grid, the flow twin of DDIM's pair.
        invert, sample = flow_invert, flow_sample
    else:
        invert = functools.partial(ddim_invert, spacing=spacing, model_time=model_time)
        sample = functools.partial(ddim_sample, spacing=spacing)
    latent = invert(model_fn, schedule, x, cond=broadcast_null(null_cond, target_cond), **common)
    # Alg. 1 "Decoding" / Sec. 3.2 implicit guidance: eps = w eps(x_t, c) + (1 - w) eps(x_t, null)
    # = uncond + w (cond - uncond), one forward on the concatenated cond / null batch.
    guided = classifier_free_guidance(
        model_fn,
        guidance_scale,
        null_cond,
        guided_channels=prediction_channels(schedule, x.shape[-1]),
    )
    x_cf = sample(guided, schedule, latent, cond=target_cond, **common)
    return {"counterfactual": x_cf, "latent": latent, "heatmap": difference_map(x, x_cf)}


def make_diffscm(
    apply_fn: Callable[..., jax.Array],
    schedule: Schedule,
    *,
    num_steps: int = 100,
    strength: float = 0.75,
    guidance_scale: float = 3.0,
    quantile: float | None = 0.99,
    x0_transform: Transform = None,
    model_time: str = "current",
    spacing: str = "leading",
) -> DiffSCMFn:
    """The whole Diff-SCM counterfactual (encode + decode) as ONE jitted function.

    apply_fn(params, x_t, t, cond) is the denoiser with its weights as first argument.
    Returns fn(params, x, null_cond, target_cond) -> dict as :func:`diffscm`, for a batch
    x (B, ..., C). The weights are an argument of the compiled function, never constants
    folded into it; the options are fixed here (num_steps and strength shape the scans, so
    they are static), and it compiles once per input shape and pytree structure.
    """
    if not 0.0 < strength <= 1.0:
        raise InputError(f"strength must be in (0, 1], got {strength}")

    @jax.jit
    def counterfactual(
        params: Any, x: jax.Array, null_cond: Any, target_cond: Any
    ) -> dict[str, jax.Array]:
        return diffscm(
            functools.partial(apply_fn, params),
            schedule,
            x,
            null_cond=null_cond,
            target_cond=target_cond,
            num_steps=num_steps,
            strength=strength,
            guidance_scale=guidance_scale,
            quantile=quantile,
            x0_transform=x0_transform,
            model_time=model_time,
            spacing=spacing,
        )

    return counterfactual


# --- the method plug-in (jaxcf.counterfactual.registry) -------------------------------------

LABEL = "Diff-SCM"


def default_config() -> ml_collections.ConfigDict:
    """counterfactual.diffscm.*: paper 001's settings (ddim100, L = 0.75, w = 3, s = 0.99)."""
    return ml_collections.ConfigDict(
        {
            "num_steps": 100,  # respaced DDIM steps of the full chain (ddim100)
            "strength": 0.75,  # encoding depth L, a fraction of num_steps
            "guidance_scale": 3.0,  # w of classifier-free guidance toward the target
            "quantile": 0.99,  # s of dynamic normalisation; 0 disables it
            "model_time": "current",  # DDIM inversion's model time (Diff-SCM: current)
            "spacing": "leading",  # guided-diffusion's "ddim100"
            "target_label": 0,  # the intervention: 0 = healthy
        }
    )


def build(model: MethodModel, cfg: ml_collections.ConfigDict) -> MethodFn:
    """fn(weights, {"image": (B, ..., C)}, key) -> {"counterfactual", "heatmap"}.

    Latent and wavelet models run Diff-SCM on the diffusion variable (model.encode) and
    decode the counterfactual; the heatmap is always in data space."""
    _check(jnp.zeros((1, 1, 1)), float(cfg.strength), float(cfg.guidance_scale))
    target_label = int(cfg.target_label)
    model.label_cond(target_label, 1)  # a label model with that class, or a clear error
    options = dict(
        num_steps=int(cfg.num_steps),
        strength=float(cfg.strength),
        guidance_scale=float(cfg.guidance_scale),
        # Sec. 3.4's normalisation assumes pixels in [-1, 1]; VAE latents and Haar sub-bands
        # have other ranges, so they keep their space's own transform (none for latents).
        quantile=float(cfg.quantile) if cfg.quantile and model.space == "pixel" else None,
        x0_transform=model.x0_transform,
        model_time=str(cfg.model_time),
        spacing=str(cfg.spacing),
    )

    def fn(weights: Any, batch: dict, key: jax.Array) -> dict[str, jax.Array]:
        x = batch["image"]
        target, null = model.conditions(weights, model.label_cond(target_label, x.shape[0]))
        out = diffscm(
            model.model_fn(weights),
            model.schedule,
            model.encode(weights, x),
            null_cond=null,
            target_cond=target,
            **options,
        )
        if model.space == "pixel":
            return out
        x_cf = model.decode(weights, out["counterfactual"])
        return {"counterfactual": x_cf, "heatmap": difference_map(x, x_cf)}

    return fn
