"""What a training config learns: networks, the map from a data batch to the diffusion
variable and its condition, the loss, and preview samples.

    task = make_task(config, key)
    params, frozen = task.params, task.frozen
    loss, metrics = task.loss(params, frozen, batch, key)       # inside jit
    images = task.preview(params, frozen, batch, key, num)      # inside jit

A DiffusionTask is composed of small strategies, each chosen ONCE from the config by name
(a dict name -> builder, no branching on names in the methods):

  task.space_impl   a Space (jaxcf.training.spaces; config.diffusion.space: pixel | wavelet
                    | latent): encode(frozen, images) -> x0, decode(frozen, x0),
                    x0_transform for samplers: static_clip | wavelet_clip to the data
                    range the config declares (spaces.data_range), None where unknown.
  task.conditioner  a Conditioner (jaxcf.training.conditioners; config.diffusion.condition:
                    none | label | prompt | image): cond(batch), null_cond(cond) and
                    encode(params, frozen, cond) -> the network's cond.
  task.target       the batch field that is diffused (config.diffusion.target, default
                    "image"; e.g. "seg", with condition "image" to condition on the image).

task.space / task.condition / task.target are the chosen names (strings).

Weights: task.params holds what is trained ({"model", "text" for a trainable prompt
encoder}); task.frozen what is used but never trained ({"vae"} of latent models, {"text"}
of embeddings read from text.file). model.checkpoint (empty by default) holds pretrained
weights (converted by the family's loader, jaxcf.models.pretrained) that params["model"]
starts from instead of a random draw; it is read when a run starts, not when it resumes.
Frozen weights are not part of the training state nor of its checkpoints: building the task
loads them from their own paths (vae.checkpoint, text.file) every time: at the start of
training, when it resumes and at inference. An untrained smoke-run VAE
(vae.allow_untrained, empty vae.checkpoint) is initialised from the task's key, i.e. from
train.seed, so every rebuild gives the same weights.

Samplers run the prompt encoder once, not at every step: prepare_cond(params, frozen,
cond) encodes a condition, and model_fn passes an encoded condition straight through.

Besides diffusion: VAETask trains a latent model's autoencoder, ClassifierTask a classifier
of batch["label"] (paper 004's text-alignment judge, jaxcf.evaluation.alignment), and
jaxcf.training.segment_task.SegmentationTask a segmenter of batch["seg"] (paper 002's coarse
Res U-Net / Swin-UNETR), and jaxcf.training.refine_task.RefinerTask paper 002's diffusion
refiner of label maps, and jaxcf.training.medsegdiff_task.MedSegDiffTask its 2-D MedSegDiff.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcf import diffusion as D
from jaxcf import models
from jaxcf.errors import InputError
from jaxcf.models import vae as vae_models
from jaxcf.training.conditioners import BOS_ID, build_conditioner
from jaxcf.training.schedule import make_schedule
from jaxcf.training.spaces import build_space, check_vae, load_vae_params

__all__ = [
    "BOS_ID",
    "TASKS",
    "ClassifierTask",
    "DiffusionTask",
    "VAETask",
    "check_vae",
    "load_vae_params",
    "make_schedule",
    "make_task",
]


class DiffusionTask:
    """Trains a denoiser (config.model) with diffusion_loss; see the module docstring.

    restoring: the trained weights are about to be restored from a checkpoint (inference,
    a resumed run); frozen networks are still loaded from their paths, an empty
    vae.checkpoint is not refused (the run that wrote the checkpoint already accepted it),
    and model.checkpoint (pretrained weights a fresh run starts from) is not read."""

    def __init__(self, config: Any, key: jax.Array, *, restoring: bool = False):
        # The same three keys as ever: the same seed gives the same initial weights.
        k_model, k_text, k_vae = jax.random.split(key, 3)
        self.config = config
        self.diffusion = config.diffusion
        self.schedule = make_schedule(config.diffusion)
        self.space = config.diffusion.space
        self.condition = config.diffusion.condition
        self.target = config.diffusion.get("target", "image") or "image"
        _, model_kwargs = models.model_kwargs(config.model)  # the preset's values included
        self.num_classes = int(model_kwargs.get("num_classes", 0) or 0)
        self.conditioner, cond_params, cond_frozen = build_conditioner(
            config, k_text, num_classes=self.num_classes
        )
        if self.target != "image" and self.space == "latent":
            raise InputError(
                f"diffusion.target={self.target!r} needs diffusion.space pixel or wavelet "
                "(the VAE of latent models encodes images)"
            )
        self.model_apply, model_params = models.build_pretrained(
            config.model, k_model, restoring=restoring
        )
        self.space_impl, space_frozen = build_space(config, k_vae, restoring=restoring)
        self.params: dict[str, Any] = {"model": model_params, **cond_params}
        self.frozen: dict[str, Any] = {**cond_frozen, **space_frozen}

    # -- views kept from the string-branching version -----------------------------------------

    @property
    def text_apply(self):
        """The prompt encoder's apply(state, ids, mask) (prompt models), else None."""
        return getattr(self.conditioner, "text_apply", None)

    @property
    def vae(self):
        """The frozen VAE's graphdef (latent models), else None."""
        return getattr(self.space_impl, "graphdef", None)

    @property
    def vae_mode(self) -> str | None:
        return getattr(self.space_impl, "mode", None)

    # -- batch -> diffusion variable and condition ------------------------------------------

    def encode(self, frozen: dict, image: jax.Array) -> jax.Array:
        """Data-space arrays (B, ..., C) -> the diffusion variable x0."""
        return self.space_impl.encode(frozen, image)

    def decode(self, frozen: dict, x0: jax.Array) -> jax.Array:
        return self.space_impl.decode(frozen, x0)

    def target_of(self, batch: dict) -> jax.Array:
        """The data-space field that is diffused: batch[diffusion.target] as float32 with a
        channel axis (a (B, H, W) uint8 segmentation becomes (B, H, W, 1) float32)."""
        if self.target not in batch:
            raise InputError(
                f"diffusion.target={self.target!r}: the batch has no such field "
                f"(it has {sorted(batch)})"
            )
        x = batch[self.target]
        if "image" in batch and x.ndim == batch["image"].ndim - 1:
            x = x[..., None]
        return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)

    def cond(self, batch: dict) -> dict | None:
        return self.conditioner.cond(batch)

    def null_cond(self, cond: dict) -> dict | None:
        return self.conditioner.null_cond(cond)

    def prepare_cond(self, params: dict, frozen: dict, cond: Any) -> Any:
        """cond encoded for the network once (prompt -> {"context", "context_mask"}), to
        pass to a sampler instead of the raw cond: model_fn does not encode it again. A
        guided sampler's null condition is prepared the same way:
        prepare_cond(params, frozen, null_cond(raw_cond))."""
        return self.conditioner.encode(params, frozen, cond)

    def model_fn(
        self, params: dict, frozen: dict, dropout_key: jax.Array | None = None, **apply_kwargs
    ):
        """model_fn(x_t, t, cond) with the condition encoder folded in (skipped for a
        prepared cond). apply_kwargs go to the network's apply (e.g. control=,
        return_attention=)."""

        # Flow times t in [0, 1] reach the network as t * T, as MAISI feeds MONAI's
        # RFlowScheduler times (t * num_train_timesteps): a sinusoidal embedding built for
        # times up to ~1000 is almost constant over [0, 1], so the network could barely
        # tell the noise levels apart.
        time_scale = float(self.schedule.num_timesteps) if self.schedule.is_flow else None

        def fn(x, t, cond):
            inner = self.conditioner.encode(params, frozen, cond)
            t_net = t if time_scale is None else t * time_scale
            return self.model_apply(
                params["model"], x, t_net, inner, dropout_key=dropout_key, **apply_kwargs
            )

        return fn

    # -- loss and previews ---------------------------------------------------------------------

    def loss(self, params: dict, frozen: dict, batch: dict, key: jax.Array):
        k_loss, k_drop = jax.random.split(key)
        x0 = jax.lax.stop_gradient(self.encode(frozen, self.target_of(batch)))
        cond = self.cond(batch)
        drop = float(self.diffusion.cond_drop_prob) if cond is not None else 0.0
        return D.diffusion_loss(
            self.model_fn(params, frozen, dropout_key=k_drop),
            self.schedule,
            x0,
            k_loss,
            cond,
            null_cond=self.null_cond(cond) if cond is not None else None,
            cond_drop_prob=drop,
            weighting=self.diffusion.weighting or None,
            t_distribution=self.diffusion.t_distribution,
            distance=self.diffusion.get("loss", "mse"),
        )

    def preview(self, params: dict, frozen: dict, batch: dict, key: jax.Array, num: int):
        """Samples for the first `num` conditions of a batch -> data-space arrays."""
        sampler = self.config.sampler
        x0_shape = jax.eval_shape(self.encode, frozen, self.target_of(batch)[:num]).shape
        model_fn = self.model_fn(params, frozen)
        cond = self.cond(batch)
        if cond is not None:
            cond = jax.tree.map(lambda a: a[:num], cond)
            null = self.null_cond(cond)
            cond = self.prepare_cond(params, frozen, cond)  # the text encoder runs once
            if sampler.guidance_scale != 1.0:
                model_fn = D.classifier_free_guidance(
                    model_fn,
                    sampler.guidance_scale,
                    self.prepare_cond(params, frozen, null),
                    guided_channels=D.prediction_channels(self.schedule, x0_shape[-1]),
                )
        x_T = jax.random.normal(key, x0_shape)
        sample = D.flow_sample if self.schedule.is_flow else D.ddim_sample
        x0 = sample(
            model_fn,
            self.schedule,
            x_T,
            num_steps=sampler.num_steps,
            cond=cond,
            x0_transform=self.space_impl.x0_transform,
        )
        return self.decode(frozen, x0)


class VAETask:
    """Trains the AutoencoderKL of a latent model: L1 reconstruction + kl_weight * KL
    (Rombach et al. 2022 without the perceptual and adversarial terms).

    vae_loss.mask_weight (default 0, off) adds that much L1 weight on the voxels of the
    batch's lesion mask (batch["seg"] > 0): the L1 becomes mean(w |recon - x|) with
    w = 1 + mask_weight * mask. A few lesion voxels carry almost none of the mean L1, so a
    plainly trained autoencoder blurs them away and a latent model on it can never draw
    them (measured on 32^3 MS phantoms: 108.8 lesion voxels in, 0.5 out); MS datasets
    ship the masks this needs.

    metrics: loss, l1 (unweighted, comparable across mask weights), kl and latent_std, the
    std of the batch's unscaled latent means: 1 / latent_std is the vae.scaling_factor for
    a latent model on this VAE (LDM's rule; jaxcf.models.vae.estimate_scaling_factor)."""

    def __init__(self, config: Any, key: jax.Array, *, restoring: bool = False):
        self.config = config
        self.apply, params = models.build_pretrained(config.model, key, restoring=restoring)
        self.params, self.frozen = {"model": params}, {}
        self.kl_weight = float(config.vae_loss.kl_weight)
        self.mask_weight = float(config.vae_loss.get("mask_weight", 0.0))
        if self.mask_weight < 0:
            raise InputError(f"vae_loss.mask_weight must be >= 0, got {self.mask_weight}")

    def loss(self, params: dict, frozen: dict, batch: dict, key: jax.Array):
        x = batch["image"]
        recon, mean, logvar = self.apply(params["model"], x, key=key)
        error = jnp.abs(recon - x)
        l1 = jnp.mean(error)
        metrics = {"l1": l1}
        if self.mask_weight:
            if "seg" not in batch:
                raise InputError(
                    f"vae_loss.mask_weight={self.mask_weight} needs lesion masks: the batch "
                    f"has no 'seg' field (it has {sorted(batch)})"
                )
            mask = (batch["seg"] > 0).astype(error.dtype)[..., None]
            fit = jnp.mean((1.0 + self.mask_weight * mask) * error)
            metrics["l1_mask"] = jnp.sum(mask * error) / jnp.maximum(
                jnp.sum(mask) * error.shape[-1], 1.0
            )
        else:
            fit = l1
        kl = jnp.mean(vae_models.kl_divergence(mean, logvar)) / np.prod(x.shape[1:])
        loss = fit + self.kl_weight * kl
        return loss, {"loss": loss, **metrics, "kl": kl, "latent_std": jnp.std(mean)}

    def preview(self, params: dict, frozen: dict, batch: dict, key: jax.Array, num: int):
        recon, _, _ = self.apply(params["model"], batch["image"][:num])
        return recon


class ClassifierTask:
    """Trains a classifier (config.model, e.g. the DenseNet family) of batch["label"] from
    batch["image"] with cross-entropy; paper 004 judges text alignment with such a 3-D
    DenseNet-121 trained on the real volumes' prompt categories (Sec. 4).

    metrics: loss, accuracy (on the training batch). preview(...) returns the first `num`
    input images, as the classifier sees them: there is nothing to sample."""

    def __init__(self, config: Any, key: jax.Array, *, restoring: bool = False):
        self.config = config
        self.apply, params = models.build_pretrained(config.model, key, restoring=restoring)
        self.params, self.frozen = {"model": params}, {}
        _, model_kwargs = models.model_kwargs(config.model)
        self.num_classes = int(model_kwargs.get("num_classes", 0) or 0)
        if self.num_classes < 2:
            raise InputError(
                f"model.num_classes must be >= 2 for a classifier, got {self.num_classes}"
            )

    def logits(self, params: dict, images: jax.Array, dropout_key: jax.Array | None = None):
        """(B, ..., C) images -> (B, num_classes) float32 logits."""
        return self.apply(params["model"], images, dropout_key=dropout_key)

    def loss(self, params: dict, frozen: dict, batch: dict, key: jax.Array):
        if "label" not in batch:
            raise InputError(
                f"train.task='classifier' needs labels: the batch has no 'label' field "
                f"(it has {sorted(batch)})"
            )
        logits = self.logits(params, batch["image"], dropout_key=key)
        labels = batch["label"].astype(jnp.int32)
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
        accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
        return loss, {"loss": loss, "accuracy": accuracy}

    def preview(self, params: dict, frozen: dict, batch: dict, key: jax.Array, num: int):
        return batch["image"][:num]


def _diffusion(config: Any, key: jax.Array, restoring: bool):
    return DiffusionTask(config, key, restoring=restoring)


def _vae(config: Any, key: jax.Array, restoring: bool):
    return VAETask(config, key, restoring=restoring)


def _classifier(config: Any, key: jax.Array, restoring: bool):
    return ClassifierTask(config, key, restoring=restoring)


def _segmentation(config: Any, key: jax.Array, restoring: bool):
    from jaxcf.training.segment_task import SegmentationTask

    return SegmentationTask(config, key, restoring=restoring)


def _refiner(config: Any, key: jax.Array, restoring: bool):
    from jaxcf.training.refine_task import RefinerTask

    return RefinerTask(config, key, restoring=restoring)


def _medsegdiff(config: Any, key: jax.Array, restoring: bool):
    from jaxcf.training.medsegdiff_task import MedSegDiffTask

    return MedSegDiffTask(config, key, restoring=restoring)


TASKS = {
    "diffusion": _diffusion,
    "vae": _vae,
    "classifier": _classifier,
    "segmentation": _segmentation,
    "refiner": _refiner,
    "medsegdiff": _medsegdiff,
}


def make_task(config: Any, key: jax.Array, *, restoring: bool = False):
    """The task of config.train.task. restoring: the trained weights are about to be
    restored from a checkpoint (inference, a resumed run); see DiffusionTask."""
    kind = config.train.task
    if kind not in TASKS:
        raise InputError(f"train.task must be one of {', '.join(TASKS)}, got {kind!r}")
    return TASKS[kind](config, key, restoring)
