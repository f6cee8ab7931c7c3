"""Training paper 002's coarse segmenters (train.task = "segmentation";
configs/resunet_peds.py, configs/swinunetr_peds.py): per-voxel class logits from the seg3d
pipeline's crops, with paper 002's Soft Dice (Eq. 2) or DiceCE."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxcf import models
from jaxcf.data.sources import BRATS_LAYOUTS
from jaxcf.errors import InputError
from jaxcf.segmentation import losses
from jaxcf.segmentation.labels import NUM_CLASSES, classes_from_labels, region_dice


def et_label_of(config: Any, task: str) -> int:
    """The enhancing-tumour label of config.data.dataset (3 or 4); InputError naming
    train.task=`task` for a dataset that is not BraTS-like."""
    dataset = config.data.dataset
    if dataset not in BRATS_LAYOUTS:
        raise InputError(
            f"train.task={task!r} works on BraTS tumour labels: data.dataset must be one of "
            f"{', '.join(BRATS_LAYOUTS)}, got {dataset!r}"
        )
    return int(BRATS_LAYOUTS[dataset]["et_label"])


class SegmentationTask:
    """Trains a segmenter (config.model, e.g. the resunet or swin_unetr family) of
    batch["seg"] from batch["image"]: paper 002's coarse models (Sec. 3.1-3.2), on the
    seg3d pipeline's balanced crops. The label map becomes the four classes 0..3
    (jaxcf.segmentation.labels, the dataset's enhancing-tumour label mapped to 3).

    seg_loss.kind: dice (paper 002 Eq. 2, the soft Dice of the softmax; squared: Eq. 2's
    squared denominator; one ratio per item and class, averaged, as MONAI's DiceLoss: Eq. 2
    as printed pools the classes into one ratio, where the background would dominate) |
    dice_ce (Dice + cross-entropy, MONAI DiceCELoss).
    metrics: loss and the training batch's hard Dice of the BraTS regions (dice_wt, dice_tc,
    dice_et; 1 when a region is absent from both). preview(...) returns the input images."""

    def __init__(self, config: Any, key: jax.Array, *, restoring: bool = False):
        self.config = config
        self.et_label = et_label_of(config, "segmentation")
        self.apply, params = models.build_pretrained(config.model, key, restoring=restoring)
        self.params, self.frozen = {"model": params}, {}
        _, model_kwargs = models.model_kwargs(config.model)
        classes = int(model_kwargs.get("out_channels", 0) or 0)
        if classes != NUM_CLASSES:
            raise InputError(
                f"model.out_channels must be {NUM_CLASSES} (background, NC, ED, ET) for "
                f"train.task='segmentation', got {classes}"
            )
        self.kind = str(config.seg_loss.kind)
        if self.kind not in ("dice", "dice_ce"):
            raise InputError(f"seg_loss.kind must be dice or dice_ce, got {self.kind!r}")
        self.squared = bool(config.seg_loss.squared)

    def logits(self, params: dict, images: jax.Array, dropout_key: jax.Array | None = None):
        """(B, *spatial, C) images -> (B, *spatial, 4) float32 class logits."""
        return self.apply(params["model"], images, dropout_key=dropout_key)

    def loss(self, params: dict, frozen: dict, batch: dict, key: jax.Array):
        if "seg" not in batch:
            raise InputError(
                "train.task='segmentation' needs label maps: the batch has no 'seg' field "
                f"(it has {sorted(batch)})"
            )
        classes = classes_from_labels(batch["seg"], self.et_label)
        logits = self.logits(params, batch["image"], dropout_key=key)
        if self.kind == "dice":
            loss = losses.soft_dice_loss(logits, classes, squared=self.squared)
        else:
            loss = losses.dice_ce_loss(logits, classes, squared=self.squared)
        return loss, {"loss": loss, **region_dice(jnp.argmax(logits, -1), classes)}

    def preview(self, params: dict, frozen: dict, batch: dict, key: jax.Array, num: int):
        return batch["image"][:num]
