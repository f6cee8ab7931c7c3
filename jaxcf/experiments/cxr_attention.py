"""Paper 003's attention-regulated edit of one chest radiograph, for
`python -m jaxcf.counterfactual --method=attention --input=IMAGE`.

    radiograph = load_radiograph("files/p10/p10000032/s50414267/abc.jpg")   # masks found
    summary = run(trained, radiograph, out)

Inputs: an 8-bit grey PA radiograph (JPEG / PNG), its lung fields (--mask: one PNG, non-zero
= lung, split into the patient's right and left lung by jaxcf.counterfactual.cxr_roi;
without it, the masks of jaxcf's MIMIC-CXR-like layout, <root>/masks/<stem>_right_lung.png
and _left_lung.png, are looked up above the image), and optionally the ROI (--roi: a PNG,
non-zero = where the finding goes; by default M_ROI comes from the target prompt's side and
zone words). The radiograph is prepared as training prepared it (padded square, resized to
data.image_size, [-1, 1]); outputs are at that size:

  <stem>_input.png           the radiograph as the model saw it
  <stem>_counterfactual.png  the edit under counterfactual.attention.target_prompt
  <stem>_difference.png      |x' - x| (heat colours, 0 -> the largest difference); for a
                             latent model x is the input through the VAE, whose own loss
                             is no edit (summary: change_from)
  <stem>_attention.png       the pathology tokens' cross-attention (heat colours)
  <stem>_roi.png             Omega, the blurred ROI the method steered towards (0-255)
  <stem>_panel.png           input, counterfactual, |difference| over the input with the ROI
                             outlined, pathology-token attention
  <stem>_summary.json        prompt, ROI cues, SSIM, the localisation figures, seconds
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any

import numpy as np
from PIL import Image

from jaxcf.counterfactual import cxr_roi
from jaxcf.counterfactual.runner import MethodRunner
from jaxcf.data import transforms
from jaxcf.data.errors import DataError
from jaxcf.data.phantoms.files import write_png
from jaxcf.errors import InputError
from jaxcf.evaluation.image_metrics import ssim
from jaxcf.evaluation.localization import edit_localization
from jaxcf.visualization import heatmap_rgb, save_panel, to_uint8

METHOD = "attention"
ROI_COLOUR = np.array((86, 180, 233), np.float32)  # sky blue outline


@dataclasses.dataclass
class Radiograph:
    """image (H, W) uint8; right, left (H, W) bool lung masks (patient sides); roi (H, W)
    bool or None (None: from the prompt); name: output file stem."""

    image: np.ndarray
    right: np.ndarray
    left: np.ndarray
    roi: np.ndarray | None
    name: str


def read_grey(path: str | pathlib.Path, flag: str) -> np.ndarray:
    """An image file -> (H, W) uint8 grey; a missing or unreadable file names the flag."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"{flag}: no such file: {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"), np.uint8)
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(f"{flag}: cannot read image {path}: {type(err).__name__}: {err}") from None


def find_lung_masks(image: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path] | None:
    """jaxcf's MIMIC-CXR-like layout: <root>/masks/<stem>_{right,left}_lung.png in a folder
    above the image (None when there are none)."""
    for folder in image.resolve().parents:
        right = folder / "masks" / f"{image.stem}_right_lung.png"
        left = folder / "masks" / f"{image.stem}_left_lung.png"
        if right.is_file() and left.is_file():
            return right, left
    return None


def load_radiograph(
    path: str | pathlib.Path, mask: str | None = None, roi: str | None = None
) -> Radiograph:
    """The radiograph, its lungs (--mask, else the layout's masks) and an optional ROI file."""
    path = pathlib.Path(path)
    image = read_grey(path, "--input")

    def same_size(array: np.ndarray, flag: str, file: Any) -> np.ndarray:
        if array.shape != image.shape:
            raise DataError(f"{flag}: {file} is {array.shape[::-1]} px, the image {path} is "
                            f"{image.shape[::-1]}")  # fmt: skip
        return array

    if mask is not None:
        right, left = cxr_roi.split_lungs(same_size(read_grey(mask, "--mask"), "--mask", mask))
    else:
        found = find_lung_masks(path)
        if found is None:
            raise DataError(
                f"--mask: the attention method needs the lung fields of {path} (a PNG, "
                "non-zero = lung); none given and no masks/<stem>_right_lung.png above it"
            )
        right, left = (same_size(read_grey(f, "--mask"), "--mask", f) > 127 for f in found)
    if not (right | left).any():
        raise DataError(f"--mask: the lung mask of {path} is empty")
    region = None
    if roi is not None:
        region = same_size(read_grey(roi, "--roi"), "--roi", roi) > 0
        if not region.any():
            raise DataError(f"--roi: {roi} is empty")
    return Radiograph(image, right, left, region, path.name.split(".")[0])


def model_inputs(
    radiograph: Radiograph, image_size: int, prompt: str
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The method's batch of one ({"image" (1, S, S, 1), "anatomy", "roi" (1, S, S)}) and
    the lungs (1, S, S) bool, prepared as training prepares radiographs."""
    masks = np.stack([radiograph.right, radiograph.left], -1).astype(np.uint8)
    if radiograph.roi is not None:
        masks = np.concatenate([masks, radiograph.roi[..., None].astype(np.uint8)], -1)
    record = transforms.cxr_preprocess(
        {"image": radiograph.image[..., None].astype(np.float32), "masks": masks}, image_size
    )
    right, left = record["masks"][None, ..., 0], record["masks"][None, ..., 1]
    if not (right | left).any():
        raise DataError(f"--mask: the lungs vanish at the model's {image_size} px")
    inputs = cxr_roi.method_masks(right, left, [prompt])
    if radiograph.roi is not None:
        inputs["roi"] = record["masks"][None, ..., 2].astype(np.float32)
        if not inputs["roi"].any():
            raise DataError(f"--roi: the region vanishes at the model's {image_size} px")
    return {"image": record["image"][None], **inputs}, (right | left).astype(bool)


def outline(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> its one-pixel inner border."""
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask)


def panel_tiles(
    image: np.ndarray,
    counterfactual: np.ndarray,
    attention: np.ndarray,
    roi: np.ndarray,
    reference: np.ndarray,
) -> list:
    """One panel row: input, counterfactual, |counterfactual - reference| over the input
    with the ROI outlined, the pathology-token attention; all (H, W), the images in
    [-1, 1] (reference: the input, or its VAE round trip for a latent model)."""
    diff = np.abs(counterfactual - reference)
    grey = np.repeat(to_uint8(image, -1.0, 1.0)[..., None], 3, -1).astype(np.float32)
    weight = np.clip(diff / max(float(diff.max()), 1e-6), 0.0, 1.0)[..., None]
    blend = (1 - weight) * grey + weight * heatmap_rgb(diff).astype(np.float32)
    blend[outline(roi)] = ROI_COLOUR
    return [
        to_uint8(image, -1.0, 1.0),
        to_uint8(counterfactual, -1.0, 1.0),
        blend.round().astype(np.uint8),
        heatmap_rgb(attention),
    ]


PANEL_TITLES = ("input", "counterfactual", "|difference|, ROI", "pathology attention")


def run(trained: Any, radiograph: Radiograph, out: pathlib.Path, *, progress: bool = True) -> dict:
    """Edit one radiograph toward counterfactual.attention.target_prompt; write the files of
    the module docstring into `out` and return the summary."""
    config = trained.config
    if config.data.task != "cxr":
        raise InputError(
            f"--method=attention edits chest radiographs: this model has data.task="
            f"{config.data.task!r} (train one with configs/sd_cxr.py)"
        )
    settings = config.counterfactual[METHOD]
    size = int(config.data.image_size)
    batch, lungs = model_inputs(radiograph, size, str(settings.target_prompt))
    runner = MethodRunner(
        trained.method_model(), trained.weights, METHOD, config.counterfactual, config.mesh,
        progress=progress,
    )  # fmt: skip
    started = time.perf_counter()
    result = runner(batch)
    seconds = time.perf_counter() - started
    image, counterfactual = batch["image"][0, ..., 0], result["counterfactual"][0, ..., 0]
    roi = batch["roi"][0] > 0
    # A latent model cannot keep what its VAE loses: the edit is the change from the
    # input's round trip (attention_eval measures it the same way).
    latent = trained.space == "latent"
    reference = trained.autoencode(batch["image"]) if latent else batch["image"]
    scores = edit_localization(reference, result["counterfactual"], batch["roi"], lungs)
    stem = out / radiograph.name
    write_png(stem.with_name(f"{radiograph.name}_input.png"), to_uint8(image, -1.0, 1.0))
    write_png(
        stem.with_name(f"{radiograph.name}_counterfactual.png"),
        to_uint8(counterfactual, -1.0, 1.0),
    )
    diff = np.abs(counterfactual - reference[0, ..., 0])
    Image.fromarray(heatmap_rgb(diff)).save(stem.with_name(f"{radiograph.name}_difference.png"))
    Image.fromarray(heatmap_rgb(result["attention"][0])).save(
        stem.with_name(f"{radiograph.name}_attention.png")
    )
    write_png(stem.with_name(f"{radiograph.name}_roi.png"), to_uint8(result["roi"][0], 0.0, 1.0))
    save_panel(
        [panel_tiles(image, counterfactual, result["attention"][0], roi, reference[0, ..., 0])],
        stem.with_name(f"{radiograph.name}_panel.png"),
        PANEL_TITLES,
        title=f"{runner.label}: {settings.target_prompt!r}",
    )
    cues = cxr_roi.prompt_cues(str(settings.target_prompt))
    summary = {
        "method": METHOD,
        "label": runner.label,
        "input": radiograph.name,
        "target_prompt": str(settings.target_prompt),
        "roi": "file" if radiograph.roi is not None else cues.describe(),
        "image_size": size,
        "change_from": "the input through the VAE" if latent else "the input",
        "ssim": float(np.asarray(ssim(batch["image"], result["counterfactual"], 2.0))[0]),
        **{k: float(v[0]) for k, v in scores.items()},
        "energy": float(result["energy"][0]),
        "seconds": seconds,
    }
    stem.with_name(f"{radiograph.name}_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
