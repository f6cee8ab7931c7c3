"""What a counterfactual method sees of a trained diffusion model.

    model = MethodModel(apply=apply, schedule=schedule, null_cond=null_label(2))
    fn = registry.get("diffscm").build(model, config.counterfactual.diffscm)
    out = jax.jit(fn)(weights, {"image": x}, key)        # weights: a jit ARGUMENT

`apply(weights, x_t, t, cond, **kwargs)` is the denoiser with its weights as the first
argument, so a method never closes over parameters (a 130M-parameter DiT would otherwise
be folded into every compiled function as constants). `encode` / `decode` map data-space
images to the diffusion variable and back (the identity for pixel models, a VAE for latent
models, the Haar transform for WDM); they take the same weights. `jaxcf.inference` builds a
MethodModel from a training workdir; tests build one around a closed-form denoiser.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxcf.diffusion.samplers import ModelFn, Transform
from jaxcf.diffusion.schedules import Schedule
from jaxcf.errors import InputError

Apply = Callable[..., jax.Array]  # apply(weights, x_t, t, cond, **kwargs) -> prediction
Codec = Callable[[Any, Any], Any]  # codec(weights, array or cond) -> array or cond


def _identity(weights: Any, x: jax.Array) -> jax.Array:
    return x


def null_label(num_classes: int) -> Callable[[Any], dict]:
    """The null condition of a label model: label = num_classes (classifier-free dropout's
    extra class), one row that broadcasts against any batch of target labels."""

    def null_cond(cond: Any) -> dict:
        return {"label": jnp.array([num_classes], jnp.int32)}

    return null_cond


@dataclasses.dataclass(frozen=True)
class MethodModel:
    """A trained denoiser as methods use it (see the module docstring).

    apply: apply(weights, x_t, t, cond, **kwargs) -> prediction, channels-last.
    schedule: the schedule it was trained with (DDIM / DDPM methods need a discrete one).
    null_cond: cond -> the null condition for classifier-free guidance (None: unconditional).
    encode, decode: weights-taking maps between data space and the diffusion variable.
    prepare_cond: prepare_cond(weights, cond) -> the condition encoded for the network
      once (a prompt -> its text-encoder context), so samplers do not re-encode it at
      every step; the identity for labels. Prepare null conditions the same way.
    space: "pixel" | "latent" | "wavelet" (how encode / decode relate pixels and x0).
    num_classes: label models' number of classes (0 otherwise).
    x0_transform: the x0 estimate's transform where the data range is known: a clip to the
      data range (jaxcf.training.spaces.data_range; as guided-diffusion's clip_denoised) in
      pixel space, wavelet_clip for Haar sub-bands; None otherwise (latents, z-scores).
    tokenizer: prompt models' tokenizer (jaxcf.data.text.Tokenizer: vocab, encode_batch),
      which prompt-taking methods use to turn text into the model's prompt ids; None else.
    token_positions: token_positions(ids, mask, values) -> (B, L') float32: per-prompt-token
      values (B, L) (ids, mask: the prompt's) at the context positions the network sees
      (a text tower's word pieces: jaxcf.text.tower.Retokenizer.spread); None when
      position i of the prompt is context position i.
    """

    apply: Apply
    schedule: Schedule
    null_cond: Callable[[Any], Any] | None = None
    encode: Codec = _identity
    decode: Codec = _identity
    prepare_cond: Codec = _identity
    space: str = "pixel"
    num_classes: int = 0
    x0_transform: Transform = None
    tokenizer: Any = None
    token_positions: Callable[[jax.Array, jax.Array, jax.Array], jax.Array] | None = None

    def model_fn(self, weights: Any, **kwargs: Any) -> ModelFn:
        """model_fn(x_t, t, cond) with the weights (and extra apply kwargs) bound."""
        return functools.partial(self.apply, weights, **kwargs)

    def conditions(self, weights: Any, cond: Any) -> tuple[Any, Any]:
        """(target, null) conditions for guidance, each prepared once for the network."""
        null = self.null_cond(cond) if self.null_cond is not None else None
        prepared_null = None if null is None else self.prepare_cond(weights, null)
        return self.prepare_cond(weights, cond), prepared_null

    def label_cond(self, label: int, batch_size: int) -> dict:
        """{"label": (B,) int32} = label, for label-conditioned models."""
        if self.num_classes <= 0:
            raise InputError(
                "this method needs a label-conditioned model (diffusion.condition='label')"
            )
        if not 0 <= label < self.num_classes:
            raise InputError(
                f"target label {label} is not a class of this model (num_classes="
                f"{self.num_classes})"
            )
        return {"label": jnp.full((batch_size,), label, jnp.int32)}
