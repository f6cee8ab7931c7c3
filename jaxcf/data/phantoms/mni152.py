"""Real anatomy from the MNI152 (ICBM 2009a symmetric) templates that ship inside nilearn.

The grey / white-matter probability maps and the brain mask are turned once into a label
volume with the procedural model's codes (ventricles, deep grey matter, hippocampi and the
choroid plexus glomus from their MNI locations). Each subject is a small random affine
transform of it plus a smooth non-linear deformation (a few random plane waves of ~2-3 mm
displacement: brains differ in lobe and ventricle shape, not only in size). Atrophy is
applied by distance: ventricles grow into their surroundings, the cortex thins from the
outside, hippocampi shrink into temporal-horn CSF.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from scipy import ndimage

from jaxcf.data.errors import DataError
from jaxcf.data.phantoms.anatomy import (
    BG,
    CHOROID,
    CSF,
    DEEP_GM,
    GM,
    HIPPOCAMPUS,
    VENTRICLE,
    WM,
    rotation_matrix,
)

# The MNI point at the field-of-view centre: the mask spans z -72..82 mm, so the vertex lands
# a few slices under the top and the lowest medulla is cut, as in BraTS; y -107..73 centred.
MNI_CENTRE_MM = np.array([0.0, -17.0, 10.0])
_HIPPOCAMPUS = ((27.0, -22.0, -14.0), (6.0, 18.0, 6.0))
_HIPPOCAMPUS_PITCH = np.deg2rad(25.0)
# Glomus of the choroid plexus in the atrium of each lateral ventricle (MNI mm, radius mm);
# the templates have no label for it.
_CHOROID = ((28.0, -40.0, 14.0), 7.0)
_WAVES = 4  # plane waves of the per-subject deformation
_WAVE_MM = 2.5  # its displacement standard deviation per axis


@dataclasses.dataclass(frozen=True)
class MNIParams:
    """Subject -> template map m = matrix @ p + offset (mm), and atrophy severity in [0, 1]."""

    matrix: np.ndarray
    offset: np.ndarray
    severity: float = 0.0
    # Smooth deformation: K plane waves, displacement(m) = sum_k amp_k sin(<freq_k, m> + phase_k)
    # with wave vectors freqs (K, 3) rad/mm, amplitude vectors amps (K, 3) mm, phases (K,).
    freqs: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 3)))
    amps: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 3)))
    phases: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))


@dataclasses.dataclass(frozen=True)
class _Atlas:
    labels: np.ndarray  # (I, J, K) uint8 anatomy codes
    to_ventricle: np.ndarray  # (I, J, K) float32 mm
    to_outside: np.ndarray  # (I, J, K) float32 mm from outer CSF / background
    world_to_voxel: np.ndarray  # (4, 4)


def _hippocampus_radius(mx, my, mz) -> np.ndarray:
    """Normalised ellipsoid radius (< 1 inside) of the hippocampi at MNI points."""
    c, radii = _HIPPOCAMPUS
    cos, sin = np.cos(_HIPPOCAMPUS_PITCH), np.sin(_HIPPOCAMPUS_PITCH)
    hy, hz = my - c[1], mz - c[2]
    ty, tz = cos * hy + sin * hz, -sin * hy + cos * hz
    hx = np.abs(mx) - c[0]
    return np.sqrt((hx / radii[0]) ** 2 + (ty / radii[1]) ** 2 + (tz / radii[2]) ** 2)


def require_nilearn():
    """nilearn.datasets, or DataError saying how to install the optional dependency."""
    try:
        from nilearn import datasets
    except ImportError as error:
        raise DataError(
            "--anatomy mni152 needs nilearn (a jaxcf dependency): pip install nilearn"
        ) from error
    return datasets


def _block_mean(array: np.ndarray, step: int) -> np.ndarray:
    """Mean over step^3 blocks (trailing voxels that do not fill a block are dropped)."""
    shape = tuple(n // step for n in array.shape)
    crop = array[: shape[0] * step, : shape[1] * step, : shape[2] * step]
    return crop.reshape(shape[0], step, shape[1], step, shape[2], step).mean(axis=(1, 3, 5))


@functools.lru_cache(maxsize=2)
def _atlas(step: int = 1) -> _Atlas:
    """The template as labels and distance maps at `step` mm (block means of the 1 mm maps:
    coarse phantoms need no 1 mm atlas, and distance transforms cost 8x less)."""
    datasets = require_nilearn()
    gm_img = datasets.load_mni152_gm_template()
    gm = _block_mean(np.asarray(gm_img.dataobj, np.float32), step)
    wm = _block_mean(np.asarray(datasets.load_mni152_wm_template().dataobj, np.float32), step)
    mask = np.asarray(datasets.load_mni152_brain_mask().dataobj, np.float32)
    mask = _block_mean(mask, step) >= 0.5
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    labels = np.array([CSF, GM, WM], np.uint8)[np.argmax(np.stack([csf, gm, wm]), axis=0)]
    labels[~mask] = BG
    affine = gm_img.affine.copy()
    # Block centres: the first block's centre is (step - 1) / 2 voxels in.
    affine[:3, 3] += affine[:3, :3] @ np.full(3, (step - 1) / 2.0)
    affine[:3, :3] *= step
    i, j, k = np.meshgrid(*(np.arange(n) for n in labels.shape), indexing="ij", sparse=True)
    mx, my, mz = (affine[a, 0] * i + affine[a, 1] * j + affine[a, 2] * k + affine[a, 3]
                  for a in range(3))  # fmt: skip
    mm = (float(step),) * 3
    depth = ndimage.distance_transform_edt(mask, sampling=mm)
    central = (np.abs(mx) < 30) & (my > -45) & (my < 30) & (mz > -25) & (mz < 35)
    labels[(labels == CSF) & central & (depth > 12)] = VENTRICLE
    labels[(labels == GM) & central & (depth > 22) & (mz > -10) & (mz < 20)] = DEEP_GM
    labels[(labels == GM) & (_hippocampus_radius(mx, my, mz) < 1.0)] = HIPPOCAMPUS
    (cx, cy, cz), radius = _CHOROID
    glomus = (np.abs(mx) - cx) ** 2 + (my - cy) ** 2 + (mz - cz) ** 2 < radius**2
    labels[(labels == VENTRICLE) & glomus] = CHOROID
    outside = (labels == BG) | (labels == CSF)
    return _Atlas(
        labels=labels,
        to_ventricle=ndimage.distance_transform_edt(
            ~np.isin(labels, (VENTRICLE, CHOROID)), sampling=mm
        ).astype(np.float32),
        to_outside=ndimage.distance_transform_edt(~outside, sampling=mm).astype(np.float32),
        world_to_voxel=np.linalg.inv(affine),
    )


class MNI152Anatomy:
    """Subjects as random similarity transforms of the MNI152 tissue templates."""

    name = "mni152"

    def __init__(self, voxel_mm: float = 1.0) -> None:
        """voxel_mm: the phantom's finest sampling; a 2 mm atlas serves samples >= 1.5 mm."""
        self.atlas = _atlas(2 if voxel_mm >= 1.5 else 1)

    def sample(self, rng: np.random.Generator, *, paediatric: bool = False) -> MNIParams:
        size = rng.normal(0.91 if paediatric else 0.97, 0.03) * (1.0 + rng.normal(0, 0.03, 3))
        deg = np.deg2rad
        rotation = rotation_matrix(
            deg(rng.normal(0, 3.0)), deg(rng.normal(0, 5.0)), deg(rng.normal(0, 2.0))
        )
        matrix = (rotation.T / size[:, None]).astype(np.float64)
        offset = MNI_CENTRE_MM + rng.normal(0.0, 1.5, 3)
        # Wavelengths 50-120 mm: lobe- and ventricle-scale shape changes that keep the
        # topology (displacement gradients ~0.2, far from folding the map).
        count = _WAVES
        directions = rng.standard_normal((count, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        freqs = directions * (2.0 * np.pi / rng.uniform(50.0, 120.0, count))[:, None]
        amps = rng.normal(0.0, _WAVE_MM / np.sqrt(count / 2.0), (count, 3))
        phases = rng.uniform(0.0, 2.0 * np.pi, count)
        return MNIParams(matrix, offset, 0.0, freqs, amps, phases)

    def atrophied(self, params: MNIParams, severity: float) -> MNIParams:
        return dataclasses.replace(params, severity=float(np.clip(severity, 0.0, 1.0)))

    def labels(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, params: MNIParams):
        """Tissue labels (uint8, shape of x) at centred RAS mm points."""
        a, b = params.matrix, params.offset
        m = [a[r, 0] * x + a[r, 1] * y + a[r, 2] * z + b[r] for r in range(3)]
        shift = [np.zeros_like(m[0]) for _ in range(3)]
        for f, amp, phase in zip(params.freqs, params.amps, params.phases, strict=True):
            wave = np.sin(f[0] * m[0] + f[1] * m[1] + f[2] * m[2] + phase)
            for r in range(3):
                shift[r] += np.float32(amp[r]) * wave
        m = [m[r] + shift[r] for r in range(3)]
        v = self.atlas.world_to_voxel
        coords = np.stack([v[r, 0] * m[0] + v[r, 1] * m[1] + v[r, 2] * m[2] + v[r, 3]
                           for r in range(3)])  # fmt: skip
        out = ndimage.map_coordinates(self.atlas.labels, coords, order=0, cval=BG)
        s = params.severity
        if s > 0:
            to_vent = ndimage.map_coordinates(self.atlas.to_ventricle, coords, order=1, cval=99)
            grow = np.isin(out, (WM, DEEP_GM, CSF)) & (to_vent < 4.0 * s)
            to_out = ndimage.map_coordinates(self.atlas.to_outside, coords, order=1, cval=0)
            thin = (out == GM) & (to_out <= 1.0 + 1.5 * s)
            shrunk = (out == HIPPOCAMPUS) & (_hippocampus_radius(*m) > 1.0 - 0.4 * s)
            out[grow | shrunk] = VENTRICLE
            out[thin] = CSF
        return out.astype(np.uint8)
