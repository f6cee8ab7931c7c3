"""MR contrast and acquisition: tissue intensities per sequence, partial volume, texture,
bias field and Rician noise.

Intensities are arbitrary units in the hundreds to thousands, like scanner output, so
readers' percentile normalisation has something real to do. Relative contrasts follow the
sequences' physics: T1 WM > GM > CSF; T2 CSF > GM > WM with bright edema and necrosis;
FLAIR with CSF suppressed, WM < GM, and bright edema and lesions; T1ce as T1 plus a bright
enhancing rim (and choroid plexus, which enhances too).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from jaxcf.data.phantoms.grid import Grid, pool

# Rendering classes: tissue codes 0-7 (anatomy.py) then the tumour codes 1-3 + 7.
TUMOUR_OFFSET = 7
NUM_CLASSES = 11
#                 BG  CSF    GM    WM  deepGM hippo  vent choroid  NCR    ED    ET
BRATS_CONTRAST = {
    "t1": (0, 250, 620, 880, 700, 600, 230, 450, 320, 560, 650),
    "t1ce": (0, 280, 640, 820, 700, 620, 260, 1300, 330, 560, 1550),
    "t2": (0, 2400, 1150, 760, 950, 1200, 2500, 1600, 2000, 1750, 1350),
    # Choroid plexus reads iso- to hyperintense on FLAIR (not CSF-suppressed): ~1.4x WM.
    "flair": (0, 120, 520, 400, 470, 560, 100, 560, 600, 950, 800),
}
# ADNI MPRAGE T1 (stronger grey-white contrast than BraTS' mixed T1 protocols).
ADNI_CONTRAST = {"t1": (0, 180, 560, 950, 700, 560, 160, 300, 300, 500, 600)}
# 3D FLAIR of the MS cohorts, plus the lesion intensity (hyperintense, ~2x white matter).
MS_CONTRAST = {"flair": (0, 90, 560, 430, 500, 600, 80, 200, 500, 900, 800)}
MS_LESION_FLAIR = 880.0
REFERENCE_CLASS = 3  # white matter: the SNR is quoted for it


def subject_contrast(
    rng: np.random.Generator, protocol: dict[str, tuple], *, paediatric: bool = False
) -> dict[str, np.ndarray]:
    """Per-subject intensity tables, modality -> (NUM_CLASSES,) float32: a scanner gain per
    sequence (x0.7-1.4) and +-4% per tissue. Paediatric brains get ~20% less grey-white
    contrast (incomplete myelination)."""
    tables = {}
    for name, values in protocol.items():
        table = np.asarray(values, np.float64)
        if paediatric:
            gm, wm = table[2], table[3]
            table[2], table[3] = gm + 0.1 * (wm - gm), wm + 0.1 * (gm - wm)
        gain = float(np.clip(np.exp(rng.normal(0.0, 0.15)), 0.7, 1.4))
        jitter = 1.0 + rng.normal(0.0, 0.04, NUM_CLASSES)
        tables[name] = (table * gain * jitter).astype(np.float32)
    return tables


def partial_volume(
    classes: np.ndarray, table: np.ndarray, supersample: int, brain_fraction: np.ndarray
) -> np.ndarray:
    """Noise-free image (X, Y, Z) from supersampled classes (X*s, Y*s, Z*s): each voxel is the
    mean intensity of its brain sub-samples (skull-stripped edges are not darkened)."""
    image = pool(table[classes], supersample)
    return image / np.maximum(brain_fraction, np.float32(1e-3))


def smooth_field(rng: np.random.Generator, grid: Grid, sigma_mm: float) -> np.ndarray:
    """Gaussian random field (X, Y, Z) float32 with unit standard deviation and correlation
    length ~sigma_mm."""
    white = rng.standard_normal(grid.shape).astype(np.float32)
    sigma = [sigma_mm / s for s in grid.spacing]
    field = ndimage.gaussian_filter(white, sigma, mode="wrap")
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def bias_field(rng: np.random.Generator, grid: Grid, strength: float) -> np.ndarray:
    """Smooth multiplicative coil bias (X, Y, Z) float32: exp of a random cubic polynomial in
    the normalised coordinates, scaled so its log has standard deviation `strength`."""
    x, y, z = (np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in grid.shape)
    # Horner-like nesting sum_a x^a (sum_b y^b (sum_c k_abc z^c)): four full-volume passes
    # instead of one per monomial.
    log = np.zeros(grid.shape, np.float32)
    for a in range(4):
        plane = np.zeros(grid.shape[1:], np.float32)
        for b in range(4 - a):
            line = np.zeros(grid.shape[2], np.float32)
            for c in range(4 - a - b):
                if a + b + c:
                    line += np.float32(rng.normal()) * z**c
            plane += (y**b)[:, None] * line[None, :]
        log += (x**a)[:, None, None] * plane[None]
    log *= strength / max(float(log.std()), 1e-6)
    return np.exp(log - log.mean())


def rician(
    rng: np.random.Generator, signal: np.ndarray, sigma: float, mask: np.ndarray
) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise of std `sigma` per channel, zeroed
    outside `mask` (skull stripping) and kept >= 1 inside so the brain never reads as
    background."""
    real = signal + np.float32(sigma) * rng.standard_normal(signal.shape, np.float32)
    imag = np.float32(sigma) * rng.standard_normal(signal.shape, np.float32)
    magnitude = np.sqrt(real * real + imag * imag)
    return np.where(mask, np.maximum(magnitude, np.float32(1.0)), np.float32(0.0))


def acquire(
    rng: np.random.Generator,
    grid: Grid,
    signal: np.ndarray,
    mask: np.ndarray,
    texture: np.ndarray,
    reference: float,
) -> np.ndarray:
    """Scanner chain for one sequence: tissue texture, bias field (log-std 0.06-0.12), Rician
    noise at a white-matter SNR of 18-35. signal, mask, texture: (X, Y, Z). Always draws the
    same random numbers, so a re-render with other pathology keeps the same noise."""
    bias = bias_field(rng, grid, float(rng.uniform(0.06, 0.12)))
    snr = float(rng.uniform(18.0, 35.0))
    return rician(rng, signal * texture * bias, reference / snr, mask).astype(np.float32)
