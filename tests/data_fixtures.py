"""Tiny datasets in the contract's on-disk layouts, written with nibabel / Pillow, for the data
tests (independent of jaxcf.data.phantoms on purpose: the readers are tested against the
contract, not against another reader's writer)."""

from __future__ import annotations

import pathlib

import nibabel as nib
import numpy as np
from PIL import Image

BRATS_SUFFIX = {
    "brats2021": ("t1", "t1ce", "t2", "flair"),
    "brats2023": ("t1n", "t1c", "t2w", "t2f"),
    "brats-peds": ("t1n", "t1c", "t2w", "t2f"),
}


def brats_case_id(layout: str, i: int) -> str:
    return {
        "brats2021": f"BraTS2021_{i:05d}",
        "brats2023": f"BraTS-GLI-{i:05d}-000",
        "brats-peds": f"BraTS-PED-{i:05d}-000",
    }[layout]


def brats_file(root: pathlib.Path, layout: str, i: int, suffix: str) -> pathlib.Path:
    case = brats_case_id(layout, i)
    sep = "_" if layout == "brats2021" else "-"
    return root / case / f"{case}{sep}{suffix}.nii.gz"


def brats_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    sx, sy, sz = spacing
    return np.array(
        [[-sx, 0, 0, 0], [0, -sy, 0, (shape[1] - 1) * sy], [0, 0, sz, 0], [0, 0, 0, 1]], float
    )


def save_nifti(path: pathlib.Path, data: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, affine)
    nib.save(img, str(path))


def head_mask(shape: tuple[int, int, int], z_range: tuple[int, int]) -> np.ndarray:
    """Ellipsoidal 'brain' occupying slices z_range[0]..z_range[1]-1, empty elsewhere."""
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    cz, hz = (z_range[0] + z_range[1] - 1) / 2, (z_range[1] - z_range[0]) / 2
    r = ((x - shape[0] / 2 + 0.5) / (shape[0] * 0.4)) ** 2
    r = r + ((y - shape[1] / 2 + 0.5) / (shape[1] * 0.4)) ** 2 + ((z - cz) / hz) ** 2
    return r <= 1.0


def write_brats(
    root: pathlib.Path,
    layout: str = "brats2021",
    n: int = 4,
    shape: tuple[int, int, int] = (32, 32, 20),
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    healthy: tuple[int, ...] = (3,),
    seed: int = 0,
) -> list[str]:
    """BraTS cases: brain in slices 3..16, a tumour ball in slices 8..11 (cases not in
    ``healthy``) with labels 1 / 2 / ET. Returns the case ids."""
    rng = np.random.default_rng(seed)
    aff = brats_affine(shape, spacing)
    brain = head_mask(shape, (3, shape[2] - 3))
    et = 4 if layout == "brats2021" else 3
    ids = []
    for i in range(n):
        seg = np.zeros(shape, np.uint8)
        if i not in healthy:
            x, y, z = np.meshgrid(*[np.arange(k) for k in shape], indexing="ij")
            d = np.sqrt((x - 14) ** 2 + (y - 15) ** 2 + ((z - 9.5) * 2) ** 2)
            seg[(d <= 4) & brain] = 2
            seg[(d <= 2.5) & brain] = 1
            seg[(d <= 1.5) & brain] = et
        for m, suffix in enumerate(BRATS_SUFFIX[layout]):
            vol = np.where(brain, rng.uniform(50, 150, shape) * (m + 1), 0).astype(np.float32)
            vol[seg > 0] *= 1.5
            save_nifti(brats_file(root, layout, i, suffix), vol, aff)
        save_nifti(brats_file(root, layout, i, "seg"), seg, aff)
        ids.append(brats_case_id(layout, i))
    return ids


MS_CATS = ("minimal", "moderate", "high")
ADNI_DX = ("CN", "MCI", "AD")


def write_ms(
    root: pathlib.Path, n: int = 6, shape: tuple[int, int, int] = (16, 16, 12), masks: bool = True
) -> list[str]:
    """MS subjects sub-000.. with categories cycling minimal / moderate / high."""
    rng = np.random.default_rng(1)
    aff = np.diag([1.0, 1.0, 1.2, 1.0])
    rows = ["subject,lesion_volume_ml,category"]
    ids = []
    brain = head_mask(shape, (1, shape[2] - 1))
    for i in range(n):
        s = f"sub-{i:03d}"
        vol = np.where(brain, rng.uniform(100, 200, shape), 0).astype(np.float32)
        save_nifti(root / s / "anat" / f"{s}_FLAIR.nii.gz", vol, aff)
        lesion = np.zeros(shape, np.uint8)
        lesion[6 : 8 + i % 3, 6:8, 5:7] = 1
        if masks:
            save_nifti(root / s / "anat" / f"{s}_lesionmask.nii.gz", lesion, aff)
        ml = lesion.sum() * 1.2 / 1000
        rows.append(f"{s},{ml:.3f},{MS_CATS[i % 3]}")
        ids.append(s)
    (root / "participants.csv").write_text("\n".join(rows) + "\n")
    return ids


def write_adni(
    root: pathlib.Path,
    n: int = 6,
    shape: tuple[int, int, int] = (16, 18, 14),
    diagnoses: tuple[str, ...] | None = None,
) -> list[str]:
    """ADNI subjects 00X_S_0000.. with ``diagnoses`` (default: cycling CN / MCI / AD)."""
    diagnoses = diagnoses or tuple(ADNI_DX[i % 3] for i in range(n))
    n = len(diagnoses)
    rng = np.random.default_rng(2)
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    rows = ["subject,diagnosis,age,sex"]
    ids = []
    for i in range(n):
        s = f"{2 + i % 2:03d}_S_{i:04d}"
        vol = rng.uniform(0, 255, shape).astype(np.float32)
        save_nifti(root / s / f"{s}_T1w.nii.gz", vol, aff)
        rows.append(f"{s},{diagnoses[i]},{70 + i},{'MF'[i % 2]}")
        ids.append(s)
    (root / "diagnosis.csv").write_text("\n".join(rows) + "\n")
    return sorted(ids)


def cxr_report(i: int, words: int = 5) -> str:
    imp = " ".join(["opacity" if i % 2 else "clear"] + [f"word{k}" for k in range(words - 1)])
    return f"FINDINGS: lungs are shown.\n\nIMPRESSION: {imp}\n"


def write_cxr(root: pathlib.Path, n: int = 6, size: tuple[int, int] = (64, 64)) -> list[str]:
    """CXR images with masks, reports (impression 'opacity|clear word0 ...') and findings
    (opacity = i % 2). Returns the dicom ids."""
    rng = np.random.default_rng(3)
    meta = ["dicom_id,subject_id,study_id,ViewPosition,Rows,Columns"]
    finds = ["dicom_id,opacity,side,zone,extent"]
    ids = []
    h, w = size
    for i in range(n):
        d = f"{i:08x}-abcdef01"
        subj, study = f"{10000000 + i}", f"{50000000 + i}"
        rel = pathlib.Path("files", f"p{subj[:2]}", f"p{subj}")
        img = (rng.uniform(0, 255, size)).astype(np.uint8)
        (root / rel / f"s{study}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / rel / f"s{study}" / f"{d}.jpg", quality=95)
        rep = root / "reports" / rel / f"s{study}.txt"
        rep.parent.mkdir(parents=True, exist_ok=True)
        rep.write_text(cxr_report(i, words=5 + 90 * (i == 0)))
        (root / "masks").mkdir(exist_ok=True)
        for k, m in enumerate(("left_lung", "right_lung", "heart")):
            mk = np.zeros(size, np.uint8)
            mk[h // 4 : 3 * h // 4, k * w // 3 : (k + 1) * w // 3] = 255
            Image.fromarray(mk).save(root / "masks" / f"{d}_{m}.png")
        meta.append(f"{d},{subj},{study},PA,{h},{w}")
        finds.append(f"{d},{i % 2},{'left' if i % 2 else 'none'},lower,small")
        ids.append(d)
    (root / "mimic-cxr-2.0.0-metadata.csv").write_text("\n".join(meta) + "\n")
    (root / "jaxcf-cxr-findings.csv").write_text("\n".join(finds) + "\n")
    return sorted(ids)
