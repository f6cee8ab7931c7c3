"""What a training config learns: networks, the map from a data batch to the diffusion
variable and its condition, the loss, and preview samples.

    task = make_task(config, key)
    params, frozen = task.params, task.frozen
    loss, metrics = task.loss(params, frozen, batch, key)       # inside jit
    images, titles = task.preview(params, frozen, batch, key)   # inside jit

Diffusion spaces (config.diffusion.space): "pixel" (images as they come), "wavelet" (WDM:
Haar sub-bands with LLL / 3, sampled with WDM's wavelet clip), "latent" (a frozen VAE,
config.vae; four MRI modalities go through an RGB VAE one at a time, replicated to three
channels, as Shen et al. 2024). Conditions (config.diffusion.condition): "none", "label"
(batch["label"], null label = num_classes) or "prompt" (batch["prompt_ids"/"prompt_mask"]
through a prompt encoder, null prompt = <bos> alone).
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcf import diffusion as D
from jaxcf import models
from jaxcf.models import text as text_models
from jaxcf.models import vae as vae_models
from jaxcf.models import wavelet

BOS_ID = 2  # jaxcf.data.text: <pad> 0, <unk> 1, <bos> 2, <eos> 3


def make_schedule(diffusion: Any) -> D.Schedule:
    kind = diffusion.schedule
    common = dict(prediction=diffusion.prediction)
    if kind == "rectified_flow":
        return D.rectified_flow(diffusion.num_timesteps, shift=diffusion.shift, **common)
    makers = {"linear": D.linear, "cosine": D.cosine, "scaled_linear": D.scaled_linear}
    if kind not in makers:
        raise ValueError(
            f"diffusion.schedule must be one of {[*makers, 'rectified_flow']}, got {kind!r}"
        )
    return makers[kind](diffusion.num_timesteps, variance=diffusion.variance, **common)


class DiffusionTask:
    """Trains a denoiser (config.model) with diffusion_loss; see the module docstring."""

    def __init__(self, config: Any, key: jax.Array, *, restoring: bool = False):
        k_model, k_text, k_vae = jax.random.split(key, 3)
        self.config = config
        self.diffusion = config.diffusion
        self.schedule = make_schedule(config.diffusion)
        self.space = config.diffusion.space
        self.condition = config.diffusion.condition
        if self.space not in ("pixel", "wavelet", "latent"):
            raise ValueError(
                f"diffusion.space must be pixel, wavelet or latent, got {self.space!r}"
            )
        if self.condition not in ("none", "label", "prompt"):
            raise ValueError(
                f"diffusion.condition must be none, label or prompt, got {self.condition!r}"
            )
        self.model_apply, model_params = models.build(config.model, k_model)
        _, model_kwargs = models.model_kwargs(config.model)  # the preset's values included
        self.num_classes = int(model_kwargs.get("num_classes", 0) or 0)
        if self.condition == "label" and not self.num_classes:
            raise ValueError("diffusion.condition='label' needs model.num_classes > 0")
        self.params: dict[str, Any] = {"model": model_params}
        self.frozen: dict[str, Any] = {}
        self.text_apply = None
        if self.condition == "prompt":
            self.text_apply, text_params, text_frozen = _build_text(config.text, k_text)
            self.params["text"] = text_params
            if text_frozen is not None:
                self.frozen["text"] = text_frozen
        self.vae = None
        if self.space == "latent":
            self.vae, self.frozen["vae"], self.vae_mode = _build_vae(config.vae, k_vae, restoring)

    # -- batch -> diffusion variable and condition ------------------------------------------

    def encode(self, frozen: dict, image: jax.Array) -> jax.Array:
        """Data-space images (B, ..., C) -> the diffusion variable x0."""
        if self.space == "wavelet":
            return wavelet.to_wavelet(image)
        if self.space == "latent":
            vae = nnx.merge(self.vae, frozen["vae"])
            if self.vae_mode == "per_modality":
                return vae_models.encode_modalities(vae, image)
            return vae.encode_latents(image)
        return image

    def decode(self, frozen: dict, x0: jax.Array) -> jax.Array:
        if self.space == "wavelet":
            return wavelet.from_wavelet(x0)
        if self.space == "latent":
            vae = nnx.merge(self.vae, frozen["vae"])
            if self.vae_mode == "per_modality":
                return vae_models.decode_modalities(vae, x0)
            return vae.decode_latents(x0)
        return x0

    def cond(self, batch: dict) -> dict | None:
        if self.condition == "label":
            return {"label": batch["label"]}
        if self.condition == "prompt":
            return {"prompt_ids": batch["prompt_ids"], "prompt_mask": batch["prompt_mask"]}
        return None

    def null_cond(self, cond: dict) -> dict | None:
        if self.condition == "label":
            return {"label": jnp.array([self.num_classes], jnp.int32)}
        if self.condition == "prompt":
            length = cond["prompt_ids"].shape[-1]
            ids = jnp.zeros((length,), jnp.int32).at[0].set(BOS_ID)
            return {"prompt_ids": ids, "prompt_mask": jnp.arange(length) == 0}
        return None

    def model_fn(self, params: dict, frozen: dict, dropout_key: jax.Array | None = None):
        """model_fn(x_t, t, cond) with the prompt encoder folded in."""

        def fn(x, t, cond):
            inner = None
            if self.condition == "label":
                inner = {"label": cond["label"]}
            elif self.condition == "prompt":
                text_state = params["text"] if "text" not in frozen else frozen["text"]
                context, mask = self.text_apply(text_state, cond["prompt_ids"], cond["prompt_mask"])
                inner = {"context": context, "context_mask": mask}
            return self.model_apply(params["model"], x, t, inner, dropout_key=dropout_key)

        return fn

    # -- loss and previews ---------------------------------------------------------------------

    def loss(self, params: dict, frozen: dict, batch: dict, key: jax.Array):
        k_loss, k_drop = jax.random.split(key)
        x0 = jax.lax.stop_gradient(self.encode(frozen, batch["image"]))
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
        )

    def preview(self, params: dict, frozen: dict, batch: dict, key: jax.Array, num: int):
        """Samples for the first `num` conditions of a batch -> data-space images."""
        sampler = self.config.sampler
        cond = self.cond(batch)
        if cond is not None:
            cond = jax.tree.map(lambda a: a[:num], cond)
        x0_shape = self.encode(frozen, batch["image"][:num]).shape
        model_fn = self.model_fn(params, frozen)
        if cond is not None and sampler.guidance_scale != 1.0:
            model_fn = D.classifier_free_guidance(
                model_fn, sampler.guidance_scale, self.null_cond(cond)
            )
        x_T = jax.random.normal(key, x0_shape)
        transform = wavelet.wavelet_clip if self.space == "wavelet" else None
        if self.schedule.is_flow:
            x0 = D.flow_sample(model_fn, self.schedule, x_T, num_steps=sampler.num_steps, cond=cond)
        else:
            x0 = D.ddim_sample(
                model_fn,
                self.schedule,
                x_T,
                num_steps=sampler.num_steps,
                cond=cond,
                x0_transform=transform,
            )
        return self.decode(frozen, x0)


class VAETask:
    """Trains the AutoencoderKL of a latent model: L1 reconstruction + kl_weight * KL
    (Rombach et al. 2022 without the perceptual and adversarial terms)."""

    def __init__(self, config: Any, key: jax.Array):
        self.config = config
        self.apply, params = models.build(config.model, key)
        self.params, self.frozen = {"model": params}, {}
        self.kl_weight = float(config.vae_loss.kl_weight)

    def loss(self, params: dict, frozen: dict, batch: dict, key: jax.Array):
        x = batch["image"]
        recon, mean, logvar = self.apply(params["model"], x, key=key)
        l1 = jnp.mean(jnp.abs(recon - x))
        kl = jnp.mean(vae_models.kl_divergence(mean, logvar)) / np.prod(x.shape[1:])
        loss = l1 + self.kl_weight * kl
        return loss, {"loss": loss, "l1": l1, "kl": kl}

    def preview(self, params: dict, frozen: dict, batch: dict, key: jax.Array, num: int):
        recon, _, _ = self.apply(params["model"], batch["image"][:num])
        return recon


def make_task(config: Any, key: jax.Array, *, restoring: bool = False):
    """The task of config.train.task. restoring: every weight, frozen ones included, is
    about to be restored from a checkpoint (inference)."""
    kind = config.train.task
    if kind == "diffusion":
        return DiffusionTask(config, key, restoring=restoring)
    if kind == "vae":
        return VAETask(config, key)
    raise ValueError(f"train.task must be 'diffusion' or 'vae', got {kind!r}")


# -- builders -----------------------------------------------------------------------------------


def _build_text(text: Any, key: jax.Array):
    """(apply(params, ids, mask) -> (context, mask), trainable params, frozen params)."""
    if text.encoder == "trainable":
        module = text_models.PromptEncoder(
            text.vocab_size,
            dim=text.dim,
            max_len=text.max_len,
            depth=text.depth,
            heads=text.heads,
            rngs=nnx.Rngs(key),
        )
        frozen = None
    elif text.encoder == "file":
        if not text.file or not pathlib.Path(text.file).is_file():
            raise ValueError(f"text.file: no embeddings file at {text.file!r}")
        module = text_models.PrecomputedText(text.file)
        frozen = True
    else:
        raise ValueError(f"text.encoder must be 'trainable' or 'file', got {text.encoder!r}")
    graphdef, state = nnx.split(module)

    def apply(state, ids, mask):
        return nnx.merge(graphdef, state)(ids, mask)

    if frozen:
        return apply, {}, state
    return apply, state, None


def check_vae(vae: Any) -> None:
    """Refuse an empty vae.checkpoint (ValueError naming the fields) unless
    vae.allow_untrained, then warn loudly. Called before any data work or training."""
    if not vae.checkpoint:
        if not vae.get("allow_untrained", False):
            raise ValueError(
                "vae.checkpoint is empty: the latent model would train on an untrained VAE "
                "whose latents mean nothing; set vae.checkpoint=PATH (a diffusers "
                "AutoencoderKL or a configs/vae_brats.py workdir) or "
                "--config.vae.allow_untrained=True for a smoke run"
            )
        import sys

        print(
            "WARNING: vae.checkpoint is empty and vae.allow_untrained=True: the latent model "
            "uses an untrained VAE whose latents mean nothing (smoke runs only)",
            file=sys.stderr,
        )


def _build_vae(vae: Any, key: jax.Array, restoring: bool = False):
    """(graphdef, params, mode) of the frozen latent autoencoder. restoring: its weights
    come from a checkpoint afterwards (inference), so vae.checkpoint may be empty."""
    if not restoring:
        check_vae(vae)
    module = models.build_module({"family": "vae", "preset": vae.preset}, key)
    graphdef, params = nnx.split(module)
    if vae.checkpoint:
        params = load_vae_params(vae.checkpoint, params)
    mode = vae.mode
    if mode == "auto":
        mode = "per_modality" if module.encoder.conv_in.in_features == 3 else "joint"
    if mode not in ("per_modality", "joint"):
        raise ValueError(f"vae.mode must be auto, per_modality or joint, got {vae.mode!r}")
    return graphdef, params, mode


def load_vae_params(path: str, params: nnx.State) -> nnx.State:
    """A diffusers AutoencoderKL file / folder, or a jaxcf workdir trained with a vae config."""
    from jaxcf.checkpoint import Checkpoints
    from jaxcf.convert.diffusers_vae import load_vae_checkpoint

    folder = pathlib.Path(path)
    if (folder / "checkpoints").is_dir():
        ckpt = Checkpoints(folder)
        step = ckpt.latest_step
        if step is None:
            raise ValueError(f"vae.checkpoint: {folder} has no checkpoint yet")
        item = ckpt.manager.restore(step)  # raw pytree restore: EMA parameters of the VAE
        ema = item["state"]["ema"]["model"]
        nnx.replace_by_pure_dict(params, jax.tree.map(jnp.asarray, ema))
        ckpt.close()
        return params
    return load_vae_checkpoint(path, params)
