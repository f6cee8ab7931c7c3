"""Brain MRI phantoms: one case's volumes (BraTS, MS, ADNI) and the dataset writers.

A case is rendered in three steps: tissue (and tumour) labels on a supersampled grid, partial
volume pooling to voxels, then the scanner chain per sequence (render.py). The `*_case`
functions return arrays so tests and the counterfactual evaluation can compare a case with
its own healthy re-render (`brats_case(..., tumour=False)`: same anatomy, contrast and noise).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib

import numpy as np
from scipy import ndimage

from jaxcf.data.phantoms import confounders, lesions, render
from jaxcf.data.phantoms.anatomy import NUM_TISSUES, WM, Anatomy, get_anatomy
from jaxcf.data.phantoms.files import write_csv, write_nifti
from jaxcf.data.phantoms.grid import Grid, make_grid, pool, pool_mode, supersample_factor
from jaxcf.data.phantoms.jobs import run_cases
from jaxcf.data.phantoms.seeding import case_rngs, dataset_rng, healthy_cases
from jaxcf.errors import InputError

BRATS_KINDS = ("brats2021", "brats2023", "brats-peds")
CANONICAL_MODALITIES = ("t1", "t1ce", "t2", "flair")
# kind -> (case folder pattern, separator before the suffix, file suffixes in canonical order,
#          segmentation value of the enhancing tumour)
BRATS_LAYOUT = {
    "brats2021": ("BraTS2021_{:05d}", "_", ("t1", "t1ce", "t2", "flair"), 4),
    "brats2023": ("BraTS-GLI-{:05d}-000", "-", ("t1n", "t1c", "t2w", "t2f"), 3),
    "brats-peds": ("BraTS-PED-{:05d}-000", "-", ("t1n", "t1c", "t2w", "t2f"), 3),
}


@dataclasses.dataclass
class BrainCase:
    """One rendered case. images: modality -> (X, Y, Z) float32; seg: (X, Y, Z) uint8 (BraTS
    label values of the kind, or the MS lesion mask 0/1), None for ADNI; tissue: (X, Y, Z)
    uint8 anatomy codes (anatomy.py), 0 outside the brain; info: scalars (lesion volume,
    diagnosis, age, sex, tumour present)."""

    images: dict[str, np.ndarray]
    seg: np.ndarray | None
    tissue: np.ndarray
    grid: Grid
    info: dict[str, object]


Box = tuple[slice, slice, slice]


def brain_box(coarse: np.ndarray, margin: int = 2) -> Box:
    """Voxel bounding box of `coarse` > 0 (X, Y, Z), grown by `margin` voxels (tumour mass
    effect may push the outline a little); only this box is evaluated finely."""
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(coarse.any(axis=other))
        if hits.size == 0:
            box.append(slice(0, 0))
            continue
        box.append(slice(max(hits[0] - margin, 0), min(hits[-1] + margin + 1, coarse.shape[axis])))
    return box[0], box[1], box[2]


def sample_labels(
    grid: Grid, supersample: int, anatomy: Anatomy, params, tumour=None, box: Box | None = None
):
    """Tissue labels and tumour codes on the supersampled grid inside voxel `box` (default
    the whole grid): uint8 arrays (bx*s, by*s, bz*s), tumour codes None without a tumour.
    Evaluated in z-slabs to bound memory."""
    box = box or tuple(slice(0, n) for n in grid.shape)
    s = supersample
    ax, ay, az = (a[b.start * s : b.stop * s] for a, b in zip(grid.axes_mm(s), box, strict=True))
    shape = (len(ax), len(ay), len(az))
    tissue = np.zeros(shape, np.uint8)
    codes = np.zeros(shape, np.uint8) if tumour is not None else None
    step = max(1, (1 << 21) // max(len(ax) * len(ay), 1))
    for start in range(0, len(az), step):
        slab = slice(start, start + step)
        x, y, z = np.meshgrid(ax, ay, az[slab], indexing="ij")
        if tumour is None:
            tissue[..., slab] = anatomy.labels(x, y, z, params)
            continue
        # Mass effect: the anatomy is evaluated where the displaced tissue came from.
        labels = anatomy.labels(*tumour.warp(x, y, z), params)
        tissue[..., slab] = labels
        codes[..., slab] = tumour.labels(x, y, z, labels)
    return tissue, codes


def _fine_labels(grid: Grid, anatomy: Anatomy, params, tumour=None, coarse=None):
    """(box, tissue_fine, tumour_fine): a voxel-resolution pass (`coarse`, computed if not
    given) finds the brain's box, then only the box is evaluated at the supersampled
    resolution (reusing the coarse pass when there is no supersampling and nothing to deform).
    """
    if coarse is None:
        coarse, _ = sample_labels(grid, 1, anatomy, params)
    box = brain_box(coarse)
    ss = supersample_factor(grid.shape[0])
    if ss == 1 and tumour is None:
        return box, coarse[box], None
    return box, *sample_labels(grid, ss, anatomy, params, tumour, box)


def _embed(shape: tuple[int, ...], box: Box, array: np.ndarray) -> np.ndarray:
    """Place a box-sized array into a zero volume of `shape`."""
    out = np.zeros(shape, array.dtype)
    out[box] = array
    return out


def _render(
    grid: Grid,
    box: Box,
    tissue_fine: np.ndarray,
    tumour_fine: np.ndarray | None,
    tables: dict[str, np.ndarray],
    noise_rng: np.random.Generator,
    lesion: tuple[np.ndarray, float] | None = None,
    extras: dict[str, np.ndarray] | None = None,
    edema_falloff: float = 0.0,
):
    """Images per sequence plus voxel tissue labels and tumour codes.

    tissue_fine, tumour_fine: supersampled labels inside voxel `box` (sample_labels).
    lesion: optional (occupancy (X, Y, Z) in [0, 1], intensity) blended into every sequence.
    extras: modality -> (X, Y, Z) healthy signal added outside the tumour, in units of that
    sequence's white-matter intensity (confounders.py). edema_falloff: share of the edema's
    FLAIR / T2 brightness lost from the core's edge to the edema's outer edge.
    Returns (images, tissue (X, Y, Z) uint8, tumour codes (X, Y, Z) uint8).
    """
    ss = supersample_factor(grid.shape[0])
    fraction_box = pool(tissue_fine > 0, ss)
    brain_fraction = _embed(grid.shape, box, fraction_box)
    mask = brain_fraction >= 0.5
    tissue = _embed(grid.shape, box, pool_mode(tissue_fine, ss, NUM_TISSUES, skip_zero=True))
    tissue[~mask] = 0
    classes = tissue_fine
    codes = np.zeros(grid.shape, np.uint8)
    tumour_fraction = np.zeros(grid.shape, np.float32)
    if tumour_fine is not None:
        classes = np.where(tumour_fine > 0, tumour_fine + render.TUMOUR_OFFSET, tissue_fine)
        tumour_fraction = _embed(grid.shape, box, pool(tumour_fine > 0, ss))
        codes = _embed(grid.shape, box, pool_mode(tumour_fine, ss, 4, skip_zero=True))
        codes[(tumour_fraction < 0.5) | ~mask] = 0
    # Drawn whether or not there is pathology, so healthy re-renders share every random field.
    texture = 1.0 + 0.03 * render.smooth_field(noise_rng, grid, 3.0)
    heterogeneity = render.smooth_field(noise_rng, grid, 2.0)
    texture *= 1.0 + 0.12 * tumour_fraction * heterogeneity
    fringe = _edema_fringe(codes, grid, edema_falloff) * tumour_fraction
    images = {}
    for name, table in tables.items():
        signal = render.partial_volume(classes, table, ss, fraction_box)
        signal = _embed(grid.shape, box, signal)
        if name in ("flair", "t2"):
            signal *= 1.0 - fringe
        if extras and name in extras:
            healthy = table[WM] * extras[name] * (1.0 - tumour_fraction)
            signal = signal + healthy.astype(np.float32)
        if lesion is not None:
            occupancy, intensity = lesion
            signal = signal * (1.0 - occupancy) + np.float32(intensity) * table[WM] * occupancy
        images[name] = render.acquire(
            noise_rng, grid, signal, mask, texture, float(table[render.REFERENCE_CLASS])
        )
    return images, tissue, codes


def _edema_fringe(codes: np.ndarray, grid: Grid, falloff: float) -> np.ndarray:
    """(X, Y, Z) float32 fraction of edema brightness lost: 0 at the tumour core, rising
    linearly to `falloff` at the edema's outer edge (peritumoral edema is most hydrated next
    to the tumour and fades into infiltrated white matter)."""
    core = (codes == lesions.NECROTIC) | (codes == lesions.ENHANCING)
    edema = codes == lesions.EDEMA
    if falloff <= 0 or not core.any() or not edema.any():
        return np.zeros(codes.shape, np.float32)
    distance = ndimage.distance_transform_edt(~core, sampling=grid.spacing)
    reach = max(float(distance[edema].max()), 1e-3)
    return np.where(codes > 0, falloff * np.clip(distance / reach, 0.0, 1.0), 0.0).astype(
        np.float32
    )


def _warped(field: np.ndarray, grid: Grid, tumour) -> np.ndarray:
    """A healthy voxel field (X, Y, Z) moved with the tumour's mass effect: each voxel reads
    the field where its tissue came from (linear interpolation)."""
    x, y, z = np.meshgrid(*grid.axes_mm(), indexing="ij")
    coords = []
    for moved, n, step, sign in zip(tumour.warp(x, y, z), grid.shape, grid.spacing,
                                    (-1.0, -1.0, 1.0), strict=True):  # fmt: skip
        coords.append(moved / (sign * step) + (n - 1) / 2.0)
    return ndimage.map_coordinates(field, coords, order=1, mode="nearest").astype(np.float32)


def brats_confounders(rng: np.random.Generator, healthy: np.ndarray, grid: Grid, tumour=None):
    """modality -> healthy hyperintensity maps (X, Y, Z) for _render's extras, from the
    healthy voxel labels; T2 shows the periventricular and small-vessel changes at about half
    the FLAIR contrast (no CSF suppression to unmask them)."""
    flair = confounders.flair_confounders(rng, healthy, grid)
    if tumour is not None:
        flair = _warped(flair, grid, tumour)
    return {"flair": flair, "t2": 0.5 * flair}


def brats_case(
    kind: str,
    index: int,
    *,
    size: int,
    seed: int = 0,
    tumour: bool = True,
    anatomy: str = "procedural",
) -> BrainCase:
    """Render BraTS case `index` of `kind`: images in canonical modality order (t1, t1ce, t2,
    flair), seg with the kind's label values (ET = 4 for brats2021, 3 otherwise). tumour=False
    gives the same subject healthy (no tumour, no mass effect, same noise)."""
    grid = make_grid(size)
    rngs = case_rngs(seed, kind, index)
    paediatric = kind == "brats-peds"
    source = get_anatomy(anatomy, min(grid.spacing) / supersample_factor(size))
    params = source.sample(rngs["anatomy"], paediatric=paediatric)
    tables = render.subject_contrast(rngs["contrast"], render.BRATS_CONTRAST, paediatric=paediatric)
    coarse, _ = sample_labels(grid, 1, source, params)
    tumour_model = None
    if tumour:
        tumour_model = lesions.sample_tumour(rngs["pathology"], coarse, grid, paediatric=paediatric)
    box, tissue_fine, tumour_fine = _fine_labels(grid, source, params, tumour_model, coarse)
    extras = brats_confounders(rngs["confounders"], coarse, grid, tumour_model)
    falloff = 0.0
    if tumour_model is not None:
        edema_class = lesions.EDEMA + render.TUMOUR_OFFSET
        for name in ("flair", "t2"):
            tables[name][edema_class] *= np.float32(tumour_model.edema_brightness)
        falloff = tumour_model.edema_falloff
    images, tissue, codes = _render(grid, box, tissue_fine, tumour_fine, tables, rngs["noise"],
                                    extras=extras, edema_falloff=falloff)  # fmt: skip
    enhancing = BRATS_LAYOUT[kind][3]
    seg = np.array([0, 1, 2, enhancing], np.uint8)[codes]
    return BrainCase(images, seg, tissue, grid, {"tumour": bool(seg.any())})


def ms_case(
    index: int, *, size: int, seed: int = 0, category: str, anatomy: str = "procedural"
) -> BrainCase:
    """Render MS subject `index` with a lesion load aimed inside `category` (minimal /
    moderate / high). seg is the written lesion mask (0/1); info['lesion_volume_ml'] is its
    volume from the header spacing, rounded to 3 decimals, and info['category'] its class."""
    grid = make_grid(size)
    rngs = case_rngs(seed, "ms", index)
    source = get_anatomy(anatomy, min(grid.spacing) / supersample_factor(size))
    target = lesions.ms_target_volume(rngs["pathology"], category)
    # MS brains atrophy with lesion load (mildly).
    severity = 0.05 + 0.25 * min(target / 50.0, 1.0)
    params = source.atrophied(source.sample(rngs["anatomy"]), severity)
    tables = render.subject_contrast(rngs["contrast"], render.MS_CONTRAST)
    ss = supersample_factor(size)
    box, tissue_fine, _ = _fine_labels(grid, source, params)
    tissue = _embed(grid.shape, box, pool_mode(tissue_fine, ss, NUM_TISSUES, skip_zero=True))
    tissue[_embed(grid.shape, box, pool(tissue_fine > 0, ss)) < 0.5] = 0
    occupancy = lesions.place_ms_lesions(rngs["pathology"], tissue, grid, target, max(ss, 2))
    contrast = render.MS_LESION_FLAIR / render.MS_CONTRAST["flair"][WM]
    brightness = contrast * float(rngs["contrast"].uniform(0.9, 1.1))
    images, tissue, _ = _render(
        grid, box, tissue_fine, None, tables, rngs["noise"], (occupancy, brightness)
    )
    mask = ((occupancy >= 0.5) & (tissue > 0)).astype(np.uint8)
    volume = round(float(mask.sum()) * grid.voxel_ml, 3)
    info = {"lesion_volume_ml": volume, "category": lesions.ms_category(volume)}
    return BrainCase(images, mask, tissue, grid, info)


def adni_case(
    index: int, *, size: int, seed: int = 0, diagnosis: str, anatomy: str = "procedural"
) -> BrainCase:
    """Render ADNI subject `index` (T1 only) with atrophy for `diagnosis` (CN / MCI / AD);
    info holds diagnosis, age, sex and the atrophy severity."""
    if diagnosis not in lesions.ADNI_DIAGNOSES:
        raise InputError(f"diagnosis must be one of {lesions.ADNI_DIAGNOSES}, got {diagnosis!r}")
    grid = make_grid(size)
    rngs = case_rngs(seed, "adni", index)
    source = get_anatomy(anatomy, min(grid.spacing) / supersample_factor(size))
    age, sex, severity = lesions.sample_adni_subject(rngs["pathology"], diagnosis)
    params = source.atrophied(source.sample(rngs["anatomy"]), severity)
    tables = render.subject_contrast(rngs["contrast"], render.ADNI_CONTRAST)
    box, tissue_fine, _ = _fine_labels(grid, source, params)
    images, tissue, _ = _render(grid, box, tissue_fine, None, tables, rngs["noise"])
    info = {"diagnosis": diagnosis, "age": age, "sex": sex, "severity": severity}
    return BrainCase(images, None, tissue, grid, info)


def _write_brats_case(index, root, kind, size, seed, healthy, anatomy) -> bool:
    """Render and write one BraTS case; returns whether it has a tumour."""
    folder, sep, suffixes, _ = BRATS_LAYOUT[kind]
    case = brats_case(kind, index, size=size, seed=seed, tumour=index not in healthy,
                      anatomy=anatomy)  # fmt: skip
    name = folder.format(index)
    affine = case.grid.affine
    for modality, suffix in zip(CANONICAL_MODALITIES, suffixes, strict=True):
        write_nifti(root / name / f"{name}{sep}{suffix}.nii.gz", case.images[modality], affine)
    write_nifti(root / name / f"{name}{sep}seg.nii.gz", case.seg, affine)
    return bool(case.info["tumour"])


def write_brats(
    root: pathlib.Path,
    kind: str,
    cases: int,
    size: int,
    seed: int,
    *,
    tumour_free_fraction: float = 0.25,
    anatomy: str = "procedural",
    workers: int = 1,
    progress: bool = False,
) -> dict[str, int]:
    """Write `cases` BraTS cases of `kind` under root; returns counts (tumour / tumour_free)."""
    healthy = healthy_cases(cases, tumour_free_fraction, seed, kind)
    job = functools.partial(_write_brats_case, root=root, kind=kind, size=size, seed=seed,
                            healthy=healthy, anatomy=anatomy)  # fmt: skip
    tumours = run_cases(job, cases, workers=workers, progress=progress, desc=kind)
    return {"tumour": sum(tumours), "tumour_free": cases - sum(tumours)}


def _write_ms_case(index, root, size, seed, anatomy) -> tuple[str, str, str]:
    """Render and write one MS subject; returns its participants.csv row."""
    target = lesions.MS_CATEGORIES[index % 3]
    case = ms_case(index, size=size, seed=seed, category=target, anatomy=anatomy)
    subject = f"sub-{index + 1:03d}"
    anat = root / subject / "anat"
    write_nifti(anat / f"{subject}_FLAIR.nii.gz", case.images["flair"], case.grid.affine)
    write_nifti(anat / f"{subject}_lesionmask.nii.gz", case.seg, case.grid.affine)
    return subject, f"{case.info['lesion_volume_ml']:.3f}", str(case.info["category"])


def write_ms(
    root: pathlib.Path,
    cases: int,
    size: int,
    seed: int,
    *,
    anatomy: str = "procedural",
    workers: int = 1,
    progress: bool = False,
) -> dict[str, int]:
    """Write `cases` MS subjects (FLAIR + lesion mask) and participants.csv; lesion loads are
    aimed in turn at minimal, moderate, high. Returns counts per category."""
    job = functools.partial(_write_ms_case, root=root, size=size, seed=seed, anatomy=anatomy)
    rows = run_cases(job, cases, workers=workers, progress=progress, desc="ms")
    write_csv(root / "participants.csv", ("subject", "lesion_volume_ml", "category"), rows)
    return {name: sum(row[2] == name for row in rows) for name in lesions.MS_CATEGORIES}


def adni_ptids(cases: int, seed: int) -> list[str]:
    """Distinct ADNI-style subject ids 'SSS_S_NNNN' (site, subject); id i depends only on the
    seed and the ids before it."""
    rng = dataset_rng(seed, "adni", 2)
    ids, seen = [], set()
    while len(ids) < cases:
        site, subject = int(rng.integers(2, 142)), int(rng.integers(1, 10000))
        if subject not in seen:
            seen.add(subject)
            ids.append(f"{site:03d}_S_{subject:04d}")
    return ids


def _write_adni_case(index, root, size, seed, ptids, anatomy) -> tuple[str, str, int, str]:
    """Render and write one ADNI subject; returns its diagnosis.csv row."""
    diagnosis = lesions.ADNI_DIAGNOSES[index % 3]
    case = adni_case(index, size=size, seed=seed, diagnosis=diagnosis, anatomy=anatomy)
    ptid = ptids[index]
    write_nifti(root / ptid / f"{ptid}_T1w.nii.gz", case.images["t1"], case.grid.affine)
    return ptid, diagnosis, int(case.info["age"]), str(case.info["sex"])


def write_adni(
    root: pathlib.Path,
    cases: int,
    size: int,
    seed: int,
    *,
    anatomy: str = "procedural",
    workers: int = 1,
    progress: bool = False,
) -> dict[str, int]:
    """Write `cases` ADNI subjects (T1w) cycling CN, MCI, AD, and diagnosis.csv. Returns
    counts per diagnosis."""
    job = functools.partial(_write_adni_case, root=root, size=size, seed=seed,
                            ptids=tuple(adni_ptids(cases, seed)), anatomy=anatomy)  # fmt: skip
    rows = run_cases(job, cases, workers=workers, progress=progress, desc="adni")
    write_csv(root / "diagnosis.csv", ("subject", "diagnosis", "age", "sex"), rows)
    return {name: sum(row[1] == name for row in rows) for name in lesions.ADNI_DIAGNOSES}
