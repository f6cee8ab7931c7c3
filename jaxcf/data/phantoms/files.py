"""Atomic, byte-deterministic file writers (NIfTI, PNG, JPEG, CSV, text).

Every writer goes through `write_bytes`: the payload is written to a hidden temporary file in
the destination folder and moved into place with `os.replace`, so an interrupted run never
leaves a half-written file under its real name. Payloads are built in memory with fixed
metadata (gzip mtime 0, no file name in the gzip header) so the same arrays always give the
same bytes.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import pathlib
from collections.abc import Iterable, Sequence

import nibabel as nib
import numpy as np
from PIL import Image


def write_bytes(path: pathlib.Path, payload: bytes) -> None:
    """Write `payload` to `path` atomically (temporary file in the same folder + os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(payload)
        os.replace(tmp, path)
    finally:
        # Only reached with the temporary still present if writing or renaming failed.
        if tmp.exists():
            tmp.unlink()


def nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """Gzipped NIfTI-1 bytes of `array` (X, Y, Z) with `affine`; zooms come from the affine.

    gzip level 1: volumes of noisy float32 compress poorly at any level, and level 1 is
    several times faster than nibabel's default, which dominates the cost at full size.
    """
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    # Scanner-anatomical codes on both forms, as BraTS files have, so readers that prefer
    # either the qform or the sform see the same affine.
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=1, mtime=0)


def write_nifti(path: pathlib.Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write a `.nii.gz` atomically. `array` (X, Y, Z) float32 image or uint8 label map."""
    write_bytes(path, nifti_bytes(array, affine))


def write_png(path: pathlib.Path, array: np.ndarray) -> None:
    """Write an 8-bit greyscale PNG of `array` (H, W) uint8."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buffer, "PNG")
    write_bytes(path, buffer.getvalue())


def write_jpeg(path: pathlib.Path, array: np.ndarray, quality: int = 95) -> None:
    """Write an 8-bit greyscale JPEG of `array` (H, W) uint8."""
    buffer = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))
    image.save(buffer, "JPEG", quality=quality)
    write_bytes(path, buffer.getvalue())


def write_csv(path: pathlib.Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Write a CSV with `header` and `rows` (Unix line endings)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_bytes(path, buffer.getvalue().encode())


def write_text(path: pathlib.Path, text: str) -> None:
    """Write a UTF-8 text file."""
    write_bytes(path, text.encode())
