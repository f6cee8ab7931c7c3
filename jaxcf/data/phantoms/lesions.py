"""Pathology models: gliomas (necrotic core, enhancing rim, edema, mass effect), multiple
sclerosis white-matter lesions, and the neurodegeneration severity behind ADNI diagnoses.

Tumour codes used inside the phantoms (mapped to each dataset's label values on writing):
1 necrotic / non-enhancing core, 2 edema, 3 enhancing tumour.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from jaxcf.data.phantoms.anatomy import (
    CHOROID,
    DEEP_GM,
    GM,
    HIPPOCAMPUS,
    VENTRICLE,
    WM,
    SphereWaves,
    random_waves,
)
from jaxcf.data.phantoms.grid import Grid

NECROTIC, EDEMA, ENHANCING = 1, 2, 3


@dataclasses.dataclass(frozen=True)
class Tumour:
    """One glioma in centred RAS mm. Each layer is a sphere of the given radius perturbed by
    a smooth random relative shape; edema also has satellite lobes (centre (3,), radius)."""

    centre: np.ndarray
    edema_radius: float
    core_radius: float
    necrosis_radius: float
    edema_shape: SphereWaves
    core_shape: SphereWaves
    necrosis_shape: SphereWaves
    satellites: tuple[tuple[np.ndarray, float], ...]
    enhancing: bool
    displaced_radius: float  # radius of the ball of tissue the tumour pushed aside
    # Edema differs between gliomas (vasogenic water content): a FLAIR / T2 brightness
    # factor on the edema's nominal intensity, and the fraction of it lost from the core's
    # edge to the edema's outer edge (the faint infiltrative fringe annotators still label).
    edema_brightness: float = 1.0
    edema_falloff: float = 0.0

    def warp(self, x: np.ndarray, y: np.ndarray, z: np.ndarray):
        """Mass effect as a backward map: the tissue now at radius r from the centre came from
        r0 = (r^3 - Rd^3)^(1/3), i.e. an incompressible ball of radius Rd was inserted. The
        displacement falls off as Rd^3 / (3 r^2), so distant anatomy (and the skull) stays."""
        dx, dy, dz = x - self.centre[0], y - self.centre[1], z - self.centre[2]
        r2 = dx * dx + dy * dy + dz * dz
        # Beyond the radius where the displacement drops under 0.05 mm, leave points alone.
        far = self.displaced_radius**3 / (3.0 * 0.05)
        near = np.flatnonzero(r2.ravel() < far)
        r3 = r2.ravel()[near] ** 1.5
        scale = np.cbrt(np.maximum(r3 - self.displaced_radius**3, 0.0) / np.maximum(r3, 1e-6))
        out = []
        for centre, delta in zip(self.centre, (dx, dy, dz), strict=True):
            moved = delta.ravel().copy()
            moved[near] *= scale.astype(moved.dtype)
            out.append((moved + centre).reshape(x.shape))
        return tuple(out)

    def labels(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, tissue: np.ndarray):
        """Tumour codes (uint8: 0 none, 1 necrotic, 2 edema, 3 enhancing) at points (x, y, z)
        (mm) given the (already displaced) tissue labels there."""
        dx, dy, dz = x - self.centre[0], y - self.centre[1], z - self.centre[2]
        r2 = dx * dx + dy * dy + dz * dz
        # Shapes are perturbed by < 55% (6 waves of amplitude 0.09): only points near the
        # tumour need evaluating.
        reach = 1.6 * self.edema_radius
        for centre, radius in self.satellites:
            reach = max(reach, float(np.linalg.norm(centre - self.centre)) + radius)
        near = np.flatnonzero(r2.ravel() < reach**2)
        out = np.zeros(x.size, np.uint8)
        out[near] = self._near(dx.ravel()[near], dy.ravel()[near], dz.ravel()[near],
                               tissue.ravel()[near])  # fmt: skip
        return out.reshape(x.shape)

    def _near(self, dx, dy, dz, tissue) -> np.ndarray:
        r = np.sqrt(dx * dx + dy * dy + dz * dz) + np.float32(1e-6)
        u = (dx / r, dy / r, dz / r)
        edema = r < self.edema_radius * (1.0 + self.edema_shape(*u))
        for centre, radius in self.satellites:
            offset = centre - self.centre
            d2 = (dx - offset[0]) ** 2 + (dy - offset[1]) ** 2 + (dz - offset[2]) ** 2
            edema |= d2 < radius**2
        # Vasogenic edema spreads through white matter and stops at cortex and CSF.
        soaked = (tissue == WM) | (tissue == DEEP_GM) | (tissue == HIPPOCAMPUS)
        soaked |= (tissue == GM) & (r < 0.8 * self.edema_radius)
        out = np.where(edema & soaked, EDEMA, 0).astype(np.uint8)
        core = (r < self.core_radius * (1.0 + self.core_shape(*u))) & (tissue > 0)
        necrosis = r < self.necrosis_radius * (1.0 + self.necrosis_shape(*u))
        if self.enhancing:
            out[core] = ENHANCING
            out[core & necrosis] = NECROTIC
        else:
            out[core] = NECROTIC
        return out


# Edema (whole-tumour) radius, log-uniform: with edema confined to white matter this gives
# whole tumours of ~10-250 mL, the span of BraTS glioma whole tumours.
EDEMA_RADII_MM = (20.0, 45.0)
CORE_RATIO = (0.35, 0.65)  # tumour core radius / edema radius (adult gliomas)
EDEMA_BRIGHTNESS_LOG_STD = 0.15
EDEMA_FALLOFF = (0.0, 0.3)


def sample_tumour(
    rng: np.random.Generator, tissue: np.ndarray, grid: Grid, *, paediatric: bool = False
) -> Tumour:
    """Draw a tumour centred in white matter of the voxel tissue map `tissue` (X, Y, Z).

    Edema radii are log-uniform in EDEMA_RADII_MM, so small tumours leave most axial slices
    healthy and large ones fill many; edema brightness and fringe vary per tumour.
    Paediatric tumours sit in the posterior fossa half the time, with less edema and less
    often an enhancing rim (as in diffuse midline gliomas).
    """
    # Placement needs depths to a few mm only: work on a >= ~4 mm subsampled map, which keeps
    # the distance transform cheap at full size.
    step = max(1, int(4.0 // min(grid.spacing)))
    tissue = tissue[::step, ::step, ::step]
    spacing = np.asarray(grid.spacing, np.float32) * step
    brain = tissue > 0
    depth = ndimage.distance_transform_edt(brain, sampling=spacing)
    ax, ay, az = (a[::step] for a in grid.axes_mm())
    edema = float(np.exp(rng.uniform(np.log(EDEMA_RADII_MM[0]), np.log(EDEMA_RADII_MM[1]))))
    core = edema * rng.uniform(0.5, 0.8) if paediatric else edema * rng.uniform(*CORE_RATIO)
    # On coarse grids keep every tumour a few voxels big, so no tumour case renders empty.
    voxel = max(grid.spacing)
    edema = max(edema, 1.6 * voxel)
    core = min(max(core, 0.9 * voxel), 0.85 * edema)
    candidates = (tissue == WM) | (tissue == DEEP_GM)
    if paediatric and rng.random() < 0.5:
        # Posterior fossa: cerebellum and brainstem, below and behind the ventricles.
        candidates &= (az[None, None, :] < -20.0) & (ay[None, :, None] < -5.0)
    for _ in range(8):
        pool = np.argwhere(candidates & (depth > 0.7 * core + 4.0))
        if len(pool):
            break
        edema, core = 0.8 * edema, 0.8 * core
    else:
        pool = np.argwhere(brain)
    i, j, k = pool[rng.integers(len(pool))]
    jitter = rng.uniform(-0.5, 0.5, 3).astype(np.float32) * spacing
    centre = np.array([ax[i], ay[j], az[k]], np.float32) + jitter
    satellites = []
    for _ in range(rng.integers(0, 4)):
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        offset = direction * edema * rng.uniform(0.5, 0.9)
        satellites.append(((centre + offset).astype(np.float32), edema * rng.uniform(0.3, 0.6)))
    return Tumour(
        centre=centre,
        edema_radius=edema,
        core_radius=core,
        necrosis_radius=core * rng.uniform(0.3, 0.7),
        edema_shape=random_waves(rng, 6, (1.0, 4.0), 0.15),
        core_shape=random_waves(rng, 6, (1.0, 4.0), 0.12),
        necrosis_shape=random_waves(rng, 4, (1.0, 3.0), 0.12),
        satellites=tuple(satellites),
        enhancing=bool(rng.random() < (0.55 if paediatric else 0.9)),
        displaced_radius=core * rng.uniform(0.4, 0.8),
        edema_brightness=float(np.exp(rng.normal(0.0, EDEMA_BRIGHTNESS_LOG_STD))),
        edema_falloff=float(rng.uniform(*EDEMA_FALLOFF)),
    )


# MS lesion-load categories of the language-guided paper (004): upper bounds in mL.
MS_CATEGORIES = ("minimal", "moderate", "high")
MS_BOUNDS_ML = (10.0, 25.0)
# Targets drawn inside each category, away from the boundaries.
_MS_TARGETS_ML = ((1.5, 8.0), (12.0, 23.0), (28.0, 60.0))


def ms_category(volume_ml: float) -> str:
    """Lesion-load category: minimal (0, 10] mL, moderate (10, 25], high > 25."""
    if volume_ml <= MS_BOUNDS_ML[0]:
        return "minimal"
    return "moderate" if volume_ml <= MS_BOUNDS_ML[1] else "high"


def ms_target_volume(rng: np.random.Generator, category: str) -> float:
    """A lesion volume (mL) to aim for inside `category`."""
    low, high = _MS_TARGETS_ML[MS_CATEGORIES.index(category)]
    return float(rng.uniform(low, high))


def place_ms_lesions(
    rng: np.random.Generator, tissue: np.ndarray, grid: Grid, target_ml: float, supersample: int
) -> np.ndarray:
    """Lesion occupancy (X, Y, Z) float32 in [0, 1]; the lesion mask is occupancy >= 0.5.

    Lesions are added until the mask volume reaches `target_ml` without leaving the target's
    category: periventricular ovoids with their long axis along the gradient of distance to
    the ventricles (perpendicular to the ventricular wall: Dawson's fingers), juxtacortical
    lesions touching the cortex, and deep white-matter lesions.
    """
    spacing = np.asarray(grid.spacing)
    voxel_ml = grid.voxel_ml
    category = ms_category(target_ml)
    ceiling = (*MS_BOUNDS_ML, np.inf)[MS_CATEGORIES.index(category)] - 0.5
    wm = (tissue == WM) | (tissue == DEEP_GM)
    to_ventricle = ndimage.distance_transform_edt(
        ~np.isin(tissue, (VENTRICLE, CHOROID)), sampling=grid.spacing
    )
    to_cortex = ndimage.distance_transform_edt(tissue != GM, sampling=grid.spacing)
    reach = max(spacing.max(), 1.0)
    pools = (
        np.argwhere(wm & (to_ventricle <= 6.0 + reach)),  # periventricular
        np.argwhere(wm & (to_cortex <= 2.0 + reach)),  # juxtacortical
        np.argwhere(wm & (to_ventricle > 10.0) & (to_cortex > 4.0)),  # deep white matter
    )
    weights = np.array([0.55 if len(pools[0]) else 0, 0.25 if len(pools[1]) else 0,
                        0.2 if len(pools[2]) else 0])  # fmt: skip
    occupancy = np.zeros(tissue.shape, np.float32)
    if weights.sum() == 0:
        return occupancy
    weights /= weights.sum()
    volume = 0.0
    median_ml = float(np.clip(target_ml / 10.0, 0.15, 3.0))
    for _ in range(400):
        if volume >= target_ml:
            break
        kind = rng.choice(3, p=weights)
        centre_vox = pools[kind][rng.integers(len(pools[kind]))]
        size_ml = median_ml * float(np.exp(rng.normal(0.0, 0.5)))
        # Never smaller than ~1.5 voxels, so coarse grids still register every lesion.
        size_ml = max(min(size_ml, 1.5 * (target_ml - volume) + voxel_ml), 1.5 * voxel_ml)
        axes = _lesion_axes(rng, kind, centre_vox, to_ventricle, spacing, size_ml)
        allowed = wm | (tissue == GM) if kind == 1 else wm
        candidate = _rasterise(occupancy, centre_vox, axes, spacing, allowed, supersample)
        if candidate is None:
            continue
        box, lesion = candidate
        merged = np.maximum(occupancy[box], lesion)
        new_volume = volume + voxel_ml * float(
            np.count_nonzero(merged >= 0.5) - np.count_nonzero(occupancy[box] >= 0.5)
        )
        if new_volume > ceiling:
            median_ml *= 0.7
            continue
        occupancy[box] = merged
        volume = new_volume
    return occupancy


def _lesion_axes(rng, kind, centre_vox, to_ventricle, spacing, size_ml) -> np.ndarray:
    """(3, 3) rows = ellipsoid semi-axis vectors (mm) for a lesion of ~size_ml."""
    if kind == 0:
        # Long axis along grad(distance to ventricle): perpendicular to the ventricle wall.
        idx = tuple(int(c) for c in centre_vox)
        grad = np.zeros(3)
        for axis in range(3):
            lo = list(idx)
            hi = list(idx)
            lo[axis] = max(idx[axis] - 1, 0)
            hi[axis] = min(idx[axis] + 1, to_ventricle.shape[axis] - 1)
            step = max(hi[axis] - lo[axis], 1) * spacing[axis]
            grad[axis] = (to_ventricle[tuple(hi)] - to_ventricle[tuple(lo)]) / step
        # Voxel index -> RAS: x and y axes are flipped by the BraTS affine.
        grad *= np.array([-1.0, -1.0, 1.0])
        if np.linalg.norm(grad) < 1e-6:
            grad = rng.standard_normal(3)
        ratios = np.array([1.0, rng.uniform(0.35, 0.55), rng.uniform(0.35, 0.55)])
        first = grad / np.linalg.norm(grad)
    else:
        ratios = np.array([1.0, rng.uniform(0.6, 0.9), rng.uniform(0.6, 0.9)])
        first = rng.standard_normal(3)
        first /= np.linalg.norm(first)
    helper = rng.standard_normal(3)
    second = np.cross(first, helper)
    second /= np.linalg.norm(second)
    third = np.cross(first, second)
    # Volume of an ellipsoid 4/3 pi a b c = size (mm^3).
    a = np.cbrt(3.0 * size_ml * 1000.0 / (4.0 * np.pi * ratios.prod()))
    return np.stack([first, second, third]) * (a * ratios)[:, None]


def _rasterise(occupancy, centre_vox, axes, spacing, allowed, supersample):
    """Occupancy of one ellipsoid over its voxel bounding box, supersampled, restricted to
    `allowed` voxels. Returns (box slices, (bx, by, bz) float32) or None if empty."""
    centre = np.asarray(centre_vox, np.float64)
    extent = np.ceil(np.abs(axes).sum(axis=0) / spacing).astype(int) + 1
    lo = np.maximum(centre.astype(int) - extent, 0)
    hi = np.minimum(centre.astype(int) + extent + 1, occupancy.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    sub = (np.arange(supersample) + 0.5) / supersample - 0.5
    # Voxel-index offsets of every sub-sample, converted to RAS mm (x and y flipped).
    grids = [
        ((np.arange(a, b)[:, None] + sub[None, :]).ravel() - c) * step * sign
        for a, b, c, step, sign in zip(lo, hi, centre, spacing, (-1, -1, 1), strict=True)
    ]
    px, py, pz = np.meshgrid(*grids, indexing="ij")
    inverse = np.linalg.inv(axes.T)  # mm -> ellipsoid-normalised coordinates
    nx = inverse[0, 0] * px + inverse[0, 1] * py + inverse[0, 2] * pz
    ny = inverse[1, 0] * px + inverse[1, 1] * py + inverse[1, 2] * pz
    nz = inverse[2, 0] * px + inverse[2, 1] * py + inverse[2, 2] * pz
    inside = (nx * nx + ny * ny + nz * nz) < 1.0
    shape = tuple(b - a for a, b in zip(lo, hi, strict=True))
    s = supersample
    frac = inside.reshape(shape[0], s, shape[1], s, shape[2], s).mean(axis=(1, 3, 5))
    frac = frac.astype(np.float32) * allowed[box]
    if not np.any(frac >= 0.5):
        return None
    return box, frac


# ADNI: diagnosis -> (mean age, P(male), base atrophy severity).
ADNI_DIAGNOSES = ("CN", "MCI", "AD")
_ADNI_PROFILE = {"CN": (73.0, 0.48, 0.05), "MCI": (74.0, 0.58, 0.38), "AD": (76.5, 0.55, 0.72)}


def sample_adni_subject(rng: np.random.Generator, diagnosis: str) -> tuple[int, str, float]:
    """(age in years 60-90, sex 'M' | 'F', atrophy severity in [0, 1]) for a diagnosis.

    AD subjects are older on average and atrophy grows with age within each class, as in the
    ADNI cohorts; the diagnosis dominates the severity so class means are well separated.
    """
    mean_age, p_male, base = _ADNI_PROFILE[diagnosis]
    age = int(np.clip(round(rng.normal(mean_age, 6.5)), 60, 90))
    sex = "M" if rng.random() < p_male else "F"
    severity = float(np.clip(base + 0.008 * (age - 73) + rng.normal(0.0, 0.04), 0.0, 1.0))
    return age, sex, severity
