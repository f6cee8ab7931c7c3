"""Preview sample grids written during training, each row labelled with its condition.

    fields = parallel.to_host(condition_fields(batch))     # every process (a collective)
    names = condition_names(config, fields, num, num_classes=2, tokenizer=None)
    save_preview(images, path, names, title=preview_title(config, step))

A DiffusionTask's preview samples the first `num` conditions of the batch (label, prompt or
image), a VAETask's reconstructs the first `num` images: the row labels say which.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from jaxcf.data.sources import ADNI_DIAGNOSES, MS_CATEGORIES
from jaxcf.data.text import Tokenizer
from jaxcf.visualization import channel_names, save_panel, to_uint8, wrap

_BRATS = ("healthy", "tumour")  # Diff-SCM: label 1 = the slice has a tumour voxel
LABEL_NAMES = {
    "brats2021": _BRATS,
    "brats2023": _BRATS,
    "brats-peds": _BRATS,
    "brats": _BRATS,
    "ms": tuple(f"{c} lesion load" for c in MS_CATEGORIES),
    "adni": ADNI_DIAGNOSES,
    "cxr": ("no opacity", "opacity"),
}
CONDITION_FIELDS = ("label", "prompt_ids")


def condition_fields(batch: dict) -> dict:
    """The batch entries that name a preview row's condition (label, prompt_ids)."""
    return {k: batch[k] for k in CONDITION_FIELDS if k in batch}


def label_name(dataset: str, label: int, num_classes: int) -> str:
    """'healthy (label 0)'; the null label (num_classes) of guidance is 'null'."""
    if label == num_classes:
        return f"null (label {label})"
    names = LABEL_NAMES.get(dataset, ())
    return f"{names[label]} (label {label})" if 0 <= label < len(names) else f"label {label}"


def condition_names(
    config: Any, fields: dict, num: int, *, num_classes: int = 0, tokenizer: Tokenizer | None = None
) -> list[str]:
    """Row labels of a preview of `num` samples: fields (from condition_fields, on the
    host) -> one name per row: the label's meaning, the prompt text, or what the row is.
    num_classes: the denoiser's (its null label); tokenizer: the data's (prompt models)."""
    if config.train.task != "diffusion":
        return [f"reconstruction {i}" for i in range(num)]
    condition = config.diffusion.condition
    if condition == "label":
        labels = np.asarray(fields["label"])[:num]
        return [label_name(config.data.dataset, int(k), num_classes) for k in labels]
    if condition == "prompt":
        ids = np.asarray(fields["prompt_ids"])[:num]
        texts = [tokenizer.decode(row) if tokenizer else "" for row in ids]
        return [wrap(f'"{t}"') if t else "null prompt" for t in texts]
    if condition == "image":
        return [f"given image {i}" for i in range(num)]
    return ["unconditional"] * num


def preview_title(config: Any, step: int) -> str:
    """What the grid shows: the step, the sampler and its guidance scale."""
    if config.train.task != "diffusion":
        return f"step {step}: reconstructions"
    sampler = config.sampler
    kind = "flow" if config.diffusion.schedule == "rectified_flow" else "DDIM"
    guided = config.diffusion.condition != "none" and float(sampler.guidance_scale) != 1.0
    guidance = f", guidance w = {float(sampler.guidance_scale):g}" if guided else ""
    return f"step {step}: {kind} samples, {int(sampler.num_steps)} steps{guidance}"


def save_preview(
    images: np.ndarray, path: pathlib.Path, names: list[str], title: str = ""
) -> pathlib.Path:
    """images (N, H, W, C) -> a row per sample and a column per channel; (N, D, H, W, C)
    volumes -> the mid-slices of channel 0 along each axis. names label the rows."""
    images = np.asarray(images, np.float32)
    rows = []
    for image in images:
        if image.ndim == 3:
            tiles = [image[..., c] for c in range(image.shape[-1])]
        else:
            vol = image[..., 0]
            tiles = [
                vol[vol.shape[0] // 2],
                vol[:, vol.shape[1] // 2],
                vol[:, :, vol.shape[2] // 2],
            ]
        rows.append([to_uint8(t, -1.0, 1.0) for t in tiles])
    if images.ndim == 4:
        titles = list(channel_names(images.shape[-1]))
    else:
        titles = [f"mid-slice, axis {a}" for a in range(3)]
    return save_panel(rows, path, titles, row_labels=names, title=title)
