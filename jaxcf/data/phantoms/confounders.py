"""Healthy FLAIR hyperintensities: what makes thresholding FLAIR a poor tumour detector.

On real clinical FLAIR the brightest healthy voxels are not grey matter but (Fazekas 1987;
Neema et al. 2009 on FLAIR artefacts):
  - periventricular caps and a thin rim along the lateral ventricles (ependymal gliosis and
    interstitial fluid; caps at the frontal and occipital horns are a normal finding);
  - white-matter hyperintensities of small-vessel disease, common at glioma ages (median
    ~60 years): punctate foci, confluent in some subjects (Fazekas grades 0-3);
  - CSF inflow / pulsation artefacts: unsuppressed CSF in the third and fourth ventricles and
    the foramina, smeared as ghosts along the phase-encoding (anterior-posterior) direction.
(The choroid plexus is a tissue class of the anatomies; the coil bias field is render.py's.)

Each confounder is an intensity added to the healthy signal, in units of the subject's
white-matter intensity, built on the healthy voxel tissue map so a subject's tumour and
healthy re-renders share it (the tumour's mass effect moves it with the tissue).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from jaxcf.data.phantoms.anatomy import CHOROID, CSF, DEEP_GM, VENTRICLE, WM
from jaxcf.data.phantoms.grid import Grid

# Fazekas grade -> (probability at glioma ages, mean number of foci, focus radius mm).
_FAZEKAS = ((0.30, 0, 0.0), (0.40, 4, 2.5), (0.20, 10, 3.5), (0.10, 18, 4.5))
_MAX_FOCI = 24  # fixed number of draws per subject, used or not (stable random streams)


def _gaussian_blobs(
    shape: tuple[int, int, int], spacing: np.ndarray, centres: np.ndarray, radii, amps
) -> np.ndarray:
    """Sum of isotropic Gaussian blobs (X, Y, Z) float32; centres (N, 3) voxel indices, radii
    (N,) mm (the 1/e half-width), amps (N,). Each blob is evaluated in its own small box."""
    out = np.zeros(shape, np.float32)
    for centre, radius, amp in zip(centres, radii, amps, strict=True):
        reach = np.ceil(2.5 * radius / spacing).astype(int) + 1
        lo = np.maximum(centre - reach, 0)
        hi = np.minimum(centre + reach + 1, shape)
        axes = [(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, centre, spacing,
                                                                 strict=True)]  # fmt: skip
        r2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None] ** 2
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        out[box] += np.float32(amp) * np.exp(-r2 / radius**2).astype(np.float32)
    return out


def _pick(rng: np.random.Generator, candidates: np.ndarray, count: int) -> np.ndarray:
    """`count` voxel indices (count, 3) drawn from the (N, 3) candidates; always consumes the
    same random numbers whatever N is."""
    u = rng.random(count)
    if len(candidates) == 0:
        return np.zeros((0, 3), int)
    return candidates[np.minimum((u * len(candidates)).astype(int), len(candidates) - 1)]


def periventricular(rng: np.random.Generator, tissue: np.ndarray, grid: Grid) -> np.ndarray:
    """Caps at the horns of the lateral ventricles plus a thin rim along their walls
    (X, Y, Z), in WM units: up to ~0.4-0.9 at the cap tips, ~0.1-0.3 along the walls."""
    spacing = np.asarray(grid.spacing)
    ventricle = np.isin(tissue, (VENTRICLE, CHOROID))
    rim_amp, cap_amp = rng.uniform(0.1, 0.3), rng.uniform(0.4, 0.9)
    width = rng.uniform(2.5, 4.5)  # mm
    if not ventricle.any():
        return np.zeros(tissue.shape, np.float32)
    distance, nearest = ndimage.distance_transform_edt(
        ~ventricle, sampling=spacing, return_indices=True
    )
    # Caps: where the nearest ventricle voxel lies in the front or back quarter of the
    # ventricles' anterior-posterior extent (the frontal and occipital horns).
    j = np.flatnonzero(ventricle.any(axis=(0, 2)))
    lo, hi = j.min(), j.max()
    tip = np.abs(nearest[1] - 0.5 * (lo + hi)) / max(0.5 * (hi - lo), 1.0)
    cap = np.clip((tip - 0.5) / 0.5, 0.0, 1.0)
    amp = rim_amp + (cap_amp - rim_amp) * cap
    white = np.isin(tissue, (WM, DEEP_GM))
    return np.where(white, amp * np.exp(-distance / width), 0.0).astype(np.float32)


def white_matter_hyperintensities(
    rng: np.random.Generator, tissue: np.ndarray, grid: Grid
) -> np.ndarray:
    """Small-vessel-disease foci in deep and periventricular white matter (X, Y, Z), in WM
    units (0.4-1.0 at a focus centre: FLAIR WMH run ~1.4-2x white matter). The subject's
    Fazekas grade sets their number and size."""
    probs = np.array([g[0] for g in _FAZEKAS])
    grade = int(rng.choice(len(_FAZEKAS), p=probs / probs.sum()))
    _, mean_count, radius = _FAZEKAS[grade]
    count = min(int(rng.poisson(mean_count)) if mean_count else 0, _MAX_FOCI)
    centres = _pick(rng, np.argwhere(tissue == WM), _MAX_FOCI)
    radii = radius * rng.uniform(0.6, 1.4, _MAX_FOCI)
    amps = rng.uniform(0.4, 1.0, _MAX_FOCI)
    if count == 0 or len(centres) == 0:
        return np.zeros(tissue.shape, np.float32)
    blobs = _gaussian_blobs(tissue.shape, np.asarray(grid.spacing), centres[:count],
                            radii[:count], amps[:count])  # fmt: skip
    return np.where(tissue == WM, np.minimum(blobs, 1.0), 0.0).astype(np.float32)


def flow_artefacts(rng: np.random.Generator, tissue: np.ndarray, grid: Grid) -> np.ndarray:
    """CSF inflow artefacts (X, Y, Z), in WM units: bright unsuppressed CSF near the midline
    (third / fourth ventricle, foramina) in ~60% of subjects, with a ghost repeated along the
    phase-encoding axis (y) at decaying amplitude."""
    spacing = np.asarray(grid.spacing)
    present = rng.random() < 0.6
    count = 4
    u = rng.random(count)
    radii = rng.uniform(3.0, 6.0, count)
    amps = rng.uniform(0.8, 2.0, count)
    shift_mm, ghost = rng.uniform(15.0, 40.0), rng.uniform(0.2, 0.5)
    x = grid.axes_mm()[0]
    fluid = np.isin(tissue, (VENTRICLE, CSF)) & (np.abs(x)[:, None, None] < 10.0)
    candidates = np.argwhere(fluid)
    if not present or len(candidates) == 0:
        return np.zeros(tissue.shape, np.float32)
    centres = candidates[np.minimum((u * len(candidates)).astype(int), len(candidates) - 1)]
    blobs = _gaussian_blobs(tissue.shape, spacing, centres, radii, amps)
    shift = round(shift_mm / spacing[1])
    ghosts = ghost * (np.roll(blobs, shift, axis=1) + np.roll(blobs, -shift, axis=1))
    # The inflow signal lives in the fluid; its ghosts land on whatever tissue lies there.
    return (np.where(fluid, blobs, 0.0) + ghosts * (tissue > 0)).astype(np.float32)


def flair_confounders(rng: np.random.Generator, tissue: np.ndarray, grid: Grid) -> np.ndarray:
    """All healthy FLAIR hyperintensities (X, Y, Z) float32 in units of the subject's
    white-matter FLAIR intensity, from the healthy voxel tissue map (X, Y, Z) uint8."""
    return (
        periventricular(rng, tissue, grid)
        + white_matter_hyperintensities(rng, tissue, grid)
        + flow_artefacts(rng, tissue, grid)
    )
