"""The level at which region=heatmap_box draws a box, chosen on a validation split.

    settings = calibrated(trained, settings)    # box_min_heat from the model's val split
    settings.box_min_heat, settings.calibration  # the level, and how it was found

region=heatmap_box prompts the promptable method with the box around the hottest blob of
a first, unprompted Diff-SCM pass. A reader who sees no hot spot on a slice draws no box;
when a spot counts is a threshold like the FLAIR baseline's, and it is chosen the same way:
on the validation split of the model's own data, never on the split being scored. Every
validation slice's peak_heat (the first pass's heatmap after a 3 x 3 mean, its maximum
inside the brain) is compared with whether the slice holds tumour; the level that
classifies the most slices right wins (the lowest on ties, i.e. the most sensitive).

The first pass is deterministic (DDIM with eta 0), so the level depends only on the model's
weights, the first-pass settings and the data: it is cached in
WORKDIR/calibration/heatmap_box_<hash>.json and reused by every later evaluate or
counterfactual run with the same step and settings.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any

import ml_collections
import numpy as np

from jaxcf.counterfactual import promptable
from jaxcf.counterfactual.prompts import peak_heat
from jaxcf.counterfactual.runner import MethodRunner
from jaxcf.data.phantoms.files import write_bytes
from jaxcf.errors import InputError
from jaxcf.evaluation import benchmark
from jaxcf.training.data import ensure_data

SPLIT = "val"


def detection_level(peaks: np.ndarray, has_tumour: np.ndarray) -> dict[str, float]:
    """(N,) peak heats and (N,) bools (slice holds tumour) -> {"level", "accuracy",
    "sensitivity", "specificity", "slices", "tumour_slices"}: the level (0, a midpoint
    between two neighbouring peaks, or just above the largest) at which "peak >= level"
    classifies the most slices right; the lowest such level on ties."""
    peaks = np.asarray(peaks, np.float64)
    truth = np.asarray(has_tumour, bool)
    if peaks.shape != truth.shape or peaks.ndim != 1 or not len(peaks):
        raise InputError(f"detection_level needs two equal (N,) arrays, got {peaks.shape}")
    values = np.unique(peaks)
    levels = np.concatenate(
        [[0.0], (values[:-1] + values[1:]) / 2, [np.nextafter(values[-1], np.inf)]]
    )
    boxed = peaks[None, :] >= levels[:, None]  # (L, N)
    correct = (boxed == truth[None, :]).mean(axis=1)
    best = int(np.argmax(correct))  # the first maximum: the lowest level
    hit = boxed[best]

    def rate(selected: np.ndarray) -> float:
        return float(selected.mean()) if selected.size else float("nan")

    return {
        "level": float(levels[best]),
        "accuracy": float(correct[best]),
        "sensitivity": rate(hit[truth]),
        "specificity": rate(~hit[~truth]),
        "slices": len(peaks),
        "tumour_slices": int(truth.sum()),
    }


def first_pass_peaks(
    trained: Any,
    settings: ml_collections.ConfigDict,
    data_config: Any,
    split: str = SPLIT,
    *,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Run heatmap_box's first pass (promptable.first_pass_config of `settings`) on every
    slice of a split -> ((N,) peak_heat, (N,) bool slice holds tumour)."""
    group = ml_collections.ConfigDict(trained.config.counterfactual.to_dict())
    group.diffscm = promptable.first_pass_config(settings)
    runner = MethodRunner(
        trained.method_model(),
        trained.weights,
        "diffscm",
        group,
        trained.config.mesh,
        progress=progress,
    )
    peaks, tumour = [], []
    done = 0
    batches = benchmark.slice_batches(data_config, split, "all", 0)
    for batch in benchmark.rebatch(batches, runner.chunk):
        images = batch["image"]
        heat = runner({"image": images}, key_offset=done)["heatmap"]
        done += len(images)
        brain = np.any(images != -1.0, axis=-1)  # as the method's own prompt
        peaks.append(np.asarray(peak_heat(heat, brain)))
        tumour.append((batch["seg"] > 0).reshape(len(images), -1).any(axis=1))
    if not done:
        raise InputError(
            f"counterfactual.promptable.box_calibrate='val': the model's {split!r} split is "
            "empty; set box_calibrate='off' and box_min_heat"
        )
    return np.concatenate(peaks), np.concatenate(tumour)


def _cache_path(trained: Any, settings: ml_collections.ConfigDict) -> pathlib.Path:
    first = promptable.first_pass_config(settings).to_dict()
    key = {"step": int(trained.step), "first_pass": first, "split": SPLIT}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return pathlib.Path(trained.workdir) / "calibration" / f"heatmap_box_{digest}.json"


def calibrated(
    trained: Any, settings: ml_collections.ConfigDict, *, progress: bool = True
) -> ml_collections.ConfigDict:
    """counterfactual.promptable settings -> a copy with box_min_heat set from the model's
    validation split when region=heatmap_box and box_calibrate="val" (else unchanged),
    with a "calibration" record ({level, accuracy, sensitivity, ..., cache}). Needs the
    model's workdir (its data and cache)."""
    mode = str(settings.get("box_calibrate", "off"))
    if mode not in promptable.BOX_CALIBRATIONS:
        raise InputError(
            f"counterfactual.promptable.box_calibrate must be one of "
            f"{promptable.BOX_CALIBRATIONS}, got {mode!r}"
        )
    if settings.get("region") != "heatmap_box" or mode == "off":
        return settings
    if trained.workdir is None:
        raise InputError(
            "counterfactual.promptable.box_calibrate='val' needs the model's workdir (its "
            "validation split); set box_calibrate='off' and box_min_heat"
        )
    path = _cache_path(trained, settings)
    if path.exists():
        record = json.loads(path.read_text())
    else:
        data = ensure_data(trained.config.data.copy_and_resolve_references(), trained.workdir)
        if progress:
            print(f"calibrating heatmap_box on the {SPLIT} split (cached in {path})")
        record = detection_level(*first_pass_peaks(trained, settings, data, progress=progress))
        record["split"] = SPLIT
        write_bytes(path, json.dumps(record, indent=2).encode())
    out = ml_collections.ConfigDict(settings.to_dict())
    out.box_min_heat = float(record["level"])
    out.calibration = {**record, "cache": str(path)}
    return out
