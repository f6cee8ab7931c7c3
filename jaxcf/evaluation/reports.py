"""Per-slice and per-case segmentation scores written as JSON and CSV.

    rows = slice_records("diffscm", ids, masks, truth)    # one dict per slice
    write_reports(rows, out_dir)  # per_slice.{json,csv}, per_case.{json,csv}

A slice row holds its case id, slice index, pixel counts (tumour, predicted, TP / FP / FN)
and the slice's Dice / IoU / sensitivity / precision (metrics.case_metrics, the numbers the
tables average). A case row pools its slices' pixel counts, so its Dice is the Dice of the
case's stack of evaluated slices, beside the mean of its slice Dice.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from jaxcf.evaluation.metrics import case_metrics

SCORES = ("dice", "iou", "sensitivity", "precision")
COUNTS = ("tumour_pixels", "predicted_pixels", "tp", "fp", "fn")
SLICE_COLUMNS = ("method", "case_id", "slice_index", *COUNTS, *SCORES)
CASE_COLUMNS = ("method", "case_id", "slices", "tumour_slices", *COUNTS, *SCORES, "mean_slice_dice")


def slice_ids(meta: dict, index: np.ndarray) -> list[tuple[str, int]]:
    """(case id, slice index) of prepared items: meta.json of the shards, index (B,) rows."""
    cases, slices = meta["item_case_index"], meta["item_slice_index"]
    return [(str(meta["cases"][cases[i]]["case_id"]), int(slices[i])) for i in np.asarray(index)]


def slice_record(
    method: str, case_id: str, slice_index: int, pred: np.ndarray, truth: np.ndarray
) -> dict[str, Any]:
    """One slice's row: pred / truth (H, W) bool masks -> counts and scores."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    tp = int(np.count_nonzero(pred & truth))
    return {
        "method": method,
        "case_id": case_id,
        "slice_index": int(slice_index),
        "tumour_pixels": int(np.count_nonzero(truth)),
        "predicted_pixels": int(np.count_nonzero(pred)),
        "tp": tp,
        "fp": int(np.count_nonzero(pred)) - tp,
        "fn": int(np.count_nonzero(truth)) - tp,
        **case_metrics(pred, truth),
    }


def slice_records(
    method: str, ids: Sequence[tuple[str, int]], masks: np.ndarray, truth: np.ndarray
) -> list[dict[str, Any]]:
    """Rows of a batch: ids from slice_ids, masks / truth (B, H, W) bool."""
    return [
        slice_record(method, case, z, p, t)
        for (case, z), p, t in zip(ids, masks, truth, strict=True)
    ]


def _ratio(num: int, den: int, both_empty: bool) -> float:
    # metrics.py's convention: 0/0 is 1.0 when both masks are empty, else 0.0.
    return float(num / den) if den else (1.0 if both_empty else 0.0)


def case_records(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Slice rows pooled per (method, case), in order of first appearance."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["case_id"]), []).append(row)
    out = []
    for (method, case), group in groups.items():
        n = {k: sum(r[k] for r in group) for k in COUNTS}
        tp, fp, fn = n["tp"], n["fp"], n["fn"]
        empty = tp + fp + fn == 0
        out.append(
            {
                "method": method,
                "case_id": case,
                "slices": len(group),
                "tumour_slices": sum(r["tumour_pixels"] > 0 for r in group),
                **n,
                "dice": _ratio(2 * tp, 2 * tp + fp + fn, empty),
                "iou": _ratio(tp, tp + fp + fn, empty),
                "sensitivity": _ratio(tp, tp + fn, empty),
                "precision": _ratio(tp, tp + fp, empty),
                "mean_slice_dice": float(np.mean([r["dice"] for r in group])),
            }
        )
    return out


def _write_text(path: pathlib.Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
        tmp.write(text)
    os.replace(tmp.name, path)


def write_summary(summary: dict[str, Any], table: str, out: pathlib.Path) -> dict[str, Any]:
    """An evaluation's result: out/metrics.json (summary) and out/metrics.md (its table),
    each written atomically; returns the summary with "table" added."""
    out.mkdir(parents=True, exist_ok=True)
    _write_text(out / "metrics.json", json.dumps(summary, indent=2) + "\n")
    _write_text(out / "metrics.md", table + "\n")
    return {**summary, "table": table}


def write_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], stem: pathlib.Path
) -> tuple[pathlib.Path, pathlib.Path]:
    """rows as stem.json (a list of objects) and stem.csv (a header of `columns`)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = stem.with_suffix(".json"), stem.with_suffix(".csv")
    _write_text(json_path, json.dumps([{k: r[k] for k in columns} for r in rows], indent=1))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _write_text(csv_path, buffer.getvalue())
    return json_path, csv_path


def write_reports(rows: Sequence[dict[str, Any]], out: pathlib.Path) -> dict[str, pathlib.Path]:
    """out/per_slice.{json,csv} (the rows) and out/per_case.{json,csv} (case_records)."""
    slice_json, slice_csv = write_table(rows, SLICE_COLUMNS, out / "per_slice")
    case_json, case_csv = write_table(case_records(rows), CASE_COLUMNS, out / "per_case")
    return {
        "per_slice_json": slice_json,
        "per_slice_csv": slice_csv,
        "per_case_json": case_json,
        "per_case_csv": case_csv,
    }
