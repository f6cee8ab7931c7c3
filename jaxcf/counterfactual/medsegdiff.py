"""MedSegDiff sampling (paper 002, Sec. 3.4): a 2-D segmentation from noise with
DPM-Solver++, fused with the highway network's calibration map.

The network (jaxcf.models.medsegdiff) predicts the noise eps_hat in the mask channels and,
from the image (and prior) alone, calibration logits c. Sampling starts at s_T ~ N(0, I)
and runs second-order DPM-Solver++ over num_steps; at every step the data prediction is
fused with the calibration map before the update (the sampler's x0_transform, so the
trajectory follows the fused estimate):

    s0_hat = (s_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)
    s0_fused = (1 - w) clip(s0_hat, 0, 1) + w softmax(c)      w = calibration_weight

w = 0 is the diffusion branch alone, w = 1 the calibration map alone; the clip is
guided-diffusion's clip_denoised (on by default in the samplers MedSegDiff builds on), on
the one-hot range [0, 1] instead of images' [-1, 1]. MedSegDiff's
reference adds a quarter of the sample to the calibration map after sampling; paper 002
says only that the output is fused with it, so jaxcf fuses inside the solver with a
stated weight.

    fn = build(model, cfg)                 # model: MethodModel around a MedSegDiff
    out = fn(weights, {"image": I, "prior": C}, key)   # I (B, H, W, C_img), C (B, H, W, 4)
    out["counterfactual"]  (B, H, W, 4) the last fused estimate, clipped to [0, 1]
    out["mask"]            (B, H, W) int32 classes (argmax)
    out["calibration"]     (B, H, W, 4) softmax(c), the highway's map alone

Slices of any size whose sides are multiples of the network's 2 ** (levels - 1) are
accepted (the FF-Parsers resample their spectral maps); jaxcf.experiments.refine_eval
runs it over the axial slices of whole volumes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxcf.counterfactual.model import MethodModel
from jaxcf.counterfactual.refine import denoiser_inputs, label_shape
from jaxcf.diffusion.samplers import dpm_solver_pp
from jaxcf.errors import InputError
from jaxcf.segmentation.labels import NUM_CLASSES

LABEL = "MedSegDiff"
FIELD = "counterfactual.medsegdiff"


def default_config() -> ml_collections.ConfigDict:
    """counterfactual.medsegdiff.*: DPM-Solver++ steps and the calibration map's weight."""
    return ml_collections.ConfigDict({"num_steps": 20, "calibration_weight": 0.5})


def check_config(cfg: ml_collections.ConfigDict) -> None:
    """InputError naming the first bad field of counterfactual.medsegdiff."""
    if int(cfg.num_steps) < 1:
        raise InputError(f"{FIELD}.num_steps must be >= 1, got {cfg.num_steps}")
    if not 0.0 <= float(cfg.calibration_weight) <= 1.0:
        raise InputError(
            f"{FIELD}.calibration_weight must be in [0, 1], got {cfg.calibration_weight}"
        )


def build(model: MethodModel, cfg: ml_collections.ConfigDict) -> Callable:
    """fn(weights, batch, key) -> {"counterfactual", "mask", "calibration"} (module
    docstring). batch: {"image" (B, H, W, C_img)} and, for a conditional model, "prior"
    (B, H, W, 4), the coarse model's class probabilities."""
    check_config(cfg)
    schedule = model.schedule
    if schedule.prediction != "eps":
        raise InputError(
            f"MedSegDiff predicts the noise of the mask (diffusion.prediction='eps'); this "
            f"model predicts {schedule.prediction!r}"
        )
    num_steps, weight = int(cfg.num_steps), float(cfg.calibration_weight)

    def fn(weights: Any, batch: dict, key: jax.Array) -> dict:
        image, prior = batch["image"], batch.get("prior")
        shape = label_shape(image, prior)

        def forward(s_t, t):
            return model.apply(weights, denoiser_inputs(image, s_t, prior), t, None)

        noise = jax.random.normal(key, shape, jnp.float32)
        # The highway reads neither s_t nor t: one extra network pass gives the calibration
        # map for every step.
        last = jnp.full((shape[0],), schedule.num_timesteps - 1, jnp.int32)
        calibration = jax.nn.softmax(forward(noise, last)[..., NUM_CLASSES:], axis=-1)

        def fuse(s0):
            return (1.0 - weight) * jnp.clip(s0, 0.0, 1.0) + weight * calibration

        def model_fn(s_t, t, cond):
            return forward(s_t, t)[..., :NUM_CLASSES]  # eps_hat

        s0 = dpm_solver_pp(
            model_fn, schedule, noise, num_steps=num_steps, order=2, x0_transform=fuse
        )
        s0 = jnp.clip(s0, 0.0, 1.0)
        mask = jnp.argmax(s0, axis=-1).astype(jnp.int32)
        return {"counterfactual": s0, "mask": mask, "calibration": calibration}

    return fn
