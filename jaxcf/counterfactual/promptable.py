"""Promptable counterfactual diffusion (Shen, He & Unberath 2024, Alg. 1).

A *mask prompt* says where the image may change. Public convention, used everywhere here:

    region (B, ..., 1), float or bool: 1 = regenerate this pixel (the prompt),
                                       0 = known, kept from the input.

Alg. 1 writes the combination with the KNOWN-region indicator m,
x_{t-1} = m * x_known + (1 - m) * x_guided, so its m is 1 - region.

Every ancestral (DDPM) step, implemented as an `after` StepHook, so the samplers of
`jaxcf.diffusion` are reused unchanged:
  * known region  ~ q(x_{t-1} | x_t, x_0), the forward posterior (Alg. 1 lines 4-6), or, with
    known="forward", q(x_{t-1} | x_0) as in plain RePaint;
  * prompted region: the model's guided step (classifier-free guidance toward `cond`);
  * combined by the mask (line 13). At the last step (t_next = -1) the posterior collapses
    to x_0, so the known region of the output is exactly the input.
With `resample=(jump_length, jump_n_sample)` the same hook runs inside RePaint's resampling
trajectory (Lugmayr et al. 2022; defaults 10, 10).

Latent models (the paper's DiT-B/2 on Stable-Diffusion VAE latents): pass `encode` /
`decode`; the region is max-pooled to the latent grid (:func:`latent_region`) and the known
pixels are pasted back after decoding (`paste_known`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcf.counterfactual.diffscm import build as build_diffscm
from jaxcf.counterfactual.diffscm import default_config as diffscm_config
from jaxcf.counterfactual.diffscm import difference_map
from jaxcf.counterfactual.model import MethodModel
from jaxcf.counterfactual.prompts import REGIONS, heatmap_box, prompt_regions
from jaxcf.diffusion import process
from jaxcf.diffusion.guidance import classifier_free_guidance, prediction_channels
from jaxcf.diffusion.samplers import (
    ModelFn,
    StepHooks,
    Transform,
    ddpm_sample,
    repaint_sample,
    start_timestep,
    strength_steps,
)
from jaxcf.diffusion.schedules import Schedule, respace
from jaxcf.errors import InputError

Codec = Callable[[jax.Array], jax.Array]
PromptableFn = Callable[[Any, jax.Array, jax.Array, jax.Array, Any, Any], dict[str, jax.Array]]
KNOWN_MODES = ("posterior", "forward")


def as_region(region: jax.Array, x: jax.Array) -> jax.Array:
    """Validate a mask prompt against images x (B, ..., C); return float32 (B, ..., 1).

    Accepts (B, ..., 1) or (B, ...) (a channel axis is added); a batch of 1 broadcasts.
    """
    region = jnp.asarray(region)
    if region.ndim == x.ndim - 1:
        region = region[..., None]
    if region.ndim != x.ndim or region.shape[-1] != 1:
        raise InputError(
            f"region must be (B, ..., 1) or (B, ...) matching images {x.shape}, got {region.shape}"
        )
    if region.shape[1:-1] != x.shape[1:-1] or region.shape[0] not in (1, x.shape[0]):
        raise InputError(f"region {region.shape} does not match images {x.shape}")
    return jnp.broadcast_to(region.astype(jnp.float32), (*x.shape[:-1], 1))


def latent_region(region: jax.Array, latent_spatial_shape: Sequence[int]) -> jax.Array:
    """Mask prompt (B, *S, 1) -> its latent-grid version (B, *s, 1), float32.

    A latent cell is "to regenerate" if ANY pixel under it is (max-pooling over each
    S_i / s_i block): a cell that mixes tumour and healthy pixels must be regenerated, else
    its latent code would carry tumour intensities into the known region and the decoder
    would paint them back. Each S_i must be a multiple of s_i.
    """
    region = jnp.asarray(region, jnp.float32)
    b, *spatial, c = region.shape
    latent = tuple(int(s) for s in latent_spatial_shape)
    if c != 1 or len(latent) != len(spatial):
        raise InputError(
            f"latent_region: region (B, *S, 1) with {len(latent)} spatial axes expected, "
            f"got {region.shape} for latent grid {latent}"
        )
    if any(s % lat for s, lat in zip(spatial, latent, strict=True)):
        raise InputError(f"latent grid {latent} does not divide the image grid {tuple(spatial)}")
    blocks = [d for s, lat in zip(spatial, latent, strict=True) for d in (lat, s // lat)]
    pooled_axes = tuple(2 + 2 * i for i in range(len(latent)))
    return jnp.max(region.reshape(b, *blocks, 1), axis=pooled_axes)


def mask_prompt_hook(
    schedule: Schedule, x0: jax.Array, region: jax.Array, *, known: str = "posterior"
) -> StepHooks:
    """The `after` StepHook of Alg. 1: paste the known region into each model step.

    x0: (B, ..., C) the clean input (pixels or latents); region: (B, ..., 1), 1 = regenerate.
    """
    if known not in KNOWN_MODES:
        raise InputError(f"known must be one of {KNOWN_MODES}, got {known!r}")
    region = as_region(region, x0)

    def after(x_next, x_t, t, t_next, key):
        noise = jax.random.normal(key, x0.shape, jnp.float32)
        if known == "posterior":
            # Alg. 1 lines 4-6: x_known ~ N(mu~_t(x_t, x0), beta~_t I) (Ho et al. 2020 eqs. 6-7,
            # for the respaced gap t -> t_next). Unlike forward noising it is tied to the
            # current x_t, so the known region evolves along one coherent trajectory.
            mean, var = process.posterior_mean_variance(schedule, x0, x_t, t, t_next)
            x_known = mean + jnp.sqrt(var) * noise
        else:
            # RePaint: x_known ~ q(x_{t_next} | x0), independent of x_t.
            x_known = process.q_sample(schedule, x0, t_next, noise)
        # Alg. 1 line 13 with m = 1 - region. At t_next = -1 both give x0 exactly.
        return region * x_next + (1.0 - region) * x_known

    return StepHooks(after=after)


def _check_resample(resample: tuple[int, int] | None) -> None:
    if resample is None:
        return
    if len(resample) != 2 or min(resample) < 1:
        raise InputError(
            f"resample must be None or (jump_length, jump_n_sample) >= 1, got {resample}"
        )


def _check_start(schedule: Schedule, num_steps: int, start_strength: float) -> None:
    if not 0.0 < start_strength <= 1.0:
        raise InputError(f"start_strength must be in (0, 1], got {start_strength}")
    respace(schedule.num_timesteps, num_steps)  # validates num_steps
    if strength_steps(num_steps, start_strength) < 1:
        raise InputError(f"start_strength {start_strength} runs no step of {num_steps}")


def promptable_sample(
    model_fn: ModelFn,
    schedule: Schedule,
    x0: jax.Array,
    region: jax.Array,
    *,
    key: jax.Array,
    cond: Any,
    null_cond: Any,
    guidance_scale: float | jax.Array | None = 3.0,
    num_steps: int = 100,
    resample: tuple[int, int] | None = None,
    known: str = "posterior",
    start_strength: float = 1.0,
    x0_transform: Transform = None,
) -> jax.Array:
    """Mask-prompted sampling (Shen et al. 2024, Alg. 1) in the space of x0.

    Args:
      model_fn: conditional denoiser trained with condition dropout.
      schedule: its discrete schedule (ancestral steps use schedule.variance).
      x0: (B, ..., C) the clean input (pixels, or latents of a latent model).
      region: (B, ..., 1) mask prompt, 1 = regenerate, 0 = keep (Alg. 1's m is 1 - region).
      key: PRNG key. split(key)[0] draws x_T, split(key)[1] drives the sampler.
      cond: target condition pytree, e.g. {"label": (B,) int32}.
      null_cond: null condition, leaves broadcastable to cond's (e.g. {"label": [K]}).
      guidance_scale: CFG weight w (uncond + w (cond - uncond)); None: the conditional
        model alone, one forward per step.
      num_steps: respaced ancestral steps (leading spacing).
      resample: None for plain DDPM steps, or (jump_length, jump_n_sample) for RePaint
        resampling (RePaint's defaults: (10, 10)).
      known: "posterior" (Alg. 1) or "forward" (plain RePaint) for the known region.
      start_strength: 1.0 starts from x_T ~ N(0, I) as Alg. 1. EXTENSION (not in the paper):
        < 1 starts from q(x_t | x0) at that fraction of the chain and runs only the last
        round(start_strength * num_steps) steps, keeping more of the input's layout.
      x0_transform: optional transform of each x0 estimate (e.g. static_clip).
    Returns:
      (B, ..., C) float32 counterfactual; equal to x0 wherever region == 0.
    """
    x0 = jnp.asarray(x0, jnp.float32)
    hooks = mask_prompt_hook(schedule, x0, region, known=known)
    _check_resample(resample)
    _check_start(schedule, num_steps, start_strength)
    init_key, sample_key = jax.random.split(key)
    x_T = jax.random.normal(init_key, x0.shape, jnp.float32)  # Alg. 1 line 1
    if start_strength < 1.0:  # the input noised to the level the partial chain starts at
        t_start = start_timestep(schedule.num_timesteps, num_steps, start_strength)
        x_T = process.q_sample(schedule, x0, jnp.full((x0.shape[0],), t_start), x_T)
    # Alg. 1 lines 8-11: the unknown region follows the model guided toward `cond`; line 10's
    # guidance signal is realised as classifier-free guidance (one doubled-batch forward).
    guided = (
        model_fn
        if guidance_scale is None
        else classifier_free_guidance(
            model_fn,
            guidance_scale,
            null_cond,
            guided_channels=prediction_channels(schedule, x0.shape[-1]),
        )
    )
    common = dict(
        key=sample_key,
        cond=cond,
        x0_transform=x0_transform,
        hooks=hooks,
        num_steps=num_steps,
        strength=start_strength,
    )
    if resample is None:
        return ddpm_sample(guided, schedule, x_T, **common)
    jump_length, jump_n_sample = resample
    return repaint_sample(
        guided,
        schedule,
        x_T,
        jump_length=jump_length,
        jump_n_sample=jump_n_sample,
        **common,
    )


def promptable_counterfactual(
    model_fn: ModelFn,
    schedule: Schedule,
    x: jax.Array,
    region: jax.Array,
    *,
    key: jax.Array,
    cond: Any,
    null_cond: Any,
    encode: Codec | None = None,
    decode: Codec | None = None,
    paste_known: bool = True,
    **options: Any,
) -> dict[str, jax.Array]:
    """Counterfactual of images x (B, ..., C) under a pixel-space mask prompt region.

    Pixel models sample directly. Latent models (encode / decode given, e.g.
    partial(encode_modalities, vae) / partial(decode_modalities, vae)) sample in latent
    space with the region max-pooled by :func:`latent_region`, then decode. `paste_known`
    copies the known pixels (region == 0) of x into the result: a VAE round trip is not
    the identity, and without the paste its reconstruction error would show up everywhere
    in the difference map, not just where the prompt allowed a change. For pixel models it
    changes nothing (the sampler already ends on x there).
    options: promptable_sample's (guidance_scale, num_steps, resample, known,
    start_strength, x0_transform).
    Returns {"counterfactual": (B, ..., C), "heatmap": (B, ...) channel mean |x - cf|}.
    """
    if (encode is None) != (decode is None):
        raise InputError("pass both encode and decode (latent model) or neither (pixel model)")
    x = jnp.asarray(x, jnp.float32)
    region = as_region(region, x)
    if encode is None:
        x_cf = promptable_sample(
            model_fn, schedule, x, region, key=key, cond=cond, null_cond=null_cond, **options
        )
    else:
        z0 = jnp.asarray(encode(x), jnp.float32)
        z_region = latent_region(region, z0.shape[1:-1])
        z_cf = promptable_sample(
            model_fn, schedule, z0, z_region, key=key, cond=cond, null_cond=null_cond, **options
        )
        x_cf = jnp.asarray(decode(z_cf), jnp.float32)
        if x_cf.shape != x.shape:
            raise InputError(f"decode returned {x_cf.shape}, images are {x.shape}")
    if paste_known:
        x_cf = region * x_cf + (1.0 - region) * x
    return {"counterfactual": x_cf, "heatmap": difference_map(x, x_cf)}


def make_promptable(
    apply_fn: Callable[..., jax.Array],
    schedule: Schedule,
    *,
    num_steps: int = 100,
    guidance_scale: float | None = 3.0,
    resample: tuple[int, int] | None = None,
    known: str = "posterior",
    encode: Callable[[Any, jax.Array], jax.Array] | None = None,
    decode: Callable[[Any, jax.Array], jax.Array] | None = None,
    paste_known: bool = True,
    start_strength: float = 1.0,
    x0_transform: Transform = None,
) -> PromptableFn:
    """:func:`promptable_counterfactual` with fixed options as ONE jitted function.

    apply_fn(params, x_t, t, cond) is the denoiser with its weights first; encode /
    decode (latent models) take the same params first: encode(params, images).
    Returns fn(params, x, region, key, cond, null_cond) -> {"counterfactual", "heatmap"}
    for x (B, ..., C), region (B, ..., 1). The weights are an argument of the compiled
    function, never constants folded into it; it compiles once per input shape.
    """
    if known not in KNOWN_MODES:
        raise InputError(f"known must be one of {KNOWN_MODES}, got {known!r}")
    _check_resample(resample)
    options = dict(
        guidance_scale=guidance_scale,
        num_steps=num_steps,
        resample=resample,
        known=known,
        start_strength=start_strength,
        x0_transform=x0_transform,
    )

    @jax.jit
    def counterfactual(params, x, region, key, cond, null_cond) -> dict[str, jax.Array]:
        codec = {}
        if encode is not None or decode is not None:
            codec = dict(
                encode=None if encode is None else functools.partial(encode, params),
                decode=None if decode is None else functools.partial(decode, params),
            )
        return promptable_counterfactual(
            functools.partial(apply_fn, params),
            schedule,
            x,
            region,
            key=key,
            cond=cond,
            null_cond=null_cond,
            paste_known=paste_known,
            **codec,
            **options,
        )

    return counterfactual


# --- two-step tumour removal and regeneration (Sec. 3, "Evaluation of Tumor Generation") ---


def remove(
    model_fn: ModelFn,
    schedule: Schedule,
    x: jax.Array,
    region: jax.Array,
    *,
    key: jax.Array,
    healthy_cond: Any,
    null_cond: Any,
    **options: Any,
) -> dict[str, jax.Array]:
    """Step 1: regenerate the prompted region (tumour mask or any prompt) as healthy.
    Returns {"counterfactual", "heatmap"}; options as promptable_counterfactual."""
    return promptable_counterfactual(
        model_fn, schedule, x, region, key=key, cond=healthy_cond, null_cond=null_cond, **options
    )


def regenerate(
    model_fn: ModelFn,
    schedule: Schedule,
    x: jax.Array,
    region: jax.Array,
    *,
    key: jax.Array,
    tumour_cond: Any,
    null_cond: Any,
    **options: Any,
) -> dict[str, jax.Array]:
    """Step 2: grow a tumour inside a (random or given) region of a healthy image.
    Returns {"counterfactual", "heatmap"}; options as promptable_counterfactual."""
    return promptable_counterfactual(
        model_fn, schedule, x, region, key=key, cond=tumour_cond, null_cond=null_cond, **options
    )


def position_transfer(
    model_fn: ModelFn,
    schedule: Schedule,
    x: jax.Array,
    tumour_region: jax.Array,
    new_region: jax.Array,
    *,
    key: jax.Array,
    healthy_cond: Any,
    tumour_cond: Any,
    null_cond: Any,
    **options: Any,
) -> dict[str, jax.Array]:
    """Move a tumour: remove it inside tumour_region, then regenerate one in new_region.

    x (B, ..., C); regions (B, ..., 1), 1 = regenerate. Returns {"healthy": stage-1 image,
    "transferred": stage-2 image (both (B, ..., C)), "removal_heatmap": |x - healthy|,
    "regeneration_heatmap": |healthy - transferred| (channel means, (B, ...))}.
    """
    key_remove, key_regenerate = jax.random.split(key)
    healed = remove(
        model_fn,
        schedule,
        x,
        tumour_region,
        key=key_remove,
        healthy_cond=healthy_cond,
        null_cond=null_cond,
        **options,
    )
    grown = regenerate(
        model_fn,
        schedule,
        healed["counterfactual"],
        new_region,
        key=key_regenerate,
        tumour_cond=tumour_cond,
        null_cond=null_cond,
        **options,
    )
    return {
        "healthy": healed["counterfactual"],
        "transferred": grown["counterfactual"],
        "removal_heatmap": healed["heatmap"],
        "regeneration_heatmap": grown["heatmap"],
    }


# --- the method plug-in (jaxcf.counterfactual.registry) -------------------------------------

LABEL = "Promptable"
# box_calibrate: "val" = box_min_heat from the validation split (jaxcf.experiments.calibration)
BOX_CALIBRATIONS = ("val", "off")
# How tables name each prompt: "box" and "seg" come from the ground truth (an oracle).
REGION_LABELS = {
    "box": "oracle box",
    "seg": "oracle mask",
    "brain": "whole brain",
    "heatmap_box": "heatmap box",
    "file": "given region",
}


def default_config() -> ml_collections.ConfigDict:
    """counterfactual.promptable.*: paper 000's settings (DDPM, w = 3) and the prompt."""
    return ml_collections.ConfigDict(
        {
            "num_steps": 100,  # respaced ancestral (DDPM) steps
            "guidance_scale": 3.0,  # classifier-free guidance toward the target
            "target_label": 0,  # the intervention: 0 = healthy
            # the region to regenerate (jaxcf.counterfactual.prompts):
            #   box: ORACLE, the ground-truth tumour's bounding box plus box_margin pixels
            #     (paper 000's evaluation; healthy slices get no box, so nothing to find)
            #   heatmap_box: NON-ORACLE, the box (plus box_margin) around the hottest blob
            #     of a first, unprompted Diff-SCM pass (paper 000's "CF" baseline [17]) with
            #     the same model: the box a user would draw from that heatmap
            #   brain: the whole brain (no prompt) | seg: ORACLE tumour mask | file: --mask
            "region": "box",
            "box_margin": 3,
            # heatmap_box's first pass: respaced DDIM steps (0 = num_steps), encoding depth
            # L (Diff-SCM's 0.75), and the blob: pixels at >= box_fraction of the peak heat
            "first_pass_steps": 0,
            "first_pass_strength": 0.75,
            "box_fraction": 0.5,
            # heatmap_box draws no box on a slice whose first-pass heat (3 x 3 mean) peaks
            # below box_min_heat (0 = a box on every slice). box_calibrate="val": the
            # evaluation and counterfactual CLIs set it from the model's validation split
            # (the level that best tells its slices with a tumour from those without, as
            # the FLAIR baseline's threshold is chosen there; jaxcf.experiments.calibration)
            # | "off": box_min_heat as given
            "box_min_heat": 0.0,
            "box_calibrate": "val",
            # RePaint resampling (Lugmayr et al. 2022's defaults: jump 10, 10 resamplings;
            # paper 000 gives none); 0 = off
            "resample_jump": 0,
            "resample_count": 0,
            "known": "posterior",  # known region: posterior (Alg. 1) | forward (RePaint)
            "start_strength": 1.0,  # < 1: start from the noised input (extension)
        }
    )


def describe(cfg: ml_collections.ConfigDict) -> str:
    """The method's name in tables with its prompt, e.g. "Promptable (oracle box)"."""
    return f"{LABEL} ({REGION_LABELS.get(str(cfg.region), str(cfg.region))})"


def prepare(batch: dict, cfg: ml_collections.ConfigDict) -> dict:
    """Host side: {"image" (B, S, S, C), "seg" (B, S, S) or "given_region" (B, S, S)} ->
    {"image", "region" (B, S, S) bool}: the mask prompt of cfg.region, cut to the brain.
    region=heatmap_box is drawn on the device (build), so only the images go there."""
    if "region" in batch:
        return batch
    if cfg.region == "heatmap_box":  # a first pass's heatmap, when the caller has it
        keep = ("image", "first_heatmap")
        return {k: batch[k] for k in keep if batch.get(k) is not None}
    region = prompt_regions(
        str(cfg.region),
        np.asarray(batch["image"]),
        batch.get("seg"),
        int(cfg.box_margin),
        batch.get("given_region"),
    )
    return {"image": batch["image"], "region": region}


def first_pass_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """counterfactual.diffscm settings of heatmap_box's unprompted first pass: Diff-SCM's
    defaults with this method's steps, guidance and target."""
    first = diffscm_config()
    steps = int(cfg.get("first_pass_steps", 0)) or int(cfg.num_steps)
    first.update(
        num_steps=steps,
        strength=float(cfg.get("first_pass_strength", 0.75)),
        guidance_scale=float(cfg.guidance_scale),
        target_label=int(cfg.target_label),
    )
    return first


def _heatmap_prompt(model: MethodModel, cfg: ml_collections.ConfigDict) -> Callable:
    """fn(weights, x (B, H, W, C), key, heat=None) -> (B, H, W) bool heatmap_box region of
    2-D slices; heat: the first pass's (B, H, W) heatmap when the caller already has it
    (e.g. a Diff-SCM row of the same settings, first_pass_config), else it is run here."""
    settings = first_pass_config(cfg)
    if int(cfg.get("first_pass_steps", 0)) < 0 or not 0.0 < settings.strength <= 1.0:
        raise InputError(
            "counterfactual.promptable.first_pass_steps must be >= 0 and first_pass_strength "
            f"in (0, 1], got {cfg.get('first_pass_steps')} and {settings.strength}"
        )
    fraction = float(cfg.get("box_fraction", 0.5))
    if not 0.0 < fraction <= 1.0:
        raise InputError(
            f"counterfactual.promptable.box_fraction must be in (0, 1], got {fraction}"
        )
    min_peak = float(cfg.get("box_min_heat", 0.0))
    if min_peak < 0.0:
        raise InputError(f"counterfactual.promptable.box_min_heat must be >= 0, got {min_peak}")
    if cfg.get("box_calibrate", "off") not in BOX_CALIBRATIONS:
        raise InputError(
            f"counterfactual.promptable.box_calibrate must be one of {BOX_CALIBRATIONS}, got "
            f"{cfg.get('box_calibrate')!r}"
        )
    first = build_diffscm(model, settings)
    margin = int(cfg.box_margin)

    def region(weights: Any, x: jax.Array, key: jax.Array, heat: Any = None) -> jax.Array:
        if x.ndim != 4:
            raise InputError(f"region=heatmap_box draws boxes on 2-D slices, got images {x.shape}")
        if heat is None:
            heat = first(weights, {"image": x}, jax.random.fold_in(key, 1))["heatmap"]
        brain = jnp.any(x != -1.0, axis=-1)  # background -1, as prompts.brain_masks
        return heatmap_box(heat, brain, margin, fraction, min_peak)

    return region


def build(model: MethodModel, cfg: ml_collections.ConfigDict) -> Callable:
    """fn(weights, {"image": (B, ..., C), "region": (B, ...)}, key) ->
    {"counterfactual", "heatmap", "region" (B, ...) float32}. With region=heatmap_box the
    batch has no region: a first Diff-SCM pass's heatmap draws it, inside the same
    compiled function, or the batch's "first_heatmap" (B, H, W) when a caller already ran
    that pass (first_pass_config's settings).

    Pixel models sample in pixel space with the model's x0 transform (the data-range
    clip); latent models sample the VAE latents (model.encode / decode) with the region
    max-pooled to the latent grid and the known pixels pasted back."""
    target_label = int(cfg.target_label)
    model.label_cond(target_label, 1)  # a label model with that class, or a clear error
    resample = None
    if int(cfg.resample_jump) > 0 and int(cfg.resample_count) > 0:
        resample = (int(cfg.resample_jump), int(cfg.resample_count))
    _check_resample(resample)
    if cfg.region not in REGIONS:
        raise InputError(
            f"counterfactual.promptable.region must be one of {REGIONS}, got {cfg.region!r}"
        )
    if cfg.known not in KNOWN_MODES:
        raise InputError(f"counterfactual.promptable.known must be one of {KNOWN_MODES}")
    drawn = _heatmap_prompt(model, cfg) if cfg.region == "heatmap_box" else None
    pixel = model.space == "pixel"
    options = dict(
        num_steps=int(cfg.num_steps),
        guidance_scale=float(cfg.guidance_scale),
        resample=resample,
        known=str(cfg.known),
        start_strength=float(cfg.start_strength),
        x0_transform=model.x0_transform,  # data-range clip, wavelet clip, none for latents
    )

    def fn(weights: Any, batch: dict, key: jax.Array) -> dict[str, jax.Array]:
        x = batch["image"]
        if drawn is None:
            region = batch["region"]
        else:
            region = drawn(weights, x, key, batch.get("first_heatmap"))
        target, null = model.conditions(weights, model.label_cond(target_label, x.shape[0]))
        codec = {}
        if not pixel:
            codec = dict(
                encode=functools.partial(model.encode, weights),
                decode=functools.partial(model.decode, weights),
            )
        out = promptable_counterfactual(
            model.model_fn(weights),
            model.schedule,
            x,
            region,
            key=key,
            cond=target,
            null_cond=null,
            **codec,
            **options,
        )
        return {**out, "region": as_region(region, x)[..., 0]}

    return fn
