"""Where an edit landed: the anatomical-consistency figures of paper 003's attention method
(the method exists to put the requested finding inside the ROI and change nothing else).

    scores = edit_localization(factual, counterfactual, roi, lungs)
    scores["outside_roi"]    # share of the |difference| mass outside M_ROI
    scores["outside_lungs"]  # share of it outside the lung fields
    scores["roi_hit"]        # the strongest added density (smoothed x' - x) lies in M_ROI
    scores["roi_gain"]       # mean x' - x inside M_ROI minus that in the other lung pixels

Images are one-channel radiographs (B, H, W[, 1]) in the same units (jaxcf's [-1, 1]; on a
radiograph a finding's added density is brighter, so x' - x > 0 is added opacity); masks
(B, H, W), non-zero = inside.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from jaxcf.errors import InputError

# Gaussian sigma (pixels) that smooths the signed difference before its peak is located, so
# one noisy pixel does not decide where the edit went.
PEAK_SIGMA = 2.0


def _squeeze(images: np.ndarray, name: str) -> np.ndarray:
    images = np.asarray(images, np.float64)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3:
        raise InputError(f"{name} must be (B, H, W) or (B, H, W, 1), got {images.shape}")
    return images


def edit_localization(
    factual: np.ndarray,
    counterfactual: np.ndarray,
    roi: np.ndarray,
    lungs: np.ndarray,
    sigma: float = PEAK_SIGMA,
) -> dict[str, np.ndarray]:
    """Per-image (B,) figures of the module docstring: outside_roi, outside_lungs (shares
    in [0, 1]; 0 for an image the edit left unchanged), roi_hit (0 / 1), roi_gain (image
    units)."""
    x = _squeeze(factual, "factual")
    y = _squeeze(counterfactual, "counterfactual")
    roi, lungs = np.asarray(roi) != 0, np.asarray(lungs) != 0
    if not x.shape == y.shape == roi.shape == lungs.shape:
        raise InputError(
            f"edit_localization: shapes differ: factual {x.shape}, counterfactual {y.shape}, "
            f"roi {roi.shape}, lungs {lungs.shape}"
        )
    diff = y - x
    mass = np.abs(diff)
    total = mass.sum(axis=(1, 2))
    safe = np.where(total > 0, total, 1.0)
    outside_roi = np.where(total > 0, (mass * ~roi).sum(axis=(1, 2)) / safe, 0.0)
    outside_lungs = np.where(total > 0, (mass * ~lungs).sum(axis=(1, 2)) / safe, 0.0)
    hits, gains = [], []
    for d, r, lung in zip(diff, roi, lungs, strict=True):
        smooth = ndimage.gaussian_filter(d, sigma) if sigma > 0 else d
        field = np.where(lung | r, smooth, -np.inf)  # the peak among lung (and ROI) pixels
        hits.append(float(r.flat[int(np.argmax(field))]))
        rest = lung & ~r
        inside = d[r].mean() if r.any() else 0.0
        gains.append(inside - (d[rest].mean() if rest.any() else 0.0))
    return {
        "outside_roi": outside_roi,
        "outside_lungs": outside_lungs,
        "roi_hit": np.asarray(hits),
        "roi_gain": np.asarray(gains),
    }
