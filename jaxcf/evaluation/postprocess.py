"""Factual + healthy counterfactual -> tumour mask (numpy, scipy, scikit-image).

Shen et al. (paper 000, Sec. 2, Eq. 1-2) segment a tumour as the difference between a scan
and its healthy counterfactual, binarised per modality by Otsu and fused by a weighted vote.
The steps the paper leaves out (histogram matching, the contrast constants, connected
components, hole filling) follow the authors' evaluation script (paper 000's public
repository; the script was later deleted there), as docs/methods.md summarises.

Layout is channels-last: 2-D slices ``(H, W, C)`` or 3-D volumes ``(X, Y, Z, C)``; for BraTS
``C = 4`` in the order t1, t1ce, t2, flair. Every step is n-dimensional, so volumes work
with voxel counts in place of pixel counts. Images are in jaxcf's ``[-1, 1]`` convention
(background -1) unless ``value_range`` says otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import ndimage
from skimage import exposure, filters

from jaxcf.errors import InputError

VoteRule = Literal["paper", "script"]

# Decision thresholds of the two vote rules: (threshold, inclusive).
_RULES: dict[str, tuple[float, bool]] = {"paper": (0.5, True), "script": (0.25, False)}
VOTE_RULES = tuple(_RULES)
_EPS = 1e-9  # slack for float sums of weights such as 0.1 + 0.2


def _as_finite(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise InputError(f"{name} contains NaN or inf values")
    return a


def _check_pair(x: np.ndarray, cf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, cf = _as_finite(x, "x"), _as_finite(cf, "cf")
    if x.shape != cf.shape:
        raise InputError(f"x and cf must have the same shape, got {x.shape} and {cf.shape}")
    if x.ndim < 3:
        raise InputError(f"expected channels-last (H, W, C) or (X, Y, Z, C), got shape {x.shape}")
    return x, cf


def _structure(ndim: int, connectivity: int) -> np.ndarray:
    if not 1 <= connectivity <= ndim:
        raise InputError(f"connectivity must be in [1, {ndim}], got {connectivity}")
    return ndimage.generate_binary_structure(ndim, connectivity)


def foreground_mask(x: np.ndarray, background: float = -1.0) -> np.ndarray:
    """Brain mask of a channels-last image: voxels where any channel differs from background.

    x: (..., C). Returns bool (...). Use ``background=0.0`` for images in [0, 1].
    """
    x = _as_finite(x, "x")
    return np.any(x != background, axis=-1)


def match_histograms(cf: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Match the histogram of each channel of ``cf`` to the same channel of ``ref``.

    cf, ref: (..., C) float. mask: optional bool (...) foreground; when given only voxels
    inside it are matched (and used as reference) so the large constant background does not
    dominate the quantile mapping, and voxels outside keep their ``cf`` values.
    Returns float64 (..., C).
    """
    # Script step 1: diffusion samples drift in global contrast; matching the counterfactual
    # to the factual removes that drift so the difference shows local (tumour) changes only.
    # Caveat: the factual histogram contains the tumour's tail, so for large tumours the
    # brightest healthy counterfactual voxels are pushed up to tumour levels; those scattered
    # false positives are what the largest-component steps later remove.
    cf, ref = _as_finite(cf, "cf"), _as_finite(ref, "ref")
    if cf.shape != ref.shape:
        raise InputError(f"cf and ref must have the same shape, got {cf.shape} and {ref.shape}")
    if mask is None:
        return exposure.match_histograms(
            cf.astype(np.float64), ref.astype(np.float64), channel_axis=-1
        )
    mask = np.asarray(mask, bool)
    if mask.shape != cf.shape[:-1]:
        raise InputError(f"mask shape {mask.shape} does not match image shape {cf.shape[:-1]}")
    out = cf.astype(np.float64, copy=True)
    if not mask.any():
        return out
    for c in range(cf.shape[-1]):
        out[..., c][mask] = exposure.match_histograms(
            cf[..., c][mask].astype(np.float64), ref[..., c][mask].astype(np.float64)
        )
    return out


def difference_map(
    x: np.ndarray,
    cf: np.ndarray,
    *,
    scale: float = 255.0,
    alpha: float = 4.0,
    beta: float = -2.0,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> np.ndarray:
    """Contrast-stretched per-modality difference, as 8-bit grey levels.

    x, cf: (..., C) in ``value_range``. Computes, per voxel and channel, paper 000's
    ``D = |x - cf|`` in 8-bit units of an image rescaled to [0, 1],
    ``d = scale * |x - cf| / (hi - lo)``, and returns
    ``uint8(clip(rint(|alpha * d + beta|), 0, 255))``, which is OpenCV's
    ``convertScaleAbs(d, alpha, beta)`` (round half to even, saturate). Symmetric in the
    sign of ``x - cf``. With the defaults a zero difference maps to 2 and any
    |x - cf| >= 1/4 of the intensity range saturates at 255. Returns uint8 (..., C).
    """
    # Paper 000 Eq. 1, D = |I_f - I_c|, then its "contrast and brightness adjustment": the
    # script scaled to 8 bits (x255) and applied convertScaleAbs(alpha=4, beta=-2). The
    # absolute value comes first, so hyperintense tumours (FLAIR, T2) and hypointense ones
    # (T1) of the same size score the same (|.| after the affine map turned x - cf = +2/255
    # of a [-1, 1] image into 2 but -2/255 into 6).
    x, cf = _check_pair(x, cf)
    lo, hi = value_range
    if not hi > lo:
        raise InputError(f"value_range must be (lo, hi) with hi > lo, got {value_range}")
    d = np.abs(x.astype(np.float64) - cf.astype(np.float64)) * (scale / (hi - lo))
    return np.clip(np.rint(np.abs(alpha * d + beta)), 0, 255).astype(np.uint8)


def otsu_mask(diff: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Binarise each channel by its own Otsu threshold: ``diff[..., c] > t_c``.

    diff: (..., C). mask: optional bool (...); if given the threshold is computed from the
    voxels inside it only and the result is False outside. A channel whose (masked) values
    are constant has no two classes to separate and gives an empty mask. Returns bool (..., C).
    """
    # Paper 000 Sec. 2: Otsu (skimage.filters) per modality, before the vote.
    diff = _as_finite(diff, "diff")
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != diff.shape[:-1]:
            raise InputError(f"mask shape {mask.shape} does not match {diff.shape[:-1]}")
    out = np.zeros(diff.shape, bool)
    for c in range(diff.shape[-1]):
        channel = diff[..., c]
        values = channel[mask] if mask is not None else channel.ravel()
        if values.size == 0 or values.min() == values.max():
            continue
        out[..., c] = channel > filters.threshold_otsu(values)
        if mask is not None:
            out[..., c] &= mask
    return out


def largest_component(mask: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """Keep only the largest connected component of a bool mask (any dimension).

    connectivity: 1 = face neighbours (4 in 2-D, 6 in 3-D, scipy's default) up to
    ``mask.ndim`` = all neighbours. Ties go to the lowest label (first in raster order).
    An empty mask stays empty. Returns bool, same shape.
    """
    mask = np.asarray(mask, bool)
    labels, n = ndimage.label(mask, structure=_structure(mask.ndim, connectivity))
    if n <= 1:
        return mask.copy()
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def fill_holes(mask: np.ndarray, max_hole: int = 64, connectivity: int = 1) -> np.ndarray:
    """Fill every background component with fewer than ``max_hole`` voxels.

    A hole of exactly ``max_hole`` voxels is kept. As in skimage's ``remove_small_holes``,
    any small background component counts, including one touching the border. Returns bool,
    same shape.
    """
    # Step "remove holes < 64 px" of paper 000's evaluation script; implemented with scipy
    # so the strict "<" does not depend on skimage's area_threshold -> max_size API change.
    mask = np.asarray(mask, bool)
    labels, n = ndimage.label(~mask, structure=_structure(mask.ndim, connectivity))
    if n == 0:
        return mask.copy()
    small = np.bincount(labels.ravel()) < max_hole
    small[0] = False  # label 0 is the foreground itself
    return mask | small[labels]


def vote(
    masks: np.ndarray | Sequence[np.ndarray],
    weights: float | Sequence[float] = 0.25,
    *,
    threshold: float = 0.5,
    inclusive: bool = True,
    rule: VoteRule | None = None,
) -> np.ndarray:
    """Weighted per-modality vote ``S = sum_i w_i m_i`` (paper 000 Eq. 2).

    masks: (..., C) bool or soft masks in [0, 1] (channels-last), or a sequence of C arrays
    (...). weights: one weight for all channels or C weights. A voxel is in when
    ``S >= threshold`` (``inclusive``) or ``S > threshold`` (not inclusive); ``rule``
    overrides both: ``"paper"`` is ``S >= 0.5`` (the paper's text), ``"script"`` is
    ``S > 0.25`` (the authors' evaluation script). Comparisons allow 1e-9 of float slack.

    Truth table for 4 binary masks with weights 0.25 (S is a multiple of 0.25):
    0 or 1 modalities agree -> out, 2, 3 or 4 -> in, under *both* rules. The rules differ
    only for unequal weights or soft masks, e.g. weights (0.4, 0.2, 0.2, 0.2) with only the
    first modality on gives S = 0.4: in under "script", out under "paper".
    Returns bool (...).
    """
    if rule is not None:
        if rule not in _RULES:
            raise InputError(f"rule must be one of {sorted(_RULES)}, got {rule!r}")
        threshold, inclusive = _RULES[rule]
    m = masks if isinstance(masks, np.ndarray) else np.stack([np.asarray(a) for a in masks], -1)
    m = _as_finite(m, "masks").astype(np.float64)
    w = np.asarray(weights, np.float64)
    if w.ndim > 1 or (w.ndim == 1 and w.shape[0] != m.shape[-1]):
        raise InputError(f"weights must be a scalar or {m.shape[-1]} values, got shape {w.shape}")
    score = m @ np.broadcast_to(w, m.shape[-1:])
    return score >= threshold - _EPS if inclusive else score > threshold + _EPS


def segment_from_counterfactual(
    x: np.ndarray,
    cf: np.ndarray,
    *,
    brain_mask: np.ndarray | None = None,
    vote_rule: VoteRule = "paper",
    weights: float | Sequence[float] = 0.25,
    histogram_match: bool = True,
    min_hole: int = 64,
    value_range: tuple[float, float] = (-1.0, 1.0),
    connectivity: int = 1,
) -> np.ndarray:
    """Tumour mask from a factual image and its healthy counterfactual (paper 000 pipeline).

    x, cf: (H, W, C) or (X, Y, Z, C) in ``value_range``. Per modality: match the histogram of
    cf to x, contrast-stretched difference (``difference_map``), Otsu, largest connected
    component; then the weighted vote (``vote_rule``); fill holes of fewer than ``min_hole``
    voxels; largest component again. brain_mask: optional bool (H, W) / (X, Y, Z) (e.g.
    ``foreground_mask(x)``); when given, matching and Otsu use brain voxels only and the
    result is False outside. Returns bool (H, W) / (X, Y, Z).
    """
    x, cf = _check_pair(x, cf)
    if brain_mask is not None:
        brain_mask = np.asarray(brain_mask, bool)
        if brain_mask.shape != x.shape[:-1]:
            raise InputError(f"brain_mask shape {brain_mask.shape} != image {x.shape[:-1]}")
    if histogram_match:
        cf = match_histograms(cf, x, brain_mask)
    per_modality = otsu_mask(difference_map(x, cf, value_range=value_range), brain_mask)
    # Per-modality largest component (script): a modality votes for one blob, so scattered
    # noise in one channel cannot combine with another channel's noise in the vote.
    for c in range(per_modality.shape[-1]):
        per_modality[..., c] = largest_component(per_modality[..., c], connectivity)
    fused = vote(per_modality, weights, rule=vote_rule)
    fused = largest_component(fill_holes(fused, min_hole, connectivity), connectivity)
    if brain_mask is not None:
        fused &= brain_mask
    return fused


def heatmap(x: np.ndarray, cf: np.ndarray) -> np.ndarray:
    """Anomaly heatmap ``mean_c |x - cf|`` (Diff-SCM / paper 001 Sec. 3.1).

    x, cf: (..., H, W, C) (a batch axis or a volume is fine). Returns float32 (..., H, W).
    """
    x, cf = np.asarray(x), np.asarray(cf)
    if x.shape != cf.shape:
        raise InputError(f"x and cf must have the same shape, got {x.shape} and {cf.shape}")
    return np.mean(np.abs(x.astype(np.float32) - cf.astype(np.float32)), axis=-1)
