"""BraTS-style segmentation metrics: nested tumour regions, HD95, per-volume scores and volumes.

Paper 002 (paediatric brain tumour segmentation, Sec. 5.2) follows the BraTS protocol: the
label map is merged into three nested binary regions, each region of each volume is scored
with Dice, HD95, sensitivity and precision, and the scores are averaged over subjects
(Table 3 reports Dice TC / WT / ET / avg, HD95, sensitivity and precision).

Label conventions (``LABEL_SETS``), background is 0 in both:

==============  =====================================  ==========  ==========
convention      NC (necrotic / non-enhancing core)     ED (edema)  ET (enh.)
==============  =====================================  ==========  ==========
``"peds"``      1                                      2           3
``"brats2021"`` 1 (called NCR there)                   2           4
==============  =====================================  ==========  ==========

``"peds"`` is the BraTS 2023 harmonised scheme that BraTS-PEDs 2023 ships (and that the
BraTS 2023 evaluation code expects: TC = labels {1, 3}, ET = label 3). Regions: WT (whole
tumour) = any tumour label, TC (tumour core) = NC ∪ ET, ET = ET. A label map holding any
other value is refused (``InputError``), never silently dropped into the background.

HD95 follows MONAI's ``compute_hausdorff_distance(..., percentile=95, spacing=spacing)``:
the surface of a mask is its voxels that binary erosion (face-connected structuring element,
outside of the array counted as background) removes; the distance from every surface voxel
of one mask to the nearest surface voxel of the other is taken in mm (voxel index times
``spacing``), the 95th percentile (linear interpolation) is taken of each direction
separately, and HD95 is the larger of the two directed percentiles (paper 002 Eq. 17). Paper
002 states the distance "in voxels"; its data are 1 mm isotropic, so voxels and mm coincide,
and with the spacing given the value is in mm whatever the data.

Empty masks. MONAI (1.6.1) returns NaN, with a warning, when either mask is empty (its
one-sided distances are inf and their percentile comes out NaN). The BraTS evaluations
instead give both-empty 0.0 (perfect agreement) and one-empty a fixed worst value:
``EMPTY_HD95 = 373.13`` mm in BraTS 2021 (373.1287, the diagonal of the 240 x 240 x 155 mm
BraTS volume), the default here; the BraTS 2023 code (BraTS-PEDs 2023 included) replaces its
inf by ``EMPTY_HD95_BRATS2023 = 374`` (pass ``empty_hd95=`` to use it). Paper 002 does not
say which it used. Dice, sensitivity and precision use ``metrics.py``'s
convention, which is also BraTS's: 1.0 when both masks are empty, 0.0 when exactly one is.

Volumes (paper 002 Eq. 13): ``V_c = count(label == c) * sx * sy * sz`` in mm^3, with the
spacing from the NIfTI header (``spacing_from_affine``); ``resolve_spacing`` falls back to
1 mm with a ``SpacingWarning`` naming the case when a header has none.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from jaxcf.errors import InputError
from jaxcf.evaluation.metrics import dice, precision, sensitivity, summarize

LABEL_SETS: dict[str, dict[str, int]] = {
    "peds": {"NC": 1, "ED": 2, "ET": 3},
    "brats2021": {"NC": 1, "ED": 2, "ET": 4},
}
REGIONS: tuple[str, ...] = ("WT", "TC", "ET")
METRICS: tuple[str, ...] = ("dice", "hd95", "sensitivity", "precision")

EMPTY_HD95 = 373.13  # BraTS 2021: one mask empty; sqrt(240^2 + 240^2 + 155^2) mm
EMPTY_HD95_BRATS2023 = 374.0  # BraTS 2023 evaluation code (GLI, PEDs, ...): inf -> 374


class SpacingWarning(UserWarning):
    """A volume had no voxel spacing and 1 mm was assumed."""


# ---------------------------------------------------------------- labels and regions


def _label_set(convention: str) -> dict[str, int]:
    if convention not in LABEL_SETS:
        raise InputError(
            f"unknown label convention {convention!r}; expected one of {sorted(LABEL_SETS)}"
        )
    return LABEL_SETS[convention]


def check_labels(labels: np.ndarray, convention: str = "peds") -> np.ndarray:
    """Return ``labels`` as an array after checking every value is 0 or a tumour label of
    ``convention``; otherwise ``InputError`` naming the values found (any shape)."""
    codes = _label_set(convention)
    labels = np.asarray(labels)
    allowed = [0, *codes.values()]
    bad = ~np.isin(labels, allowed)
    if bad.any():
        found = np.unique(labels[bad])
        shown = [int(v) if float(v).is_integer() else float(v) for v in found[:10]]
        more = f" and {found.size - 10} more" if found.size > 10 else ""
        allowed_text = "{" + ",".join(str(v) for v in sorted(allowed)) + "}"
        raise InputError(f"labels hold {shown}{more} outside {convention}'s {allowed_text}")
    return labels


def regions(labels: np.ndarray, convention: str = "peds") -> dict[str, np.ndarray]:
    """Nested BraTS regions of a label map: ``{"WT", "TC", "ET"}`` -> bool arrays.

    labels: integer (or integral float) label map, any shape (typically (X, Y, Z)). Each region
    has the same shape. WT = any tumour label, TC = NC ∪ ET, ET = ET.
    """
    codes = _label_set(convention)
    labels = check_labels(labels, convention)
    et = labels == codes["ET"]
    return {"WT": labels != 0, "TC": (labels == codes["NC"]) | et, "ET": et}


# ---------------------------------------------------------------- spacing


def _check_spacing(spacing: Sequence[float] | float, ndim: int) -> tuple[float, ...]:
    arr = np.asarray(spacing, np.float64).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, ndim)
    if arr.size != ndim:
        raise InputError(f"spacing {tuple(arr.tolist())} has {arr.size} values for {ndim} axes")
    if not (np.isfinite(arr).all() and (arr > 0).all()):
        raise InputError(f"spacing must be finite and positive, got {tuple(arr.tolist())}")
    return tuple(float(s) for s in arr)


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel spacing (sx, sy, sz) in mm from a NIfTI affine: the column norms of its 3x3 part.

    affine: (4, 4) or (3, 3). Rotations and axis flips do not change the result.
    """
    a = np.asarray(affine, np.float64)
    if a.shape not in {(3, 3), (4, 4)}:
        raise InputError(f"affine must be (4, 4) or (3, 3), got shape {a.shape}")
    norms = np.linalg.norm(a[:3, :3], axis=0)
    sx, sy, sz = _check_spacing(norms, 3)
    return sx, sy, sz


def resolve_spacing(spacing: Sequence[float] | None, case: str, ndim: int = 3) -> tuple[float, ...]:
    """Spacing to use for a volume: ``spacing`` checked (length ``ndim``, positive), or, when
    it is None, 1 mm per axis with a ``SpacingWarning`` naming ``case`` (never silently)."""
    if spacing is None:
        warnings.warn(
            f"{case}: no voxel spacing found; assuming 1 mm isotropic, so HD95 and volumes "
            "are in voxel units",
            SpacingWarning,
            stacklevel=2,
        )
        return (1.0,) * ndim
    return _check_spacing(spacing, ndim)


# ---------------------------------------------------------------- HD95


def _surface(mask: np.ndarray) -> np.ndarray:
    # Face-connected erosion with the outside counted as background: voxels on the array
    # border are surface (MONAI gets the same by zero-padding its foreground crop).
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _directed(
    from_surface: np.ndarray, to_surface: np.ndarray, spacing: Sequence[float]
) -> np.ndarray:
    # Exact Euclidean distance (mm) from each from-surface voxel to the nearest to-surface voxel.
    dist = ndimage.distance_transform_edt(~to_surface, sampling=spacing)
    return dist[from_surface]


def hd95(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float] | float = (1.0, 1.0, 1.0),
    *,
    empty_hd95: float = EMPTY_HD95,
) -> float:
    """Symmetric 95th-percentile Hausdorff distance (mm) between the surfaces of two masks.

    pred, truth: bool masks of equal shape (N-D, usually (X, Y, Z)); spacing: mm per axis
    (length N, or one number for all axes). Matches MONAI's ``compute_hausdorff_distance(...,
    percentile=95, spacing=spacing)``: ``max(P95 d(pred surface -> truth surface),
    P95 d(truth surface -> pred surface))``. Empty masks as in the BraTS evaluation: both
    empty -> 0.0, exactly one empty -> ``empty_hd95`` (default ``EMPTY_HD95`` = 373.13, BraTS
    2021; BraTS 2023 used ``EMPTY_HD95_BRATS2023`` = 374).
    """
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if pred.shape != truth.shape:
        raise InputError(
            f"pred and truth must have the same shape, got {pred.shape} and {truth.shape}"
        )
    sp = _check_spacing(spacing, pred.ndim)
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if not (has_pred or has_truth):
        return 0.0
    if not (has_pred and has_truth):
        return float(empty_hd95)
    # Crop to the union's bounding box plus a 1-voxel zero margin: distances are translation
    # invariant and every surface voxel lies in the box, so the result is unchanged.
    coords = np.nonzero(pred | truth)
    box = tuple(slice(int(c.min()), int(c.max()) + 1) for c in coords)
    p = np.pad(pred[box], 1)
    t = np.pad(truth[box], 1)
    sp_, st = _surface(p), _surface(t)
    d_pt = _directed(sp_, st, sp)
    d_tp = _directed(st, sp_, sp)
    return float(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)))


# ---------------------------------------------------------------- per-volume scores


def volume_metrics(
    pred_labels: np.ndarray,
    true_labels: np.ndarray,
    spacing: Sequence[float] | float,
    convention: str = "peds",
    *,
    empty_hd95: float = EMPTY_HD95,
) -> dict[str, dict[str, float]]:
    """Scores of one volume: ``{region: {"dice", "hd95", "sensitivity", "precision"}}``.

    pred_labels, true_labels: label maps of equal shape (X, Y, Z) in ``convention``;
    spacing: (sx, sy, sz) mm. Regions WT, TC, ET; HD95 in mm (see ``hd95``), the others from
    ``metrics.py`` (both-empty 1.0, one-empty 0.0).
    """
    pred_labels, true_labels = np.asarray(pred_labels), np.asarray(true_labels)
    if pred_labels.shape != true_labels.shape:
        raise InputError(
            f"pred_labels {pred_labels.shape} and true_labels {true_labels.shape} differ in shape"
        )
    sp = _check_spacing(spacing, pred_labels.ndim)
    pred_r, true_r = regions(pred_labels, convention), regions(true_labels, convention)
    out: dict[str, dict[str, float]] = {}
    for r in REGIONS:
        p, t = pred_r[r], true_r[r]
        out[r] = {
            "dice": dice(p, t),
            "hd95": hd95(p, t, sp, empty_hd95=empty_hd95),
            "sensitivity": sensitivity(p, t),
            "precision": precision(p, t),
        }
    return out


def region_volumes(
    labels: np.ndarray, spacing: Sequence[float] | float, convention: str = "peds"
) -> dict[str, dict[str, float]]:
    """Sub-region volumes of a label map (paper 002 Eq. 13): ``V_c = count * sx * sy * sz``.

    labels: (X, Y, Z) label map in ``convention``; spacing: (sx, sy, sz) mm. Returns
    ``{"NC", "ED", "ET", "WT", "TC"}`` -> ``{"voxels", "mm3", "mL"}`` (1 mL = 1 cm^3 =
    1000 mm^3). WT = NC + ED + ET, TC = NC + ET.
    """
    codes = _label_set(convention)
    labels = check_labels(labels, convention)
    voxel_mm3 = math.prod(_check_spacing(spacing, labels.ndim))
    counts = {name: int(np.count_nonzero(labels == code)) for name, code in codes.items()}
    counts["WT"] = counts["NC"] + counts["ED"] + counts["ET"]
    counts["TC"] = counts["NC"] + counts["ET"]
    return {
        name: {"voxels": float(n), "mm3": n * voxel_mm3, "mL": n * voxel_mm3 / 1000.0}
        for name, n in counts.items()
    }


# ---------------------------------------------------------------- summaries


def summarize_volumes(
    rows: Iterable[Mapping[str, Mapping[str, float]]],
) -> dict[str, dict[str, dict[str, float]]]:
    """Mean over volumes per region and metric, plus ``"avg"`` over the three regions.

    rows: one ``volume_metrics`` result per volume. Returns ``{region: {metric: {"mean",
    "std", "n"}}}`` for WT, TC, ET and ``"avg"``, where ``"avg"`` first averages each metric
    over the three regions of a volume (paper 002 Eq. 15: Dice avg = (TC + WT + ET) / 3) and
    then over volumes; its mean equals the mean of the three region means. ``std`` is over
    volumes (ddof 0), NaN values are left out as in ``metrics.summarize``.
    """
    flat: list[dict[str, float]] = []
    for row in rows:
        missing = [r for r in REGIONS if r not in row]
        if missing:
            raise InputError(f"volume scores lack regions {missing}; expected {list(REGIONS)}")
        entry = {f"{r}/{m}": float(row[r][m]) for r in REGIONS for m in row[r]}
        for m in row[REGIONS[0]]:
            entry[f"avg/{m}"] = float(np.mean([row[r][m] for r in REGIONS]))
        flat.append(entry)
    if not flat:
        raise InputError("no volumes to summarise")
    out: dict[str, dict[str, dict[str, float]]] = {}
    for key, stats in summarize(flat).items():
        region, metric = key.split("/", 1)
        out.setdefault(region, {})[metric] = stats
    return out


def table3_row(summary: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, float]:
    """Paper 002 Table 3 columns from ``summarize_volumes``: mean Dice TC / WT / ET / avg and
    the region-averaged HD95, sensitivity and precision (the paper does not say how its
    single HD95 / sensitivity / precision columns pool the regions; the mean is assumed)."""
    row = {f"dice_{r.lower()}": summary[r]["dice"]["mean"] for r in ("TC", "WT", "ET")}
    row["dice_avg"] = summary["avg"]["dice"]["mean"]
    for m in ("hd95", "sensitivity", "precision"):
        row[m] = summary["avg"][m]["mean"]
    return row
