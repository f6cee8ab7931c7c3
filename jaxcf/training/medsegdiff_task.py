"""Training MedSegDiff as paper 002's 2-D refiner (Sec. 3.4, Eqs. 10-12; train.task =
"medsegdiff", configs/medsegdiff_peds.py; network: jaxcf.models.medsegdiff; sampling:
jaxcf.counterfactual.medsegdiff).

Per batch of seg3d crops (B, X, Y, Z, C): the frozen coarse segmenter (refiner.coarse, as
for the 3-D refiner) predicts C on the whole crop, then medsegdiff.slices_per_crop axial
slices (axis Z) are drawn from each crop, so the 2-D model sees slices whose prior came
from 3-D context, as it will at inference. On those B * S slices, with s_0 the one-hot
classes (K = 4):

    t ~ U{0, ..., T-1}, eps ~ N(0, I)
    s_t = sqrt(abar_t) s_0 + sqrt(1 - abar_t) eps                          Eq. 10
    [eps_hat, c] = f([I; s_t; C], t)     ([I; s_t] without refiner.coarse)
    L = mean ||eps - eps_hat||^2 + gamma * DiceCE(c, y)                  Eq. 12, gamma = 10
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxcf import diffusion as D
from jaxcf.counterfactual.refine import denoiser_inputs
from jaxcf.errors import InputError
from jaxcf.segmentation import losses
from jaxcf.segmentation.labels import NUM_CLASSES, classes_from_labels, region_dice
from jaxcf.training.refine_task import RefinerTask


def axial_slices(volumes: jax.Array, index: jax.Array) -> jax.Array:
    """(B, X, Y, Z, ...) volumes, (B, S) slice indices along Z -> (B * S, X, Y, ...)."""
    moved = jnp.moveaxis(volumes, 3, 1)  # (B, Z, X, Y, ...)
    picked = jax.vmap(lambda v, i: v[i])(moved, index)  # (B, S, X, Y, ...)
    return picked.reshape((-1, *picked.shape[2:]))


class MedSegDiffTask(RefinerTask):
    """MedSegDiff's network, the frozen coarse model and Eq. 12 (module docstring).

    metrics: loss, noise_mse, dice_ce (the calibration term), and the calibration map's
    hard Dice of the BraTS regions on the training slices (dice_wt / dice_tc / dice_et)."""

    def __init__(self, config: Any, key: jax.Array, *, restoring: bool = False):
        super().__init__(config, key, restoring=restoring)
        self.gamma = float(config.medsegdiff.gamma)
        self.slices = int(config.medsegdiff.slices_per_crop)
        crop = int(config.data.crop_size)
        if not 1 <= self.slices <= crop:
            raise InputError(
                f"medsegdiff.slices_per_crop must be in [1, data.crop_size = {crop}], got "
                f"{self.slices}"
            )

    def check_schedule(self) -> None:
        if self.schedule.prediction != "eps" or self.schedule.is_flow:
            raise InputError(
                "train.task='medsegdiff' predicts the noise of the mask channels (Eq. 12): "
                f"diffusion.prediction must be 'eps' on a discrete schedule, got "
                f"{self.config.diffusion.prediction!r} on {self.config.diffusion.schedule!r}"
            )

    def check_network(self, kwargs: dict) -> None:
        family = self.config.model.family
        if family != "medsegdiff":
            raise InputError(
                f"train.task='medsegdiff' needs model.family='medsegdiff', got {family!r}"
            )
        channels = int(self.config.data.channels)
        got = (int(kwargs.get("image_channels", 4)), int(kwargs.get("num_classes", NUM_CLASSES)))
        prior = bool(kwargs.get("prior", False))
        if got != (channels, NUM_CLASSES) or prior != self.conditional:
            raise InputError(
                f"MedSegDiff here reads {channels} image channels and {NUM_CLASSES} classes"
                f"{' and the coarse prior' if self.conditional else ' without a prior'}; "
                f"model.image_channels is {got[0]}, model.num_classes {got[1]}, "
                f"model.prior {prior}"
            )

    def loss(self, params: dict, frozen: dict, batch: dict, key: jax.Array):
        if "seg" not in batch:
            raise InputError(
                "train.task='medsegdiff' needs label maps: the batch has no 'seg' field "
                f"(it has {sorted(batch)})"
            )
        volumes = batch["image"]
        prior3d = self.prior(frozen, volumes)
        k_slice, k_t, k_eps = jax.random.split(key, 3)
        depth = volumes.shape[3]
        index = jax.vmap(lambda k: jax.random.permutation(k, depth)[: self.slices])(
            jax.random.split(k_slice, volumes.shape[0])
        )
        images = axial_slices(volumes, index)
        classes = classes_from_labels(axial_slices(batch["seg"], index), self.et_label)
        prior = None if prior3d is None else axial_slices(prior3d, index)
        s0 = losses.one_hot(classes, NUM_CLASSES)
        t = D.sample_timesteps(self.schedule, k_t, images.shape[0])
        eps = jax.random.normal(k_eps, s0.shape, jnp.float32)
        s_t = D.q_sample(self.schedule, s0, t, eps)
        out = self.apply(params["model"], denoiser_inputs(images, s_t, prior), t, None)
        eps_hat, calibration = out[..., :NUM_CLASSES], out[..., NUM_CLASSES:]
        loss = losses.medsegdiff_loss(eps_hat, eps, calibration, classes, gamma=self.gamma)
        noise_mse = jnp.mean(jnp.square(eps_hat - eps))  # its two terms, for the log
        dice_ce = losses.dice_ce_loss(calibration, classes)
        metrics = {"loss": loss, "noise_mse": noise_mse, "dice_ce": dice_ce}
        return loss, {**metrics, **region_dice(jnp.argmax(calibration, -1), classes)}
