"""PNG panels: grids of images and heatmaps with column titles (Pillow only)."""

from __future__ import annotations

import os
import pathlib
import tempfile

import numpy as np
from PIL import Image, ImageDraw

# Anchor colours of a perceptually ordered dark-to-bright map (black, purple, red, yellow,
# white), linearly interpolated into a 256-entry table.
_ANCHORS = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float64
)
_HEAT = np.stack(
    [
        np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)), _ANCHORS[:, c])
        for c in range(3)
    ],
    axis=-1,
).astype(np.uint8)


def to_uint8(image: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Scale a 2-D array to uint8 grey levels over [vmin, vmax] (default: its own range)."""
    image = np.asarray(image, np.float64)
    lo = np.nanmin(image) if vmin is None else vmin
    hi = np.nanmax(image) if vmax is None else vmax
    scaled = (image - lo) / max(hi - lo, 1e-12)
    return (np.clip(np.nan_to_num(scaled), 0.0, 1.0) * 255).round().astype(np.uint8)


def heatmap_rgb(heat: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """(H, W) non-negative map -> (H, W, 3) uint8 colours."""
    return _HEAT[to_uint8(heat, 0.0, vmax)]


def _rgb(tile: np.ndarray) -> np.ndarray:
    return np.repeat(tile[..., None], 3, axis=-1) if tile.ndim == 2 else tile


def save_panel(
    rows: list[list[np.ndarray]],
    path: str | os.PathLike,
    titles: list[str] | None = None,
    scale: int = 2,
) -> pathlib.Path:
    """Write a grid of uint8 tiles ((H, W) grey or (H, W, 3) RGB) as one PNG.

    Tiles are upscaled by `scale` (nearest neighbour, so pixels stay honest) and column
    titles are drawn above the first row. The file is written atomically.
    """
    tiles = [[_rgb(np.asarray(t, np.uint8)) for t in row] for row in rows]
    h = max(t.shape[0] for row in tiles for t in row) * scale
    w = max(t.shape[1] for row in tiles for t in row) * scale
    pad, header = 4, 14 if titles else 0
    cols = max(len(row) for row in tiles)
    canvas = Image.new(
        "RGB", (cols * (w + pad) + pad, header + len(tiles) * (h + pad) + pad), (32, 32, 32)
    )
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(titles or []):
        draw.text((pad + c * (w + pad), 1), title, fill=(230, 230, 230))
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            img = Image.fromarray(tile).resize(
                (tile.shape[1] * scale, tile.shape[0] * scale), Image.NEAREST
            )
            canvas.paste(img, (pad + c * (w + pad), header + pad + r * (h + pad)))
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".png", delete=False) as tmp:
        canvas.save(tmp, format="PNG")
    os.replace(tmp.name, path)
    return path


def mask_overlay(image: np.ndarray, mask: np.ndarray, colour=(255, 64, 64)) -> np.ndarray:
    """(H, W) grey image in [-1, 1] with a bool mask drawn as a half-transparent colour."""
    grey = _rgb(to_uint8(image, -1.0, 1.0)).astype(np.float32)
    tint = np.asarray(colour, np.float32)
    out = np.where(mask[..., None], 0.5 * grey + 0.5 * tint, grey)
    return out.astype(np.uint8)


def save_case_panel(
    path: str | os.PathLike,
    image: np.ndarray,
    counterfactual: np.ndarray,
    heatmap: np.ndarray,
    mask: np.ndarray,
    truth: np.ndarray | None = None,
    scale: int | None = None,
) -> pathlib.Path:
    """One slice of a counterfactual segmentation as a PNG: a row per modality (input,
    counterfactual, |input - counterfactual|) and a last row (heatmap, predicted mask over
    FLAIR, ground truth over FLAIR when given). Rows follow the channel order (BraTS: t1,
    t1ce, t2, flair). image / counterfactual (H, W, C) in [-1, 1];
    heatmap (H, W); mask / truth (H, W) bool."""
    channels = image.shape[-1]
    diff = np.abs(image - counterfactual)
    rows = [
        [
            to_uint8(image[..., c], -1.0, 1.0),
            to_uint8(counterfactual[..., c], -1.0, 1.0),
            heatmap_rgb(diff[..., c], vmax=max(float(diff.max()), 1e-6)),
        ]
        for c in range(channels)
    ]
    flair = image[..., -1]
    last = [heatmap_rgb(heatmap), mask_overlay(flair, mask)]
    if truth is not None:
        last.append(mask_overlay(flair, truth, colour=(64, 255, 64)))
    rows.append(last)
    header = ["input / heatmap", "cf / mask", "|x-cf| / truth"]
    if scale is None:  # tiles at least ~128 px wide, so the titles fit
        scale = max(1, -(-128 // image.shape[1]))
    return save_panel(rows, path, titles=header, scale=scale)
