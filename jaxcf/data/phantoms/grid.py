"""The phantom voxel grid: BraTS proportions, physical spacing, affine, and mm coordinates.

A phantom of `--size S` has shape (S, S, round(S * 155 / 240)) and spans the same physical
field of view as a 240 x 240 x 155 BraTS volume at 1 mm, so anatomy is modelled in mm and
only sampled differently per size.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from jaxcf.errors import InputError

FIELD_OF_VIEW_MM = (240.0, 240.0, 155.0)
MIN_SIZE = 16


@dataclasses.dataclass(frozen=True)
class Grid:
    """Voxel grid of one phantom volume.

    shape: (X, Y, Z) voxels; spacing: (3,) mm; affine: (4, 4) voxel -> world (mm), the BraTS
    form diag(-sx, -sy, sz) with the y offset (Y - 1) * sy.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    @property
    def affine(self) -> np.ndarray:
        sx, sy, sz = self.spacing
        affine = np.diag([-sx, -sy, sz, 1.0])
        affine[1, 3] = (self.shape[1] - 1) * sy
        return affine

    @property
    def voxel_ml(self) -> float:
        """Voxel volume in mL as a reader computes it from the header's float32 zooms."""
        zooms = np.asarray(self.spacing, dtype=np.float32).astype(np.float64)
        return float(np.prod(zooms)) / 1000.0

    def axes_mm(self, supersample: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Centred RAS coordinates (mm) of voxel (sub-)sample centres along each axis.

        Returns three float32 vectors of lengths (X * s, Y * s, Z * s). x increases toward the
        patient's right, y toward anterior, z toward superior, all zero at the volume centre;
        with this affine a larger voxel index i means more patient-left and a larger j more
        posterior (as in real BraTS files).
        """
        axes = []
        sign = (-1.0, -1.0, 1.0)
        for n, step, s in zip(self.shape, self.spacing, sign, strict=True):
            sub = (np.arange(n * supersample) + 0.5) / supersample - 0.5
            axes.append((s * (sub - (n - 1) / 2.0) * step).astype(np.float32))
        return axes[0], axes[1], axes[2]


def make_grid(size: int) -> Grid:
    """Grid for `--size size`: (size, size, round(size * 155 / 240)) voxels over 240x240x155 mm."""
    if size < MIN_SIZE:
        raise InputError(f"size must be >= {MIN_SIZE}, got {size}")
    depth = round(size * FIELD_OF_VIEW_MM[2] / FIELD_OF_VIEW_MM[0])
    spacing = (
        FIELD_OF_VIEW_MM[0] / size,
        FIELD_OF_VIEW_MM[1] / size,
        FIELD_OF_VIEW_MM[2] / depth,
    )
    return Grid(shape=(size, size, depth), spacing=spacing)


def supersample_factor(size: int) -> int:
    """Sub-samples per voxel edge: 2 up to size 96 (partial-volume edges instead of staircase
    labels when voxels are coarse, >= 2.5 mm), 1 above (finer voxels; 8x the points would
    cost seconds per volume)."""
    return 2 if size <= 96 else 1


def pool(array: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor^3 blocks: (X*f, Y*f, Z*f) -> (X, Y, Z) float32."""
    if factor == 1:
        return array.astype(np.float32, copy=False)
    # Summing the factor^3 strided views is ~10x faster than a mean over reshaped axes.
    shape = tuple(n // factor for n in array.shape)
    out = np.zeros(shape, np.float32)
    for i, j, k in itertools.product(range(factor), repeat=3):
        out += array[i::factor, j::factor, k::factor]
    out *= np.float32(1.0 / factor**3)
    return out


def pool_mode(
    labels: np.ndarray, factor: int, num_labels: int, *, skip_zero: bool = False
) -> np.ndarray:
    """Most frequent label per factor^3 block (ties -> smaller label): (X*f, Y*f, Z*f) uint8 ->
    (X, Y, Z) uint8. With skip_zero, the most frequent non-zero label (0 only if none)."""
    if factor == 1:
        return labels.astype(np.uint8, copy=False)
    best = pool(labels == 0, factor)
    if skip_zero:
        best[:] = 0.0
    mode = np.zeros(best.shape, np.uint8)
    for value in range(1, num_labels):
        count = pool(labels == value, factor)
        better = count > best
        mode[better] = value
        best = np.maximum(best, count)
    return mode
