"""Numpy preprocessing of the papers, as plain functions (used by prepare and tests) and as
Grain ``Map`` / ``RandomMap`` transforms (used by the pipelines; random ones take the
``np.random.Generator`` Grain passes, so they are seeded and reproducible).

Conventions: images channels-last float32, seg uint8 without a channel axis, records are
dicts; transforms return a new dict and never modify their input.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grain
import numpy as np
from skimage.transform import resize

from jaxcf.data.text import Tokenizer

Record = dict[str, Any]


# ----------------------------------------------------------------------------------------------
# Resizing helpers
# ----------------------------------------------------------------------------------------------
def pad_to_square(img: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """(H, W, ...) -> (M, M, ...), M = max(H, W), centred, so resizing keeps the aspect."""
    h, w = img.shape[:2]
    m = max(h, w)
    pads = [((m - h) // 2, m - h - (m - h) // 2), ((m - w) // 2, m - w - (m - w) // 2)]
    pads += [(0, 0)] * (img.ndim - 2)
    return np.pad(img, pads, constant_values=fill)


def resize_image(img: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Linear resize of the spatial axes of (..., C) with anti-aliasing when shrinking."""
    if img.shape[:-1] == tuple(shape):
        return img.astype(np.float32, copy=False)
    out = resize(img, (*shape, img.shape[-1]), order=1, anti_aliasing=True, preserve_range=True)
    return out.astype(np.float32)


def resize_labels(seg: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour resize of an integer label map (order 0: no invented label values)."""
    if seg.shape == tuple(shape):
        return seg
    out = resize(seg, shape, order=0, anti_aliasing=False, preserve_range=True)
    return out.astype(seg.dtype)


# ----------------------------------------------------------------------------------------------
# Diff-SCM (Sanchez et al. 2022): BraTS axial slices in [-1, 1]
# ----------------------------------------------------------------------------------------------
def diffscm_normalize(volume: np.ndarray) -> np.ndarray:
    """(X, Y, Z, C) raw -> (X, Y, Z, C) in [-1, 1]: per modality divided by the 99th percentile
    of its foreground (non-zero) voxels, clipped to [0, 1], mapped to [-1, 1] (background -1).

    The foreground percentile makes the scale independent of how much air the field of view
    holds; clipping tames the bright outliers (vessels, fat) that would squash the brain range.
    """
    out = np.empty(volume.shape, np.float32)
    for c in range(volume.shape[-1]):
        ch = volume[..., c]
        fg = ch[ch != 0]
        p99 = float(np.percentile(fg, 99)) if fg.size else 0.0
        scaled = np.clip(ch / p99, 0.0, 1.0) if p99 > 0 else np.zeros_like(ch)
        out[..., c] = 2.0 * scaled - 1.0
    return out


def brain_fraction(volume: np.ndarray) -> np.ndarray:
    """(X, Y, Z, C) raw -> (Z,) fraction of each axial slice where any modality is non-zero."""
    return np.any(volume != 0, axis=-1).mean(axis=(0, 1))


def diffscm_slices(
    record: Record, image_size: int = 64, min_brain_fraction: float = 0.05
) -> list[Record]:
    """A BraTS volume record -> the kept axial slices, each a record with
    image (S, S, C) float32 in [-1, 1], seg (S, S) uint8 (if the volume has one),
    label int32 (1 iff the full-resolution slice has a seg > 0 voxel), slice_index int.

    Slices whose brain fraction is below ``min_brain_fraction`` are skipped (mostly air at the
    top / bottom of the head carries no anatomy to learn). Non-square slices are padded to a
    square with background before resizing so anatomy is not stretched.
    """
    vol = record["image"]
    norm = diffscm_normalize(vol)
    frac = brain_fraction(vol)
    seg = record.get("seg")
    out = []
    for z in np.flatnonzero(frac >= min_brain_fraction):
        img = resize_image(pad_to_square(norm[:, :, z], fill=-1.0), (image_size, image_size))
        rec: Record = {"image": img, "slice_index": int(z), "case_id": record.get("case_id")}
        if seg is not None:
            s = seg[:, :, z]
            rec["seg"] = resize_labels(pad_to_square(s), (image_size, image_size))
            # Diff-SCM: "unhealthy" = at least one tumour voxel; decided at full resolution so a
            # tiny tumour that nearest-neighbour resizing drops still counts.
            rec["label"] = np.int32(s.any())
        out.append(rec)
    return out


# ----------------------------------------------------------------------------------------------
# WDM (Friedrich et al. 2024; wdm-3d bratsloader): volumes in [-1, 1] on a cube
# ----------------------------------------------------------------------------------------------
def cube_geometry(shape: tuple[int, ...], volume_size: int) -> tuple[int, int | None]:
    """Cube side to zero-pad a (X, Y, Z) volume to, and the integer average-pool factor down to
    ``volume_size`` (None: resize instead).

    WDM pads 240 x 240 x 155 to 256^3 and pools by 2 to 128^3; in general the cube is the
    smallest multiple of ``volume_size`` >= the largest side when that adds at most 1/8 of
    padding, else the largest side itself (then resized), so odd phantom sizes still work.
    """
    side = max(shape)
    multiple = -(-side // volume_size) * volume_size
    if multiple - side <= side / 8:
        return multiple, multiple // volume_size
    return side, None


def _pad_cube(x: np.ndarray, side: int) -> np.ndarray:
    pads = [((side - n) // 2, side - n - (side - n) // 2) for n in x.shape[:3]]
    return np.pad(x, pads + [(0, 0)] * (x.ndim - 3))


def wdm_volume(
    volume: np.ndarray, volume_size: int = 128, value_range: tuple[float, float] = (-1.0, 1.0)
) -> np.ndarray:
    """(X, Y, Z, C) raw -> (S, S, S, C) float32 in ``value_range``, S = ``volume_size``.

    Per modality clip to the 0.1 / 99.9 percentiles of the whole volume and min-max to [0, 1]
    (wdm-3d: robust to single hot voxels), zero-pad to a cube (zero = the minimum, i.e.
    background), average-pool by the integer factor (or resize), then map to ``value_range``
    (default [-1, 1]: wdm-3d trains with ``--renormalize=True``, 2x - 1, and its
    ``clip_denoised`` clamps to [-1, 1]).
    """
    out = np.empty(volume.shape, np.float32)
    for c in range(volume.shape[-1]):
        ch = volume[..., c].astype(np.float32)
        lo, hi = np.percentile(ch, [0.1, 99.9])
        ch = np.clip(ch, lo, hi)
        mn, mx = float(ch.min()), float(ch.max())
        out[..., c] = (ch - mn) / (mx - mn) if mx > mn else 0.0
    side, factor = cube_geometry(volume.shape[:3], volume_size)
    cube = _pad_cube(out, side)
    if factor is not None:
        s, f, c = volume_size, factor, cube.shape[-1]
        cube = cube.reshape(s, f, s, f, s, f, c).mean(axis=(1, 3, 5))
    else:
        cube = np.clip(resize_image(cube, (volume_size,) * 3), 0.0, 1.0)
    lo, hi = value_range
    return (cube * (hi - lo) + lo).astype(np.float32)


def wdm_seg(seg: np.ndarray, volume_size: int = 128) -> np.ndarray:
    """(X, Y, Z) labels -> (S, S, S) uint8 on the same cube as :func:`wdm_volume` (nearest)."""
    side, _ = cube_geometry(seg.shape, volume_size)
    return resize_labels(_pad_cube(seg, side), (volume_size,) * 3)


# ----------------------------------------------------------------------------------------------
# Paper 002 (BraTS-PEDs refinement): foreground crop, z-score, balanced crops, augmentation
# ----------------------------------------------------------------------------------------------
def foreground_bbox(volume: np.ndarray) -> tuple[slice, slice, slice]:
    """Bounding box of voxels where any modality of (X, Y, Z, C) is non-zero."""
    fg = np.any(volume != 0, axis=-1)
    if not fg.any():
        return tuple(slice(0, n) for n in fg.shape)  # type: ignore[return-value]
    idx = [np.flatnonzero(fg.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    return tuple(slice(int(i[0]), int(i[-1]) + 1) for i in idx)  # type: ignore[return-value]


def zscore_nonzero(volume: np.ndarray) -> np.ndarray:
    """(X, Y, Z, C) -> z-score per modality over its non-zero voxels; background stays 0
    (MONAI NormalizeIntensity(nonzero=True, channel_wise=True), as paper 002)."""
    out = np.zeros(volume.shape, np.float32)
    for c in range(volume.shape[-1]):
        ch = volume[..., c]
        nz = ch != 0
        if nz.any():
            v = ch[nz].astype(np.float64)
            out[..., c][nz] = (v - v.mean()) / max(float(v.std()), 1e-8)
    return out


def seg3d_preprocess(record: Record) -> Record:
    """Crop to the foreground bounding box and z-score: image (X', Y', Z', C), seg (X', Y', Z')."""
    box = foreground_bbox(record["image"])
    out = dict(record, image=zscore_nonzero(record["image"][box]), bbox=box)
    if "seg" in record:
        out["seg"] = record["seg"][box]
    return out


def pad_to_shape(x: np.ndarray, shape: tuple[int, ...], fill: float = 0) -> np.ndarray:
    """Zero-pads the leading len(shape) axes at the end up to ``shape``."""
    pads = [(0, max(0, s - n)) for s, n in zip(shape, x.shape, strict=False)]
    return np.pad(x, pads + [(0, 0)] * (x.ndim - len(shape)), constant_values=fill)


@dataclasses.dataclass(frozen=True)
class RandomPosNegCrop(grain.transforms.RandomMap):
    """Random ``crop_size``^3 crop of image (X, Y, Z, C) / seg (X, Y, Z), centred on a tumour
    voxel with probability ``pos_fraction``, else on a background voxel inside the head
    (MONAI RandCropByPosNegLabel, paper 002: balances the rare tumour class)."""

    crop_size: int = 96
    pos_fraction: float = 0.5

    def random_map(self, element: Record, rng: np.random.Generator) -> Record:
        size = (self.crop_size,) * 3
        img, seg = pad_to_shape(element["image"], size), pad_to_shape(element["seg"], size)
        if rng.random() < self.pos_fraction and seg.any():
            centre = np.unravel_index(rng.choice(np.flatnonzero(seg)), seg.shape)
        else:
            centre = self._negative(img, seg, rng)
        start = [
            int(np.clip(c - self.crop_size // 2, 0, n - self.crop_size))
            for c, n in zip(centre, seg.shape, strict=True)
        ]
        box = tuple(slice(s, s + self.crop_size) for s in start)
        return dict(
            element, image=np.ascontiguousarray(img[box]), seg=np.ascontiguousarray(seg[box])
        )

    @staticmethod
    def _negative(img: np.ndarray, seg: np.ndarray, rng: np.random.Generator) -> tuple:
        # Rejection sampling is O(1) per try and background is most of a volume; fall back to
        # an exhaustive list only for odd volumes (all tumour / all air).
        for _ in range(64):
            c = tuple(int(rng.integers(n)) for n in seg.shape)
            if seg[c] == 0 and np.any(img[c] != 0):
                return c
        cand = np.flatnonzero(seg == 0)
        if cand.size == 0:
            cand = np.arange(seg.size)
        return np.unravel_index(rng.choice(cand), seg.shape)


@dataclasses.dataclass(frozen=True)
class RandomFlip(grain.transforms.RandomMap):
    """Flips image (spatial..., C) and seg (spatial...) together along each of ``axes`` with
    probability ``p`` (paper 002: flips on the 3 axes)."""

    axes: tuple[int, ...] = (0, 1, 2)
    p: float = 0.5

    def random_map(self, element: Record, rng: np.random.Generator) -> Record:
        flip = tuple(a for a in self.axes if rng.random() < self.p)
        out = dict(element)
        if flip:
            for k in ("image", "seg"):
                if k in element:
                    out[k] = np.ascontiguousarray(np.flip(element[k], axis=flip))
        return out


@dataclasses.dataclass(frozen=True)
class RandomRot90(grain.transforms.RandomMap):
    """Rotates image and seg by k * 90 degrees in the axial (X, Y) plane; k in {0, 1, 2, 3} for
    square planes, {0, 2} otherwise (odd k would change the shape)."""

    axes: tuple[int, int] = (0, 1)

    def random_map(self, element: Record, rng: np.random.Generator) -> Record:
        img = element["image"]
        square = img.shape[self.axes[0]] == img.shape[self.axes[1]]
        k = int(rng.integers(4)) if square else 2 * int(rng.integers(2))
        out = dict(element)
        for key in ("image", "seg"):
            if key in element:
                out[key] = np.ascontiguousarray(np.rot90(element[key], k=k, axes=self.axes))
        return out


@dataclasses.dataclass(frozen=True)
class RandomIntensity(grain.transforms.RandomMap):
    """Per channel x * (1 + U(-scale, scale)) + U(-shift, shift) (MONAI RandScaleIntensity /
    RandShiftIntensity, paper 002: +-0.1); robustness to scanner gain and offset."""

    scale: float = 0.1
    shift: float = 0.1

    def random_map(self, element: Record, rng: np.random.Generator) -> Record:
        img = element["image"]
        c = img.shape[-1]
        a = 1.0 + rng.uniform(-self.scale, self.scale, c)
        b = rng.uniform(-self.shift, self.shift, c)
        return dict(element, image=(img * a + b).astype(np.float32))


def seg3d_augmentations(crop_size: int = 96, pos_fraction: float = 0.5) -> list[Any]:
    """Paper 002's training chain: balanced crop, flips on 3 axes, axial rot90, intensity."""
    return [
        RandomPosNegCrop(crop_size, pos_fraction),
        RandomFlip((0, 1, 2)),
        RandomRot90((0, 1)),
        RandomIntensity(0.1, 0.1),
    ]


# ----------------------------------------------------------------------------------------------
# CXR (paper 003) and prompts
# ----------------------------------------------------------------------------------------------
def cxr_preprocess(record: Record, image_size: int = 512) -> Record:
    """image (H, W, 1) 0..255 -> (S, S, 1) float32 in [-1, 1]; masks (H, W, 3) -> (S, S, 3)
    uint8 0/1 (nearest). Padded to a square with black first so lungs keep their aspect."""
    img = resize_image(pad_to_square(record["image"]), (image_size, image_size))
    out = dict(record, image=np.clip(img / 127.5 - 1.0, -1.0, 1.0).astype(np.float32))
    if "masks" in record:
        out["masks"] = resize_labels(pad_to_square(record["masks"]), (image_size, image_size, 3))
    return out


@dataclasses.dataclass(frozen=True)
class TokenizePrompt(grain.transforms.Map):
    """record['prompt'] str -> prompt_ids int32 (L,), prompt_mask bool (L,)."""

    tokenizer: Tokenizer

    def map(self, element: Record) -> Record:
        ids, mask = self.tokenizer.encode(element["prompt"])
        return dict(element, prompt_ids=ids, prompt_mask=mask)


@dataclasses.dataclass(frozen=True)
class DiffSCMNormalize(grain.transforms.Map):
    """Map form of :func:`diffscm_normalize` on record['image'] (X, Y, Z, C)."""

    def map(self, element: Record) -> Record:
        return dict(element, image=diffscm_normalize(element["image"]))


@dataclasses.dataclass(frozen=True)
class WDMPreprocess(grain.transforms.Map):
    """Map form of :func:`wdm_volume` / :func:`wdm_seg` on a volume record."""

    volume_size: int = 128
    value_range: tuple[float, float] = (-1.0, 1.0)

    def map(self, element: Record) -> Record:
        out = dict(element, image=wdm_volume(element["image"], self.volume_size, self.value_range))
        if "seg" in element:
            out["seg"] = wdm_seg(element["seg"], self.volume_size)
        return out


@dataclasses.dataclass(frozen=True)
class CXRPreprocess(grain.transforms.Map):
    """Map form of :func:`cxr_preprocess`."""

    image_size: int = 512

    def map(self, element: Record) -> Record:
        return cxr_preprocess(element, self.image_size)
