"""Procedural brain anatomy: a tissue label map evaluated analytically at points in mm.

The cerebrum is a perturbed ellipsoid; depth below its surface (mm, along the ray from the
centre) decides the layers: a thin CSF rim, a folded grey-matter ribbon (sulci are narrow CSF
clefts lined by grey matter) and white matter. Ventricles, deep grey matter, hippocampi,
choroid plexus, brainstem and cerebellum are ellipsoids in a nominal head frame that scales
with the subject's head. Being analytic in coordinates, the map can be evaluated on any grid,
supersampled for partial-volume edges, and deformed by evaluating it at warped points (tumour
mass effect) without resampling artefacts.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np

from jaxcf.errors import InputError

BG, CSF, GM, WM, DEEP_GM, HIPPOCAMPUS, VENTRICLE, CHOROID = range(8)
NUM_TISSUES = 8
TISSUE_NAMES = ("background", "csf", "gm", "wm", "deep_gm", "hippocampus", "ventricle", "choroid")

# Nominal adult cerebrum semi-axes (mm: left-right, anterior-posterior, inferior-superior).
NOMINAL_RADII = np.array([68.0, 84.0, 58.0], np.float32)
# Cerebrum centre above the field-of-view centre: the cerebellum and brainstem hang below, and
# the vertex stays a few slices under the top, as in BraTS.
CEREBRUM_OFFSET_MM = np.array([0.0, 0.0, 4.0], np.float32)

# Ellipsoids in the nominal head frame (mm from the cerebrum centre): centre, semi-axes.
# Structures named "+-" are mirrored across the midline.
_LATERAL_VENTRICLE = (((7.0, 8.0, 12.0), (4.5, 26.0, 6.5)), ((15.0, -24.0, 8.0), (5.5, 12.0, 7.0)))
_TEMPORAL_HORN = ((28.0, -10.0, -9.5), (2.5, 12.0, 2.5))
_THIRD_VENTRICLE = ((0.0, -4.0, -2.0), (1.8, 12.0, 8.0))
_FOURTH_VENTRICLE = ((0.0, -38.0, -38.0), (4.0, 3.5, 5.0))
_DEEP_GM = (
    ((10.0, -8.0, 2.0), (8.0, 13.0, 8.0)),  # thalamus
    ((21.0, 6.0, 2.0), (6.0, 14.0, 9.0)),  # lentiform nucleus
    ((12.0, 16.0, 9.0), (4.0, 8.0, 6.0)),  # caudate head
)
_HIPPOCAMPUS = ((26.0, -16.0, -16.0), (5.0, 17.0, 5.5))
_HIPPOCAMPUS_PITCH = np.deg2rad(20.0)  # posterior end higher, as in the real temporal lobe
_CHOROID = ((15.0, -24.0, 8.0), (2.5, 6.0, 2.5))
_CEREBELLUM = ((0.0, -40.0, -48.0), (50.0, 26.0, 18.0))
_BRAINSTEM = ((0.0, -14.0, -45.0), (12.0, 14.0, 30.0))


@dataclasses.dataclass(frozen=True)
class SphereWaves:
    """A smooth random function on the unit sphere, sum_k a_k sin(f_k <d_k, u> + phi_k).

    directions (K, 3) unit vectors, freqs / phases / amps (K,).
    """

    directions: np.ndarray
    freqs: np.ndarray
    phases: np.ndarray
    amps: np.ndarray

    def __call__(self, ux: np.ndarray, uy: np.ndarray, uz: np.ndarray) -> np.ndarray:
        out = np.zeros_like(ux)
        for d, f, p, a in zip(self.directions, self.freqs, self.phases, self.amps, strict=True):
            out += np.float32(a) * np.sin(np.float32(f) * (d[0] * ux + d[1] * uy + d[2] * uz) + p)
        return out


def random_waves(
    rng: np.random.Generator, count: int, freqs: tuple[float, float], total_std: float
) -> SphereWaves:
    """`count` random plane waves on the sphere whose sum has standard deviation ~total_std."""
    directions = rng.standard_normal((count, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return SphereWaves(
        directions=directions.astype(np.float32),
        freqs=rng.uniform(*freqs, count).astype(np.float32),
        phases=rng.uniform(0, 2 * np.pi, count).astype(np.float32),
        # A sum of K unit sines has std sqrt(K / 2).
        amps=np.full(count, total_std / np.sqrt(count / 2.0), np.float32),
    )


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """(3, 3) rotation about z (yaw), x (pitch) and y (roll), radians."""
    cz, sz, cx, sx, cy, sy = (np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch),
                              np.cos(roll), np.sin(roll))  # fmt: skip
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return (rz @ rx @ ry).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class BrainParams:
    """One subject's procedural brain. Lengths in mm; scales are multiplicative."""

    centre: np.ndarray  # (3,) cerebrum centre, centred RAS mm
    rotation: np.ndarray  # (3, 3) subject frame -> RAS
    head_scale: np.ndarray  # (3,) subject size / nominal, per axis
    surface: SphereWaves  # low-frequency shape of the cerebrum
    folds: SphereWaves  # gyral pattern (unit std)
    cerebellar_folds: SphereWaves
    csf_rim: float
    gm_thickness: float
    sulcal_depth: float
    sulcal_fraction: float  # share of the surface that is sulcal CSF
    fissure_half_width: float
    ventricle_scale: np.ndarray  # (3,)
    hippocampus_scale: float


class Anatomy(Protocol):
    """A source of subject anatomies: procedural (this module) or MNI152-based (mni152.py)."""

    name: str

    def sample(self, rng: np.random.Generator, *, paediatric: bool = False) -> object: ...

    def atrophied(self, params: object, severity: float) -> object: ...

    def labels(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, params: object) -> np.ndarray:
        """Tissue labels (uint8, codes above) at points (x, y, z) in centred RAS mm."""
        ...


def _ellipsoid(qx, qy, qz, centre, radii, mirror: bool = False) -> np.ndarray:
    """Boolean mask of points inside the ellipsoid (or its mirror pair across x = 0)."""
    cx, cy, cz = centre
    rx, ry, rz = radii
    ax = np.abs(qx) if mirror else qx
    return ((ax - cx) / rx) ** 2 + ((qy - cy) / ry) ** 2 + ((qz - cz) / rz) ** 2 < 1.0


def _shell_depth(nx, ny, nz, radii, surface=None):
    """Depth (mm) below a perturbed ellipsoid's surface, measured along the ray from its centre,
    for points in its normalised frame n = q / radii. Negative outside."""
    rho = np.sqrt(nx * nx + ny * ny + nz * nz) + np.float32(1e-6)
    ux, uy, uz = nx / rho, ny / rho, nz / rho
    sigma = np.float32(1.0) if surface is None else 1.0 + surface(ux, uy, uz)
    ray = sigma * np.sqrt((radii[0] * ux) ** 2 + (radii[1] * uy) ** 2 + (radii[2] * uz) ** 2)
    return ray * (1.0 - rho / sigma), (ux, uy, uz)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class ProceduralAnatomy:
    """Analytic brains with per-subject shape, folding, ventricle and atrophy variation."""

    name = "procedural"

    def sample(self, rng: np.random.Generator, *, paediatric: bool = False) -> BrainParams:
        """Draw one subject. Paediatric heads are smaller with smaller ventricles."""
        size = rng.normal(0.94 if paediatric else 1.0, 0.035)
        deg = np.deg2rad
        return BrainParams(
            centre=(CEREBRUM_OFFSET_MM + rng.normal(0.0, [1.5, 3.0, 1.5])).astype(np.float32),
            rotation=rotation_matrix(
                deg(rng.normal(0, 3.0)), deg(rng.normal(0, 5.0)), deg(rng.normal(0, 2.0))
            ),
            head_scale=(size * (1.0 + rng.normal(0.0, 0.03, 3))).astype(np.float32),
            surface=random_waves(rng, 5, (1.5, 3.5), 0.035),
            folds=random_waves(rng, 12, (12.0, 20.0), 1.0),
            cerebellar_folds=random_waves(rng, 8, (20.0, 28.0), 1.0),
            csf_rim=float(rng.uniform(0.8, 1.6) * (0.7 if paediatric else 1.0)),
            gm_thickness=float(rng.uniform(2.6, 3.4)),
            sulcal_depth=float(rng.uniform(12.0, 18.0)),
            sulcal_fraction=float(rng.uniform(0.10, 0.14)),
            fissure_half_width=float(rng.uniform(0.8, 1.4)),
            ventricle_scale=(
                np.exp(rng.normal(0.0, 0.05))
                * (0.85 if paediatric else 1.0)
                * (1.0 + rng.normal(0.0, 0.03, 3))
            ).astype(np.float32),
            hippocampus_scale=float(rng.normal(1.0, 0.04)),
        )

    def atrophied(self, params: BrainParams, severity: float) -> BrainParams:
        """Neurodegeneration of strength `severity` in [0, 1] (0 none, ~0.7 typical AD):
        ventricles widen, the cortex thins, sulci and the fissure open, hippocampi shrink."""
        s = float(np.clip(severity, 0.0, 1.0))
        return dataclasses.replace(
            params,
            ventricle_scale=(params.ventricle_scale * np.array([1 + 1.1 * s, 1 + 0.3 * s,
                                                                1 + 0.9 * s])).astype(np.float32),
            gm_thickness=params.gm_thickness * (1.0 - 0.35 * s),
            csf_rim=params.csf_rim + 2.0 * s,
            sulcal_fraction=params.sulcal_fraction + 0.15 * s,
            fissure_half_width=params.fissure_half_width + 2.0 * s,
            hippocampus_scale=params.hippocampus_scale * (1.0 - 0.4 * s),
        )  # fmt: skip

    def labels(
        self, x: np.ndarray, y: np.ndarray, z: np.ndarray, params: BrainParams
    ) -> np.ndarray:
        """Tissue labels (uint8, same shape as x) at points (x, y, z) in centred RAS mm."""
        # Subject frame, then the nominal head frame (structures scale with the head).
        px, py, pz = (
            (x - params.centre[0]).ravel(),
            (y - params.centre[1]).ravel(),
            (z - params.centre[2]).ravel(),
        )
        r, s = params.rotation, params.head_scale
        qx = (r[0, 0] * px + r[1, 0] * py + r[2, 0] * pz) / s[0]
        qy = (r[0, 1] * px + r[1, 1] * py + r[2, 1] * pz) / s[1]
        qz = (r[0, 2] * px + r[1, 2] * py + r[2, 2] * pz) / s[2]
        # Only points in a box around the brain (~1/4 of the field of view) do real work; the
        # surface waves move the outline by at most 11%.
        keep = np.flatnonzero(
            (np.abs(qx) < 76.0) & (np.abs(qy) < 94.0) & (qz > -90.0) & (qz < 66.0)
        )
        q = (qx[keep], qy[keep], qz[keep])
        sub = np.zeros(keep.shape, np.uint8)
        below = np.flatnonzero((q[2] < -28.0) & (q[1] < 0.0))
        sub[below] = self._cerebellum(*(a[below] for a in q), params)
        cerebrum = self._cerebrum(sub, *q, params)
        c, rr = _BRAINSTEM
        low = np.flatnonzero((q[2] < c[2] + rr[2]) & ~cerebrum)
        sub[low[_ellipsoid(*(a[low] for a in q), c, rr)]] = WM
        central = np.flatnonzero((np.abs(q[0]) < 45.0) & (np.abs(q[1]) < 55.0) & (q[2] > -45.0)
                                 & (q[2] < 35.0) & (sub > 0))  # fmt: skip
        sub[central] = self._deep(sub[central], *(a[central] for a in q), params)
        out = np.zeros(qx.shape, np.uint8)
        out[keep] = sub
        return out.reshape(x.shape)

    def _cerebellum(self, qx, qy, qz, params: BrainParams) -> np.ndarray:
        c, radii = _CEREBELLUM
        radii = np.asarray(radii, np.float32)
        n = ((qx - c[0]) / radii[0], (qy - c[1]) / radii[1], (qz - c[2]) / radii[2])
        depth, u = _shell_depth(*n, radii)
        out = np.zeros(qx.shape, np.uint8)
        inside = np.flatnonzero(depth > 0)
        folia = params.cerebellar_folds(*(a[inside] for a in u))
        d = depth[inside]
        # Thick cortex around a small white-matter core, cut by fine CSF fissures.
        label = np.where(d > 11.0 + 3.0 * folia, WM, GM).astype(np.uint8)
        label[d < params.csf_rim + 4.0 * np.clip(1.0 - (folia / 0.25) ** 2, 0.0, 1.0)] = CSF
        out[inside] = label
        return out

    def _cerebrum(self, out, qx, qy, qz, params: BrainParams) -> np.ndarray:
        """Write cerebrum labels into `out` (1-D, modified); returns the inside mask."""
        radii = NOMINAL_RADII
        nx, ny, nz = qx / radii[0], qy / radii[1], qz / radii[2]
        # The surface waves move the outline by < 12%: skip points clearly outside.
        near = np.flatnonzero(nx * nx + ny * ny + nz * nz < 1.26)
        depth, (ux, uy, uz) = _shell_depth(nx[near], ny[near], nz[near], radii, params.surface)
        # Flatter inferior pole, not a rugby ball, and raised in the middle (skull base,
        # brainstem) so the lowest cerebral slices show two temporal lobes, not one cap.
        low = np.maximum(-uz - 0.3, 0.0)
        depth -= 50.0 * np.maximum(-uz - 0.55, 0.0) ** 2 + 40.0 * low * np.exp(-((ux / 0.4) ** 2))
        label = np.full(near.shape, WM, np.uint8)
        # Sulci follow the zero set of a random field on the sphere: long winding clefts, as
        # in a real cortex, rather than isolated pits. Grey matter lines them: the white
        # boundary dips wherever |folds| is below the cleft half-width plus the ribbon's
        # angular width (gm thickness / radius) times |grad folds| (~ mean frequency / sqrt 3),
        # doubled because each cleft has two walls and cuts are oblique.
        reach = params.csf_rim + params.gm_thickness + params.sulcal_depth + 2.0
        shallow = np.flatnonzero((depth > 0) & (depth < reach))
        f = np.abs(params.folds(ux[shallow], uy[shallow], uz[shallow]))
        half = 0.8 * params.sulcal_fraction
        mean_freq = float(params.folds.freqs.mean())
        lining = half + 2.0 * params.gm_thickness / 70.0 * mean_freq / np.sqrt(3)
        cleft = np.sqrt(np.clip(1.0 - (f / half) ** 2, 0.0, 1.0))
        lined = np.sqrt(np.clip(1.0 - (f / lining) ** 2, 0.0, 1.0))
        d = depth[shallow]
        pial = params.csf_rim + params.sulcal_depth * cleft
        white = params.csf_rim + params.gm_thickness + params.sulcal_depth * lined
        label[shallow] = np.where(d < pial, CSF, np.where(d < white, GM, WM))
        # Interhemispheric fissure: a midline CSF cleft from the top down to the callosum,
        # lined by the medial cortex.
        fissure = np.abs(qx[near]) - params.fissure_half_width
        callosum = 30.0 + 10.0 * np.abs(uy)
        medial = (fissure < params.gm_thickness) & (depth < callosum + params.gm_thickness)
        label[medial & (label == WM)] = GM
        label[(fissure < 0) & (depth < callosum)] = CSF
        inside = np.zeros(qx.shape, bool)
        inside[near] = depth > 0
        out[inside] = label[depth > 0]
        return inside

    def _deep(self, out, qx, qy, qz, params: BrainParams) -> np.ndarray:
        """Deep structures over the labels `out` (1-D, returned modified)."""
        inside = out > 0
        for c, radii in _DEEP_GM:
            out[_ellipsoid(qx, qy, qz, c, radii, mirror=True) & inside] = DEEP_GM
        # Hippocampi: tilted ellipsoids; what atrophy removes becomes temporal-horn CSF.
        c, radii = _HIPPOCAMPUS
        cos, sin = np.cos(_HIPPOCAMPUS_PITCH), np.sin(_HIPPOCAMPUS_PITCH)
        hy, hz = qy - c[1], qz - c[2]
        ty, tz = cos * hy + sin * hz, -sin * hy + cos * hz
        hx = np.abs(qx) - c[0]
        full = (hx / radii[0]) ** 2 + (ty / radii[1]) ** 2 + (tz / radii[2]) ** 2
        k = params.hippocampus_scale
        shrunk = (hx / (radii[0] * k)) ** 2 + (ty / (radii[1] * (0.5 + 0.5 * k))) ** 2
        shrunk = shrunk + (tz / (radii[2] * k)) ** 2
        out[(full < 1.0) & inside] = VENTRICLE
        out[(shrunk < 1.0) & inside] = HIPPOCAMPUS
        v = params.ventricle_scale
        ventricles = np.zeros(out.shape, bool)
        for c, radii in _LATERAL_VENTRICLE:
            # Enlarging ventricles also move their walls laterally, away from the midline.
            centre = (c[0] * (1.0 + 0.5 * (v[0] - 1.0)), c[1], c[2])
            ventricles |= _ellipsoid(qx, qy, qz, centre, np.multiply(radii, v), mirror=True)
        c, radii = _TEMPORAL_HORN
        ventricles |= _ellipsoid(qx, qy, qz, c, np.multiply(radii, v), mirror=True)
        c, radii = _THIRD_VENTRICLE
        ventricles |= _ellipsoid(qx, qy, qz, c, np.multiply(radii, v))
        c, radii = _FOURTH_VENTRICLE
        ventricles |= _ellipsoid(qx, qy, qz, c, radii)
        ventricles &= inside
        out[ventricles] = VENTRICLE
        c, radii = _CHOROID
        out[_ellipsoid(qx, qy, qz, c, radii, mirror=True) & ventricles] = CHOROID
        return out


ANATOMIES = ("procedural", "mni152")


def get_anatomy(name: str, voxel_mm: float = 1.0) -> Anatomy:
    """The anatomy source called `name` ('procedural' or 'mni152'; the latter needs nilearn).
    voxel_mm: the finest sampling it will be evaluated at (lets mni152 use a coarser atlas)."""
    if name == "procedural":
        return ProceduralAnatomy()
    if name == "mni152":
        from jaxcf.data.phantoms.mni152 import MNI152Anatomy

        return MNI152Anatomy(voxel_mm)
    raise InputError(f"anatomy must be one of {ANATOMIES}, got {name!r}")
