"""Attention-regulated counterfactual chest X-rays (Zhang et al. 2026, "Mask-Guided
Attention Regulation for Anatomically Consistent Counterfactual CXR Synthesis", paper 003).

    z_T  = q_sample(Enc(x), t_start, eps)                        Eq. 2 (depth: `strength`)
    z_{t-1} = DDIM(CFG(eps_theta(z_t, t, c(y))))                 Eq. 3, with inside the UNet
      S <- S * (M_anat at the layer's size)  [self-attention]    Eq. 5 (anatomy gate)
      A_k <- A_k * (1 + eta Omega), k pathology, t in window     Eq. 6 (pathology reweighting)
    before each step in the window: z_t <- z_t - alpha_t dL/dz_t  Eqs. 7-9 (energy correction)
    x' = Dec(z_0);  heatmap = mean_c |x - x'|

Inputs: batch {"image": (B, H, W, C) the CXR in data space, "anatomy": (B, H, W) the organ
(lung) mask M_anat, "roi": (B, H, W) the mask M_ROI that Omega is made from}, both masks
float or bool at image resolution; the target prompt (cfg.target_prompt, or per-row
"target_prompt_ids" / "target_prompt_mask" (B, L) of the model's tokenizer). Pathology
tokens K_path are the prompt's words listed in cfg.pathology_words.

Choices the paper leaves open, and what is done here:
  * Gate axis (Eq. 5 multiplies a (Q, K) map by a spatial mask): default "keys" with
    renormalisation. Every row stays a probability distribution, so each self-attention
    output is still a convex combination of values, the regime the UNet was trained in
    (an unrenormalised gate shrinks outputs by the in-mask share of the keys, a shift the
    network never saw); and the structural context every position gathers comes from the
    organ only, so structure outside the lungs (clavicles, devices, text markers) is not
    pulled into the edited field. "queries" zeroes the self-attention update of positions
    outside the organ (their features keep only the residual path); "both" keeps only
    organ-organ pairs. Renormalising is only offered with "keys": with "queries" the row
    factor cancels exactly, with "both" the rows of outside queries are all zero.
  * The window "t < mu T": the paper writes it with t counted T -> 1, which literally
    selects the last steps, yet calls it "early denoising" four times and motivates it
    by what forms early (where a lesion goes). cfg.window = "early" (the default) reads
    the intent: the first mu fraction of the trajectory, noise level t >= (1 - mu) T on
    the model's time axis; "late" reads the formula literally, t < mu T. T is the
    trajectory's: the schedule's at strength 1 (Eq. 2), strength * T when the edit starts
    lower (so "early" stays the first mu of the steps that run). alpha_t decays
    linearly over the window's steps: alpha at its first step, alpha / n at its last.
  * The energy is differentiated through the conditional (target-prompt) UNet forward
    only, with the same Eq. 5 / 6 edits the sampler applies (Eq. 7 scores A^path).

Context positions: token i of the data tokenizer's prompt is context position i for the
"trainable" prompt encoder. Text towers (text.encoder "tower", and "file" embeddings
written by jaxcf.text.encode) re-tokenise into word pieces with a start token, so the
positions differ: MethodModel.token_positions maps the pathology flags to the context's
positions (jaxcf.inference sets it to the tower's `Retokenizer.spread` for "tower"
models). Where it is unset, a context longer or shorter than the prompt is refused
("file" embeddings, whose word pieces are not known).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcf.counterfactual.diffscm import difference_map
from jaxcf.counterfactual.model import MethodModel
from jaxcf.data.text import known_prompt_tokens
from jaxcf.diffusion import process
from jaxcf.diffusion.guidance import classifier_free_guidance, prediction_channels
from jaxcf.diffusion.samplers import StepHooks, ddim_sample, strength_steps
from jaxcf.diffusion.schedules import respace
from jaxcf.errors import InputError
from jaxcf.models.layers import AttentionEdit

LABEL = "Attention regulation"
GATE_AXES = ("keys", "queries", "both")
WINDOWS = ("early", "late")
PATHOLOGY_WORDS = (
    "opacity",
    "effusion",
    "pneumonia",
    "consolidation",
    "atelectasis",
    "edema",
    "cardiomegaly",
    "nodule",
    "mass",
    "pneumothorax",
)
FIELD = "counterfactual.attention"
_EXTRA = "_attention"  # cond key carrying the masks through CFG's doubled batch


def default_config() -> ml_collections.ConfigDict:
    """counterfactual.attention.*: paper 003's settings (SD 1.5 at 512 px: DDIM 50,
    w = 7.5, q in {64, 32, 16}, eta 1.5, mu 0.4, alpha 0.05)."""
    return ml_collections.ConfigDict(
        {
            "target_prompt": "right lower lobe opacity",
            "pathology_words": PATHOLOGY_WORDS,
            "num_steps": 50,
            # Eq. 2 noises to z_T (strength 1); < 1 starts lower on the DDIM grid (SDEdit)
            "strength": 1.0,
            "guidance_scale": 7.5,
            "spacing": "leading",
            # Eq. 5: anatomy gate on self-attention at these feature-map heights
            "gate": True,
            "gate_resolutions": (64, 32, 16),
            "gate_axis": "keys",  # keys | queries | both (module docstring)
            "gate_renormalize": True,
            # Eq. 6: pathology-token reweighting on cross-attention at these heights
            "reweight": True,
            "path_resolutions": (64, 32, 16),
            "eta": 1.5,
            "mu": 0.4,
            # early: t >= (1 - mu) T | late: t < mu T, T = strength * the schedule's (docstring)
            "window": "early",
            "roi_blur": 1.0,  # Gaussian sigma of Omega's blur, in pixels of the latent grid
            "reweight_renormalize": False,  # Eq. 6 as written: no renormalisation
            # Eqs. 7-9: one latent correction per step inside the window
            "energy": True,
            "alpha": 0.05,
            "remat": False,  # jax.checkpoint the UNet call the energy is differentiated through
        }
    )


def describe(cfg: ml_collections.ConfigDict) -> str:
    """The Table 2 row: "Attention regulation (full)", "... (w/o Eq. 5)", ..."""
    off = [eq for flag, eq in (("gate", "5"), ("reweight", "6"), ("energy", "9")) if not cfg[flag]]
    if not off:
        return f"{LABEL} (full)"
    return f"{LABEL} (w/o Eq. {', '.join(off)})"


def check_config(cfg: ml_collections.ConfigDict) -> None:
    """InputError naming the first bad field of counterfactual.attention."""
    if float(cfg.eta) < 0:
        raise InputError(f"{FIELD}.eta must be >= 0, got {cfg.eta}")
    if not 0.0 <= float(cfg.mu) <= 1.0:
        raise InputError(f"{FIELD}.mu must be in [0, 1], got {cfg.mu}")
    if cfg.get("window", "early") not in WINDOWS:
        raise InputError(f"{FIELD}.window must be one of {WINDOWS}, got {cfg.window!r}")
    if cfg.gate_axis not in GATE_AXES:
        raise InputError(f"{FIELD}.gate_axis must be one of {GATE_AXES}, got {cfg.gate_axis!r}")
    if cfg.gate and cfg.gate_renormalize and cfg.gate_axis != "keys":
        raise InputError(
            f"{FIELD}.gate_renormalize needs gate_axis='keys' (with {cfg.gate_axis!r} the "
            "renormalisation cancels the gate or divides zero rows)"
        )
    if float(cfg.alpha) < 0:
        raise InputError(f"{FIELD}.alpha must be >= 0, got {cfg.alpha}")
    if float(cfg.roi_blur) < 0:
        raise InputError(f"{FIELD}.roi_blur must be >= 0, got {cfg.roi_blur}")
    if float(cfg.guidance_scale) < 0:
        raise InputError(f"{FIELD}.guidance_scale must be >= 0, got {cfg.guidance_scale}")
    if not 0.0 < float(cfg.strength) <= 1.0:
        raise InputError(f"{FIELD}.strength must be in (0, 1], got {cfg.strength}")
    if int(cfg.num_steps) < 1:
        raise InputError(f"{FIELD}.num_steps must be >= 1, got {cfg.num_steps}")
    for name in ("gate_resolutions", "path_resolutions"):
        values = tuple(cfg[name])
        if not all(isinstance(v, int | np.integer) and v > 0 for v in values):
            raise InputError(f"{FIELD}.{name} must be positive ints, got {values}")


# --- masks at a layer's resolution ----------------------------------------------------------


def area_resize(mask: jax.Array, size: tuple[int, int]) -> jax.Array:
    """(B, H, W) -> (B, h, w): the mean over each cell where h, w divide H, W (SD's 8x),
    antialiased linear resampling otherwise."""
    b, hh, ww = mask.shape
    h, w = size
    mask = mask.astype(jnp.float32)
    if hh % h == 0 and ww % w == 0:
        return mask.reshape(b, h, hh // h, w, ww // w).mean(axis=(2, 4))
    return jax.image.resize(mask, (b, h, w), "linear", antialias=True)


def gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) Gaussian smoothing along one axis, rows normalised to 1 (so the border is
    not darkened); the identity for sigma = 0."""
    if sigma <= 0:
        return np.eye(n, dtype=np.float32)
    d = np.arange(n)[:, None] - np.arange(n)[None, :]
    k = np.exp(-0.5 * (d / sigma) ** 2)
    return (k / k.sum(1, keepdims=True)).astype(np.float32)


def omega(roi: jax.Array, size: tuple[int, int], sigma: float) -> jax.Array:
    """Omega = Normalize(Blur(M_ROI at q)) (Sec. 2.3): (B, H, W) -> (B, h, w), max 1 per
    sample (an empty ROI stays 0). sigma in pixels of the (h, w) grid."""
    m = area_resize(roi, size)
    ky, kx = gaussian_matrix(size[0], sigma), gaussian_matrix(size[1], sigma)
    m = jnp.einsum("ij,bjk,lk->bil", ky, m, kx)
    peak = jnp.max(m, axis=(1, 2), keepdims=True)
    return jnp.where(peak > 0, m / jnp.where(peak > 0, peak, 1.0), 0.0)


def pathology_token_mask(ids: Any, mask: Any, pathology_ids: Sequence[int]) -> Any:
    """(B, L) 0/1 float: the prompt tokens that are pathology words (jax or numpy)."""
    xp = jnp if isinstance(ids, jax.Array) else np
    hit = xp.isin(ids, xp.asarray(list(pathology_ids), dtype=xp.int32)) & mask.astype(bool)
    return hit.astype(xp.float32)


# --- the attention control ------------------------------------------------------------------


def make_control(
    cfg: ml_collections.ConfigDict,
    extra: dict[str, jax.Array],
    t: jax.Array,
    latent_size: tuple[int, int],
    horizon: float,
    *,
    record: dict | None = None,
    reweight: bool | None = None,
) -> Callable[[str, str, tuple], AttentionEdit | None]:
    """control(name, kind, (h, w)) -> AttentionEdit | None for one UNet call of batch b.

    extra: {"anatomy": (b, H, W), "roi": (b, H, W), "tokens": (b, L) pathology flags (0
    on null-prompt rows)}; t: (b,) model times; latent_size: the diffusion variable's
    (H', W'), which cfg.roi_blur is measured in; horizon: the trajectory's T (in_window).
    record: a dict: ask the cross-attention layers at cfg.path_resolutions for their
    probabilities (Eq. 7's A_k) and note their (h, w) in it under the layer's name.
    reweight: overrides cfg.reweight (build turns it off when no step is in the window)."""
    gate_res = {int(r) for r in cfg.gate_resolutions}
    path_res = {int(r) for r in cfg.path_resolutions}
    reweight = bool(cfg.reweight) if reweight is None else reweight
    inside = in_window(t, float(cfg.mu), horizon, cfg.get("window", "early"))
    in_window_t = inside.astype(jnp.float32) if reweight else None

    def control(name: str, kind: str, spatial: tuple) -> AttentionEdit | None:
        if len(spatial) != 2:
            return None
        h, w = int(spatial[0]), int(spatial[1])
        b = extra["anatomy"].shape[0]
        if kind == "self":
            if not cfg.gate or h not in gate_res:
                return None
            # Eq. 5: S * (M_anat at q); a sample without any organ is left ungated.
            m = area_resize(extra["anatomy"], (h, w)).reshape(b, h * w)
            m = jnp.where(jnp.sum(m, 1, keepdims=True) > 0, m, 1.0)
            if cfg.gate_axis == "keys":
                scale = m[:, None, None, :]
            elif cfg.gate_axis == "queries":
                scale = m[:, None, :, None]
            else:
                scale = m[:, None, :, None] * m[:, None, None, :]
            return AttentionEdit(prob_scale=scale, renormalize=bool(cfg.gate_renormalize))
        if kind != "cross" or h not in path_res or not (reweight or record is not None):
            return None
        if record is not None:
            record[name] = (h, w)
        edit = AttentionEdit(return_probs=record is not None)
        if reweight:
            # Eq. 6: A_k * (1 + eta Omega) for k in K_path, only inside the window.
            sigma = float(cfg.roi_blur) * h / latent_size[0]
            om = omega(extra["roi"], (h, w), sigma).reshape(b, h * w)
            boost = float(cfg.eta) * in_window_t[:, None, None, None] * om[:, None, :, None]
            scale = 1.0 + boost * extra["tokens"][:, None, None, :]
            edit = edit._replace(prob_scale=scale, renormalize=bool(cfg.reweight_renormalize))
        return edit

    return control


def concentration(
    maps: dict[str, jax.Array], sizes: dict, extra: dict, sigma: float, latent_h: int
) -> tuple[jax.Array, list[jax.Array]]:
    """Eqs. 7-8 per sample: (energy L (b,), [per-layer (b, h, w) pathology-token maps]).

    maps: {layer: (b, heads, h*w, L)} cross-attention probabilities (after Eq. 6); sizes:
    {layer: (h, w)} as make_control recorded them; sigma: Omega's blur in latent pixels."""
    tokens = extra["tokens"]
    n_tokens = jnp.maximum(jnp.sum(tokens, 1), 1.0)
    scores, shown = [], []
    for name, probs in maps.items():
        b, _, q, _ = probs.shape
        if name not in sizes:
            raise InputError(f"attention map {name!r} from a layer the control did not see")
        h, w = sizes[name]
        a = jnp.mean(probs, axis=1)  # A_k averaged over heads: (b, h*w, L)
        om = omega(extra["roi"], (h, w), sigma * h / latent_h).reshape(b, q)
        score = jnp.einsum("bql,bq->bl", a, om) / jnp.maximum(jnp.sum(a, 1), 1e-12)  # Eq. 7
        scores.append(jnp.sum(score * tokens, 1) / n_tokens)
        shown.append((jnp.einsum("bql,bl->bq", a, tokens) / n_tokens[:, None]).reshape(b, h, w))
    if not scores:
        return jnp.zeros(tokens.shape[:1]), shown
    return 1.0 - jnp.mean(jnp.stack(scores), 0), shown  # Eq. 8


def in_window(t: Any, mu: float, horizon: float, window: str = "early") -> Any:
    """Whether model times t (numpy or jax) are in Eqs. 6 / 9's window (cfg.window):
    early: t >= (1 - mu) T, the first mu of the trajectory; late: t < mu T."""
    if window == "early":
        return t >= (1.0 - mu) * horizon
    return t < mu * horizon


def step_sizes(
    grid: np.ndarray, mu: float, alpha: float, horizon: float, window: str = "early"
) -> np.ndarray:
    """Eq. 9's alpha_t for each step of a descending grid: 0 outside the window
    (in_window), inside it linear from alpha at its first step down to alpha / n at its
    last."""
    inside = in_window(np.asarray(grid), mu, horizon, window)
    n = int(inside.sum())
    out = np.zeros(len(grid), np.float32)
    out[inside] = alpha * (1.0 - np.arange(n) / max(n, 1))
    return out


def pathology_energy(
    model: MethodModel,
    cfg: ml_collections.ConfigDict,
    weights: Any,
    cond: Any,
    extra: dict[str, jax.Array],
    latent_size: tuple[int, int],
    *,
    reweight: bool | None = None,
    horizon: float | None = None,
) -> Callable[[jax.Array, jax.Array], tuple[jax.Array, list[jax.Array]]]:
    """f(z (b, H', W', C), t (b,)) -> (L_path (b,) of Eq. 8, [per-layer (b, h, w)
    pathology-token maps]) from one conditional forward with the method's attention edits
    (cond: the prepared target condition; extra as make_control's; horizon: the window's T,
    default the schedule's)."""

    def energy(z: jax.Array, t: jax.Array):
        sizes: dict = {}
        control = make_control(
            cfg, extra, t, latent_size, horizon or model.schedule.num_timesteps, record=sizes,
            reweight=reweight,
        )  # fmt: skip
        _, maps = model.apply(weights, z, t, cond, control=control, return_attention=True)
        return concentration(maps, sizes, extra, float(cfg.roi_blur), latent_size[0])

    return energy


def attention_heights(
    model: MethodModel, weights: Any, z: jax.Array, t: jax.Array, cond: Any
) -> dict[str, set[int]]:
    """{"self": heights, "cross": heights}: the feature-map heights of the network's 2-D
    attention layers, found by tracing one forward (its result is unused, so XLA drops it)."""
    seen: dict[str, set[int]] = {"self": set(), "cross": set()}

    def probe(name: str, kind: str, spatial: tuple) -> None:
        if len(spatial) == 2 and kind in seen:
            seen[kind].add(int(spatial[0]))

    model.apply(weights, z, t, cond, control=probe)
    return seen


def check_heights(cfg: ml_collections.ConfigDict, heights: dict[str, set[int]], path: bool) -> None:
    """InputError when a switched-on mechanism would find no layer at its resolutions (it
    would silently do nothing); path: Eq. 6 or 9 acts at some step."""
    wanted = (("gate_resolutions", "self", bool(cfg.gate)), ("path_resolutions", "cross", path))
    for field, kind, needed in wanted:
        if needed and not heights[kind] & {int(r) for r in cfg[field]}:
            raise InputError(
                f"{FIELD}.{field} {tuple(cfg[field])} matches none of this model's "
                f"{kind}-attention heights {sorted(heights[kind])} (latent feature maps)"
            )


# --- the method -----------------------------------------------------------------------------


PROMPT_FIELDS = ("target_prompt_ids", "target_prompt_mask")


def prepare(batch: dict, cfg: ml_collections.ConfigDict) -> dict:
    """Host side: the image, the two masks and any per-row prompt arrays; masks must match
    the image and be non-empty (the ROI only where Eq. 6 or 9 uses it)."""
    for name in ("anatomy", "roi"):
        if batch.get(name) is None:
            raise InputError(f"the attention method needs batch[{name!r}] (B, H, W)")
        m = np.asarray(batch[name])
        if m.shape != np.shape(batch["image"])[:-1]:
            raise InputError(
                f"batch[{name!r}] must be (B, H, W) = {np.shape(batch['image'])[:-1]}, "
                f"got {m.shape}"
            )
        needed = cfg.gate if name == "anatomy" else (cfg.reweight or cfg.energy)
        empty = ~np.any(m.reshape(m.shape[0], -1) > 0, axis=1)
        if needed and empty.any():
            raise InputError(f"batch[{name!r}] is empty for rows {np.flatnonzero(empty).tolist()}")
    keys = ("image", "anatomy", "roi", *PROMPT_FIELDS)
    return {k: batch[k] for k in keys if batch.get(k) is not None}


def build(model: MethodModel, cfg: ml_collections.ConfigDict) -> Callable:
    """fn(weights, batch, key) -> {"counterfactual" (B, H, W, C), "factual" (the input),
    "heatmap" (B, H, W) channel mean |x - x'|, "roi" (B, H, W) Omega at image resolution
    (made at the latent grid, bilinearly upsampled), "attention" (B, H, W) the pathology
    tokens' cross-attention averaged over heads, tokens and the layers at
    cfg.path_resolutions, from one extra conditional forward on the final latent at the
    last grid timestep, bilinearly upsampled; "energy" (B,) Eq. 8 of that forward}."""
    if model.tokenizer is None:
        raise InputError("the attention method needs a prompt-conditioned model with its tokenizer")
    if model.schedule.is_flow:
        raise InputError("the attention method samples with DDIM: it needs a discrete schedule")
    check_config(cfg)
    target = known_prompt_tokens(model.tokenizer, [cfg.target_prompt], f"{FIELD}.target_prompt")
    vocab = {w: i for i, w in enumerate(model.tokenizer.vocab)}
    path_ids = [vocab[w] for w in cfg.pathology_words if w in vocab]
    if (cfg.reweight or cfg.energy) and not pathology_token_mask(
        target["prompt_ids"], target["prompt_mask"], path_ids
    ).any():
        raise InputError(
            f"{FIELD}.target_prompt {cfg.target_prompt!r} has none of pathology_words "
            f"{tuple(cfg.pathology_words)} (needed by reweight / energy)"
        )
    schedule, steps, strength = model.schedule, int(cfg.num_steps), float(cfg.strength)
    big_t = schedule.num_timesteps
    # The window is measured on the trajectory that runs: from T at strength 1 (Eq. 2, the
    # paper), from strength * T when the edit starts lower (SDEdit), so "early" is still
    # the first mu of the steps that run.
    horizon = big_t * strength
    grid = respace(big_t, steps, str(cfg.spacing))[steps - strength_steps(steps, strength) :]
    if len(grid) == 0:
        raise InputError(f"{FIELD}.strength {strength} runs no step of {steps}")
    window = cfg.get("window", "early")
    alphas = step_sizes(grid, float(cfg.mu), float(cfg.alpha), horizon, window)
    # No grid step inside the window: Eqs. 6 and 9 never act, so they are left out of the
    # compiled loop altogether (the UNet keeps its fused attention).
    reweight = bool(cfg.reweight) and bool(in_window(grid, float(cfg.mu), horizon, window).any())
    correct = bool(cfg.energy) and bool(alphas.any())
    controlled = bool(cfg.gate) or reweight
    sigma = float(cfg.roi_blur)

    def fn(weights: Any, batch: dict, key: jax.Array) -> dict[str, jax.Array]:
        x = jnp.asarray(batch["image"], jnp.float32)
        rows, hw = x.shape[0], x.shape[1:3]
        masks = {}
        for name in ("anatomy", "roi"):
            m = jnp.asarray(batch[name], jnp.float32)
            if m.shape != (rows, *hw):
                raise InputError(f"batch[{name!r}] must be {(rows, *hw)}, got {m.shape}")
            masks[name] = m
        if "target_prompt_ids" in batch:
            raw = {
                "prompt_ids": batch["target_prompt_ids"],
                "prompt_mask": batch["target_prompt_mask"],
            }
        else:
            raw = {k: jnp.broadcast_to(v, (rows, *v.shape[1:])) for k, v in target.items()}
        ids, ids_mask = jnp.asarray(raw["prompt_ids"]), jnp.asarray(raw["prompt_mask"])
        tokens = pathology_token_mask(ids, ids_mask, path_ids)
        if model.token_positions is not None:  # (B, L) prompt tokens -> (B, L') context
            tokens = model.token_positions(ids, ids_mask, tokens)
        target_cond, null_cond = model.conditions(weights, raw)
        context = target_cond.get("context") if isinstance(target_cond, dict) else None
        if context is not None and context.shape[1] != tokens.shape[1]:
            raise InputError(
                f"the model's context has {context.shape[1]} positions but the prompt "
                f"{tokens.shape[1]} tokens: a text tower re-tokenises, so pathology token "
                "positions are unknown (set MethodModel.token_positions, e.g. to "
                "jaxcf.text.tower.Retokenizer.spread)"
            )
        z = model.encode(weights, x)
        latent_hw = z.shape[1:3]
        heights = attention_heights(model, weights, z, jnp.full((rows,), int(grid[0])), target_cond)
        check_heights(cfg, heights, reweight or correct)
        extra = {**masks, "tokens": tokens}
        null_extra = {**masks, "tokens": jnp.zeros_like(tokens)}  # no reweighting on null rows
        cond = {**target_cond, _EXTRA: extra}
        null = {**null_cond, _EXTRA: null_extra}

        def model_fn(x_t, t, c):
            c = dict(c)
            ex = c.pop(_EXTRA)
            if not controlled:
                return model.apply(weights, x_t, t, c)
            control = make_control(cfg, ex, t, latent_hw, horizon, reweight=reweight)
            return model.apply(weights, x_t, t, c, control=control)

        maps_of = pathology_energy(
            model, cfg, weights, target_cond, extra, latent_hw, reweight=reweight, horizon=horizon
        )

        def hook(z_t, t, _key):
            alpha = jnp.sum(jnp.where(jnp.asarray(grid) == t[0], jnp.asarray(alphas), 0.0))

            def step(z_t):
                energy = lambda v: jnp.sum(maps_of(v, t)[0])
                energy = jax.checkpoint(energy) if cfg.remat else energy
                return z_t - alpha * jax.grad(energy)(z_t)  # Eq. 9

            return jax.lax.cond(alpha > 0, step, lambda v: v, z_t)

        # Eq. 2: forward-noise Enc(x) to the grid's first level.
        noise = jax.random.normal(jax.random.fold_in(key, 0), z.shape, jnp.float32)
        z_start = process.q_sample(schedule, z, jnp.full((rows,), int(grid[0])), noise)
        guided = classifier_free_guidance(
            model_fn,
            float(cfg.guidance_scale),
            null,
            guided_channels=prediction_channels(schedule, z.shape[-1]),
        )
        z0 = ddim_sample(
            guided,
            schedule,
            z_start,
            key=jax.random.fold_in(key, 1),
            num_steps=steps,
            cond=cond,
            spacing=str(cfg.spacing),
            strength=strength,
            x0_transform=model.x0_transform,
            hooks=StepHooks(before=hook) if correct else None,
        )
        x_cf = model.decode(weights, z0)
        energy, shown = maps_of(z0, jnp.full((rows,), int(grid[-1])))
        up = lambda a: jax.image.resize(a, (rows, *hw), "linear")
        attn = jnp.mean(jnp.stack([up(a) for a in shown]), 0) if shown else jnp.zeros((rows, *hw))
        roi = up(omega(masks["roi"], latent_hw, sigma))
        return {
            "counterfactual": x_cf,
            "factual": x,
            "heatmap": difference_map(x, x_cf),
            "roi": roi,
            "attention": attn,
            "energy": energy,
        }

    return fn
