"""Counterfactual segmentation over a split of prepared BraTS slices: the papers' Table 1.

For every method (and the FLAIR thresholding baseline Diff-SCM compares against) it streams
the split batch by batch and keeps, in constant memory:
  - pixel-level AUPRC and ideal Dice over the whole split (paper 001), from the heatmap
    (baseline: the FLAIR intensity), via StreamingAUPRC histograms;
  - per-slice Dice / IoU / sensitivity / precision of the binary masks: the methods' from
    paper 000's post-processing (histogram match, contrast, Otsu, per-modality vote,
    components, holes); the baseline's from one FLAIR threshold chosen on the *validation*
    split (its ideal-Dice threshold there), so no test label tunes any number.
Slices are the unit (the papers work on 2-D slices). `eval.slices = all` scores every slice
of the split, healthy ones included: Diff-SCM's "whole test set" (paper 001 Sec. 4);
`tumour` keeps only the slices with at least one tumour voxel. The split is read on the
evaluation grid (`eval.image_size`; Diff-SCM: 128 px) while the methods run on the model's
(64 px): `on_model_grid` resizes their inputs down and their maps back up.

The methods come in as plain functions (batch -> counterfactual, heatmap, mask); the
wiring from registered counterfactual methods lives in jaxcf.experiments.segmentation, so
this module never imports jaxcf.counterfactual.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from jaxcf.data.pipeline import info, make_dataset
from jaxcf.data.transforms import resize_image, resize_labels
from jaxcf.errors import InputError
from jaxcf.evaluation.metrics import (
    StreamingAUPRC,
    case_metrics,
    flair_scores,
    markdown_table,
    summarize,
)
from jaxcf.evaluation.postprocess import foreground_mask
from jaxcf.evaluation.reports import slice_ids, slice_records

BASELINE = "threshold"
BASELINE_LABEL = "Thresholding (FLAIR)"
COLUMNS = ("dice", "iou", "sensitivity", "precision", "auprc", "ideal_dice")
HEAT_RANGE = (0.0, 2.0)  # |x - x_cf| of images in [-1, 1]
FLAIR_RANGE = (-1.0, 1.0)
# batch {"image" (B, S, S, C), "seg" (B, S, S), "label" (B,)} -> (counterfactual
# (B, S, S, C), heatmap (B, S, S), mask (B, S, S) bool)
Segmenter = Callable[[dict], tuple[np.ndarray, np.ndarray, np.ndarray]]


def brain_masks(images: np.ndarray) -> np.ndarray:
    """(B, S, S, C) slices in [-1, 1] (background -1) -> (B, S, S) bool brain masks."""
    return foreground_mask(images, background=-1.0)


@dataclasses.dataclass
class Example:
    """One evaluated slice kept for panels: image (S, S, C), truth (S, S) and, per method,
    (counterfactual (S, S, C) or None, heatmap (S, S), mask (S, S)); its case and slice."""

    image: np.ndarray
    truth: np.ndarray
    outputs: dict[str, tuple[np.ndarray | None, np.ndarray, np.ndarray]]
    case_id: str = ""
    slice_index: int = -1


def keep_largest_tumours(examples: list[Example], k: int) -> list[Example]:
    """The k examples with the most tumour pixels (ties: the earliest), in split order:
    panels show tumours even when every slice of a split is scored (paper 001)."""
    ranked = sorted(range(len(examples)), key=lambda i: (-int(examples[i].truth.sum()), i))
    return [examples[i] for i in sorted(ranked[:k])]


def example_candidates(kept: list[Example], areas: np.ndarray, k: int) -> list[int]:
    """Rows of a batch (tumour areas (B,)) that could enter the k largest kept so far."""
    floor = -1 if len(kept) < k else min(int(e.truth.sum()) for e in kept)
    order = np.argsort(-areas, kind="stable")[:k]
    return [int(i) for i in order if areas[i] > floor or len(kept) < k]


def slice_batches(data_config: Any, split: str, slices: str, max_items: int) -> Iterator[dict]:
    """Batches {image (B, S, S, C), seg (B, S, S), label (B,), index (B,): the items' rows
    in the shards (reports.slice_ids)} of the split, padding rows removed, filtered to
    tumour slices when slices == "tumour", at most max_items rows."""
    if slices not in ("tumour", "all"):
        raise InputError(f"eval.slices must be 'tumour' or 'all', got {slices!r}")
    seen = 0
    for batch in make_dataset(data_config, split, seed=0, train=False, drop_remainder=False):
        keep = np.asarray(batch["valid"], bool)
        if slices == "tumour":
            keep &= np.asarray(batch["label"]) > 0
        if max_items:
            keep &= np.cumsum(keep) + seen <= max_items
        if not keep.any():
            if max_items and seen >= max_items:
                return
            continue
        seen += int(keep.sum())
        yield {k: np.asarray(batch[k])[keep] for k in ("image", "seg", "label", "index")}


def resize_slices(x: np.ndarray, size: int) -> np.ndarray:
    """(B, S, S, ...) slices -> (B, size, size, ...) float32: linear, anti-aliased when
    shrinking (jaxcf.data.transforms.resize_image, as data preparation resizes slices)."""
    b, h, w, *rest = x.shape
    if (h, w) == (size, size):
        return x
    planes = np.moveaxis(np.asarray(x, np.float32).reshape(b, h, w, -1), 0, 2)
    out = resize_image(planes.reshape(h, w, -1), (size, size))  # (size, size, B * K)
    return np.moveaxis(out.reshape(size, size, b, -1), 2, 0).reshape(b, size, size, *rest)


def resize_label_slices(seg: np.ndarray, size: int) -> np.ndarray:
    """(B, S, S) label maps -> (B, size, size), nearest neighbour (no invented labels)."""
    b = seg.shape[0]
    return np.moveaxis(resize_labels(np.moveaxis(seg, 0, -1), (size, size, b)), -1, 0)


def on_model_grid(segment: Segmenter, size: int) -> Segmenter:
    """`segment` run on the model's size x size grid for batches on the evaluation grid.

    The images (and seg, which oracle prompts read) are resized down as data preparation
    resizes them; the counterfactual and heatmap come back linearly upsampled, the mask
    as its upsampled indicator >= 1/2, cut to the evaluation grid's brain. Scoring then
    happens on the evaluation grid against its ground truth (paper 001 Sec. 4: trained at
    64 x 64, "all evaluation is done at 128 x 128"). A batch already at `size` passes
    through unchanged."""

    def run(batch: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        images = batch["image"]
        grid = images.shape[1]
        if grid == size:
            return segment(batch)
        small = dict(batch, image=resize_slices(images, size))
        if batch.get("seg") is not None:
            small["seg"] = resize_label_slices(batch["seg"], size)
        counterfactual, heat, masks = segment(small)
        up = resize_slices(np.asarray(masks, np.float32), grid) >= 0.5
        return (
            resize_slices(counterfactual, grid),
            resize_slices(heat, grid),
            up & brain_masks(images),
        )

    return run


def count_slices(data_config: Any, split: str, slices: str, max_items: int) -> int:
    """How many slices slice_batches yields (for progress bars with a total)."""
    return sum(len(b["image"]) for b in slice_batches(data_config, split, slices, max_items))


def rebatch(batches: Iterator[dict], size: int) -> Iterator[dict]:
    """Regroup filtered batches into batches of exactly `size` rows (the last may be
    smaller), so the counterfactual methods run full, fixed-shape chunks."""
    pending: list[dict] = []
    count = 0
    for batch in batches:
        pending.append(batch)
        count += len(batch["image"])
        while count >= size:
            merged = {k: np.concatenate([b[k] for b in pending]) for k in pending[0]}
            yield {k: v[:size] for k, v in merged.items()}
            rest = {k: v[size:] for k, v in merged.items()}
            count -= size
            pending = [rest] if count else []
    if count:
        yield {k: np.concatenate([b[k] for b in pending]) for k in pending[0]}


def choose_baseline_threshold(data_config: Any, split: str, slices: str, bins: int) -> float:
    """The FLAIR threshold with the best pooled Dice on `split` (the validation split)."""
    curve = StreamingAUPRC(*FLAIR_RANGE, num_bins=bins)
    for batch in slice_batches(data_config, split, slices, 0):
        brain = brain_masks(batch["image"])
        curve.update(flair_scores(batch["image"]), batch["seg"] > 0, valid=brain)
    return float(curve.ideal_dice()[1])


def evaluate_split(
    segmenters: dict[str, Segmenter],
    data_config: Any,
    split: str,
    *,
    batch_size: int,
    slices: str = "all",
    max_items: int = 0,
    bins: int = 10_000,
    baseline_threshold: float,
    model_size: int = 0,
    keep_examples: int = 4,
    progress: bool = True,
    records: list[dict] | None = None,
) -> tuple[dict[str, dict], list[Example]]:
    """{method: {metric: value, ...}} over the split, and a few examples for panels.

    segmenters run on batches of exactly batch_size rows (the last may be smaller), on the
    model's model_size x model_size grid (on_model_grid) when model_size is set and differs
    from the split's; 0 = the split's own grid. Every score is taken on the split's grid.
    records: when given, one row per (method, slice) is appended (reports.slice_record:
    case id, slice index, pixel counts, scores)."""
    if model_size:
        segmenters = {m: on_model_grid(s, int(model_size)) for m, s in segmenters.items()}
    methods = list(segmenters)
    names = [BASELINE, *methods]
    curves = {
        m: StreamingAUPRC(*(FLAIR_RANGE if m == BASELINE else HEAT_RANGE), num_bins=bins)
        for m in names
    }
    rows: dict[str, list[dict]] = {m: [] for m in names}
    seconds = dict.fromkeys(methods, 0.0)
    examples: list[Example] = []
    total = count_slices(data_config, split, slices, max_items)
    bar = tqdm(
        desc=f"evaluate {split} ({', '.join(methods) or 'baseline'})",
        total=total,
        unit="slice",
        disable=not progress,
        dynamic_ncols=True,
    )
    batches = slice_batches(data_config, split, slices, max_items)
    meta = info(data_config)
    for batch in rebatch(batches, batch_size):
        images, truth = batch["image"], batch["seg"] > 0
        ids = slice_ids(meta, batch["index"])
        brain = brain_masks(images)
        outputs: dict[str, tuple] = {}
        flair = flair_scores(images)
        outputs[BASELINE] = (None, flair, (flair >= baseline_threshold) & brain)
        for method, segment in segmenters.items():
            first = not rows[method]  # its first batch includes compiling it
            bar.set_postfix_str(f"{method}{' (compiling)' if first else ''}", refresh=True)
            started = time.perf_counter()
            outputs[method] = segment(batch)
            seconds[method] += time.perf_counter() - started
        for name, (_, heat, masks) in outputs.items():
            curves[name].update(heat, truth, valid=brain)
            rows[name].extend(case_metrics(p, t) for p, t in zip(masks, truth, strict=True))
            if records is not None:
                records.extend(slice_records(name, ids, masks, truth))
        areas = truth.reshape(len(truth), -1).sum(-1)
        for i in example_candidates(examples, areas, keep_examples):
            example = Example(
                images[i],
                truth[i],
                {
                    n: (o[0][i] if o[0] is not None else None, o[1][i], o[2][i])
                    for n, o in outputs.items()
                },
                *ids[i],
            )
            examples = keep_largest_tumours([*examples, example], keep_examples)
        bar.update(len(images))
    bar.close()
    results = {}
    for name in names:
        summary = summarize(rows[name])
        ideal, threshold = curves[name].ideal_dice()
        results[name] = {
            **{k: summary[k]["mean"] for k in ("dice", "iou", "sensitivity", "precision")},
            **{f"{k}_std": summary[k]["std"] for k in ("dice", "iou")},
            "auprc": curves[name].result(),
            "ideal_dice": ideal,
            "ideal_threshold": threshold,
            **curves[name].out_of_range(),  # scores the AUPRC histogram clipped
            "slices": summary["dice"]["n"],
        }
        if name in seconds:
            results[name]["seconds"] = seconds[name]
    results[BASELINE]["threshold"] = baseline_threshold
    return results, examples


def results_table(
    results: dict[str, dict], title: str | None = None, labels: dict[str, str] | None = None
) -> str:
    """Markdown table (percent, one decimal): rows methods (named by `labels`, e.g. the
    registry's "Diff-SCM"), columns COLUMNS."""
    labels = {BASELINE: BASELINE_LABEL, **(labels or {})}
    shown = {
        labels.get(name, name): {
            "dice": (r["dice"], r["dice_std"]),
            "iou": (r["iou"], r["iou_std"]),
            **{k: r[k] for k in ("sensitivity", "precision", "auprc", "ideal_dice")},
        }
        for name, r in results.items()
    }
    return markdown_table(shown, COLUMNS, title)
