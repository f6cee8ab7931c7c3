"""Text-guided counterfactuals by swapping the prompt (Mohamed et al. 2025, "Imagining
Alternatives", paper 004, Sec. 2.4).

    synthetic subjects (the paper):  x_T ~ N(0, I);  x_a = D(x_T, y_a);  x_b = D(x_T, y_b)
    real subjects (its future work): x_T = Invert(x, y_a) to depth L;  x_b = D(x_T, y_b)

D is the deterministic sampler of the model's schedule (DDIM with eta 0 for discrete
schedules: the paper's WDM uses DDIM 25; the rectified-flow ODE with Euler steps for flow
models: MAISI RFlow uses 30), guided toward the prompt with classifier-free guidance of
scale w, optionally only inside a noise-level interval (Kynkäänniemi et al. 2024). Both
prompts decode from the same x_T in ONE sampler call (the batch holds the source and the
target copy), so the pair shares its noise exactly and the sampler compiles once.

Real subjects are inverted under their own prompt without guidance (DDIM inversion or
flow_invert, as Diff-SCM inverts under the null label) and decoded under both the source
prompt ("reconstruction": what inversion alone changes) and the target prompt. The
counterfactual is then either that target decode ("decoded") or, by default, the subject
plus what the prompt changed (edit = "residual"):

    x_cf = x + D(x_T, y_b) - D(x_T, y_a)

Both decodes start from the same x_T, so the model's reconstruction error, which they
share, cancels: an x0-predicting WDM that re-draws the whole volume at its last step
reconstructs its 32^3 phantom test subjects at 17.8 dB PSNR, so its raw target decode
loses the subject (README, paper 004 phantom proof). The heatmap is
|factual - counterfactual| averaged over channels.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcf.counterfactual.diffscm import difference_map
from jaxcf.counterfactual.model import MethodModel
from jaxcf.data.text import known_prompt_tokens
from jaxcf.diffusion.guidance import classifier_free_guidance, prediction_channels
from jaxcf.diffusion.samplers import ddim_invert, ddim_sample, flow_invert, flow_sample
from jaxcf.errors import InputError

MODES = ("synthetic", "real")
EDITS = ("residual", "decoded")
LABEL = "Prompt swap"


def default_config() -> ml_collections.ConfigDict:
    """counterfactual.prompt_swap.*: paper 004's WDM sampling (DDIM 25, w = 1: the paper's
    Table 1 model is sampled without extra guidance; Table 2 sweeps w on MAISI RFlow)."""
    return ml_collections.ConfigDict(
        {
            # synthetic: one noise, two prompts (the paper) | real: invert the given volume
            # under source_prompt to depth `strength`, decode under target_prompt
            "mode": "synthetic",
            "source_prompt": "Subject has minimal lesion load",
            "target_prompt": "Subject has high lesion load",
            "num_steps": 25,  # DDIM steps (WDM, paper 004) / Euler steps for flow models
            "strength": 1.0,  # real mode: inversion depth as a fraction of num_steps
            "guidance_scale": 1.0,  # w of classifier-free guidance; 1 = the conditional model
            # guide only while the noise level (t / T, 0 = clean, 1 = noise) is inside
            # [guidance_from, guidance_to]; the conditional model elsewhere
            "guidance_from": 0.0,
            "guidance_to": 1.0,
            "spacing": "leading",  # discrete schedules' respacing (DDIM's usual)
            # real mode: "residual" = x + D(x_T, target) - D(x_T, source) (module docstring)
            # | "decoded" = D(x_T, target) as it comes out of the sampler
            "edit": "residual",
        }
    )


def describe(cfg: ml_collections.ConfigDict) -> str:
    """The method's name in tables, e.g. "Prompt swap (real, w = 2)"."""
    return f"{LABEL} ({cfg.mode}, w = {float(cfg.guidance_scale):g})"


def _interval(model: MethodModel, lo: float, hi: float) -> tuple[float, float] | None:
    """Guidance interval as fractions of the noise level -> the model's time units."""
    if not 0.0 <= lo <= hi <= 1.0:
        raise InputError(
            "counterfactual.prompt_swap.guidance_from / guidance_to must satisfy "
            f"0 <= from <= to <= 1, got {lo}, {hi}"
        )
    if (lo, hi) == (0.0, 1.0):
        return None
    scale = 1.0 if model.schedule.is_flow else float(model.schedule.num_timesteps)
    return lo * scale, hi * scale


def swap(
    model_fn: Callable,
    schedule: Any,
    z: jax.Array,
    *,
    source_cond: Any,
    target_cond: Any,
    null_cond: Any,
    mode: str,
    key: jax.Array,
    num_steps: int = 25,
    strength: float = 1.0,
    guidance_scale: float = 1.0,
    interval: tuple[float, float] | None = None,
    x0_transform: Callable | None = None,
    spacing: str = "leading",
) -> dict[str, jax.Array]:
    """The prompt swap on the diffusion variable z (B, ..., C).

    mode "synthetic": z only gives the shape; x_T ~ N(0, I) from `key`, decoded under
    both prompts. mode "real": z is the subject, inverted under source_cond (unguided) to
    depth `strength`, then decoded under both. Conditions are prepared (encoded) pytrees
    of batch B; null_cond broadcasts against them.
    Returns {"source": (B, ..., C) decoded under the source prompt, "target": under the
    target prompt, "latent": the shared x_T}."""
    if mode not in MODES:
        raise InputError(f"counterfactual.prompt_swap.mode must be one of {MODES}, got {mode!r}")
    if not 0.0 < strength <= 1.0:
        raise InputError(f"counterfactual.prompt_swap.strength must be in (0, 1], got {strength}")
    if mode == "synthetic" and strength != 1.0:
        raise InputError("counterfactual.prompt_swap.strength < 1 needs mode='real'")
    common = dict(num_steps=num_steps, strength=strength, x0_transform=x0_transform)
    if schedule.is_flow:
        invert, sample = flow_invert, flow_sample
    else:
        invert = functools.partial(ddim_invert, spacing=spacing, model_time="current")
        sample = functools.partial(ddim_sample, spacing=spacing)
    if mode == "synthetic":
        latent = jax.random.normal(key, z.shape, jnp.float32)
    else:
        latent = invert(model_fn, schedule, z, cond=source_cond, **common)
    guided = classifier_free_guidance(
        model_fn,
        guidance_scale,
        null_cond,
        interval=interval,
        guided_channels=prediction_channels(schedule, z.shape[-1]),
    )
    # Both prompts from the same x_T in one call: [source rows; target rows].
    both = jax.tree.map(lambda s, t: jnp.concatenate([s, t]), source_cond, target_cond)
    out = sample(guided, schedule, jnp.concatenate([latent, latent]), cond=both, **common)
    b = z.shape[0]
    return {"source": out[:b], "target": out[b:], "latent": latent}


def residual_edit(x: Any, reconstruction: Any, decoded: Any) -> Any:
    """x + (decoded - reconstruction): the subject plus what the target prompt changed
    relative to the source prompt from the same x_T (module docstring). Arrays (B, ..., C),
    jax or numpy."""
    return x + (decoded - reconstruction)


PROMPT_FIELDS = (
    "source_prompt_ids",
    "source_prompt_mask",
    "target_prompt_ids",
    "target_prompt_mask",
)


def prepare(batch: dict, cfg: ml_collections.ConfigDict) -> dict:
    """Host side: the images and any per-row prompt arrays (PROMPT_FIELDS); nothing else
    reaches the device."""
    return {k: batch[k] for k in ("image", *PROMPT_FIELDS) if batch.get(k) is not None}


def _rows(tokens: dict[str, np.ndarray], batch: int) -> dict[str, jax.Array]:
    return {k: jnp.broadcast_to(v, (batch, *v.shape[1:])) for k, v in tokens.items()}


def build(model: MethodModel, cfg: ml_collections.ConfigDict) -> Callable:
    """fn(weights, {"image": (B, ..., C), optional "source_prompt_ids" / "_mask",
    "target_prompt_ids" / "_mask" (B, L) per row}, key) -> {"factual", "counterfactual",
    "heatmap" (B, ...), and in real mode "reconstruction" (the source-prompt decode) and,
    with edit "residual", "decoded" (the target-prompt decode before the edit)}. Without
    per-row prompts the config's source_prompt / target_prompt are used for every row.
    Synthetic mode ignores the image's values (only its shape counts): "factual" is the
    source-prompt sample."""
    if model.tokenizer is None:
        raise InputError(
            "prompt_swap needs a prompt-conditioned model (diffusion.condition='prompt') "
            "with its tokenizer"
        )
    mode = str(cfg.mode)
    if mode not in MODES:
        raise InputError(f"counterfactual.prompt_swap.mode must be one of {MODES}, got {mode!r}")
    if float(cfg.guidance_scale) < 0:
        raise InputError("counterfactual.prompt_swap.guidance_scale must be >= 0")
    interval = _interval(model, float(cfg.guidance_from), float(cfg.guidance_to))
    edit = str(cfg.get("edit", "residual"))
    if edit not in EDITS:
        raise InputError(f"counterfactual.prompt_swap.edit must be one of {EDITS}, got {edit!r}")
    source = known_prompt_tokens(
        model.tokenizer, [cfg.source_prompt], "counterfactual.prompt_swap.source_prompt"
    )
    target = known_prompt_tokens(
        model.tokenizer, [cfg.target_prompt], "counterfactual.prompt_swap.target_prompt"
    )
    options = dict(
        mode=mode,
        num_steps=int(cfg.num_steps),
        strength=float(cfg.strength),
        guidance_scale=float(cfg.guidance_scale),
        interval=interval,
        x0_transform=model.x0_transform,
        spacing=str(cfg.spacing),
    )

    def given(batch: dict, role: str, default: dict, rows: int) -> dict:
        if f"{role}_prompt_ids" in batch:
            return {
                "prompt_ids": batch[f"{role}_prompt_ids"],
                "prompt_mask": batch[f"{role}_prompt_mask"],
            }
        return _rows(default, rows)

    def fn(weights: Any, batch: dict, key: jax.Array) -> dict[str, jax.Array]:
        x = jnp.asarray(batch["image"], jnp.float32)
        rows = x.shape[0]
        raw_source = given(batch, "source", source, rows)
        source_cond, null_cond = model.conditions(weights, raw_source)
        target_cond, _ = model.conditions(weights, given(batch, "target", target, rows))
        out = swap(
            model.model_fn(weights),
            model.schedule,
            model.encode(weights, x),
            source_cond=source_cond,
            target_cond=target_cond,
            null_cond=null_cond,
            key=key,
            **options,
        )
        decoded_source = model.decode(weights, out["source"])
        counterfactual = model.decode(weights, out["target"])
        extra = {}
        if mode == "real":
            extra = {"reconstruction": decoded_source}
            if edit == "residual":
                extra["decoded"] = counterfactual
                counterfactual = residual_edit(x, decoded_source, counterfactual)
        factual = x if mode == "real" else decoded_source
        return {
            "factual": factual,
            "counterfactual": counterfactual,
            "heatmap": difference_map(factual, counterfactual),
            **extra,
        }

    return fn
