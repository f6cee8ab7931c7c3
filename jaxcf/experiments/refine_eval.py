"""Paper 002's Table 3 for a trained diffusion refiner, for `python -m jaxcf.evaluate
--method=refine`: the coarse segmenter alone against the coarse prediction refined.

    summary = evaluate(refiner, split, out)

Inputs: the split's whole volumes (the seg3d shards: foreground-cropped, z-scored; at most
eval.max_items when > 0) with their label maps and voxel spacing (the NIfTI header's,
kept in the prepared shards' case table).

Rows:
  Coarse (<family>)        the frozen coarse segmenter (refiner.coarse), sliding window
                           over the volume (windows of the training crop, 25% overlap,
                           Gaussian blending), argmax of the blended probabilities
  Diffusion refiner        the refiner over the same windows (counterfactual.refine: the
                           coarse probabilities injected at t' and a few DDIM steps;
                           from noise with DPM-Solver++ for an unconditional refiner)
  MedSegDiff               instead, for a train.task = "medsegdiff" workdir: the 2-D model
                           over the volume's axial slices, each with its slice of the
                           coarse probabilities (counterfactual.medsegdiff: DPM-Solver++
                           fused with the calibration map; predict_slices)

Columns (jaxcf.evaluation.brats, per volume then averaged over volumes): Dice TC / WT / ET
/ avg, HD95 in mm (BraTS's empty-mask convention), sensitivity and precision averaged over
the three regions. Writes metrics.json, metrics.md, per_case.json (every volume's scores),
panel_<case>.png (axial slices: image, truth, coarse, refined) and, for the first volumes,
the structured report of the refined segmentation (jaxcf.evaluation.tumour_report: JSON,
Markdown, the LLM prompt and an overlay PNG).
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from jaxcf.counterfactual import medsegdiff, refine
from jaxcf.counterfactual.model import MethodModel
from jaxcf.data.prepare import prepared_info
from jaxcf.errors import InputError
from jaxcf.evaluation import brats
from jaxcf.evaluation.metrics import markdown_table
from jaxcf.evaluation.reports import write_summary
from jaxcf.experiments.prompt_swap_eval import split_arrays
from jaxcf.segmentation.labels import labels_from_classes
from jaxcf.segmentation.sliding_window import sliding_window_inference
from jaxcf.training.medsegdiff_task import MedSegDiffTask

COLUMNS = ("dice_tc", "dice_wt", "dice_et", "dice_avg", "hd95", "sensitivity", "precision")
HEADERS = {
    "dice_tc": "Dice TC",
    "dice_wt": "Dice WT",
    "dice_et": "Dice ET",
    "dice_avg": "Dice Avg",
    "hd95": "HD95 (mm)",
    "sensitivity": "Sensitivity",
    "precision": "Precision",
}
CONVENTIONS = {3: "peds", 4: "brats2021"}  # the dataset's ET label -> brats label set
REPORTS = 2  # structured reports and panels for the first volumes


def refine_predictor(fn, channels: int):
    """predictor(params=(weights, key), windows) -> refined class probabilities, for the
    sliding window: windows hold the image's `channels` then, for a conditional refiner,
    the coarse probabilities."""

    def predict(params: Any, windows: jax.Array) -> jax.Array:
        weights, key = params
        batch = {"image": windows[..., :channels]}
        if windows.shape[-1] > channels:
            batch["prior"] = windows[..., channels:]
        return fn(weights, batch, key)["counterfactual"]

    return predict


def predict_slices(
    fn,
    weights: Any,
    volume: np.ndarray,
    key: jax.Array,
    *,
    channels: int,
    multiple: int,
    chunk: int = 32,
) -> np.ndarray:
    """A 2-D method (counterfactual.medsegdiff) over the axial slices (axis Z) of one
    volume: volume (X, Y, Z, channels [+ 4 prior]) -> (X, Y, Z, 4) class probabilities.
    Slices are zero-padded at the far end to multiples of `multiple` (the prior with
    background) and cropped back; they run `chunk` at a time (the last chunk padded with
    empty slices, so one program serves the whole volume)."""
    x, y, depth = volume.shape[:3]
    slices = np.moveaxis(np.asarray(volume, np.float32), 2, 0)  # (Z, X, Y, ch)
    pad_x, pad_y = -x % multiple, -y % multiple
    slices = np.pad(slices, ((0, -depth % chunk), (0, pad_x), (0, pad_y), (0, 0)))
    if slices.shape[-1] > channels:  # padded prior pixels: certainly background
        outside = np.ones(slices.shape[:3], bool)
        outside[:depth, :x, :y] = False
        slices[..., channels][outside] = 1.0
    out = []
    for start in range(0, len(slices), chunk):
        batch = {"image": slices[start : start + chunk, ..., :channels]}
        if slices.shape[-1] > channels:
            batch["prior"] = slices[start : start + chunk, ..., channels:]
        probs = fn(weights, batch, jax.random.fold_in(key, start))["counterfactual"]
        out.append(np.asarray(probs))
    probs = np.concatenate(out)[:depth, :x, :y]
    return np.moveaxis(probs, 0, 2)


def _volumes(config: Any, workdir: pathlib.Path, split: str) -> tuple[dict, list[dict]]:
    """The split's volumes {"image", "seg", "index"} and each one's case entry."""
    from jaxcf.training.data import ensure_data

    data = ensure_data(config.data.copy_and_resolve_references(), workdir)
    if data.task != "seg3d":
        raise InputError(f"evaluate --method=refine needs seg3d data, got data.task={data.task!r}")
    items = split_arrays(data, split, ("image", "seg", "index"))
    limit = int(config.eval.max_items)
    if limit > 0:
        items = {k: v[:limit] for k, v in items.items()}
    info = prepared_info(data.prepared)
    cases = [info["cases"][info["item_case_index"][int(i)]] for i in items["index"]]
    return items, cases


def comparison_panel(
    image: np.ndarray,
    truth: np.ndarray,
    predictions: dict[str, np.ndarray],
    path: pathlib.Path,
    convention: str,
) -> pathlib.Path:
    """PNG: the truth's largest tumour slice (axis 2) and the slices a third of its extent
    either side, one row each; columns FLAIR (channel 3 of 4, else 0), truth, and each
    prediction's labels over it. image (X, Y, Z, C); label maps (X, Y, Z)."""
    from jaxcf.evaluation.tumour_report import display_range, overlay_slices, overlay_tile
    from jaxcf.visualization import display_factor, save_panel

    flair = image[..., 3 if image.shape[-1] == 4 else 0]
    shown = overlay_slices(truth, 3, axis=2)
    window, factor = display_range(flair), display_factor(truth.shape[0])
    maps = {"Ground truth": truth, **predictions}
    rows = []
    for z in shown:
        plane = flair[..., z].T
        tiles = [overlay_tile(plane, np.zeros_like(plane, np.uint8), window, factor)]
        tiles += [
            overlay_tile(plane, m[..., z].T, window, factor, convention) for m in maps.values()
        ]
        rows.append(tiles)
    return save_panel(
        rows, path, ["FLAIR", *maps], scale=1, row_labels=[f"slice {z}" for z in shown]
    )


def cropped_affine(case: dict) -> np.ndarray | None:
    """The voxel -> world affine of a prepared seg3d volume: the NIfTI header's, moved to
    the foreground box the volume was cropped to (case["bbox"] starts; the zero padding to
    the split's largest box is at the far end, so it moves nothing). None without one."""
    if not case.get("affine"):
        return None
    affine = np.asarray(case["affine"], np.float64)
    shift = np.eye(4)
    shift[:3, 3] = [start for start, _ in case.get("bbox", [[0, 0]] * 3)]
    return affine @ shift


def evaluate(refiner: Any, split: str, out: pathlib.Path, *, progress: bool = True) -> dict:
    """Table 3 of the module docstring -> out/metrics.json, metrics.md, per_case.json,
    panels and reports. refiner: jaxcf.inference.load_refiner's."""
    from jaxcf.evaluation import tumour_report

    started = time.perf_counter()
    config, task = refiner.config, refiner.task
    items, cases = _volumes(config, refiner.workdir, split)
    convention = CONVENTIONS[task.et_label]
    channels = int(config.data.channels)
    roi = (int(config.data.crop_size),) * 3
    slicewise = isinstance(task, MedSegDiffTask)  # a 2-D refiner, run slice by slice
    method_name = "medsegdiff" if slicewise else "refine"
    method = medsegdiff if slicewise else refine
    settings = config.counterfactual[method_name]
    model = MethodModel(apply=task.apply, schedule=task.schedule)
    fn = method.build(model, settings)
    if slicewise:
        fn = jax.jit(fn)
        multiple = nnx.merge(task.apply.graphdef, refiner.params["model"]).size_multiple
    else:
        predictor = refine_predictor(fn, channels)
    coarse_name = f"Coarse ({task.coarse.config.model.family})" if task.coarse else None
    refined_name = f"{method.LABEL} ({'conditional' if task.conditional else 'unconditional'})"
    key = jax.random.key(int(config.counterfactual.seed))
    per_case: list[dict] = []
    rows: dict[str, list[dict]] = {name: [] for name in (coarse_name, refined_name) if name}
    bar = tqdm(total=len(cases), desc="refine", unit="vol", disable=not progress)
    for i, case in enumerate(cases):
        image = items["image"][i : i + 1]
        truth = items["seg"][i]
        affine = cropped_affine(case)
        spacing = case.get("spacing") or (
            brats.spacing_from_affine(affine) if affine is not None else None
        )
        spacing = brats.resolve_spacing(spacing, case["case_id"])  # none: 1 mm, with a warning
        predictions = {}
        windows = image
        if task.coarse is not None:
            prior = task.coarse.probabilities(image)
            predictions[coarse_name] = np.argmax(prior[0], axis=-1)
            windows = np.concatenate([image, prior], axis=-1)
        # One key per volume. In the sliding window every window starts from the same
        # noise pattern (DDIM with eta 0 then draws no more), fine for the conditional
        # refiner, whose windows differ by their prior; the unconditional one's windows share
        # their noise too. Slice by slice, each slice draws its own noise.
        if slicewise:
            refined = predict_slices(
                fn, refiner.params["model"], windows[0], jax.random.fold_in(key, i),
                channels=channels, multiple=multiple,
            )  # fmt: skip
        else:
            refined = sliding_window_inference(
                predictor,
                (refiner.params["model"], jax.random.fold_in(key, i)),
                jnp.asarray(windows),
                roi,
                overlap=0.25,
                sw_batch_size=2,
            )[0]
        predictions[refined_name] = np.argmax(np.asarray(refined), axis=-1)
        record = {"case_id": case["case_id"], "spacing": list(spacing)}
        for name, classes in predictions.items():
            labels = labels_from_classes(classes, task.et_label)
            scores = brats.volume_metrics(labels, truth, spacing, convention)
            rows[name].append(scores)
            record[name] = scores
            predictions[name] = labels
        per_case.append(record)
        if i < REPORTS:
            refined_labels = predictions[refined_name]
            report = tumour_report.case_report(
                case["case_id"], refined_labels, spacing, convention=convention,
                affine=affine,
                image=image[0],
            )  # fmt: skip
            tumour_report.write_case_report(
                report, out / "reports", image=image[0], labels=refined_labels
            )
            comparison_panel(
                image[0], truth, predictions, out / f"panel_{case['case_id']}.png", convention
            )
        bar.update(1)
    bar.close()
    results = {name: brats.table3_row(brats.summarize_volumes(r)) for name, r in rows.items()}
    summary = {
        "method": method_name,
        "split": split,
        "volumes": len(cases),
        "convention": convention,
        "coarse": task.coarse_path or None,
        "settings": settings.to_dict(),
        "window": "axial slices" if slicewise else list(roi),
        "results": results,
        "seconds": time.perf_counter() - started,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "per_case.json").write_text(json.dumps(per_case, indent=2))
    return write_summary(summary, markdown(summary), out)


def markdown(summary: dict) -> str:
    """Table 3's layout: one row per model, Dice per region and avg, HD95, sens., prec."""
    s = summary["settings"]
    if summary["method"] == "refine":
        how = f"DDIM {s['num_steps']} steps grid, prior injected at strength {s['strength']}"
    else:
        how = (
            f"DPM-Solver++ {s['num_steps']} steps, calibration weight "
            f"{s['calibration_weight']}, slice by slice"
        )
    title = (
        f"Paper 002 Table 3 layout, {summary['split']} split: {summary['volumes']} volumes, "
        f"refiner: {how}; HD95 in mm (paper 002: voxels, the same at 1 mm)"
    )
    results = {
        name: {HEADERS[k]: v for k, v in row.items() if k in HEADERS}
        for name, row in summary["results"].items()
    }
    columns = [HEADERS[k] for k in COLUMNS]
    return markdown_table(results, columns, title, percent=False, digits=3)
