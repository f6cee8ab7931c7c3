"""The MIMIC-CXR-JPG-like chest X-ray dataset: ids, free-text reports and the writer.

Layout (docs/data.md): files/pXX/pSSSSSSSS/sTTTTTTTT/<dicom_id>.jpg,
reports/files/pXX/pSSSSSSSS/sTTTTTTTT.txt, mimic-cxr-2.0.0-metadata.csv, and jaxcf's
masks/<dicom_id>_{left_lung,right_lung,heart}.png and jaxcf-cxr-findings.csv.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib

import numpy as np

from jaxcf.data.phantoms import cxr
from jaxcf.data.phantoms.files import write_csv, write_jpeg, write_png, write_text
from jaxcf.data.phantoms.jobs import run_cases
from jaxcf.data.phantoms.seeding import case_rngs, dataset_rng, healthy_cases

METADATA_HEADER = ("dicom_id", "subject_id", "study_id", "ViewPosition", "Rows", "Columns")
FINDINGS_HEADER = ("dicom_id", "opacity", "side", "zone", "extent")
MASK_NAMES = ("left_lung", "right_lung", "heart")


@dataclasses.dataclass(frozen=True)
class StudyIds:
    """MIMIC-style ids: 8-digit subject and study ids and a hex dicom id."""

    subject_id: int
    study_id: int
    dicom_id: str

    @property
    def study_folder(self) -> str:
        """pXX/pSSSSSSSS/sTTTTTTTT (XX = first two digits of the subject id)."""
        return f"p{str(self.subject_id)[:2]}/p{self.subject_id}/s{self.study_id}"

    @property
    def image_path(self) -> str:
        return f"files/{self.study_folder}/{self.dicom_id}.jpg"

    @property
    def report_path(self) -> str:
        return f"reports/files/{self.study_folder}.txt"


def study_ids(cases: int, seed: int) -> list[StudyIds]:
    """Distinct ids for `cases` studies (one image per study, one study per subject); id i
    depends only on the seed and the ids before it. Subject ids 10000000-19999999 and study ids
    50000000-59999999 as in MIMIC; dicom ids are five dash-joined 8-hex-digit groups."""
    rng = dataset_rng(seed, "cxr", 2)
    out, subjects, studies = [], set(), set()
    while len(out) < cases:
        subject = int(rng.integers(10_000_000, 20_000_000))
        study = int(rng.integers(50_000_000, 60_000_000))
        words = rng.integers(0, 2**32, 5, dtype=np.uint64)
        if subject in subjects or study in studies:
            continue
        subjects.add(subject)
        studies.add(study)
        out.append(StudyIds(subject, study, "-".join(f"{int(w):08x}" for w in words)))
    return out


def report(finding: cxr.Finding | None, rng: np.random.Generator) -> str:
    """A MIMIC-style free-text report (FINDINGS / IMPRESSION) that names the opacity's side,
    zone and extent, or states a normal study."""
    header = (
        "                                 FINAL REPORT\n"
        " EXAMINATION:  CHEST (PA)\n\n"
        f" INDICATION:  ___ with {rng.choice(['cough', 'fever', 'dyspnea', 'chest pain'])}.\n\n"
        " COMPARISON:  None.\n\n"
    )
    if finding is None:
        findings = str(rng.choice([
            "The lungs are clear. No focal consolidation, pleural effusion or pneumothorax. "
            "Heart size normal. Mediastinal contours are unremarkable.",
            "No focal consolidation. Heart size normal. No pleural effusion or pneumothorax.",
            "Lungs are well expanded and clear. The cardiomediastinal silhouette is within "
            "normal limits. No pleural effusion or pneumothorax.",
        ]))  # fmt: skip
        impression = str(
            rng.choice(
                [
                    "No acute cardiopulmonary process.",
                    "No focal consolidation.",
                    "Normal chest radiograph.",
                ]
            )
        )
    else:
        where = (f"the bilateral {finding.zone} zones" if finding.side == "bilateral"
                 else f"the {finding.side} {finding.zone} zone")  # fmt: skip
        noun = "opacities" if finding.side == "bilateral" else "opacity"
        kind = str(rng.choice(["Patchy", "Hazy", "Ill-defined"]))
        cause = str(rng.choice(["pneumonia", "infection", "aspiration or atelectasis"]))
        findings = (
            f"{kind} {noun} in {where}, {finding.extent} in extent. "
            "No pleural effusion or pneumothorax. Heart size normal."
        )
        impression = f"{finding.extent.capitalize()} {noun} in {where}, concerning for {cause}."
    return f"{header} FINDINGS:\n {findings}\n\n IMPRESSION:\n {impression}\n"


def _write_case(index, root, size, seed, normal, ids) -> tuple[tuple, tuple]:
    """Render and write one study; returns its (metadata row, findings row)."""
    rngs = case_rngs(seed, "cxr", index)
    params = cxr.sample_chest(rngs["anatomy"])
    finding = None if index in normal else cxr.sample_finding(rngs["pathology"], params)
    image = cxr.render(params, size, finding, rngs["noise"])
    study = ids[index]
    write_jpeg(root / study.image_path, image.image)
    write_text(root / study.report_path, report(finding, rngs["contrast"]))
    for k, name in enumerate(MASK_NAMES):
        mask = image.masks[..., k].astype(np.uint8) * 255
        write_png(root / "masks" / f"{study.dicom_id}_{name}.png", mask)
    metadata = (study.dicom_id, study.subject_id, study.study_id, "PA", size, size)
    if finding is None:
        return metadata, (study.dicom_id, 0, "none", "none", "none")
    return metadata, (study.dicom_id, 1, finding.side, finding.zone, finding.extent)


def write_cxr(
    root: pathlib.Path,
    cases: int,
    size: int,
    seed: int,
    *,
    normal_fraction: float = 0.25,
    workers: int = 1,
    progress: bool = False,
) -> dict[str, int]:
    """Write `cases` PA radiographs (size x size JPEG), masks, reports and both CSVs; exactly
    round(normal_fraction * cases) are normal. Returns counts (opacity / normal)."""
    normal = healthy_cases(cases, normal_fraction, seed, "cxr")
    job = functools.partial(_write_case, root=root, size=size, seed=seed, normal=normal,
                            ids=tuple(study_ids(cases, seed)))  # fmt: skip
    rows = run_cases(job, cases, workers=workers, progress=progress, desc="cxr")
    write_csv(root / "mimic-cxr-2.0.0-metadata.csv", METADATA_HEADER, [r[0] for r in rows])
    write_csv(root / "jaxcf-cxr-findings.csv", FINDINGS_HEADER, [r[1] for r in rows])
    opacity = sum(r[1][1] for r in rows)
    return {"opacity": opacity, "normal": cases - opacity}
