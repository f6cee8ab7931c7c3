"""Conditioners: what a diffusion model is conditioned on, from the batch to the network.

    conditioner, params, frozen = build_conditioner(config, key, num_classes=2)
    cond = conditioner.cond(batch)                       # raw condition from a data batch
    null = conditioner.null_cond(cond)                   # classifier-free guidance's null
    inner = conditioner.encode(params, frozen, cond)     # what the network's apply takes

Chosen ONCE by name (config.diffusion.condition; CONDITIONERS: name -> builder). Builders
return the conditioner, the trainable parameters it adds ({"text": ...} for a trainable
prompt encoder) and the frozen ones ({"text": ...} for embeddings read from a file).

  "none"    unconditional: cond, null and inner cond are None.
  "label"   {"label": (B,) int32}; null label = num_classes (the extra class of
            classifier-free dropout).
  "prompt"  {"prompt_ids": (B, L) int32, "prompt_mask": (B, L) bool} through a prompt
            encoder (config.text.encoder: trainable | file | tower) ->
            {"context": (B, L2, D), "context_mask": (B, L2)};
            null prompt = <bos> alone (never fully masked: cross-attention keeps a key).
  "image"   {"image": batch["image"]} for models that diffuse something else
            (diffusion.target, e.g. a segmentation) given the image. Nothing concatenates
            it into the network yet: the network receives cond["image"] and may use it.

`encode` is idempotent: an already encoded condition (a prompt cond holding "context")
passes through untouched, so samplers can run the text encoder ONCE before their loop
(DiffusionTask.prepare_cond) instead of at every step.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcf.data.text import BOS, SPECIALS
from jaxcf.errors import InputError
from jaxcf.models import text as text_models

BOS_ID = SPECIALS.index(BOS)  # the null prompt's only token

TextApply = Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class NoCondition:
    """Unconditional models."""

    name: str = "none"

    def cond(self, batch: dict) -> None:
        return None

    def null_cond(self, cond: Any) -> None:
        return None

    def encode(self, params: dict, frozen: dict, cond: Any) -> None:
        return None


@dataclasses.dataclass(frozen=True)
class LabelConditioner:
    """Class labels; the null label is num_classes."""

    num_classes: int
    name: str = "label"

    def cond(self, batch: dict) -> dict:
        return {"label": batch["label"]}

    def null_cond(self, cond: Any) -> dict:
        # One row that broadcasts against any batch (guidance.broadcast_null).
        return {"label": jnp.array([self.num_classes], jnp.int32)}

    def encode(self, params: dict, frozen: dict, cond: dict) -> dict:
        return {"label": cond["label"]}


@dataclasses.dataclass(frozen=True)
class PromptConditioner:
    """Tokenised prompts through a prompt encoder.

    text_apply(state, ids (B, L), mask (B, L)) -> (context (B, L2, D), mask (B, L2));
    state is params["text"] (trainable encoder) or frozen["text"] (from_file)."""

    text_apply: TextApply
    from_file: bool
    name: str = "prompt"

    def cond(self, batch: dict) -> dict:
        return {"prompt_ids": batch["prompt_ids"], "prompt_mask": batch["prompt_mask"]}

    def null_cond(self, cond: dict) -> dict:
        if "prompt_ids" not in cond:
            raise InputError(
                "null_cond needs the raw prompt condition (prompt_ids, prompt_mask), not an "
                "encoded one: encode null_cond(raw) with prepare_cond as well"
            )
        length = cond["prompt_ids"].shape[-1]
        ids = jnp.zeros((length,), jnp.int32).at[0].set(BOS_ID)
        return {"prompt_ids": ids, "prompt_mask": jnp.arange(length) == 0}

    def encode(self, params: dict, frozen: dict, cond: dict) -> dict:
        if "context" in cond:  # already encoded (prepare_cond): no text encoder call
            return {"context": cond["context"], "context_mask": cond["context_mask"]}
        state = frozen["text"] if self.from_file else params["text"]
        ids, mask = cond["prompt_ids"], cond["prompt_mask"]
        if ids.ndim == 1:  # one unbatched prompt (a null_cond): a batch of one
            ids, mask = ids[None], mask[None]
        context, context_mask = self.text_apply(state, ids, mask)
        return {"context": context, "context_mask": context_mask}


@dataclasses.dataclass(frozen=True)
class ImageConditioner:
    """The data image as the condition of a model diffusing another field
    (diffusion.target); the null image is zeros."""

    name: str = "image"

    def cond(self, batch: dict) -> dict:
        return {"image": batch["image"]}

    def null_cond(self, cond: dict) -> dict:
        image = cond["image"]
        return {"image": jnp.zeros((1, *image.shape[1:]), image.dtype)}

    def encode(self, params: dict, frozen: dict, cond: dict) -> dict:
        return {"image": cond["image"]}


Conditioner = NoCondition | LabelConditioner | PromptConditioner | ImageConditioner
Built = tuple[Conditioner, dict, dict]  # (conditioner, trainable params, frozen params)


def _none(config: Any, key: jax.Array, num_classes: int) -> Built:
    return NoCondition(), {}, {}


def _label(config: Any, key: jax.Array, num_classes: int) -> Built:
    if not num_classes:
        raise InputError("diffusion.condition='label' needs model.num_classes > 0")
    return LabelConditioner(num_classes), {}, {}


def _prompt(config: Any, key: jax.Array, num_classes: int) -> Built:
    apply, state, from_file = build_text(config.text, key)
    conditioner = PromptConditioner(apply, from_file)
    return (
        conditioner,
        ({} if from_file else {"text": state}),
        ({"text": state} if from_file else {}),
    )


def _image(config: Any, key: jax.Array, num_classes: int) -> Built:
    if config.diffusion.get("target", "image") == "image":
        raise InputError(
            "diffusion.condition='image' conditions on the image, so diffusion.target must "
            "name another batch field (e.g. 'seg')"
        )
    return ImageConditioner(), {}, {}


# name -> builder(config, key, num_classes) -> (conditioner, params, frozen)
CONDITIONERS: dict[str, Callable[[Any, jax.Array, int], Built]] = {
    "none": _none,
    "label": _label,
    "prompt": _prompt,
    "image": _image,
}


def build_conditioner(config: Any, key: jax.Array, *, num_classes: int = 0) -> Built:
    """(conditioner, params, frozen) for config.diffusion.condition; num_classes: the
    denoiser's (label models)."""
    name = config.diffusion.condition
    if name not in CONDITIONERS:
        raise InputError(f"diffusion.condition must be one of {sorted(CONDITIONERS)}, got {name!r}")
    return CONDITIONERS[name](config, key, num_classes)


def build_text(text: Any, key: jax.Array) -> tuple[TextApply, nnx.State, bool]:
    """(apply(state, ids, mask) -> (context, mask), state, from_file) of config.text:
    a trainable PromptEncoder (state trained with the denoiser), embeddings read from
    text.file, or a pretrained BERT / CLIP tower run on the fly (text.encoder = "tower",
    jaxcf.text.tower). The last two are frozen (from_file: reloaded from their files
    whenever the task is built, never trained nor checkpointed)."""
    if text.encoder == "tower":
        from jaxcf.text.tower import frozen_tower

        apply, state = frozen_tower(text)
        return apply, state, True
    if text.encoder == "trainable":
        module = text_models.PromptEncoder(
            text.vocab_size,
            dim=text.dim,
            max_len=text.max_len,
            depth=text.depth,
            heads=text.heads,
            rngs=nnx.Rngs(key),
        )
        from_file = False
    elif text.encoder == "file":
        if not text.file or not pathlib.Path(text.file).is_file():
            raise InputError(f"text.file: no embeddings file at {text.file!r}")
        module = text_models.PrecomputedText(text.file)
        from_file = True
    else:
        raise InputError(
            f"text.encoder must be 'trainable', 'file' or 'tower', got {text.encoder!r}"
        )
    graphdef, state = nnx.split(module)

    def apply(state, ids, mask):
        return nnx.merge(graphdef, state)(ids, mask)

    return apply, state, from_file
