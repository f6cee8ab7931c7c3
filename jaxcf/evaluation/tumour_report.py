"""Structured per-case tumour report, overlay PNG and MLLM prompt (paper 002, Sec. 3.5).

    report = case_report("BraTS-PED-00119-000", labels, spacing, affine=affine, image=image)
    paths = write_case_report(report, "out/reports", image=image, labels=labels)
    # out/reports/<case_id>.json, .md, _prompt.txt, _axial.png
    text = send_prompt(paths["prompt"].read_text(), url=..., model=...,
                       image_paths=[paths["png"]])   # optional, never called by default

Paper 002 turns a thresholded label map into sub-region volumes (Eq. 13,
``V_c = count(label == c) * sx * sy * sz``, computed by ``brats.region_volumes``), writes them
into a standardised text prompt and sends it, with representative axial MRI slices carrying
colour-coded segmentation overlays, to a multimodal LLM (Gemini 2.5 Pro, deterministic
defaults, zero-shot) that writes a radiology-style report. This module builds that input
offline: a JSON-ready report (volumes, location, composition), a Markdown summary, the prompt
text and the overlay PNG. Nothing here touches the network unless ``send_prompt`` is called.

Location. The centroid of the whole tumour (WT) is given in voxel indices and, with the NIfTI
affine, in world mm (``world = affine @ [i, j, k, 1]``). NIfTI world coordinates are RAS+:
+x points to the patient's Right, +y Anterior, +z Superior, so world x > 0 is the patient's
RIGHT and x < 0 the LEFT (DICOM / ITK's LPS+ is the opposite). The side is read from the
centroid's world x against the mid-sagittal plane, "midline" within ``midline_mm`` of it. The
plane is the world x of the head's centroid (the image's non-zero voxels) when the image is
given, since headers need not put x = 0 there (a scanner's or a dataset's origin); without
an image it is x = 0, right for atlas-origin data only. Without an affine the side is
"unknown" (voxel order alone does not say which way is left). The report also gives the
fraction of WT voxels on each side of the plane (a tumour crossing the midline has both
non-zero).

The axial axis is the voxel axis the affine maps closest to S/I (``nibabel.aff2axcodes``),
axis 2 (the Z of jaxcf's (X, Y, Z) volumes) without an affine. The overlay PNG shows the
axial slice with the largest tumour area and its neighbours at +-k.

Colours (Okabe-Ito, distinguishable with colour-vision deficiency, and close to the usual
BraTS red / green / yellow): NC vermillion, ED bluish green, ET yellow.
"""

from __future__ import annotations

import base64
import json
import math
import os
import pathlib
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from jaxcf.errors import InputError
from jaxcf.evaluation import brats
from jaxcf.evaluation.reports import _write_text
from jaxcf.visualization import (
    BRATS_CHANNELS,
    display_factor,
    grid,
    legend,
    mask_overlay,
    save_png,
    stack,
    text_image,
    to_uint8,
    upsample,
    upsample_mask,
)

SUBREGIONS: tuple[str, ...] = ("NC", "ED", "ET")
REGION_ORDER: tuple[str, ...] = ("NC", "ED", "ET", "WT", "TC")
REGION_NAMES: dict[str, str] = {
    "NC": "necrotic / non-enhancing core",
    "ED": "peritumoral edema",
    "ET": "enhancing tumour",
    "WT": "whole tumour",
    "TC": "tumour core, NC + ET",
}
# Okabe-Ito palette.
REGION_COLOURS: dict[str, tuple[int, int, int]] = {
    "NC": (213, 94, 0),  # vermillion
    "ED": (0, 158, 115),  # bluish green
    "ET": (240, 228, 66),  # yellow
}
DEFAULT_MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
MIDLINE_MM = 5.0
SOURCE_NOTE = (
    "All numbers come from an automatic segmentation, not from a radiologist's measurement; "
    "errors in the segmentation carry over to every value."
)
SIDE_NOTE = (
    "Side from the world x coordinate, NIfTI RAS+ convention (+x toward the patient's "
    "right), measured from the mid-sagittal plane taken as the world x of the head's "
    "centroid (x = 0 when no image is given); a head that is not centred on its own "
    "midline (resection, mass effect) shifts it."
)


# ---------------------------------------------------------------- helpers


def _affine(affine: np.ndarray | None) -> np.ndarray | None:
    if affine is None:
        return None
    a = np.asarray(affine, np.float64)
    if a.shape != (4, 4) or not np.isfinite(a).all():
        raise InputError(f"affine must be a finite (4, 4) matrix, got shape {a.shape}")
    if abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise InputError("affine's 3x3 part is singular")
    return a


def _axcodes(affine: np.ndarray) -> tuple[str, str, str]:
    import nibabel as nib

    codes = nib.aff2axcodes(affine)
    return tuple(str(c) for c in codes)  # type: ignore[return-value]


def _spacing(
    spacing: Sequence[float] | None, affine: np.ndarray | None, case_id: str
) -> tuple[float, float, float]:
    if spacing is None and affine is not None:
        return brats.spacing_from_affine(affine)
    sp = brats.resolve_spacing(spacing, case_id, 3)
    if affine is not None:
        from_affine = brats.spacing_from_affine(affine)
        if not np.allclose(sp, from_affine, rtol=1e-3, atol=1e-6):
            raise InputError(
                f"{case_id}: spacing {tuple(sp)} disagrees with the affine's voxel size "
                f"{tuple(round(s, 6) for s in from_affine)}"
            )
    return sp[0], sp[1], sp[2]


def _labels(labels: np.ndarray, convention: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise InputError(f"labels must be an (X, Y, Z) volume, got shape {labels.shape}")
    return brats.check_labels(labels, convention)


def _check_image(image: np.ndarray, labels_shape: tuple[int, ...]) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3:
        image = image[..., None]
    if image.ndim != 4 or image.shape[:3] != tuple(labels_shape):
        raise InputError(
            f"image {image.shape} does not match labels {tuple(labels_shape)}; expected "
            "(X, Y, Z, C) with the labels' (X, Y, Z)"
        )
    return image


def _round(value: float, digits: int = 4) -> float:
    return float(round(float(value), digits))


def overlay_slices(
    labels: np.ndarray, slices: int = 3, *, axis: int = 2, step: int | None = None
) -> list[int]:
    """The axial slices to show: the one with the largest tumour area and its neighbours at
    +-step, +-2 step, ... (``slices`` in all, sorted, clipped to the volume, no repeats).

    labels: (X, Y, Z) label map (non-zero = tumour). step None: the tumour's extent along
    ``axis`` divided by ``slices`` (at least 1), so the slices spread over the tumour. No
    tumour: the middle slice and its neighbours."""
    if slices < 1:
        raise InputError(f"slices must be >= 1, got {slices}")
    tumour = np.asarray(labels) != 0
    n = tumour.shape[axis]
    area = tumour.sum(axis=tuple(a for a in range(tumour.ndim) if a != axis))
    if area.any():
        centre = int(np.argmax(area))
        hit = np.nonzero(area)[0]
        extent = int(hit[-1] - hit[0] + 1)
    else:
        centre, extent = n // 2, slices
    if step is None:
        step = max(1, extent // slices)
    offsets = sorted(range(-(slices // 2), slices - slices // 2), key=abs)
    chosen: list[int] = []
    for o in offsets:
        z = min(max(centre + o * step, 0), n - 1)
        if z not in chosen:
            chosen.append(z)
    return sorted(chosen)


# ---------------------------------------------------------------- the report


def case_report(
    case_id: str,
    labels: np.ndarray,
    spacing: Sequence[float] | None,
    *,
    convention: str = "peds",
    affine: np.ndarray | None = None,
    image: np.ndarray | None = None,
    modalities: Sequence[str] = DEFAULT_MODALITIES,
    midline_mm: float = MIDLINE_MM,
    slices: int = 3,
) -> dict[str, Any]:
    """The structured report of one case as a JSON-ready dict.

    labels: (X, Y, Z) integer label map in ``convention`` (``brats.LABEL_SETS``; other values
    raise ``InputError``); spacing: (sx, sy, sz) mm, or None: taken from ``affine`` when given,
    else 1 mm with ``brats.SpacingWarning`` (``brats.resolve_spacing``); a spacing that
    disagrees with the affine raises. affine: (4, 4) NIfTI voxel -> world (RAS+ mm), optional.
    image: (X, Y, Z, C) optional; checked against labels and ``modalities`` (C names).
    midline_mm: |world x| of the centroid below which the side is "midline". slices: how many
    axial slices the overlay shows (``overlay_slices``).

    Keys: case_id, convention, shape, spacing_mm, voxel_volume_mm3, source, tumour_present,
    volumes ({NC, ED, ET, WT, TC} -> {voxels, mm3, mL}), fractions (ET/WT, NC/WT, ED/WT; None
    without tumour), location (centroid_voxel, centroid_world_mm, axis_codes, side, side_note,
    world_x_fraction {right, left}, bbox {min_voxel, max_voxel, extent_voxels, extent_mm,
    axis_directions}), axial_axis, largest_axial_slice ({index, voxels, area_mm2}),
    overlay_slices, modalities, summary (one sentence).
    """
    case_id = str(case_id)
    labels = _labels(labels, convention)
    a = _affine(affine)
    sp = _spacing(spacing, a, case_id)
    codes = _axcodes(a) if a is not None else None
    if image is not None:
        image = _check_image(image, labels.shape)
        if len(modalities) != image.shape[-1]:
            raise InputError(
                f"image has {image.shape[-1]} channels but modalities names "
                f"{len(modalities)}: {list(modalities)}"
            )
    axial = 2 if codes is None else next(i for i, c in enumerate(codes) if c in "SI")

    vols = brats.region_volumes(labels, sp, convention)
    volumes = {
        r: {
            "voxels": int(vols[r]["voxels"]),
            "mm3": float(vols[r]["mm3"]),
            "mL": float(vols[r]["mL"]),
        }
        for r in REGION_ORDER
    }
    wt = brats.regions(labels, convention)["WT"]
    n_wt = volumes["WT"]["voxels"]
    present = n_wt > 0
    fractions = {
        f"{r}/WT": (volumes[r]["voxels"] / n_wt if present else None) for r in ("ET", "NC", "ED")
    }

    location: dict[str, Any] = {
        "centroid_voxel": None,
        "centroid_world_mm": None,
        "axis_codes": list(codes) if codes else None,
        "side": "none" if not present else "unknown",
        "side_note": SIDE_NOTE if a is not None else "no affine given: side unknown",
        "world_x_fraction": None,
        "bbox": None,
    }
    largest = {"index": None, "voxels": 0, "area_mm2": 0.0}
    if present:
        idx = np.nonzero(wt)
        centroid = np.array([c.mean() for c in idx])
        lo = [int(c.min()) for c in idx]
        hi = [int(c.max()) for c in idx]
        extent = [h - low + 1 for low, h in zip(lo, hi, strict=True)]
        location["centroid_voxel"] = [_round(c, 2) for c in centroid]
        location["bbox"] = {
            "min_voxel": lo,
            "max_voxel": hi,
            "extent_voxels": extent,
            "extent_mm": [float(n * s) for n, s in zip(extent, sp, strict=True)],
            "axis_directions": list(codes) if codes else None,
        }
        if a is not None:
            world = a @ np.append(centroid, 1.0)
            location["centroid_world_mm"] = [_round(w, 2) for w in world[:3]]
            # The mid-sagittal plane: the world x of the head's centroid (the image's non-zero
            # voxels) when the image is given, else x = 0 (an atlas origin).
            mid = 0.0
            if image is not None and np.any(image != 0):
                head = np.nonzero(np.any(image != 0, axis=-1))
                mid = float((a @ np.append([c.mean() for c in head], 1.0))[0])
            location["midline_world_x_mm"] = _round(mid, 2)
            x = a[0, 0] * idx[0] + a[0, 1] * idx[1] + a[0, 2] * idx[2] + a[0, 3] - mid
            location["world_x_fraction"] = {
                "right": _round(np.mean(x > 0)),
                "left": _round(np.mean(x < 0)),
            }
            if abs(world[0] - mid) <= midline_mm:
                location["side"] = "midline"
            else:
                location["side"] = "right" if world[0] > mid else "left"
        in_plane = [s for i, s in enumerate(sp) if i != axial]
        area = wt.sum(axis=tuple(i for i in range(3) if i != axial))
        z = int(np.argmax(area))
        largest = {
            "index": z,
            "voxels": int(area[z]),
            "area_mm2": float(area[z] * in_plane[0] * in_plane[1]),
        }

    report: dict[str, Any] = {
        "case_id": case_id,
        "convention": convention,
        "shape": [int(n) for n in labels.shape],
        "spacing_mm": [float(s) for s in sp],
        "voxel_volume_mm3": float(math.prod(sp)),
        "source": SOURCE_NOTE,
        "tumour_present": bool(present),
        "volumes": volumes,
        "fractions": fractions,
        "location": location,
        "axial_axis": int(axial),
        "largest_axial_slice": largest,
        "overlay_slices": overlay_slices(labels, slices, axis=axial),
        "modalities": list(modalities) if image is not None else None,
    }
    report["summary"] = _summary(report)
    return report


def _summary(report: Mapping[str, Any]) -> str:
    if not report["tumour_present"]:
        return "No tumour was segmented (every voxel is background)."
    v, loc = report["volumes"], report["location"]
    side = {
        "left": "left-sided",
        "right": "right-sided",
        "midline": "midline",
        "unknown": "side unknown (no affine)",
    }[loc["side"]]
    return (
        f"Segmented tumour, {side}: whole tumour {_ml(v['WT']['mL'])} mL "
        f"(NC {_ml(v['NC']['mL'])}, ED {_ml(v['ED']['mL'])}, ET {_ml(v['ET']['mL'])} mL); "
        f"enhancing fraction ET/WT {report['fractions']['ET/WT']:.2f}."
    )


# ---------------------------------------------------------------- text outputs


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, list | tuple):
        return "(" + ", ".join(_fmt(v, digits) for v in value) + ")"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ml(value: float) -> str:
    """mL for text: 2 decimals from 1 mL up, else 3 significant digits (never a bare 0.00)."""
    return f"{value:.2f}" if value >= 1 or value == 0 else f"{value:.3g}"


def _orientation(report: Mapping[str, Any]) -> str:
    """How the overlay tiles are laid out: image across / down = which voxel axis."""
    across, down = (a for a in range(3) if a != report["axial_axis"])
    codes = report["location"]["axis_codes"]
    if not codes:
        return (
            f"image left-to-right follows voxel axis {across}, top-to-bottom voxel axis {down}; "
            "anatomical orientation unknown (no affine)"
        )
    return (
        f"image left-to-right runs toward patient {codes[across]}, top-to-bottom toward "
        f"patient {codes[down]} (voxel axes {across} and {down})"
    )


def _location_lines(report: Mapping[str, Any]) -> list[str]:
    loc = report["location"]
    if not report["tumour_present"]:
        return ["No tumour was segmented; no location."]
    bbox = loc["bbox"]
    dirs = bbox["axis_directions"]
    axes = [f"axis {i}" + (f" (toward {dirs[i]})" if dirs else "") for i in range(3)]
    extent = ", ".join(f"{ax}: {mm:.1f} mm" for ax, mm in zip(axes, bbox["extent_mm"], strict=True))
    lines = [
        f"Centroid (voxel indices): {_fmt(loc['centroid_voxel'], 1)}",
        "Centroid (world mm, RAS+): "
        + (_fmt(loc["centroid_world_mm"], 1) if loc["centroid_world_mm"] else "n/a (no affine)"),
        f"Side: {loc['side']}",
    ]
    if loc["world_x_fraction"]:
        f = loc["world_x_fraction"]
        lines.append(
            "Share of tumour voxels right / left of the midline: "
            f"{f['right']:.2f} / {f['left']:.2f}"
        )
    lines += [
        f"Bounding box extent: {extent}",
        f"Largest axial slice (axis {report['axial_axis']}): index "
        f"{report['largest_axial_slice']['index']}, "
        f"{report['largest_axial_slice']['area_mm2']:.1f} mm^2",
    ]
    return lines


def markdown(report: Mapping[str, Any]) -> str:
    """A radiology-style structured summary of ``case_report``'s dict, as Markdown."""
    v, fr = report["volumes"], report["fractions"]
    sp = " x ".join(f"{s:g}" for s in report["spacing_mm"])
    out = [
        f"# Tumour segmentation report: {report['case_id']}",
        "",
        f"> {SOURCE_NOTE}",
        "",
        f"Label convention: {report['convention']}; volume {'x'.join(map(str, report['shape']))}"
        f" voxels of {sp} mm ({report['voxel_volume_mm3']:g} mm^3 per voxel).",
        "",
        "## Findings",
        "",
        report["summary"],
        "",
        "## Volumes",
        "",
        "| Sub-region | Voxels | Volume (mm^3) | Volume (mL) |",
        "|---|---:|---:|---:|",
    ]
    for r in REGION_ORDER:
        out.append(
            f"| {r} ({REGION_NAMES[r]}) | {v[r]['voxels']} | {v[r]['mm3']:.1f} | "
            f"{_ml(v[r]['mL'])} |"
        )
    out += ["", "## Composition (fraction of whole-tumour volume)", ""]
    for key in ("ET/WT", "NC/WT", "ED/WT"):
        out.append(f"- {key}: {_fmt(fr[key])}")
    out += ["", "## Location", ""]
    out += [f"- {line}" for line in _location_lines(report)]
    out += ["", f"_{report['location']['side_note']}_", ""]
    return "\n".join(out)


def llm_prompt(report: Mapping[str, Any], images: Sequence[str | os.PathLike] = ()) -> str:
    """The text sent to a multimodal LLM with the attached slice images (paper 002 Sec. 3.5).

    images: the attached PNG files (their names are quoted; the files travel separately, e.g.
    via ``send_prompt``'s ``image_paths``)."""
    v, fr = report["volumes"], report["fractions"]
    names = [pathlib.Path(p).name for p in images]
    lines = [
        "You are assisting a neuro-radiologist. Below are quantitative results of an AUTOMATIC "
        "segmentation of a brain MRI (multiparametric: T1, T1 post-contrast, T2, T2-FLAIR) "
        "of a suspected brain tumour (paediatric cohort).",
        "",
        f"Case: {report['case_id']}",
        f"Voxel spacing: {' x '.join(f'{s:g}' for s in report['spacing_mm'])} mm",
        "",
        "Sub-region volumes (V = voxel count x sx x sy x sz):",
    ]
    for r in REGION_ORDER:
        lines.append(f"- {r} ({REGION_NAMES[r]}): {_ml(v[r]['mL'])} mL ({v[r]['voxels']} voxels)")
    lines += ["", "Fractions of the whole-tumour volume:"]
    lines += [f"- {k}: {_fmt(fr[k])}" for k in ("ET/WT", "NC/WT", "ED/WT")]
    lines += ["", "Location:"]
    lines += [f"- {line}" for line in _location_lines(report)]
    if report["location"]["side"] != "none":
        lines.append(f"- Note: {report['location']['side_note']}")
    lines.append("")
    if names:
        c = REGION_COLOURS
        lines += [
            "Attached images: " + ", ".join(names),
            f"They show axial slices {report['overlay_slices']} (the slice with the largest "
            "tumour area and its neighbours) with colour-coded overlays: "
            f"NC vermillion {c['NC']}, ED bluish green {c['ED']}, ET yellow {c['ET']}. "
            f"In each slice, {_orientation(report)}.",
            "",
        ]
    else:
        lines += ["No images are attached; rely on the numbers only.", ""]
    lines += [
        "Task: write a structured radiology-style report with the sections FINDINGS "
        "(location, size, composition of the lesion), IMPRESSION and DIFFERENTIAL DIAGNOSIS "
        "(ranked, with the features supporting each).",
        "Rules:",
        "- Use only the measurements given above; do not invent measurements, sequences, "
        "clinical history or findings that are not provided.",
        "- State your uncertainty explicitly, and say which conclusions would need "
        "histopathology or further imaging.",
        "- Remember the volumes come from an automatic segmentation that may contain errors.",
    ]
    if not report["tumour_present"]:
        lines.append(
            "- The segmentation found no tumour; say so, and do not describe a lesion that "
            "the data do not show."
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- PNG


def display_range(channel: np.ndarray) -> tuple[float, float]:
    """(lo, hi) shown of one channel: its non-zero voxels' 0.5th and 99.5th percentiles."""
    values = channel[channel != 0]
    if values.size == 0:
        values = channel.reshape(-1)
    lo, hi = np.percentile(values, [0.5, 99.5])
    return float(lo), float(max(hi, lo + 1e-6))


def overlay_tile(
    image: np.ndarray,
    labels: np.ndarray,
    display_range: tuple[float, float],
    factor: int,
    convention: str = "peds",
) -> np.ndarray:
    """One slice, (H, W) intensities and (H, W) labels in ``convention``, as an
    (H * factor, W * factor, 3) uint8 tile: the intensities between display_range, NC / ED /
    ET blended in REGION_COLOURS (ET on top)."""
    lo, hi = display_range
    codes = brats.LABEL_SETS[convention]
    scaled = upsample(2.0 * (np.asarray(image, np.float32) - lo) / (hi - lo) - 1.0, factor)
    scaled = np.clip(scaled, -1.0, 1.0)
    rgb = np.repeat(to_uint8(scaled, -1.0, 1.0)[..., None], 3, axis=-1)
    for name in ("ED", "NC", "ET"):  # ET last: drawn on top
        mask = upsample_mask(labels == codes[name], factor)
        if mask.any():
            rgb = np.where(mask[..., None], mask_overlay(scaled, mask, REGION_COLOURS[name]), rgb)
    return rgb.astype(np.uint8)


def overlay_png(
    image: np.ndarray,
    labels: np.ndarray,
    path: str | os.PathLike,
    *,
    slices: int = 3,
    convention: str = "peds",
    channel: int | None = None,
    axis: int = 2,
    indices: Sequence[int] | None = None,
    case_id: str | None = None,
    modality: str | None = None,
    axis_codes: Sequence[str] | None = None,
) -> pathlib.Path:
    """Axial slices of one modality with colour-coded NC / ED / ET overlays and a legend.

    image: (X, Y, Z, C) (or (X, Y, Z)); labels: (X, Y, Z) in ``convention``; path: PNG file.
    channel: default FLAIR (index 3 when C == 4, else 0). axis: the axial voxel axis.
    indices: the slices to show (default ``overlay_slices(labels, slices, axis=axis)``).
    Each tile shows voxel axis 0 across and the remaining in-plane axis down, upsampled to
    about ``visualization.TILE_PX`` wide (intensity bicubic, masks bilinear at 0.5). For
    BraTS voxel order (axes 0 / 1 run to patient left / posterior) that is the radiological
    view: anterior up, patient right on the image's left. Intensities are shown between the
    0.5th and 99.5th percentile of the channel's non-zero voxels. axis_codes (e.g. the
    report's ``location.axis_codes``) label the directions in the caption. Returns the path."""
    labels = _labels(labels, convention)
    image = _check_image(image, labels.shape)
    n_ch = image.shape[-1]
    if channel is None:
        channel = 3 if n_ch == 4 else 0
    if not 0 <= channel < n_ch:
        raise InputError(f"channel {channel} out of range for an image with {n_ch} channels")
    if modality is None:
        modality = BRATS_CHANNELS[channel] if n_ch == 4 else f"channel {channel}"
    if axis not in (0, 1, 2):
        raise InputError(f"axis must be 0, 1 or 2, got {axis}")
    codes = brats.LABEL_SETS[convention]
    vol = np.asarray(image[..., channel], np.float32)
    lo, hi = display_range(vol)
    idx = list(indices) if indices is not None else overlay_slices(labels, slices, axis=axis)
    for z in idx:
        if not 0 <= int(z) < labels.shape[axis]:
            raise InputError(f"slice {z} outside 0..{labels.shape[axis] - 1} along axis {axis}")
    factor = display_factor(labels.shape[0] if axis != 0 else labels.shape[1])
    area = (labels != 0).sum(axis=tuple(a for a in range(3) if a != axis))
    best = int(np.argmax(area)) if area.any() else None
    tiles, titles = [], []
    for z in idx:
        sl = np.take(vol, int(z), axis=axis).T
        lab = np.take(labels, int(z), axis=axis).T
        tiles.append(Image.fromarray(overlay_tile(sl, lab, (lo, hi), factor, convention)))
        titles.append(f"slice {z}" + (" (largest)" if z == best else ""))
    vols = {n: int(np.count_nonzero(labels == codes[n])) for n in SUBREGIONS}
    entries = [(REGION_COLOURS[n], f"{n} {REGION_NAMES[n]} ({vols[n]} vox)") for n in SUBREGIONS]
    body, _ = grid([[*tiles, legend(entries)]], [*titles, ""])
    head = " ".join(x for x in (case_id or "", f"{modality}, axial (axis {axis})") if x)
    across, down = (a for a in range(3) if a != axis)
    if axis_codes:
        layout = f"across: toward {axis_codes[across]}, down: toward {axis_codes[down]}"
    else:
        layout = f"across: voxel axis {across}, down: voxel axis {down}"
    caption = f"{head}; {layout}\nautomatic segmentation overlay"
    return save_png(stack([text_image(caption, 14), body]), path)


# ---------------------------------------------------------------- files


def write_case_report(
    report: Mapping[str, Any],
    out_dir: str | os.PathLike,
    *,
    image: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> dict[str, pathlib.Path]:
    """Write <case_id>.json, <case_id>.md, <case_id>_prompt.txt and, when image (X, Y, Z, C)
    and labels (X, Y, Z) are given, <case_id>_axial.png (the report's overlay slices; the
    prompt then names it). Files are written atomically. Returns {"json", "markdown",
    "prompt"[, "png"]} -> path."""
    if (image is None) != (labels is None):
        raise InputError("give both image and labels for the overlay PNG, or neither")
    case_id = str(report["case_id"])
    if not case_id or any(c in case_id for c in '/\\:*?"<>|') or case_id in {".", ".."}:
        raise InputError(f"case_id {case_id!r} cannot be used as a file name")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, pathlib.Path] = {}
    images: list[pathlib.Path] = []
    if image is not None and labels is not None:
        lab = np.asarray(labels)
        if list(lab.shape) != list(report["shape"]):
            raise InputError(
                f"labels {lab.shape} do not match the report's shape {report['shape']}"
            )
        modalities = report.get("modalities")
        img = _check_image(image, lab.shape)
        channel = 3 if img.shape[-1] == 4 else 0
        modality = modalities[channel].upper() if modalities else None
        paths["png"] = overlay_png(
            img,
            lab,
            out / f"{case_id}_axial.png",
            convention=report["convention"],
            axis=int(report["axial_axis"]),
            indices=report["overlay_slices"],
            case_id=case_id,
            modality=modality,
            axis_codes=report["location"]["axis_codes"],
        )
        images.append(paths["png"])
    paths["json"] = out / f"{case_id}.json"
    _write_text(paths["json"], json.dumps(report, indent=1) + "\n")
    paths["markdown"] = out / f"{case_id}.md"
    _write_text(paths["markdown"], markdown(report))
    paths["prompt"] = out / f"{case_id}_prompt.txt"
    _write_text(paths["prompt"], llm_prompt(report, images))
    return paths


# ---------------------------------------------------------------- optional LLM client


_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


def _data_url(path: str | os.PathLike) -> str:
    p = pathlib.Path(path)
    mime = _MIME.get(p.suffix.lower())
    if mime is None:
        raise InputError(f"image {p}: unsupported type {p.suffix!r}; expected {sorted(_MIME)}")
    try:
        data = p.read_bytes()
    except OSError as err:
        raise InputError(f"image {p}: cannot read ({err})") from err
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def send_prompt(
    prompt: str,
    *,
    url: str,
    model: str,
    api_key: str | None = None,
    image_paths: Sequence[str | os.PathLike] = (),
    timeout: float = 60,
    temperature: float = 0.0,
) -> str:
    """Send the prompt (and images) to an OpenAI-compatible chat-completions endpoint and
    return the reply's text. Off by default: nothing in jaxcf calls this.

    url: the endpoint, or its base (``.../v1``): "/chat/completions" is appended unless the
    URL already ends with it. Images go as base64 data URLs in the message's content list.
    temperature 0 (deterministic, as paper 002 ran its model). HTTP errors, unreachable
    servers and malformed replies raise ``InputError`` naming the URL."""
    endpoint = url.rstrip("/")
    if not endpoint.endswith("/chat/completions"):
        endpoint += "/chat/completions"
    if not endpoint.startswith(("http://", "https://")):
        raise InputError(f"url {url!r} must start with http:// or https://")
    content: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
    content += [{"type": "image_url", "image_url": {"url": _data_url(p)}} for p in image_paths]
    body = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "temperature": temperature,
    }
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(
        endpoint, data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as err:
        detail = err.read()[:300].decode("utf-8", "replace")
        raise InputError(f"{endpoint}: HTTP {err.code} {err.reason}: {detail}") from err
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise InputError(f"{endpoint}: request failed ({reason})") from err
    try:
        reply = json.loads(raw)
        message = reply["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise InputError(f"{endpoint}: malformed reply ({raw[:200]!r})") from err
    if isinstance(message, list):  # content parts
        message = "".join(p.get("text", "") for p in message if isinstance(p, dict))
    if not isinstance(message, str):
        raise InputError(f"{endpoint}: reply content is not text ({type(message).__name__})")
    return message
