"""Procedural phantom datasets written in exactly the real datasets' on-disk layouts.

    from jaxcf.data import phantoms
    summary = phantoms.generate("brats2021", "/tmp/brats", cases=16, size=64, seed=0)

Kinds (see docs/data.md): brats2021, brats2023, brats-peds (4 MR sequences + seg),
ms (FLAIR + lesion mask + participants.csv), adni (T1w + diagnosis.csv) and cxr (PA JPEGs,
reports, organ masks, metadata and findings CSVs). The same seed gives byte-identical files.
Array-level renderers for tests and ground-truth counterfactuals: `brain.brats_case`,
`brain.ms_case`, `brain.adni_case`, `cxr.render`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shutil

from jaxcf.data.errors import DataError
from jaxcf.data.phantoms import brain, cxr_dataset
from jaxcf.data.phantoms.anatomy import ANATOMIES
from jaxcf.data.phantoms.grid import MIN_SIZE, make_grid
from jaxcf.errors import InputError

KINDS = ("brats2021", "brats2023", "brats-peds", "ms", "adni", "cxr")
# Most cases each layout's ids can name (5-digit BraTS, 3-digit MS, 4-digit ADNI subjects).
MAX_CASES = {"brats2021": 100_000, "brats2023": 100_000, "brats-peds": 100_000, "ms": 999,
             "adni": 9_999, "cxr": 1_000_000}  # fmt: skip
FILES_PER_CASE = {"brats2021": 5, "brats2023": 5, "brats-peds": 5, "ms": 2, "adni": 1, "cxr": 5}
EXTRA_FILES = {"brats2021": 0, "brats2023": 0, "brats-peds": 0, "ms": 1, "adni": 1, "cxr": 2}
# What a previous run of each kind left in the root; --overwrite removes exactly these.
_OUTPUTS = {
    "brats2021": r"BraTS2021_\d{5}",
    "brats2023": r"BraTS-GLI-\d{5}-000",
    "brats-peds": r"BraTS-PED-\d{5}-000",
    "ms": r"sub-\d{3}|participants\.csv",
    "adni": r"\d{3}_S_\d{4}|diagnosis\.csv",
    "cxr": r"files|reports|masks|mimic-cxr-2\.0\.0-metadata\.csv|jaxcf-cxr-findings\.csv",
}

__all__ = ["KINDS", "PhantomSummary", "auto_workers", "generate"]


def auto_workers(kind: str, cases: int, size: int) -> int:
    """Worker processes worth starting: one per CPU (at most 8) when the machine has >= 4 CPUs
    and the job is estimated to take over ~3 s in one process, else 1 (each spawned worker
    first spends ~1 s importing, which two busy cores do not win back)."""
    cpus = os.cpu_count() or 1
    if kind == "cxr":
        seconds = cases * 0.2 * (size / 256) ** 2
    else:
        seconds = cases * 0.3 * (size / 64) ** 3
    return min(cpus, 8, cases) if cpus >= 4 and seconds > 3.0 else 1


@dataclasses.dataclass(frozen=True)
class PhantomSummary:
    """What `generate` wrote. shape: (X, Y, Z) volumes or (H, W) radiographs; spacing in mm
    (None for radiographs); counts: cases per class (tumour / tumour_free, categories,
    diagnoses, opacity / normal); files: number of files written."""

    kind: str
    root: pathlib.Path
    cases: int
    shape: tuple[int, ...]
    spacing: tuple[float, ...] | None
    counts: dict[str, int]
    files: int

    def describe(self) -> str:
        """Human-readable summary (what the CLI prints)."""
        counts = ", ".join(f"{n} {name.replace('_', '-')}" for name, n in self.counts.items())
        shape = "x".join(str(n) for n in self.shape)
        if self.spacing is None:
            geometry = f"images {shape} px, 8-bit grey JPEG (PA)"
        else:
            spacing = "x".join(f"{s:.3f}" for s in self.spacing)
            dtypes = {"ms": "float32 FLAIR, uint8 lesion masks", "adni": "float32 T1w"}
            content = dtypes.get(self.kind, "float32 images, uint8 seg")
            geometry = f"volumes {shape} voxels at {spacing} mm ({content})"
        return (f"wrote {self.cases} {self.kind} cases ({counts}) to {self.root}: "
                f"{self.files} files; {geometry}")  # fmt: skip


def _validate(kind, cases, size, seed, tumour_free_fraction, anatomy, workers) -> None:
    if kind not in KINDS:
        raise DataError(f"unknown dataset kind {kind!r}; known kinds: {', '.join(KINDS)}")
    for name, value in (("cases", cases), ("size", size), ("seed", seed)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise InputError(f"{name} must be an integer, got {value!r}")
    if not 1 <= cases <= MAX_CASES[kind]:
        raise InputError(f"cases must be in [1, {MAX_CASES[kind]}] for {kind}, got {cases}")
    if size < MIN_SIZE:
        raise InputError(f"size must be >= {MIN_SIZE}, got {size}")
    if seed < 0:
        raise InputError(f"seed must be >= 0, got {seed}")
    if not 0.0 <= tumour_free_fraction <= 1.0:
        raise InputError(f"tumour_free_fraction must be in [0, 1], got {tumour_free_fraction}")
    if anatomy not in ANATOMIES:
        raise InputError(f"anatomy must be one of {', '.join(ANATOMIES)}, got {anatomy!r}")
    if not isinstance(workers, int) or workers < 1:
        raise InputError(f"workers must be an integer >= 1, got {workers!r}")
    if anatomy != "procedural" and kind == "cxr":
        raise InputError(f"anatomy {anatomy!r} applies to brain kinds, not cxr")


def _prepare_root(root: pathlib.Path, kind: str, overwrite: bool) -> None:
    """Create `root`, refusing a non-empty one unless `overwrite`; with it, remove what an
    earlier run of this kind wrote (stale cases would otherwise outlive a smaller rerun)."""
    if root.exists() and not root.is_dir():
        raise DataError(f"output path {root} exists and is not a directory")
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise DataError(
                f"output directory {root} is not empty; pass --overwrite to write into it"
            )
        pattern = re.compile(_OUTPUTS[kind])
        for entry in root.iterdir():
            if pattern.fullmatch(entry.name):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
    root.mkdir(parents=True, exist_ok=True)


def generate(
    kind: str,
    out: str | os.PathLike,
    cases: int,
    size: int,
    seed: int = 0,
    *,
    tumour_free_fraction: float = 0.25,
    anatomy: str = "procedural",
    overwrite: bool = False,
    workers: int = 1,
    progress: bool = False,
) -> PhantomSummary:
    """Write a phantom dataset of `kind` with `cases` cases under `out`.

    Brain kinds: volumes (size, size, round(size * 155 / 240)) over the 240 x 240 x 155 mm
    BraTS field of view. cxr: size x size radiographs. tumour_free_fraction: share of
    tumour-free BraTS cases and of normal radiographs (ignored by ms and adni). anatomy:
    'procedural' or 'mni152' (brain kinds; needs nilearn). workers: processes rendering cases
    in parallel (the files do not depend on it). progress: tqdm bar per case. Raises
    DataError / ValueError for bad arguments or a non-empty `out` without overwrite.
    """
    _validate(kind, cases, size, seed, tumour_free_fraction, anatomy, workers)
    if anatomy == "mni152":
        from jaxcf.data.phantoms.mni152 import require_nilearn

        require_nilearn()  # fail on a missing optional dependency before touching `out`
    root = pathlib.Path(out)
    _prepare_root(root, kind, overwrite)
    common = {"progress": progress, "workers": workers}
    if kind == "cxr":
        counts = cxr_dataset.write_cxr(
            root, cases, size, seed, normal_fraction=tumour_free_fraction, **common
        )
        shape, spacing = (size, size), None
    else:
        common["anatomy"] = anatomy
        if kind in brain.BRATS_KINDS:
            counts = brain.write_brats(
                root, kind, cases, size, seed, tumour_free_fraction=tumour_free_fraction, **common
            )
        elif kind == "ms":
            counts = brain.write_ms(root, cases, size, seed, **common)
        else:
            counts = brain.write_adni(root, cases, size, seed, **common)
        grid = make_grid(size)
        shape, spacing = grid.shape, grid.spacing
    files = cases * FILES_PER_CASE[kind] + EXTRA_FILES[kind]
    return PhantomSummary(kind, root, cases, shape, spacing, counts, files)
