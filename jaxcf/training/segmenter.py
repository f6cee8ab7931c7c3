"""A trained segmenter (train.task = "segmentation": configs/resunet_peds.py,
configs/swinunetr_peds.py) run over whole volumes: paper 002's coarse model, whose class
probabilities are the refiner's prior C.

    seg = load_segmenter("runs/resunet")
    probs = seg.probabilities(volumes)       # (B, X, Y, Z, 4) float32, classes 0..3
    labels = seg.labels(volumes)             # (B, X, Y, Z) uint8 in the dataset's values

Volumes are the seg3d pipeline's (foreground-cropped, z-scored, four sequences). They are
predicted window by window (jaxcf.segmentation.sliding_window: windows of the training
crop, 25% overlap, Gaussian blending, as paper 002's inference), the blend taken over each
window's softmax probabilities.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcf.checkpoint import restore_trained
from jaxcf.errors import InputError
from jaxcf.segmentation.labels import labels_from_classes
from jaxcf.segmentation.sliding_window import sliding_window_inference
from jaxcf.training.segment_task import SegmentationTask

__all__ = ["Segmenter", "load_segmenter"]


@dataclasses.dataclass
class Segmenter:
    """A trained segmenter: its config (the workdir's config.json), task, restored weights
    (params: {"model": ...}), checkpoint step and workdir. overlap / sw_batch_size: the
    sliding window's."""

    config: ml_collections.ConfigDict
    task: SegmentationTask
    params: Any
    step: int
    workdir: pathlib.Path
    overlap: float = 0.25
    sw_batch_size: int = 2

    @property
    def roi(self) -> tuple[int, int, int]:
        """The window: the training crop (data.crop_size per axis)."""
        return (int(self.config.data.crop_size),) * 3

    @property
    def in_channels(self) -> int:
        return int(self.config.data.channels)

    @functools.cached_property
    def _predictor(self):
        # One object for the life of the segmenter, so the sliding window compiles once per
        # volume shape (it is a static argument there).
        task = self.task

        def predict(params: Any, windows: jax.Array) -> jax.Array:
            return jax.nn.softmax(task.logits(params, windows), axis=-1)

        return predict

    def probabilities(self, volumes: Any) -> np.ndarray:
        """(B, X, Y, Z, C) volumes -> (B, X, Y, Z, 4) float32 class probabilities
        (background, NC, ED, ET)."""
        x = np.asarray(volumes, np.float32)
        if x.ndim != 5 or x.shape[-1] != self.in_channels:
            raise InputError(
                f"the segmenter in {self.workdir} takes volumes (B, X, Y, Z, "
                f"{self.in_channels}); got {x.shape}"
            )
        if not np.isfinite(x).all():
            raise InputError("the volumes hold NaN or infinite values")
        out = sliding_window_inference(
            self._predictor,
            self.params,
            jnp.asarray(x),
            self.roi,
            overlap=self.overlap,
            sw_batch_size=self.sw_batch_size,
        )
        return np.asarray(out)

    def labels(self, volumes: Any) -> np.ndarray:
        """(B, X, Y, Z, C) volumes -> (B, X, Y, Z) uint8 label maps in the dataset's values."""
        classes = np.argmax(self.probabilities(volumes), axis=-1)
        return labels_from_classes(classes, self.task.et_label)


def load_segmenter(workdir: str | pathlib.Path, *, step: int | None = None) -> Segmenter:
    """The weights of the latest (or given) checkpoint of a segmentation workdir (trained
    with train.task = "segmentation"); InputError for any other kind of workdir."""
    workdir, config, task, params, restored_step = restore_trained(
        workdir,
        "segmentation",
        lambda config, key: SegmentationTask(config, key, restoring=True),
        "not a segmenter (train one with configs/resunet_peds.py or configs/swinunetr_peds.py)",
        step,
    )
    return Segmenter(config, task, params, restored_step, workdir)
