"""Sliding-window inference over whole volumes (paper 002's segmenters), as one jitted function.

A segmenter trained on patches of ``roi_size`` is run over a whole image by tiling it with
overlapping windows, predicting each window, and blending the overlapping predictions with an
importance weight per window voxel. Conventions follow MONAI's
``monai.inferers.sliding_window_inference`` (with ``overlap=0.25, mode="gaussian",
sigma_scale=0.125``, the usual nnU-Net/MONAI setting), so that numbers match models evaluated
with it:

* **Window positions.** Per spatial axis the step is ``int(roi * (1 - overlap))`` (at least 1;
  a window as large as the axis gives one window). Windows start at ``0, step, 2 step, ...`` up
  to the first one that reaches the end of the axis; that last one is shifted back so it ends
  exactly at the end. All combinations over axes, the last axis varying fastest
  (:func:`window_starts`).
* **Weights.** ``"constant"``: 1 everywhere. ``"gaussian"``: the separable product over axes of
  ``exp(-x^2 / (2 sigma^2))`` at offsets ``x = i - (roi - 1) / 2`` with ``sigma = sigma_scale
  * roi``, unnormalised (1 at the centre); then, as MONAI does, values below
  ``max(min(map), 1e-3)`` are raised to it, so no voxel gets a vanishing weight
  (:func:`importance_map`). With ``sigma_scale=0.125`` a window's corner is ``exp(-8)`` per axis
  before this clamp.
* **Blending.** ``out = sum_w pred_w * map / sum_w map`` over the windows covering each voxel.
* **Images smaller than the window.** An axis shorter than ``roi`` is padded to ``roi`` (``d =
  roi - size``: ``d // 2`` before, ``d - d // 2`` after; ``padding_mode`` one of
  ``"constant"`` (with ``cval``), ``"reflect"``, ``"replicate"``, ``"circular"``, as in
  ``torch.nn.functional.pad``) and the prediction is cropped back.

Arrays are channels-last: image ``(B, *spatial, C)`` with two or three spatial axes, predictions
``(N, *roi, K)``; the result is ``(B, *spatial, K)`` float32. The predictor must return windows
of the same spatial size as its input (MONAI's resampled multi-resolution outputs are not
supported).

Compilation and memory. Window positions depend only on static shapes and are computed in
numpy; the whole run is one ``jax.jit`` program: a ``lax.scan`` over groups of
``sw_batch_size`` windows (windows of all batch items are pooled, batch-major, the last group
padded with masked-out repeats), each group cut out with ``lax.dynamic_slice``, predicted, weighted
and added into the accumulator with ``lax.dynamic_update_slice``. It compiles once per
(predictor, image shape and dtype, params structure, ``roi_size``, ``overlap``,
``sw_batch_size``, ``mode``, ``sigma_scale``, ``padding_mode``); pass the same predictor object
(a module-level function or a bound ``apply``, not a fresh lambda per call) to reuse the
compiled program. ``params`` is a traced argument, never baked into the program as a constant.
Device memory beyond the input and the parameters: the accumulator ``(B, *spatial', K)`` float32
plus the weight sum ``spatial'`` float32 (``spatial'`` the padded size, ``max(size, roi)`` per
axis), the padded image when padding is needed, and one group of windows ``(sw_batch_size,
*roi, C)`` with its predictions ``(sw_batch_size, *roi, K)`` and the predictor's activations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcf.errors import InputError

Array = jax.Array
Predictor = Callable[[Any, Array], Array]

MODES = ("gaussian", "constant")
# torch.nn.functional.pad mode -> numpy/jnp.pad mode
PADDING_MODES = {
    "constant": "constant",
    "reflect": "reflect",
    "replicate": "edge",
    "circular": "wrap",
}

# MONAI's floor for the importance map (compute_importance_map: max(min(map), 1e-3)).
_MIN_WEIGHT = 1e-3

# ---------------------------------------------------------------- static geometry


def _per_axis(value: Any, nd: int, name: str) -> tuple:
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return (value,) * nd
    try:
        values = tuple(value)
    except TypeError:
        raise InputError(f"{name}: expected a number or {nd} numbers, got {value!r}") from None
    if len(values) != nd:
        raise InputError(
            f"{name}: expected {nd} values (one per spatial axis), got {len(values)}: {value!r}"
        )
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise InputError(f"{name}: expected numbers, got {value!r}")
    return values


def _roi(roi_size: Any, nd: int) -> tuple[int, ...]:
    roi = _per_axis(roi_size, nd, "roi_size")
    if any(float(r) != int(r) or int(r) <= 0 for r in roi):
        raise InputError(f"roi_size: expected positive integers, got {roi_size!r}")
    return tuple(int(r) for r in roi)


def _overlap(overlap: Any, nd: int) -> tuple[float, ...]:
    values = tuple(float(o) for o in _per_axis(overlap, nd, "overlap"))
    if any(not 0.0 <= o < 1.0 for o in values):
        raise InputError(f"overlap: expected values in [0, 1), got {overlap!r}")
    return values


def _sigma(sigma_scale: Any, nd: int) -> tuple[float, ...]:
    values = tuple(float(s) for s in _per_axis(sigma_scale, nd, "sigma_scale"))
    if any(not (math.isfinite(s) and s > 0) for s in values):
        raise InputError(f"sigma_scale: expected positive finite values, got {sigma_scale!r}")
    return values


def window_starts(
    image_size: Sequence[int], roi_size: Sequence[int], overlap: float | Sequence[float] = 0.25
) -> np.ndarray:
    """Start corners ``(W, nd)`` (int) of the windows tiling an image of ``image_size``.

    Every ``image_size`` axis must be ``>= roi_size`` (pad first; :func:`sliding_window_inference`
    does). Same positions and order as MONAI's ``dense_patch_slices`` with the scan interval of
    ``_get_scan_interval``: step ``int(roi * (1 - overlap))`` (at least 1; ``roi`` when the window
    spans the axis), the last window shifted back to end at the axis end, last axis fastest.
    """
    nd = len(image_size)
    roi = _roi(roi_size, nd)
    ov = _overlap(overlap, nd)
    if any(s < r for s, r in zip(image_size, roi, strict=True)):
        raise InputError(
            f"window_starts: image_size {tuple(image_size)} smaller than roi_size {roi}; pad first"
        )
    axes = []
    for size, r, o in zip(image_size, roi, ov, strict=True):
        step = r if r == size else max(int(r * (1 - o)), 1)
        # the first window index whose end reaches the axis end, then shift it back
        count = next(i for i in range(size) if i * step + r >= size) + 1
        axes.append([min(i * step, size - r) for i in range(count)])
    grid = np.meshgrid(*axes, indexing="ij")
    return np.stack([g.reshape(-1) for g in grid], axis=-1).astype(np.int64)


def importance_map(
    roi_size: Sequence[int], mode: str = "gaussian", sigma_scale: float | Sequence[float] = 0.125
) -> np.ndarray:
    """Per-voxel blending weight of a window, shape ``roi_size``, float32 (see the module notes).

    ``"gaussian"``: separable ``exp(-x^2 / (2 (sigma_scale * roi)^2))`` at ``x = i - (roi-1)/2``,
    computed in float32 like MONAI's ``compute_importance_map``, then clamped from below at
    ``max(min, 1e-3)``. ``"constant"``: ones.
    """
    nd = len(roi_size)
    roi = _roi(roi_size, nd)
    if mode not in MODES:
        raise InputError(f"mode: expected one of {MODES}, got {mode!r}")
    if mode == "constant":
        return np.ones(roi, np.float32)
    sig = _sigma(sigma_scale, nd)
    weights = None
    for axis, (r, s) in enumerate(zip(roi, sig, strict=True)):
        x = np.arange(r, dtype=np.float32) - np.float32((r - 1) / 2.0)
        g = np.exp(x**2 / np.float32(-2.0 * (r * s) ** 2)).astype(np.float32)
        g = g.reshape((1,) * axis + (r,))
        weights = g if weights is None else weights[..., None] * g
    floor = max(float(weights.min()), _MIN_WEIGHT)
    return np.maximum(weights, np.float32(floor)).astype(np.float32)


# ---------------------------------------------------------------- the jitted program


def _pad_widths(spatial: Sequence[int], roi: Sequence[int]) -> list[tuple[int, int]]:
    widths = []
    for size, r in zip(spatial, roi, strict=True):
        d = max(r - size, 0)
        widths.append((d // 2, d - d // 2))
    return widths


@partial(
    jax.jit,
    static_argnames=(
        "predictor",
        "roi",
        "overlap",
        "sw_batch_size",
        "mode",
        "sigma_scale",
        "padding_mode",
    ),
)
def _sliding_window(
    params: Any,
    image: Array,
    cval: Array,
    *,
    predictor: Predictor,
    roi: tuple[int, ...],
    overlap: tuple[float, ...],
    sw_batch_size: int,
    mode: str,
    sigma_scale: tuple[float, ...],
    padding_mode: str,
) -> Array:
    nd = image.ndim - 2
    batch, *spatial, channels = image.shape
    widths = _pad_widths(spatial, roi)
    if any(w != (0, 0) for w in widths):
        full = [(0, 0), *widths, (0, 0)]
        if padding_mode == "constant":
            image = jnp.pad(image, full, constant_values=cval.astype(image.dtype))
        else:
            image = jnp.pad(image, full, mode=PADDING_MODES[padding_mode])
    padded = image.shape[1:-1]

    starts = window_starts(padded, roi, overlap)  # (W, nd), static
    n_win = len(starts)
    total = batch * n_win
    n = min(sw_batch_size, total)
    groups = -(-total // n)
    idx = np.arange(groups * n)
    valid = idx < total
    idx = np.where(valid, idx, 0)  # the padded tail repeats window 0, masked out below
    item = (idx // n_win).reshape(groups, n).astype(np.int32)
    corner = starts[idx % n_win].reshape(groups, n, nd).astype(np.int32)
    valid = valid.reshape(groups, n)

    out_shape = jax.eval_shape(
        predictor, params, jax.ShapeDtypeStruct((n, *roi, channels), image.dtype)
    )
    if not hasattr(out_shape, "shape") or (
        out_shape.ndim != nd + 2 or tuple(out_shape.shape[:-1]) != (n, *roi)
    ):
        got = getattr(out_shape, "shape", out_shape)
        raise InputError(
            f"predictor: expected one array of shape (N, *roi, K) = "
            f"({n}, {', '.join(map(str, roi))}, K) for windows of shape "
            f"{(n, *roi, channels)}, got {got}"
        )
    k = out_shape.shape[-1]
    weight = jnp.asarray(importance_map(roi, mode, sigma_scale))  # (*roi,) float32
    zero = jnp.zeros((), jnp.int32)

    def cut(b: Array, c: Array) -> Array:
        begin = (b, *(c[d] for d in range(nd)), zero)
        return lax.dynamic_slice(image, begin, (1, *roi, channels))[0]

    def step(acc: Array, xs: tuple[Array, Array, Array]) -> tuple[Array, None]:
        b, c, ok = xs
        windows = jax.vmap(cut)(b, c)
        pred = predictor(params, windows).astype(jnp.float32) * weight[None, ..., None]
        pred = jnp.where(ok.reshape((n,) + (1,) * (nd + 1)), pred, 0.0)

        def add(i: Array, acc: Array) -> Array:
            begin = (b[i], *(c[i, d] for d in range(nd)), zero)
            cur = lax.dynamic_slice(acc, begin, (1, *roi, k))
            return lax.dynamic_update_slice(acc, cur + pred[i][None], begin)

        return lax.fori_loop(0, n, add, acc), None

    acc = jnp.zeros((batch, *padded, k), jnp.float32)
    acc, _ = lax.scan(step, acc, (jnp.asarray(item), jnp.asarray(corner), jnp.asarray(valid)))

    # total weight per voxel over the windows of one batch item (the same for every item)
    win_starts = jnp.asarray(starts.astype(np.int32))

    def add_weight(i: Array, total_w: Array) -> Array:
        begin = tuple(win_starts[i, d] for d in range(nd))
        cur = lax.dynamic_slice(total_w, begin, roi)
        return lax.dynamic_update_slice(total_w, cur + weight, begin)

    total_w = lax.fori_loop(0, n_win, add_weight, jnp.zeros(padded, jnp.float32))
    out = acc / total_w[None, ..., None]
    crop = (slice(None), *(slice(lo, lo + s) for (lo, _), s in zip(widths, spatial, strict=True)))
    return out[crop]


def sliding_window_inference(
    predictor: Predictor,
    params: Any,
    image: Array,
    roi_size: int | Sequence[int],
    *,
    overlap: float | Sequence[float] = 0.25,
    sw_batch_size: int = 4,
    mode: str = "gaussian",
    sigma_scale: float | Sequence[float] = 0.125,
    padding_mode: str = "constant",
    cval: float = 0.0,
) -> Array:
    """Predict a whole image window by window and blend: ``(B, *spatial, C) -> (B, *spatial, K)``.

    Args:
        predictor: ``predictor(params, windows) -> (N, *roi, K)``, a pure function of the params
            and a batch of windows ``(N, *roi, C)`` (``N = sw_batch_size``, or the total window
            count when smaller). It is a static argument: keep the same object across calls.
        params: the predictor's parameters (any pytree), passed through ``jit`` as an argument.
        image: channels-last ``(B, H, W, C)`` or ``(B, H, W, D, C)``; windows keep its dtype.
        roi_size: window size, one int per spatial axis (or one int for all).
        overlap: fraction of a window shared with its neighbour, in ``[0, 1)`` (per axis or one).
        sw_batch_size: windows per predictor call (windows of all batch items are pooled).
        mode: ``"gaussian"`` or ``"constant"`` blending weights.
        sigma_scale: Gaussian sigma as a fraction of ``roi_size`` (per axis or one).
        padding_mode: how axes shorter than ``roi_size`` are padded: ``"constant"`` (with
            ``cval``), ``"reflect"``, ``"replicate"`` or ``"circular"``.
        cval: the fill value for ``padding_mode="constant"``.

    Returns:
        ``(B, *spatial, K)`` float32, the blended prediction (same spatial size as ``image``).

    Raises:
        InputError: bad image rank, ``roi_size`` length or values, ``overlap``, ``sw_batch_size``,
            ``mode``, ``sigma_scale``, ``padding_mode``, or a predictor output of the wrong shape.
    """
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) not in (4, 5):
        raise InputError(
            "image: expected channels-last (B, H, W, C) or (B, H, W, D, C), got shape "
            f"{shape if shape else type(image).__name__}"
        )
    if any(s <= 0 for s in shape):
        raise InputError(f"image: every axis must be non-empty, got shape {shape}")
    nd = len(shape) - 2
    if isinstance(roi_size, Sequence) and len(roi_size) != nd:
        raise InputError(
            f"roi_size: expected {nd} sizes for an image with {nd} spatial axes (shape {shape}), "
            f"got {tuple(roi_size)}"
        )
    roi = _roi(roi_size, nd)
    ov = _overlap(overlap, nd)
    if isinstance(sw_batch_size, bool) or not isinstance(sw_batch_size, (int, np.integer)):
        raise InputError(f"sw_batch_size: expected a positive int, got {sw_batch_size!r}")
    if sw_batch_size < 1:
        raise InputError(f"sw_batch_size: expected a positive int, got {sw_batch_size}")
    if mode not in MODES:
        raise InputError(f"mode: expected one of {MODES}, got {mode!r}")
    sig = _sigma(sigma_scale, nd)
    if padding_mode not in PADDING_MODES:
        raise InputError(
            f"padding_mode: expected one of {tuple(PADDING_MODES)}, got {padding_mode!r}"
        )
    if not callable(predictor):
        raise InputError(f"predictor: expected a callable, got {type(predictor).__name__}")
    return _sliding_window(
        params,
        jnp.asarray(image),
        jnp.asarray(cval, jnp.float32),
        predictor=predictor,
        roi=roi,
        overlap=ov,
        sw_batch_size=int(sw_batch_size),
        mode=mode,
        sigma_scale=sig,
        padding_mode=padding_mode,
    )
