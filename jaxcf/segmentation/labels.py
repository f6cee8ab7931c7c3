"""BraTS label maps <-> the four classes a segmenter predicts (paper 002, Sec. 3.1).

Paper 002 segments four classes: background 0, necrotic / non-enhancing core (NC), edema
(ED) and enhancing tumour (ET). The datasets store them as 0, 1, 2 and ET = 3 (BraTS-PEDs,
BraTS 2023) or ET = 4 (BraTS 2021); the dataset's `et_label`
(jaxcf.data.sources.BRATS_LAYOUTS) says which. Networks predict class indices 0..3:

    classes = classes_from_labels(seg, et_label)     # 0 bg, 1 NC, 2 ED, 3 ET
    seg = labels_from_classes(classes, et_label)     # back to the dataset's values
    scores = region_dice(pred_classes, classes)      # hard Dice of WT / TC / ET (jnp)

Both run on numpy or jax arrays (inside jit too) and keep the shape.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

NUM_CLASSES = 4  # background, NC, ED, ET
CLASS_NAMES = ("background", "NC", "ED", "ET")
ET_CLASS = 3


def _xp(x: Any):
    return np if isinstance(x, np.ndarray) else jnp


def classes_from_labels(seg: Any, et_label: int) -> Any:
    """Label map (any shape, values 0, 1, 2, et_label) -> int32 class indices 0..3."""
    xp = _xp(seg)
    seg = xp.asarray(seg).astype(xp.int32)
    return xp.where(seg == et_label, ET_CLASS, seg).astype(xp.int32)


def labels_from_classes(classes: Any, et_label: int) -> Any:
    """Class indices 0..3 (any shape) -> the dataset's label values (uint8)."""
    xp = _xp(classes)
    classes = xp.asarray(classes).astype(xp.int32)
    return xp.where(classes == ET_CLASS, et_label, classes).astype(xp.uint8)


def region_dice(pred: jax.Array, truth: jax.Array) -> dict[str, jax.Array]:
    """Hard Dice of the BraTS regions over a batch of class maps (B, *spatial) int:
    WT = classes 1-3, TC = 1 and 3, ET = 3; 1 when a region is empty in both."""
    out = {}
    for name, members in (("wt", (1, 2, 3)), ("tc", (1, 3)), ("et", (3,))):
        p, t = jnp.isin(pred, jnp.asarray(members)), jnp.isin(truth, jnp.asarray(members))
        both = jnp.sum(p) + jnp.sum(t)
        out[f"dice_{name}"] = jnp.where(both > 0, 2 * jnp.sum(p & t) / jnp.maximum(both, 1), 1.0)
    return out
