"""Diffusion refinement of a coarse 3-D tumour segmentation (paper 002, Sec. 3.3).

The refiner f is a 3-D denoiser over the one-hot label map Y (K = 4 classes: background,
NC, ED, ET), trained with the x0-parameterisation on a cosine schedule (T = 1000;
jaxcf.training.refine_task) and fed the images and, for the conditional model, the coarse
prior C stacked with the noisy labels:

    x_t = [I; Y_t]  (unconditional)   or   [I; Y_t; C]  (conditional)         Sec. 3.3
    Y0_hat = softmax(f(x_t, t))        the label map's x0 estimate, on the simplex

Sampling (Sec. 3.3):
  conditional    the prior is injected at level t' (Y_t' = sqrt(abar_t') C +
                 sqrt(1 - abar_t') eps) and a few DDIM steps run down to 0: the last
                 round(strength * num_steps) steps of a num_steps DDIM grid, so
                 t' = samplers.start_timestep(T, num_steps, strength)
  unconditional  from Y_T ~ N(0, I) with second-order DPM-Solver++ over num_steps.

    fn = build(model, cfg)                  # model: MethodModel around the refiner
    out = fn(weights, {"image": I, "prior": C}, key)   # conditional; {"image": I} otherwise
    out["counterfactual"]  (B, *spatial, 4) the refined label map: the last x0 estimate
                           (softmax) for DDIM, clipped to [0, 1] (DPM-Solver++'s
                           extrapolation need not stay on the simplex)
    out["mask"]            (B, *spatial) int32 classes (argmax)

"counterfactual" is the diffusion variable the method samples (a label map here, not an
image), so the runner and the evaluators handle it as every method's output. Inputs are
windows or whole volumes whose sides the denoiser accepts; jaxcf.experiments.refine_eval
runs it window by window over whole volumes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxcf.counterfactual.model import MethodModel
from jaxcf.diffusion.process import q_sample
from jaxcf.diffusion.samplers import ddim_sample, dpm_solver_pp, start_timestep
from jaxcf.errors import InputError
from jaxcf.segmentation.labels import NUM_CLASSES

LABEL = "Diffusion refiner"
FIELD = "counterfactual.refine"


def default_config() -> ml_collections.ConfigDict:
    """counterfactual.refine.*: the conditional refiner's prior injection and DDIM steps
    (paper 002 leaves t' and the step count open: "a few DDIM refinement steps")."""
    return ml_collections.ConfigDict(
        {
            "num_steps": 10,  # DDIM grid (conditional) / DPM-Solver++ steps (unconditional)
            "strength": 0.3,  # t' = the start of the last round(strength * num_steps) steps
        }
    )


def check_config(cfg: ml_collections.ConfigDict) -> None:
    """InputError naming the first bad field of counterfactual.refine."""
    if int(cfg.num_steps) < 1:
        raise InputError(f"{FIELD}.num_steps must be >= 1, got {cfg.num_steps}")
    if not 0.0 < float(cfg.strength) <= 1.0:
        raise InputError(f"{FIELD}.strength must be in (0, 1], got {cfg.strength}")
    if round(float(cfg.strength) * int(cfg.num_steps)) < 1:
        raise InputError(
            f"{FIELD}: strength {cfg.strength} of a {cfg.num_steps}-step grid runs no DDIM "
            "step (the output would be the prior); raise num_steps or strength"
        )


def denoiser_inputs(image: jax.Array, y_t: jax.Array, prior: jax.Array | None) -> jax.Array:
    """[I; Y_t] or [I; Y_t; C] along channels: (B, *spatial, C_img + 4 (+ 4))."""
    parts = [image, y_t] if prior is None else [image, y_t, prior]
    return jnp.concatenate([p.astype(jnp.float32) for p in parts], axis=-1)


def label_shape(image: jax.Array, prior: jax.Array | None) -> tuple[int, ...]:
    """The label map's shape (B, *spatial, 4) for `image`; InputError unless the prior,
    when given, is class probabilities of that shape."""
    shape = (*image.shape[:-1], NUM_CLASSES)
    if prior is not None and tuple(prior.shape) != shape:
        raise InputError(
            f"the coarse prior must be class probabilities of shape {shape} (the image's "
            f"voxels x {NUM_CLASSES} classes), got {tuple(prior.shape)}"
        )
    return shape


def build(model: MethodModel, cfg: ml_collections.ConfigDict) -> Callable:
    """fn(weights, batch, key) -> {"counterfactual", "mask"} (module docstring). batch:
    {"image" (B, *spatial, C_img)} and, for a conditional refiner (trained with a coarse
    model: refiner.coarse), "prior" (B, *spatial, 4), the coarse model's class
    probabilities; with a prior the refiner injects it, without one it samples from noise."""
    check_config(cfg)
    schedule = model.schedule
    if schedule.prediction != "x0":
        raise InputError(
            f"the refiner predicts the clean label map (diffusion.prediction='x0'); this model "
            f"predicts {schedule.prediction!r}"
        )
    num_steps, strength = int(cfg.num_steps), float(cfg.strength)
    start = start_timestep(schedule.num_timesteps, num_steps, strength)

    def fn(weights: Any, batch: dict, key: jax.Array) -> dict:
        image, prior = batch["image"], batch.get("prior")
        shape = label_shape(image, prior)

        def model_fn(y_t, t, cond):
            logits = model.apply(weights, denoiser_inputs(image, y_t, prior), t, None)
            return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)  # Y0_hat

        noise = jax.random.normal(key, shape, jnp.float32)
        if prior is not None:
            t = jnp.full((shape[0],), start, jnp.int32)
            y_start = q_sample(schedule, prior.astype(jnp.float32), t, noise)
            y0 = ddim_sample(model_fn, schedule, y_start, num_steps=num_steps, strength=strength)
        else:
            y0 = dpm_solver_pp(model_fn, schedule, noise, num_steps=num_steps, order=2)
        y0 = jnp.clip(y0, 0.0, 1.0)
        return {"counterfactual": y0, "mask": jnp.argmax(y0, axis=-1).astype(jnp.int32)}

    return fn
