"""Text alignment (paper 004, Sec. 4 (iii)): the fraction of generated volumes that a
classifier trained on real scans assigns to the category their prompt asked for.

    judge = load_classifier("runs/classifier_ms")          # a train.task="classifier" workdir
    probs = judge.predict(volumes)                          # (N, D, H, W, C) -> (N, classes)
    score = judge.alignment_accuracy(counterfactuals, target_labels)    # in [0, 1]
    baseline = judge.split_accuracy("test")                 # the same judge on real scans

The paper's judge is a 3-D DenseNet-121 (configs/classifier_ms.py, classifier_adni.py);
its accuracy on held-out real scans (96.5% MS, 83.3% ADNI in the paper) is the ceiling
that counterfactual alignment is read against. Only the EMA weights are restored (an Orbax
partial restore), as jaxcf.inference does for denoisers.
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

from jaxcf import models
from jaxcf.checkpoint import restore_trained
from jaxcf.data.pipeline import make_dataset
from jaxcf.errors import InputError
from jaxcf.training.tasks import ClassifierTask

__all__ = ["Classifier", "accuracy", "load_classifier"]


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows of (N, classes) probabilities (or logits) whose arg-max is the
    (N,) label."""
    probabilities, labels = np.asarray(probabilities), np.asarray(labels)
    if probabilities.ndim != 2 or labels.shape != probabilities.shape[:1]:
        raise InputError(
            f"accuracy needs (N, classes) scores and (N,) labels, got {probabilities.shape} "
            f"and {labels.shape}"
        )
    if labels.size == 0:
        raise InputError("accuracy of an empty set of volumes")
    return float(np.mean(np.argmax(probabilities, axis=-1) == labels))


@dataclasses.dataclass
class Classifier:
    """A trained classifier: config (the workdir's config.json), its task, the restored EMA
    weights (params: {"model": ...}), the checkpoint step and the workdir."""

    config: ml_collections.ConfigDict
    task: ClassifierTask
    params: Any
    step: int
    workdir: pathlib.Path

    @property
    def num_classes(self) -> int:
        return self.task.num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(D, H, W, C) (or (H, W, C)) of the volumes the classifier was trained on."""
        _, kwargs = models.model_kwargs(self.config.model)
        dims = int(kwargs.get("spatial_dims", 3))
        size = kwargs.get("image_size") or self.config.data.get(
            "volume_size" if dims == 3 else "image_size"
        )
        return (int(size),) * dims + (int(kwargs["in_channels"]),)

    @functools.cached_property
    def _probabilities(self):
        return jax.jit(lambda params, x: jax.nn.softmax(self.task.logits(params, x), axis=-1))

    def check_volumes(self, volumes: Any) -> np.ndarray:
        """volumes as a float32 (N, *input_shape) array; InputError for another shape or a
        non-finite value (an unjudgeable volume is refused, not skipped)."""
        x = np.asarray(volumes, np.float32)
        want = self.input_shape
        if x.ndim != len(want) + 1 or x.shape[1:] != want:
            raise InputError(
                f"the classifier in {self.workdir} was trained on volumes of shape "
                f"(N, {', '.join(map(str, want))}); got {x.shape}"
            )
        if x.shape[0] == 0:
            raise InputError("no volumes to classify (N = 0)")
        if not np.isfinite(x).all():
            bad = sorted({int(i) for i in np.nonzero(~np.isfinite(x))[0]})
            raise InputError(f"volumes {bad[:10]} hold NaN or infinite values")
        return x

    def predict(self, volumes: Any, *, batch_size: int = 8) -> np.ndarray:
        """(N, D, H, W, C) volumes in the training data's value range -> (N, classes) float32
        class probabilities. Runs in chunks of batch_size (the last one padded, so one
        compiled shape serves every call)."""
        x = self.check_volumes(volumes)
        n = x.shape[0]
        out = []
        for start in range(0, n, batch_size):
            chunk = x[start : start + batch_size]
            pad = batch_size - chunk.shape[0]
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            probs = self._probabilities(self.params, jnp.asarray(chunk))
            out.append(np.asarray(probs)[: batch_size - pad])
        return np.concatenate(out)

    def check_labels(self, labels: Any, count: int) -> np.ndarray:
        """(count,) integer labels in [0, num_classes); InputError otherwise."""
        y = np.asarray(labels)
        if y.shape != (count,) or not np.issubdtype(y.dtype, np.integer):
            raise InputError(
                f"target labels must be ({count},) integers (one per volume), got {y.shape} "
                f"{y.dtype}"
            )
        if y.min() < 0 or y.max() >= self.num_classes:
            raise InputError(
                f"target labels must lie in [0, {self.num_classes}) for this classifier, got "
                f"{y.min()}..{y.max()}"
            )
        return y.astype(np.int32)

    def alignment_accuracy(self, volumes: Any, target_labels: Any, *, batch_size: int = 8) -> float:
        """Paper 004's text alignment: the fraction of (N, D, H, W, C) volumes classified as
        their prompt's category (target_labels (N,): e.g. MS minimal 0 / moderate 1 /
        high 2, ADNI CN 0 / MCI 1 / AD 2)."""
        x = self.check_volumes(volumes)
        y = self.check_labels(target_labels, x.shape[0])
        return accuracy(self.predict(x, batch_size=batch_size), y)

    def data_config(self, prepared: str | pathlib.Path | None = None) -> ml_collections.ConfigDict:
        """The training data config with `prepared` set: the given directory, the run's own
        data.prepared, or where training put the shards (workdir/prepared/<dataset>_<task>)."""
        data = ml_collections.ConfigDict(self.config.data.to_dict())
        if prepared is None:
            prepared = data.get("prepared") or (
                self.workdir / "prepared" / f"{data.dataset}_{data.task}"
            )
        if not (pathlib.Path(prepared) / "meta.json").is_file():
            raise FileNotFoundError(f"{prepared}: no prepared shards (meta.json) to evaluate on")
        data.prepared = str(prepared)
        return data

    def split_accuracy(
        self, split: str = "test", *, prepared: str | pathlib.Path | None = None
    ) -> dict[str, Any]:
        """The classifier on the real volumes of a prepared split: {"accuracy", "count",
        "per_class": {label: accuracy}, "confusion": (classes, classes) counts (row = true
        label, column = prediction), "labels", "predictions"}. Paper 004's ceiling."""
        data = self.data_config(prepared)
        images, labels = [], []
        for batch in make_dataset(data, split, seed=0, train=False):
            valid = np.asarray(batch["valid"])
            images.append(np.asarray(batch["image"])[valid])
            labels.append(np.asarray(batch["label"])[valid])
        x, y = np.concatenate(images), np.concatenate(labels)
        y = self.check_labels(y, y.shape[0])
        predicted = np.argmax(self.predict(x, batch_size=int(data.batch_size)), axis=-1)
        confusion = np.zeros((self.num_classes, self.num_classes), np.int64)
        np.add.at(confusion, (y, predicted), 1)
        per_class = {
            int(k): float(confusion[k, k] / confusion[k].sum())
            for k in range(self.num_classes)
            if confusion[k].sum()
        }
        return {
            "accuracy": float(np.mean(predicted == y)),
            "count": int(y.size),
            "per_class": per_class,
            "confusion": confusion,
            "labels": y,
            "predictions": predicted,
        }


def load_classifier(workdir: str | pathlib.Path, *, step: int | None = None) -> Classifier:
    """The EMA weights of the latest (or given) checkpoint of a classifier workdir (trained
    with train.task = "classifier"); InputError for any other kind of workdir."""
    workdir, config, task, params, restored_step = restore_trained(
        workdir,
        "classifier",
        lambda config, key: ClassifierTask(config, key, restoring=True),
        "not a classifier (train one with configs/classifier_ms.py or configs/classifier_adni.py)",
        step,
    )
    return Classifier(config, task, params, restored_step, workdir)
