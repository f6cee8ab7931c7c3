"""Mask prompts for the promptable method: where a counterfactual may change the image.

    region = prompt_regions("box", images, seg, margin=3)    # host side, numpy (ORACLE)
    region = heatmap_box(heatmap, brain, margin=3, min_peak=0.1)  # jit-able, no ground truth
    region = random_region(key, x.shape, brain_mask)         # jit-able, for regeneration

Convention (as jaxcf.counterfactual.promptable): 1 = regenerate, 0 = keep.

"box" and "seg" are drawn from the ground-truth tumour: an oracle prompt (it also tells
which slices are healthy, since their box is empty). "heatmap_box" is the box a user
would draw around the hottest blob of a first, unprompted counterfactual's heatmap (none
where the heat peaks below min_peak), and "brain" prompts the whole brain: neither sees
the ground truth.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from jaxcf.errors import InputError
from jaxcf.evaluation.postprocess import foreground_mask

REGIONS = ("box", "brain", "seg", "file", "heatmap_box")


def brain_masks(images: np.ndarray) -> np.ndarray:
    """(B, S, S, C) slices in [-1, 1] (background -1) -> (B, S, S) bool brain masks."""
    return foreground_mask(images, background=-1.0)


def box_regions(seg: np.ndarray, margin: int) -> np.ndarray:
    """(B, S, S) tumour masks -> (B, S, S) bool boxes: each slice's tumour bounding box grown
    by `margin` pixels: the box prompt a user would draw (paper 000's mask prompt). A slice
    without tumour gets an empty box."""
    out = np.zeros(seg.shape, bool)
    for i, s in enumerate(seg):
        rows, cols = np.flatnonzero(s.any(1)), np.flatnonzero(s.any(0))
        if rows.size:
            r0, r1 = max(rows[0] - margin, 0), rows[-1] + margin + 1
            c0, c1 = max(cols[0] - margin, 0), cols[-1] + margin + 1
            out[i, r0:r1, c0:c1] = True
    return out


def prompt_regions(
    kind: str,
    images: np.ndarray,
    seg: np.ndarray | None = None,
    margin: int = 3,
    given: np.ndarray | None = None,
) -> np.ndarray:
    """The region to regenerate, (B, S, S) bool, cut to the brain.

    kind: "box" (seg's bounding box + margin), "seg" (seg dilated by one pixel), "brain"
    (no prompt: the whole brain) or "file" (`given`, e.g. read with --mask). "heatmap_box"
    needs a first counterfactual pass: the method draws it on the device (heatmap_box)."""
    if kind == "heatmap_box":
        raise InputError(
            "counterfactual.promptable.region='heatmap_box' is drawn by the method from its "
            "first pass's heatmap (prompts.heatmap_box), not from the batch"
        )
    brain = brain_masks(images)
    if kind == "brain":
        region = brain
    elif kind in ("box", "seg"):
        if seg is None:
            raise InputError(
                f"counterfactual.promptable.region={kind!r} needs a tumour segmentation; this "
                "case has none: use --mask=FILE (region=file) or region=brain"
            )
        tumour = np.asarray(seg) > 0
        region = (
            box_regions(tumour, margin)
            if kind == "box"
            else ndimage.binary_dilation(tumour, iterations=1, structure=np.ones((1, 3, 3), bool))
        )
    elif kind == "file":
        if given is None:
            raise InputError("counterfactual.promptable.region='file' needs --mask=FILE")
        region = np.asarray(given, bool)
    else:
        raise InputError(f"counterfactual.promptable.region must be one of {REGIONS}, got {kind!r}")
    return region & brain


def _dilate4(mask: jax.Array) -> jax.Array:
    """(B, H, W) bool -> the mask grown by one pixel to its 4-neighbours."""
    padded = jnp.pad(mask, ((0, 0), (1, 1), (1, 1)))
    return (
        mask
        | padded[:, :-2, 1:-1]
        | padded[:, 2:, 1:-1]
        | padded[:, 1:-1, :-2]
        | padded[:, 1:-1, 2:]
    )


def smoothed_heat(heatmap: jax.Array, brain: jax.Array) -> jax.Array:
    """(B, H, W) heatmaps and bool brain masks -> (B, H, W) float32: the heat inside the
    brain after a 3 x 3 mean (so one noisy pixel is no blob), 0 outside. Jit-able."""
    brain = jnp.asarray(brain, bool)
    heat = jnp.where(brain, jnp.asarray(heatmap, jnp.float32), 0.0)
    window = (1, 3, 3)
    heat = jax.lax.reduce_window(heat, 0.0, jax.lax.add, window, (1, 1, 1), "SAME") / 9.0
    return jnp.where(brain, heat, 0.0)


def peak_heat(heatmap: jax.Array, brain: jax.Array) -> jax.Array:
    """(B, H, W) heatmaps and brain masks -> (B,) each slice's peak smoothed heat: what
    heatmap_box compares with min_peak to decide whether a slice gets a box at all."""
    heat = smoothed_heat(heatmap, brain)
    return heat.reshape(heat.shape[0], -1).max(axis=1)


def peak_blob(heatmap: jax.Array, brain: jax.Array, fraction: float = 0.5) -> jax.Array:
    """The blob a reader sees in a heatmap: (B, H, W) heatmaps and bool brain masks ->
    (B, H, W) bool, the 4-connected pixels at >= `fraction` of the slice's peak of
    smoothed_heat that hold the peak. Empty where the brain's heat is all zero. Jit-able (a
    flood fill from the peak)."""
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"peak fraction must be in (0, 1], got {fraction}")
    heat = smoothed_heat(heatmap, brain)
    b, h, w = heat.shape
    flat = heat.reshape(b, -1)
    peak = flat.max(axis=1)
    hot = (heat >= fraction * peak[:, None, None]) & (heat > 0)
    seed = (jnp.arange(h * w)[None] == jnp.argmax(flat, axis=1)[:, None]).reshape(b, h, w)

    def grow(state: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        blob, _ = state
        grown = _dilate4(blob) & hot
        return grown, jnp.any(grown != blob)

    blob, _ = jax.lax.while_loop(lambda s: s[1], grow, (seed & hot, jnp.array(True)))
    return blob


def bounding_boxes(mask: jax.Array, margin: int) -> jax.Array:
    """(B, H, W) bool -> (B, H, W) bool: each slice's bounding box of `mask` grown by
    `margin` pixels (clipped to the image), empty where the mask is; box_regions on the
    device."""
    _, h, w = mask.shape

    def extent(hit: jax.Array, n: int) -> jax.Array:  # (B, n) bool -> (B, n) in-box
        index = jnp.arange(n)
        first = jnp.min(jnp.where(hit, index, n), axis=1, keepdims=True)
        last = jnp.max(jnp.where(hit, index, -1), axis=1, keepdims=True)
        return (index >= first - margin) & (index <= last + margin) & hit.any(1, keepdims=True)

    rows, cols = extent(mask.any(axis=2), h), extent(mask.any(axis=1), w)
    return rows[:, :, None] & cols[:, None, :]


def heatmap_box(
    heatmap: jax.Array,
    brain: jax.Array,
    margin: int = 3,
    fraction: float = 0.5,
    min_peak: float = 0.0,
) -> jax.Array:
    """The NON-ORACLE box prompt: (B, H, W) heatmaps of a first, unprompted counterfactual
    and bool brain masks -> (B, H, W) bool, the bounding box (+ margin) of the hottest blob
    (peak_blob), cut to the brain: the box a user would draw around what the first pass
    highlights. It never sees the ground truth. A slice whose peak_heat is below min_peak
    gets no box (the reader sees nothing worth prompting); min_peak 0 boxes every slice
    with any heat. jaxcf.experiments.calibration chooses min_peak on a validation split."""
    brain = jnp.asarray(brain, bool)
    blob = peak_blob(heatmap, brain, fraction)
    seen = peak_heat(heatmap, brain) >= min_peak
    return bounding_boxes(blob & seen[:, None, None], margin) & brain


def random_region(
    key: jax.Array,
    shape: Sequence[int],
    brain_mask: jax.Array | None = None,
    radius_range: tuple[float, float] = (0.08, 0.2),
) -> jax.Array:
    """Random ellipse (2-D) / ellipsoid (3-D) mask prompts inside the brain, for
    "random mask -> unhealthy" (Sec. 3, Fig. 3d).

    Args:
      key: PRNG key.
      shape: the image shape (B, *S, C).
      brain_mask: (B, *S) or (B, *S, 1) brain foreground (nonzero = brain), or None for the
        whole image. The centre is drawn uniformly from brain pixels and the result is cut
        to the brain (the paper's UNet produced black regions for masks leaving the brain).
      radius_range: per-axis semi-axis lengths, as fractions of that axis' size, drawn
        uniformly and independently (equal draws give a disc).
    Returns:
      (B, *S, 1) float32 region, 1 = regenerate. Jit-able; empty only for an empty brain.
    """
    b, *spatial, _ = (int(s) for s in shape)
    lo, hi = radius_range
    if not 0.0 < lo <= hi:
        raise InputError(f"radius_range must satisfy 0 < lo <= hi, got {radius_range}")
    if brain_mask is None:
        brain = jnp.ones((b, *spatial), bool)
    else:
        brain = jnp.asarray(brain_mask)
        if brain.ndim == len(spatial) + 2:
            brain = brain[..., 0]
        brain = jnp.broadcast_to(brain != 0, (b, *spatial))
    key_centre, key_radius = jax.random.split(key)
    flat = brain.reshape(b, -1)
    # Uniform over brain pixels; a slice without brain falls back to the whole image.
    logits = jnp.where(flat | ~jnp.any(flat, axis=1, keepdims=True), 0.0, -jnp.inf)
    index = jax.random.categorical(key_centre, logits, axis=-1)  # (B,)
    centre = jnp.stack(jnp.unravel_index(index, spatial), axis=-1).astype(jnp.float32)
    sizes = jnp.asarray(spatial, jnp.float32)
    radii = jax.random.uniform(key_radius, (b, len(spatial)), minval=lo, maxval=hi) * sizes
    radii = jnp.maximum(radii, 0.5)  # always covers its centre pixel
    grid = jnp.stack(jnp.meshgrid(*(jnp.arange(s) for s in spatial), indexing="ij"), -1)
    ones = (1,) * len(spatial)
    offset = (grid[None] - centre.reshape(b, *ones, -1)) / radii.reshape(b, *ones, -1)
    inside = jnp.sum(offset**2, axis=-1) <= 1.0
    return (inside & brain)[..., None].astype(jnp.float32)
