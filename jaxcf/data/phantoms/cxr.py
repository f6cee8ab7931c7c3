"""Chest radiograph phantoms (PA view): anatomy, findings and rendering.

The image is built as an attenuation map in normalised coordinates (u: column, v: row, both
in [0, 1]; patient right is image left): a soft-tissue torso, air-filled lungs (darker), the
mediastinum and heart (no air: bright), spine, posterior and anterior ribs, clavicles,
diaphragm domes with a gastric bubble, vessels fanning from the hila, and optional hazy
opacities; a radiograph is 1 - exp(-gain * attenuation) plus quantum noise.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

SIDES = ("left", "right", "bilateral")
ZONES = ("upper", "middle", "lower")
EXTENTS = ("small", "moderate", "large")
_EXTENT_RADIUS = {"small": 0.045, "moderate": 0.075, "large": 0.11}


@dataclasses.dataclass(frozen=True)
class Finding:
    """A hazy opacity: side is the patient's (left = image right); centre (u, v) per lung."""

    side: str
    zone: str
    extent: str
    centres: tuple[tuple[float, float], ...]
    strength: float


@dataclasses.dataclass(frozen=True)
class ChestParams:
    """One subject's chest (normalised image units)."""

    midline: float
    tilt: float  # radians, small rotation of the whole chest
    apex: float  # row of the lung apices
    domes: tuple[float, float]  # dome peak rows: (patient right, patient left)
    lung_width: float  # superellipse half-width scale
    heart_scale: float
    rib_phase: float
    gain: float
    gamma: float
    vessels: tuple[tuple[float, float, float, float, float], ...]  # (side, angle, length, w, a)


@dataclasses.dataclass
class Radiograph:
    """image (H, W) uint8; masks (H, W, 3) bool (left lung, right lung, heart); opacity (H, W)
    float32 attenuation added by the finding (zero when normal)."""

    image: np.ndarray
    masks: np.ndarray
    opacity: np.ndarray


def sample_chest(rng: np.random.Generator) -> ChestParams:
    """Draw one subject's chest anatomy and exposure."""
    vessels = []
    for side in (-1.0, 1.0):
        for _ in range(14):
            vessels.append((side, rng.uniform(-1.9, 1.6), rng.uniform(0.08, 0.22),
                            rng.uniform(0.003, 0.007), rng.uniform(0.5, 1.0)))  # fmt: skip
    right_dome = rng.uniform(0.60, 0.67)
    return ChestParams(
        midline=0.5 + rng.normal(0.0, 0.01),
        tilt=np.deg2rad(rng.normal(0.0, 1.5)),
        apex=rng.uniform(0.09, 0.13),
        domes=(right_dome, right_dome + rng.uniform(0.01, 0.04)),
        lung_width=rng.uniform(0.95, 1.05),
        heart_scale=rng.uniform(0.9, 1.1),
        rib_phase=rng.uniform(-0.01, 0.01),
        gain=rng.uniform(1.7, 2.1),
        gamma=rng.uniform(0.9, 1.1),
        vessels=tuple(vessels),
    )


def sample_finding(rng: np.random.Generator, params: ChestParams) -> Finding:
    """Draw an opacity: side (left / right / bilateral), zone (upper / middle / lower)
    and extent (small / moderate / large), with its centre inside the chosen lung zones."""
    side = SIDES[rng.choice(3, p=[0.4, 0.4, 0.2])]
    zone = ZONES[rng.choice(3, p=[0.25, 0.3, 0.45])]
    extent = EXTENTS[rng.integers(3)]
    sides = {"left": (1.0,), "right": (-1.0,), "bilateral": (-1.0, 1.0)}[side]
    top, bottom = params.apex + 0.05, min(params.domes) - 0.02
    third = (bottom - top) / 3.0
    row = top + third * (ZONES.index(zone) + 0.5)
    centres = tuple(
        (params.midline + s * rng.uniform(0.15, 0.27), row + rng.uniform(-0.2, 0.2) * third)
        for s in sides
    )
    return Finding(side, zone, extent, centres, float(rng.uniform(0.35, 0.55)))


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _band(distance, half_width, soft):
    """Soft 0-1 band of |distance| < half_width with edges `soft` wide."""
    return _smoothstep((half_width - np.abs(distance)) / soft + 0.5)


def _half_width(v: np.ndarray) -> np.ndarray:
    """Half-width of the torso per row: neck, sloping shoulders, chest, upper abdomen."""
    return np.interp(
        v,
        [0.0, 0.05, 0.09, 0.13, 0.2, 0.5, 0.8, 1.0],
        [0.085, 0.09, 0.25, 0.4, 0.45, 0.46, 0.44, 0.43],
    )


def anatomy_masks(params: ChestParams, u: np.ndarray, v: np.ndarray):
    """Boolean masks (right lung, left lung, heart, body) at points (u, v), patient sides."""
    hw = _half_width(v)
    body = np.abs(u - params.midline) < hw
    heart_c = (params.midline + 0.045, params.domes[1] - 0.075)
    cos, sin = np.cos(-0.35), np.sin(-0.35)
    du, dv = u - heart_c[0], v - heart_c[1]
    hu, hv = cos * du + sin * dv, -sin * du + cos * dv
    k = params.heart_scale
    heart_shape = (hu / (0.155 * k)) ** 2 + (hv / (0.115 * k)) ** 2 < 1.0
    lungs = []
    for index, side in enumerate((-1.0, 1.0)):
        d = side * (u - params.midline)
        dome = params.domes[index] + 2.3 * (d - 0.19) ** 2
        centre, half = (0.215, 0.19) if side < 0 else (0.205, 0.18)
        # Tapered top: apices are narrower than the bases.
        half = half * params.lung_width * (0.45 + 0.55 * _smoothstep((v - params.apex) / 0.22))
        vc, vb = (params.apex + 0.82) / 2.0, (0.82 - params.apex) / 2.0
        superellipse = np.abs((d - centre) / half) ** 2.6 + np.abs((v - vc) / vb) ** 2.6 < 1.0
        medial = 0.045 + 0.03 * _smoothstep((v - 0.2) / 0.15)
        if side > 0:  # aortic knob bulges into the left upper lung
            medial = medial + 0.04 * np.exp(-(((v - 0.31) / 0.03) ** 2))
        lungs.append(superellipse & (v < dome) & (d > medial) & ~heart_shape)
    dome_rows = np.where(u < params.midline, params.domes[0], params.domes[1])
    heart = heart_shape & (v < dome_rows + 2.3 * (np.abs(u - params.midline) - 0.19) ** 2 + 0.02)
    return lungs[0], lungs[1], heart, body


def render(
    params: ChestParams,
    size: int,
    finding: Finding | None,
    noise_rng: np.random.Generator,
) -> Radiograph:
    """Render an (size, size) radiograph. noise_rng always draws the same numbers, so the
    same subject with and without a finding differs only by the opacity."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    v0, u0 = np.meshgrid(coords, coords, indexing="ij")
    # Small whole-chest rotation about the image centre (patient positioning).
    cos, sin = np.cos(params.tilt), np.sin(params.tilt)
    u = 0.5 + cos * (u0 - 0.5) - sin * (v0 - 0.5)
    v = 0.5 + sin * (u0 - 0.5) + cos * (v0 - 0.5)
    right, left, heart, body = anatomy_masks(params, u, v)
    px = 1.0 / size
    blur = lambda m, s: ndimage.gaussian_filter(m.astype(np.float32), s * size)
    mid = params.midline
    d = np.abs(u - mid)
    hw = _half_width(v)
    thickness = np.sqrt(np.clip(1.0 - (d / hw) ** 2, 0.0, 1.0)) * blur(body, 0.004)
    attenuation = 0.95 * thickness
    lungs = right | left
    air = blur(lungs, 0.012)
    attenuation -= 0.62 * air * (0.7 + 0.3 * blur(lungs, 0.04))
    attenuation += 0.08 * blur(heart, 0.006)
    # Spine behind the mediastinum, with vertebral bodies and disc spaces.
    vertebrae = 0.85 + 0.15 * np.cos(2 * np.pi * v / 0.045)
    attenuation += 0.22 * _band(u - mid, 0.032, 2 * px) * vertebrae * (v > 0.05)
    attenuation -= 0.18 * _band(u - mid, 0.013, 2 * px) * _band(v - 0.18, 0.15, 0.02)  # trachea
    attenuation += _bones(params, u, v, d, hw, px)
    # Gastric bubble under the left hemidiaphragm.
    bubble = ((u - mid - 0.16) / 0.05) ** 2 + ((v - params.domes[1] - 0.06) / 0.03) ** 2 < 1.0
    attenuation -= 0.25 * blur(bubble, 0.004)
    attenuation += 0.09 * _vessels(params, u, v) * air
    # Mottled parenchyma: a faint correlated texture inside the lungs.
    texture = ndimage.gaussian_filter(noise_rng.standard_normal((size, size)), 0.01 * size)
    attenuation += 0.025 * air * texture.astype(np.float32) / max(float(texture.std()), 1e-6)
    patch = ndimage.gaussian_filter(noise_rng.standard_normal((size, size)), 0.012 * size)
    patch = (patch / max(float(patch.std()), 1e-6)).astype(np.float32)
    opacity = np.zeros((size, size), np.float32)
    if finding is not None:
        radius = _EXTENT_RADIUS[finding.extent]
        for cu, cv in finding.centres:
            r2 = ((u - cu) ** 2 + (v - cv) ** 2) / radius**2
            blob = np.exp(-1.5 * r2) * np.clip(0.75 + 0.35 * patch, 0.0, None)
            opacity += finding.strength * blob.astype(np.float32)
        opacity *= blur(lungs, 0.01)
    attenuation += opacity
    image = 1.0 - np.exp(-params.gain * np.clip(attenuation, 0.0, None))
    image = np.clip(image + 0.012 * noise_rng.standard_normal((size, size)), 0.0, 1.0)
    image = image**params.gamma
    masks = np.stack([left, right, heart], axis=-1)
    return Radiograph(np.round(image * 255.0).astype(np.uint8), masks, opacity)


def _bones(params: ChestParams, u, v, d, hw, px) -> np.ndarray:
    """Attenuation of ribs (posterior and anterior) and clavicles."""
    out = np.zeros_like(u)
    inside = np.clip(1.0 - d / hw, 0.0, 1.0) > 0.02
    lateral = np.clip(d / 0.4, 0.0, 1.2)
    for i in range(10):
        row = params.apex + params.rib_phase + 0.055 * i + 0.0015 * i * i
        # Posterior ribs leave the spine, rise a little, then curve down the lateral wall.
        centre = row - 0.06 * lateral + 0.10 * lateral**2 + 0.12 * lateral**5
        half = 0.009 + 0.006 * lateral
        dist = (v - centre) / half
        cortex = 0.55 + 0.45 * np.clip(np.abs(dist), 0.0, 1.0) ** 4
        out += 0.14 * _band(v - centre, half, 2 * px) * cortex * (d > 0.03) * inside
        # Anterior ribs run from the lateral wall down towards the sternum, fainter.
        front = row + 0.05 + 0.12 * (1.0 - lateral)
        out += 0.05 * _band(v - front, 0.014, 3 * px) * (d > 0.1) * (lateral < 1.0) * inside
    along = np.clip((d - 0.035) / 0.27, 0.0, 1.0)
    clavicle = 0.165 - 0.05 * along + 0.012 * np.sin(2 * np.pi * along)
    out += 0.28 * _band(v - clavicle, 0.012, 2 * px) * (d > 0.035) * (d < 0.31)
    return out


def _vessels(params: ChestParams, u, v) -> np.ndarray:
    """Branching vascular markings fanning out from the hila (0-1 intensity)."""
    out = np.zeros_like(u)
    for side, angle, length, width, strength in params.vessels:
        hu, hv = params.midline + side * 0.1, 0.43
        du, dv = side * np.cos(angle) * length, np.sin(angle) * length
        t = np.clip(((u - hu) * du + (v - hv) * dv) / (du * du + dv * dv), 0.0, 1.0)
        dist2 = (u - hu - t * du) ** 2 + (v - hv - t * dv) ** 2
        # Vessels taper and fade towards the periphery.
        w = width * (1.0 - 0.6 * t)
        out += strength * (1.0 - t) * np.exp(-dist2 / (2 * w * w))
    return np.clip(out, 0.0, 1.5)
