"""One BraTS case in, slices for a 2-D model out, and the model's answers back into volumes.

    case = load_case("BraTS2021_00012/")               # or a 4-D NIfTI (X, Y, Z, 4)
    slices = case_slices(case, image_size=64)           # what the model sees
    volume = slices.to_volume(per_slice_maps)           # (B, S, S[, C]) -> (X, Y, Z[, C])
    write_volume(out / "heatmap.nii.gz", volume, case.affine)

Slices are prepared exactly as training prepared them (`jaxcf.data.transforms`: each
modality divided by its 99th-percentile brain intensity, [-1, 1], padded square, resized),
so a model sees the same distribution at inference. Outputs go back through the inverse
path (resize to the padded square, crop) and, for images, the inverse intensity scaling,
so counterfactual NIfTI files are in the input's intensity units with its affine.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import tempfile

import nibabel as nib
import numpy as np

from jaxcf.data import transforms
from jaxcf.data.errors import DataError
from jaxcf.data.sources import BRATS_LAYOUTS, MODALITIES, BraTSSource, read_nifti


@dataclasses.dataclass
class Case:
    """image (X, Y, Z, 4) raw intensities in the order t1, t1ce, t2, flair; seg (X, Y, Z)
    uint8 or None; affine (4, 4); case_id; et_label (4 for BraTS 2021, 3 for 2023 / PEDs)."""

    image: np.ndarray
    seg: np.ndarray | None
    affine: np.ndarray
    case_id: str
    et_label: int = 4


def load_case(path: str | os.PathLike) -> Case:
    """A BraTS case folder (any layout of jaxcf.data.sources) or a 4-D NIfTI with the four
    modalities in the order t1, t1ce, t2, flair on the last axis."""
    path = pathlib.Path(path)
    if path.is_dir():
        layouts = [
            name for name, spec in BRATS_LAYOUTS.items() if re.fullmatch(spec["pattern"], path.name)
        ]
        if not layouts:
            patterns = {k: v["pattern"] for k, v in BRATS_LAYOUTS.items()}
            raise DataError(f"--input: {path} is not a BraTS case folder (names like {patterns})")
        source = BraTSSource(path.parent, layout=layouts[0], require_seg=False)
        record = source[source.case_ids.index(path.name)]
        return Case(
            record["image"], record.get("seg"), record["affine"], path.name, source.et_label
        )
    if not path.is_file():
        raise DataError(f"--input: no such case folder or file: {path}")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, np.float32)
    except Exception as err:  # nibabel raises many types for a bad file
        raise DataError(f"cannot read NIfTI {path}: {type(err).__name__}: {err}") from None
    if data.ndim != 4 or data.shape[-1] != len(MODALITIES):
        raise DataError(
            f"{path}: expected a 4-D volume (X, Y, Z, 4) with modalities {MODALITIES}, "
            f"got shape {data.shape}"
        )
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise DataError(f"{path}: {bad} NaN/inf voxels")
    name = path.name.removesuffix(".gz").removesuffix(".nii")
    return Case(data, None, np.asarray(img.affine, np.float64), name)


def read_mask(path: str | os.PathLike, shape: tuple[int, ...]) -> np.ndarray:
    """A user's region NIfTI (X, Y, Z), non-zero = region, checked against the case shape."""
    mask = read_nifti(pathlib.Path(path))[0]
    if mask.shape != tuple(shape):
        raise DataError(f"--mask: {path} has shape {mask.shape}, the case has {tuple(shape)}")
    return mask != 0


@dataclasses.dataclass
class CaseSlices:
    """The axial slices of a case at the model's resolution.

    image (B, S, S, 4) in [-1, 1]; seg (B, S, S) uint8 or None; z (B,) slice indices;
    scale (4,) the per-modality 99th percentiles (to undo the normalisation); shape (X, Y, Z)."""

    image: np.ndarray
    seg: np.ndarray | None
    z: np.ndarray
    scale: np.ndarray
    shape: tuple[int, int, int]

    def to_volume(self, maps: np.ndarray, fill: float = 0.0, order: int = 1) -> np.ndarray:
        """(B, S, S) or (B, S, S, C) per-slice maps -> (X, Y, Z[, C]) volume; slices the
        model did not see get `fill`. order 0 (nearest) for masks, 1 (linear) otherwise."""
        x, y, z = self.shape
        side = max(x, y)
        extra = maps.shape[3:]
        out = np.full((x, y, z, *extra), fill, np.float32)
        px, py = (side - x) // 2, (side - y) // 2  # undo pad_to_square's centring
        for i, k in enumerate(self.z):
            m = maps[i].astype(np.float32).reshape(*maps.shape[1:3], -1)
            if order == 0:
                up = np.stack(
                    [transforms.resize_labels(m[..., c], (side, side)) for c in range(m.shape[-1])],
                    -1,
                )
            else:
                up = transforms.resize_image(m, (side, side))
            up = up[px : px + x, py : py + y]
            out[:, :, k] = up if extra else up[..., 0]
        return out

    def to_intensity(self, images: np.ndarray) -> np.ndarray:
        """(X, Y, Z, 4) images in [-1, 1] -> the input's intensity units (inverse of the
        99th-percentile scaling; values the forward clip cut off are not recovered)."""
        return ((images + 1.0) / 2.0) * self.scale.astype(np.float32)


def case_slices(case: Case, image_size: int, min_brain_fraction: float = 0.05) -> CaseSlices:
    """The case's axial slices with enough brain, prepared as for training (slices2d)."""
    record = {"image": case.image, "case_id": case.case_id}
    if case.seg is not None:
        record["seg"] = case.seg
    slices = transforms.diffscm_slices(record, image_size, min_brain_fraction)
    if not slices:
        raise DataError(f"{case.case_id}: no axial slice has >= {min_brain_fraction:.0%} brain")
    scale = np.array(
        [
            np.percentile(ch[ch != 0], 99) if np.any(ch != 0) else 0.0
            for ch in np.moveaxis(case.image, -1, 0)
        ],
        np.float32,
    )
    return CaseSlices(
        image=np.stack([s["image"] for s in slices]),
        seg=np.stack([s["seg"] for s in slices]) if case.seg is not None else None,
        z=np.array([s["slice_index"] for s in slices]),
        scale=scale,
        shape=tuple(case.image.shape[:3]),
    )


def write_volume(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray) -> None:
    """Write a NIfTI atomically (temporary file in the same folder, then rename)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".nii.gz", prefix=".tmp-")
    os.close(fd)
    try:
        nib.save(image, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def output_dir(path: str | os.PathLike, flag: str = "--out") -> pathlib.Path:
    """Check an output folder before any compute: create it (and its parents), or raise a
    DataError naming the flag when it is an existing file or cannot be written."""
    path = pathlib.Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(f"{flag}: {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{flag}: cannot create {path} ({err.strerror})") from None
    if not os.access(path, os.W_OK):
        raise DataError(f"{flag}: {path} is not writable")
    return path
