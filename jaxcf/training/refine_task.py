"""Training paper 002's 3-D diffusion refiner (Sec. 3.3, Eqs. 8-9; train.task = "refiner",
configs/refiner_peds.py; sampling: jaxcf.counterfactual.refine).

Per batch of seg3d crops (image I, label map -> classes -> one-hot Y_0, K = 4):

    t ~ U{0, ..., T-1}, eps ~ N(0, I)
    Y_t = sqrt(abar_t) Y_0 + sqrt(1 - abar_t) eps                          Eq. 8
    logits = f([I; Y_t; C], t)   (C: the frozen coarse segmenter's softmax on the same
                                  crop; [I; Y_t] without refiner.coarse)
    L = DiceCE(logits, y) + mse_weight * mean_x w(x) ||softmax(logits) - Y_0||^2     Eq. 9

with w = refiner.edge_weight on class edges, 1 elsewhere (jaxcf.segmentation.losses).
The coarse segmenter (refiner.coarse: a train.task = "segmentation" workdir) is frozen
(task.frozen["coarse"]): it is loaded from its workdir whenever the task is built, never
part of the refiner's checkpoints.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxcf import diffusion as D
from jaxcf import models
from jaxcf.counterfactual.refine import NUM_CLASSES, denoiser_inputs
from jaxcf.errors import InputError
from jaxcf.segmentation import losses
from jaxcf.segmentation.labels import classes_from_labels, region_dice
from jaxcf.training.schedule import make_schedule
from jaxcf.training.segment_task import et_label_of
from jaxcf.training.segmenter import load_segmenter


class RefinerTask:
    """The refiner's network, frozen coarse model and loss (module docstring).

    metrics: loss, dice_ce, boundary_mse, and the x0 estimate's hard Dice of the BraTS
    regions on the training batch (dice_wt / dice_tc / dice_et, over all sampled t)."""

    def __init__(self, config: Any, key: jax.Array, *, restoring: bool = False):
        self.config = config
        self.et_label = et_label_of(config, "refiner")
        self.schedule = make_schedule(config.diffusion)
        self.check_schedule()
        self.mse_weight = float(config.refiner.mse_weight)
        self.edge_weight = float(config.refiner.edge_weight)
        self.coarse_path = str(config.refiner.coarse or "")
        self.frozen: dict[str, Any] = {}
        self.coarse = None
        if self.coarse_path:
            try:
                self.coarse = load_segmenter(self.coarse_path)
            except FileNotFoundError as err:
                raise InputError(f"refiner.coarse={self.coarse_path!r}: {err}") from None
            self.frozen["coarse"] = self.coarse.params
            if self.coarse.in_channels != int(config.data.channels):
                raise InputError(
                    f"refiner.coarse={self.coarse_path!r} segments {self.coarse.in_channels}-"
                    f"channel volumes, this data has {config.data.channels}"
                )
            if self.coarse.task.et_label != self.et_label:
                raise InputError(
                    f"refiner.coarse={self.coarse_path!r} was trained on labels with ET = "
                    f"{self.coarse.task.et_label}, this data has ET = {self.et_label}"
                )
        self.apply, params = models.build_pretrained(config.model, key, restoring=restoring)
        self.params = {"model": params}
        self.check_network(models.model_kwargs(config.model)[1])

    def check_schedule(self) -> None:
        """InputError unless the diffusion settings are the refiner's (x0, discrete)."""
        if self.schedule.prediction != "x0" or self.schedule.is_flow:
            raise InputError(
                "train.task='refiner' is the x0-parameterised refiner of paper 002: "
                f"diffusion.prediction must be 'x0' on a discrete schedule, got "
                f"{self.config.diffusion.prediction!r} on {self.config.diffusion.schedule!r}"
            )

    def check_network(self, kwargs: dict) -> None:
        """InputError unless the network reads [I; Y_t (; C)] and predicts K logits."""
        want = int(self.config.data.channels) + NUM_CLASSES * (2 if self.coarse else 1)
        got_in, got_out = int(kwargs.get("in_channels", 0)), kwargs.get("out_channels")
        if got_in != want or int(got_out or got_in) != NUM_CLASSES:
            raise InputError(
                f"the refiner's network takes [I; Y_t{'; C' if self.coarse else ''}] = {want} "
                f"channels and predicts {NUM_CLASSES} class logits; model.in_channels is "
                f"{got_in}, model.out_channels {got_out}"
            )

    @property
    def conditional(self) -> bool:
        return self.coarse is not None

    def prior(self, frozen: dict, images: jax.Array) -> jax.Array | None:
        """The coarse model's class probabilities on `images` (B, *spatial, 4), or None."""
        if self.coarse is None:
            return None
        logits = self.coarse.task.logits(frozen["coarse"], images)
        return jax.lax.stop_gradient(jax.nn.softmax(logits, axis=-1))

    def loss(self, params: dict, frozen: dict, batch: dict, key: jax.Array):
        if "seg" not in batch:
            raise InputError(
                "train.task='refiner' needs label maps: the batch has no 'seg' field "
                f"(it has {sorted(batch)})"
            )
        images = batch["image"]
        classes = classes_from_labels(batch["seg"], self.et_label)
        y0 = losses.one_hot(classes, NUM_CLASSES)
        k_t, k_eps = jax.random.split(key)
        k_drop = jax.random.fold_in(key, 2)  # dropout, for presets that have it
        t = D.sample_timesteps(self.schedule, k_t, images.shape[0])
        y_t = D.q_sample(self.schedule, y0, t, jax.random.normal(k_eps, y0.shape, jnp.float32))
        x = denoiser_inputs(images, y_t, self.prior(frozen, images))
        logits = self.apply(params["model"], x, t, None, dropout_key=k_drop).astype(jnp.float32)
        weights = losses.boundary_weights(classes, self.edge_weight)
        dice_ce = losses.dice_ce_loss(logits, classes)
        mse = losses.boundary_mse(logits, classes, weights)
        loss = dice_ce + self.mse_weight * mse  # Eq. 9
        metrics = {"loss": loss, "dice_ce": dice_ce, "boundary_mse": mse}
        return loss, {**metrics, **region_dice(jnp.argmax(logits, -1), classes)}

    def preview(self, params: dict, frozen: dict, batch: dict, key: jax.Array, num: int):
        return batch["image"][:num]
