"""Random-access readers for the on-disk layouts of the data contract (docs/data.md: BraTS 2021 /
2023 / PEDs, MS, ADNI, MIMIC-CXR-like).

Each source lists its cases cheaply in ``__init__`` (directory names and CSV rows only, no
volume reads) and decodes one case per ``__getitem__`` into a record dict:

- ``image`` float32 channels-last, raw intensities: volumes (X, Y, Z, C), radiographs (H, W, 1)
  with values 0..255.
- ``seg`` uint8 (X, Y, Z) (BraTS original label values; MS lesion mask 0/1 when present).
- ``label`` int32, ``prompt`` str (MS / ADNI / CXR), ``masks`` uint8 (H, W, 3) (CXR),
  ``affine`` float64 (4, 4), ``spacing`` float32 (3,), ``case_id`` str.

Bad input raises :class:`DataError` naming the file / column / subject; nothing is skipped.
"""

from __future__ import annotations

import csv
import pathlib
import re
import zlib
from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np
from PIL import Image

from jaxcf.data.errors import DataError

MODALITIES = ("t1", "t1ce", "t2", "flair")  # jaxcf's canonical channel order
# Per layout: case-folder pattern, file suffix per canonical modality, enhancing-tumour label.
BRATS_LAYOUTS: dict[str, dict[str, Any]] = {
    "brats2021": {
        "pattern": r"BraTS2021_\d{5}",
        "suffix": {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"},
        "et_label": 4,
    },
    "brats2023": {
        "pattern": r"BraTS-GLI-\d{5}-\d{3}",
        "suffix": {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"},
        "et_label": 3,
    },
    "brats-peds": {
        "pattern": r"BraTS-PED-\d{5}-\d{3}",
        "suffix": {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"},
        "et_label": 3,
    },
}
# Language-guided 3-D paper (004): MS lesion-load classes and ADNI diagnoses, with the prompts.
MS_CATEGORIES = ("minimal", "moderate", "high")
MS_PROMPTS = tuple(f"Subject has {c} lesion load" for c in MS_CATEGORIES)
ADNI_DIAGNOSES = ("CN", "MCI", "AD")
ADNI_PROMPTS = (
    "Subject is cognitively normal",
    "Subject has mild cognitive impairment",
    "Subject has Alzheimer's disease",
)
CXR_MASKS = ("left_lung", "right_lung", "heart")
CXR_PROMPT_WORDS = 77  # paper 003 truncates prompts to CLIP's 77 tokens
KNOWN_KINDS = ("brats", "brats2021", "brats2023", "brats-peds", "ms", "adni", "cxr")


def read_nifti(
    path: pathlib.Path, dtype: Any = np.float32
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reads a 3-D NIfTI volume -> (array (X, Y, Z) of ``dtype``, affine (4, 4) float64,
    spacing (3,) float32). Missing / truncated / non-3-D / non-finite files raise DataError."""
    if not path.is_file():
        raise DataError(f"missing file: expected {path}")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except (OSError, EOFError, zlib.error, ValueError, nib.filebasedimages.ImageFileError) as e:
        raise DataError(f"cannot read NIfTI {path}: {type(e).__name__}: {e}") from e
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 3-D volume, got shape {data.shape}")
    if np.issubdtype(data.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise DataError(f"{path}: {bad} NaN/inf voxels")
    spacing = np.asarray(img.header.get_zooms()[:3], np.float32)
    return data.astype(dtype, copy=False), np.asarray(img.affine, np.float64), spacing


def read_csv(path: pathlib.Path, columns: Sequence[str], key: str) -> dict[str, dict[str, str]]:
    """Reads a CSV with a header into {row[key]: row}; missing file / column raises DataError."""
    if not path.is_file():
        raise DataError(f"missing CSV: expected {path}")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        for col in columns:
            if col not in header:
                raise DataError(f"{path}: missing column {col!r} (header: {header})")
        return {row[key].strip(): row for row in reader}


def _row(table: dict[str, dict[str, str]], csv_path: pathlib.Path, subject: str) -> dict:
    if subject not in table:
        raise DataError(f"{csv_path}: no row for subject {subject!r}")
    return table[subject]


def _list_dirs(root: pathlib.Path, pattern: str, what: str) -> list[str]:
    if not root.is_dir():
        raise DataError(f"dataset root {root} does not exist or is not a directory")
    rx = re.compile(pattern)
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and rx.fullmatch(p.name))
    if not names:
        raise DataError(
            f"no cases found in {root}: expected {what} folders matching the regex {pattern}"
        )
    return names


class _Source:
    """Common part: a sorted list of case ids, len, and the case id of an index."""

    _cases: list[str]

    @property
    def case_ids(self) -> list[str]:
        return list(self._cases)

    def __len__(self) -> int:
        return len(self._cases)

    def _check_index(self, index: int) -> str:
        if not -len(self._cases) <= index < len(self._cases):
            raise IndexError(f"index {index} out of range for {len(self._cases)} cases")
        return self._cases[index]


class BraTSSource(_Source):
    """BraTS 2021 / 2023-GLI / PEDs cases -> image (X, Y, Z, 4) in the order t1, t1ce, t2, flair,
    seg (X, Y, Z) uint8 (original label values), label = 1 if any seg > 0 else 0."""

    def __init__(self, root: str | pathlib.Path, layout: str = "auto", require_seg: bool = True):
        self.root = pathlib.Path(root)
        if layout == "auto":
            layout = self._detect(self.root)
        if layout not in BRATS_LAYOUTS:
            raise DataError(f"unknown BraTS layout {layout!r}; known: auto, {list(BRATS_LAYOUTS)}")
        self.layout = layout
        spec = BRATS_LAYOUTS[layout]
        self.et_label: int = spec["et_label"]
        self._suffix: dict[str, str] = spec["suffix"]
        self.require_seg = require_seg
        self._cases = _list_dirs(self.root, spec["pattern"], f"{layout} case")

    @staticmethod
    def _detect(root: pathlib.Path) -> str:
        """Picks the layout whose case-folder pattern matches folders under ``root``."""
        if not root.is_dir():
            raise DataError(f"dataset root {root} does not exist or is not a directory")
        names = [p.name for p in root.iterdir() if p.is_dir()]
        found = [
            k for k, s in BRATS_LAYOUTS.items() if any(re.fullmatch(s["pattern"], n) for n in names)
        ]
        if len(found) != 1:
            # Plain regexes (a repr would double every backslash).
            patterns = "; ".join(f"{k}: {s['pattern']}" for k, s in BRATS_LAYOUTS.items())
            what = "no" if not found else f"several ({', '.join(found)})"
            raise DataError(
                f"{root}: {what} BraTS layouts found; expected case folders matching one of the "
                f"regexes {patterns}"
            )
        return found[0]

    def path(self, case_id: str, modality: str) -> pathlib.Path:
        """File of ``modality`` (canonical name or 'seg') for ``case_id``."""
        suffix = "seg" if modality == "seg" else self._suffix[modality]
        sep = "_" if self.layout == "brats2021" else "-"  # BraTS2021_00000_t1 vs BraTS-GLI-...-t1n
        return self.root / case_id / f"{case_id}{sep}{suffix}.nii.gz"

    def __getitem__(self, index: int) -> dict[str, Any]:
        case = self._check_index(index)
        channels, first = [], None
        for m in MODALITIES:
            p = self.path(case, m)
            arr, affine, spacing = read_nifti(p)
            if first is None:
                first, aff0, sp0 = (p, arr.shape), affine, spacing
            elif arr.shape != first[1]:
                raise DataError(
                    f"shape mismatch in case {case}: {first[0]} {first[1]} vs {p} {arr.shape}"
                )
            channels.append(arr)
        rec: dict[str, Any] = {
            "image": np.stack(channels, axis=-1),
            "affine": aff0,
            "spacing": sp0,
            "case_id": case,
        }
        seg_path = self.path(case, "seg")
        if seg_path.is_file() or self.require_seg:
            seg = read_nifti(seg_path, np.float32)[0]
            if seg.shape != first[1]:
                raise DataError(
                    f"shape mismatch in case {case}: {first[0]} {first[1]} "
                    f"vs {seg_path} {seg.shape}"
                )
            allowed = (0, 1, 2, self.et_label)
            stray = np.setdiff1d(np.unique(np.rint(seg)), allowed)
            if stray.size:
                raise DataError(
                    f"{seg_path}: label values {stray.astype(int).tolist()[:10]} outside "
                    f"{self.layout}'s {list(allowed)} (background, NC, ED, ET)"
                )
            rec["seg"] = np.rint(seg).astype(np.uint8)
            rec["label"] = np.int32(rec["seg"].any())
        return rec


class MSSource(_Source):
    """MS FLAIR subjects -> image (X, Y, Z, 1), seg (lesion mask 0/1) when the subject has one,
    label = lesion-load category index (minimal 0, moderate 1, high 2), prompt (paper 004)."""

    COLUMNS = ("subject", "lesion_volume_ml", "category")

    def __init__(self, root: str | pathlib.Path):
        self.root = pathlib.Path(root)
        self._cases = _list_dirs(self.root, r"sub-\d{3}", "MS subject (sub-XXX)")
        self.csv_path = self.root / "participants.csv"
        self._table = read_csv(self.csv_path, self.COLUMNS, "subject")
        self._meta = {}
        for s in self._cases:
            row = _row(self._table, self.csv_path, s)
            cat = row["category"].strip()
            if cat not in MS_CATEGORIES:
                raise DataError(
                    f"{self.csv_path}: column 'category' of {s} is {cat!r}; "
                    f"expected one of {MS_CATEGORIES}"
                )
            try:
                vol = float(row["lesion_volume_ml"])
            except ValueError as e:
                raise DataError(f"{self.csv_path}: bad 'lesion_volume_ml' for {s}: {e}") from e
            self._meta[s] = (MS_CATEGORIES.index(cat), vol)

    def __getitem__(self, index: int) -> dict[str, Any]:
        case = self._check_index(index)
        anat = self.root / case / "anat"
        img_path = anat / f"{case}_FLAIR.nii.gz"
        img, affine, spacing = read_nifti(img_path)
        label, vol = self._meta[case]
        rec: dict[str, Any] = {
            "image": img[..., None],
            "label": np.int32(label),
            "prompt": MS_PROMPTS[label],
            "lesion_volume_ml": vol,
            "affine": affine,
            "spacing": spacing,
            "case_id": case,
        }
        mask_path = anat / f"{case}_lesionmask.nii.gz"
        if mask_path.is_file():
            seg = read_nifti(mask_path, np.float32)[0]
            if seg.shape != img.shape:
                raise DataError(
                    f"shape mismatch in {case}: {img_path} {img.shape} vs {mask_path} {seg.shape}"
                )
            rec["seg"] = (seg > 0.5).astype(np.uint8)
        return rec


class ADNISource(_Source):
    """ADNI T1w subjects -> image (X, Y, Z, 1), label (CN 0, MCI 1, AD 2), prompt (paper 004),
    age (float), sex ('M' / 'F')."""

    COLUMNS = ("subject", "diagnosis", "age", "sex")

    def __init__(self, root: str | pathlib.Path):
        self.root = pathlib.Path(root)
        self._cases = _list_dirs(self.root, r"\d{3}_S_\d{4}", "ADNI PTID (e.g. 002_S_0413)")
        self.csv_path = self.root / "diagnosis.csv"
        table = read_csv(self.csv_path, self.COLUMNS, "subject")
        self._meta = {}
        for s in self._cases:
            row = _row(table, self.csv_path, s)
            dx, sex = row["diagnosis"].strip(), row["sex"].strip()
            if dx not in ADNI_DIAGNOSES:
                raise DataError(
                    f"{self.csv_path}: column 'diagnosis' of {s} is {dx!r}; "
                    f"expected one of {ADNI_DIAGNOSES}"
                )
            if sex not in ("M", "F"):
                raise DataError(f"{self.csv_path}: column 'sex' of {s} is {sex!r}; expected M/F")
            try:
                age = float(row["age"])
            except ValueError as e:
                raise DataError(f"{self.csv_path}: bad 'age' for {s}: {e}") from e
            self._meta[s] = (ADNI_DIAGNOSES.index(dx), age, sex)

    def __getitem__(self, index: int) -> dict[str, Any]:
        case = self._check_index(index)
        img, affine, spacing = read_nifti(self.root / case / f"{case}_T1w.nii.gz")
        label, age, sex = self._meta[case]
        return {
            "image": img[..., None],
            "label": np.int32(label),
            "prompt": ADNI_PROMPTS[label],
            "age": age,
            "sex": sex,
            "affine": affine,
            "spacing": spacing,
            "case_id": case,
        }


def _read_grey(path: pathlib.Path) -> np.ndarray:
    """8-bit grey image -> uint8 (H, W); missing / truncated files raise DataError."""
    if not path.is_file():
        raise DataError(f"missing file: expected {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("L"), np.uint8)
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {type(e).__name__}: {e}") from e


def impression(report: str, max_words: int = CXR_PROMPT_WORDS) -> str:
    """The IMPRESSION section of a MIMIC report (else FINDINGS, else the whole text), with
    whitespace collapsed, truncated to ``max_words`` words (paper 003: 77-token prompts)."""
    for section in ("IMPRESSION", "FINDINGS"):
        m = re.search(rf"{section}\s*:(.*?)(?:\n\s*[A-Z][A-Z /]+:|\Z)", report, re.S)
        if m and m.group(1).strip():
            report = m.group(1)
            break
    return " ".join(report.split()[:max_words])


class CXRSource(_Source):
    """MIMIC-CXR-JPG-like radiographs -> image (H, W, 1) float32 0..255, masks (H, W, 3) uint8
    0/1 (left lung, right lung, heart), label = opacity 0/1, prompt = report impression."""

    META_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition", "Rows", "Columns")
    FINDING_COLUMNS = ("dicom_id", "opacity", "side", "zone", "extent")

    def __init__(self, root: str | pathlib.Path, views: Sequence[str] | None = None):
        self.root = pathlib.Path(root)
        if not self.root.is_dir():
            raise DataError(f"dataset root {self.root} does not exist or is not a directory")
        self.meta_csv = self.root / "mimic-cxr-2.0.0-metadata.csv"
        self.findings_csv = self.root / "jaxcf-cxr-findings.csv"
        self._meta = read_csv(self.meta_csv, self.META_COLUMNS, "dicom_id")
        self._findings = read_csv(self.findings_csv, self.FINDING_COLUMNS, "dicom_id")
        rows = self._meta.values()
        if views is not None:
            rows = [r for r in rows if r["ViewPosition"].strip() in views]
        self._cases = sorted(r["dicom_id"].strip() for r in rows)
        if not self._cases:
            raise DataError(
                f"no cases found in {self.root}: {self.meta_csv} lists no images"
                + (f" with ViewPosition in {list(views)}" if views else "")
            )
        for d in self._cases:
            f = _row(self._findings, self.findings_csv, d)
            if f["opacity"].strip() not in ("0", "1"):
                raise DataError(f"{self.findings_csv}: column 'opacity' of {d} is {f['opacity']!r}")

    def paths(self, dicom_id: str) -> dict[str, pathlib.Path]:
        """The image, report and mask files of one dicom id."""
        row = self._meta[dicom_id]
        subj = row["subject_id"].strip().zfill(8)
        study = row["study_id"].strip().zfill(8)
        rel = pathlib.Path(f"p{subj[:2]}", f"p{subj}")
        out = {
            "image": self.root / "files" / rel / f"s{study}" / f"{dicom_id}.jpg",
            "report": self.root / "reports" / "files" / rel / f"s{study}.txt",
        }
        for m in CXR_MASKS:
            out[m] = self.root / "masks" / f"{dicom_id}_{m}.png"
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        case = self._check_index(index)
        p = self.paths(case)
        img = _read_grey(p["image"])
        row = self._meta[case]
        try:
            expected = (int(row["Rows"]), int(row["Columns"]))
        except ValueError as e:
            raise DataError(f"{self.meta_csv}: bad Rows/Columns for {case}: {e}") from e
        if img.shape != expected:
            raise DataError(
                f"{p['image']}: size {img.shape} differs from Rows/Columns {expected} "
                f"in {self.meta_csv}"
            )
        masks = []
        for m in CXR_MASKS:
            mk = _read_grey(p[m])
            if mk.shape != img.shape:
                raise DataError(f"shape mismatch: {p['image']} {img.shape} vs {p[m]} {mk.shape}")
            masks.append(mk > 127)
        if not p["report"].is_file():
            raise DataError(f"missing file: expected {p['report']}")
        f = self._findings[case]
        return {
            "image": img.astype(np.float32)[..., None],
            "masks": np.stack(masks, axis=-1).astype(np.uint8),
            "label": np.int32(int(f["opacity"])),
            "prompt": impression(p["report"].read_text(errors="replace")),
            "findings": {k: f[k].strip() for k in ("side", "zone", "extent")},
            "affine": np.eye(4),
            "spacing": np.ones(3, np.float32),
            "case_id": case,
        }


def open_source(kind: str, root: str | pathlib.Path) -> _Source:
    """Source for a dataset ``kind`` (one of KNOWN_KINDS; 'brats' auto-detects the layout)."""
    if kind in ("brats", *BRATS_LAYOUTS):
        return BraTSSource(root, layout="auto" if kind == "brats" else kind)
    table = {"ms": MSSource, "adni": ADNISource, "cxr": CXRSource}
    if kind not in table:
        raise DataError(f"unknown dataset kind {kind!r}; known: {', '.join(KNOWN_KINDS)}")
    return table[kind](root)
