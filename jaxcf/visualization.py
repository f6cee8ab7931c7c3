"""Figures a researcher can read, as PNG (Pillow + numpy only).

    save_panel(rows, path, titles=["T1", ...], row_labels=["healthy", ...], title="...")
    save_case_panel(path, image, cf, heatmap, mask, truth, case_id="...", slice_index=77)

Tiles are upsampled smoothly (bicubic on the values, before any colour map), never blown
up into blocks; rows and columns carry labels; heatmaps come with a colour bar in their own
units; a predicted mask is drawn against the ground truth in one overlay (true positive /
false positive / false negative, with a legend and pixel counts).
"""

from __future__ import annotations

import math
import os
import pathlib
import tempfile
import textwrap
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from jaxcf.evaluation.metrics import case_metrics

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

# Overlay colours from the Okabe-Ito palette: distinct for colour-blind readers too.
TP_COLOUR = (240, 228, 66)  # yellow: predicted and true
FP_COLOUR = (213, 94, 0)  # vermillion: predicted, not true
FN_COLOUR = (86, 180, 233)  # sky blue: true, missed
OVERLAY_ALPHA = 0.7
BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)
PAD = 6
TILE_PX = 160  # tiles are upsampled by an integer factor to at least this width
# Display names of jaxcf's BraTS channel order (jaxcf.data.sources.MODALITIES).
BRATS_CHANNELS = ("T1", "T1ce", "T2", "FLAIR")

RGB = tuple[int, int, int]


# -- values -> pixels ------------------------------------------------------------------------


def to_uint8(image: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Scale a 2-D array to uint8 grey levels over [vmin, vmax] (default: its own range)."""
    image = np.asarray(image, np.float64)
    lo = np.nanmin(image) if vmin is None else vmin
    hi = np.nanmax(image) if vmax is None else vmax
    scaled = (image - lo) / max(hi - lo, 1e-12)
    return (np.clip(np.nan_to_num(scaled), 0.0, 1.0) * 255).round().astype(np.uint8)


def heatmap_rgb(heat: np.ndarray, vmax: float | None = None, vmin: float = 0.0) -> np.ndarray:
    """(H, W) map -> (H, W, 3) uint8 colours over [vmin, vmax] (default vmax: its maximum)."""
    return _HEAT[to_uint8(heat, vmin, vmax)]


def _rgb(tile: np.ndarray) -> np.ndarray:
    return np.repeat(tile[..., None], 3, axis=-1) if tile.ndim == 2 else tile


def display_factor(width: int, target: int = TILE_PX) -> int:
    """The integer upsampling factor that makes a `width`-pixel tile at least `target` wide."""
    return max(1, math.ceil(target / max(int(width), 1)))


def upsample(field: np.ndarray, factor: int, resample: int = Image.BICUBIC) -> np.ndarray:
    """(H, W) values -> (H * factor, W * factor) float32, smoothly interpolated and clipped
    to the input's range (bicubic overshoots at edges)."""
    field = np.nan_to_num(np.asarray(field, np.float32))
    if factor == 1:
        return field
    h, w = field.shape
    out = np.asarray(Image.fromarray(field).resize((w * factor, h * factor), resample))
    return np.clip(out, field.min(), field.max())


def upsample_mask(mask: np.ndarray, factor: int) -> np.ndarray:
    """(H, W) bool -> (H * factor, W * factor) bool with smooth (bilinear, 0.5) edges."""
    return upsample(np.asarray(mask, np.float32), factor, Image.BILINEAR) >= 0.5


def confusion_overlay(
    image: np.ndarray, pred: np.ndarray, truth: np.ndarray | None, alpha: float = OVERLAY_ALPHA
) -> np.ndarray:
    """(H, W) grey image in [-1, 1] with (H, W) bool masks blended in -> (H, W, 3) uint8:
    true positives TP_COLOUR, false positives FP_COLOUR, false negatives FN_COLOUR
    (truth None: every predicted pixel FP_COLOUR)."""
    pred = np.asarray(pred, bool)
    truth = np.zeros_like(pred) if truth is None else np.asarray(truth, bool)
    out = _rgb(to_uint8(image, -1.0, 1.0)).astype(np.float32)
    for where, colour in (
        (pred & truth, TP_COLOUR),
        (pred & ~truth, FP_COLOUR),
        (~pred & truth, FN_COLOUR),
    ):
        out[where] = (1 - alpha) * out[where] + alpha * np.asarray(colour, np.float32)
    return out.round().astype(np.uint8)


def mask_overlay(image: np.ndarray, mask: np.ndarray, colour: RGB = FP_COLOUR) -> np.ndarray:
    """(H, W) grey image in [-1, 1] with a bool mask drawn as a half-transparent colour."""
    grey = _rgb(to_uint8(image, -1.0, 1.0)).astype(np.float32)
    out = np.where(mask[..., None], 0.5 * grey + 0.5 * np.asarray(colour, np.float32), grey)
    return out.astype(np.uint8)


# -- text, colour bars, legends ----------------------------------------------------------------


def font(size: int = 14) -> ImageFont.ImageFont:
    """Pillow's bundled scalable font at `size` px (its bitmap font without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType
        return ImageFont.load_default()


def _text_size(text: str, fnt: ImageFont.ImageFont) -> tuple[int, int]:
    if not text:
        return 0, 0
    box = ImageDraw.Draw(Image.new("RGB", (1, 1))).multiline_textbbox((0, 0), text, font=fnt)
    return box[2], box[3]


def text_image(text: str, size: int = 14, width: int | None = None) -> Image.Image:
    """A line (or lines) of text on the background; `width` pads it to that width."""
    fnt = font(size)
    w, h = _text_size(text, fnt)
    image = Image.new("RGB", (max(w, width or 0) + 2, h + 4), BACKGROUND)
    ImageDraw.Draw(image).multiline_text((1, 1), text, fill=TEXT, font=fnt)
    return image


def _ticks(vmin: float, vmax: float) -> list[float]:
    return [vmax, (vmin + vmax) / 2, vmin]


def colorbar(height: int, vmin: float, vmax: float, width: int = 14) -> Image.Image:
    """A vertical colour bar of heatmap_rgb's colours (vmax at the top) with three ticks."""
    fnt = font(12)
    labels = [f"{v:.3g}" for v in _ticks(vmin, vmax)]
    text_w = max(_text_size(s, fnt)[0] for s in labels)
    image = Image.new("RGB", (width + 6 + text_w + 2, height), BACKGROUND)
    ramp = np.linspace(255, 0, height).round().astype(np.uint8)
    bar = np.repeat(_HEAT[ramp][:, None], width, axis=1)
    image.paste(Image.fromarray(bar), (0, 0))
    draw = ImageDraw.Draw(image)
    for k, label in enumerate(labels):
        y = round(k * (height - 1) / 2)
        draw.line([(width, y), (width + 3, y)], fill=TEXT)
        th = _text_size(label, fnt)[1]
        draw.text((width + 6, min(max(y - th // 2, 0), height - th - 1)), label, TEXT, fnt)
    return image


def legend(entries: Sequence[tuple[RGB, str]], swatch: int = 12) -> Image.Image:
    """Colour swatches with their meaning, one per line."""
    fnt = font(13)
    line = max(swatch, _text_size("Hg", fnt)[1]) + 6
    width = swatch + 6 + max(_text_size(text, fnt)[0] for _, text in entries) + 2
    image = Image.new("RGB", (width, line * len(entries)), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for k, (colour, text) in enumerate(entries):
        y = k * line + 3
        draw.rectangle([0, y, swatch - 1, y + swatch - 1], fill=tuple(colour))
        draw.text((swatch + 6, y - 2), text, TEXT, fnt)
    return image


def wrap(text: str, width: int = 22, lines: int = 3) -> str:
    """Text broken into at most `lines` lines of about `width` characters (for row labels)."""
    return "\n".join(textwrap.wrap(text, width, max_lines=lines, placeholder=" ...")) or text


# -- layout ---------------------------------------------------------------------------------


def grid(
    cells: Sequence[Sequence[Image.Image | None]],
    col_titles: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    label_width: int = 0,
) -> tuple[Image.Image, list[list[tuple[int, int]]]]:
    """Cells in rows and columns (a column as wide as its widest cell or title), column
    titles above, row labels on the left in a column at least label_width wide (to align
    grids stacked on each other). Returns the image and each cell's top-left corner."""
    fnt = font(14)
    n_cols = max(len(row) for row in cells)
    titles = list(col_titles or []) + [""] * n_cols
    widths = [
        max([_text_size(titles[c], fnt)[0]] + [r[c].width for r in cells if c < len(r) and r[c]])
        for c in range(n_cols)
    ]
    heights = [max([1] + [c.height for c in row if c is not None]) for row in cells]
    label_w = max([label_width] + [_text_size(s, fnt)[0] for s in row_labels or []])
    left = PAD + (label_w + PAD if label_w else 0)
    top = PAD + (max(_text_size(t, fnt)[1] for t in titles) + PAD if col_titles else 0)
    xs = [left + sum(widths[:c]) + PAD * c for c in range(n_cols)]
    ys = [top + sum(heights[:r]) + PAD * r for r in range(len(cells))]
    canvas = Image.new("RGB", (xs[-1] + widths[-1] + PAD, ys[-1] + heights[-1] + PAD), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(titles[:n_cols]):
        w = _text_size(title, fnt)[0]
        draw.multiline_text((xs[c] + (widths[c] - w) // 2, PAD), title, TEXT, fnt, align="center")
    origins = []
    for r, row in enumerate(cells):
        if row_labels and r < len(row_labels):
            h = _text_size(row_labels[r], fnt)[1]
            draw.multiline_text((PAD, ys[r] + (heights[r] - h) // 2), row_labels[r], TEXT, fnt)
        origins.append([(xs[c], ys[r]) for c in range(len(row))])
        for c, cell in enumerate(row):
            if cell is not None:
                canvas.paste(cell, (xs[c], ys[r]))
    return canvas, origins


def stack(parts: Sequence[Image.Image]) -> Image.Image:
    """Images one below the other, left-aligned."""
    canvas = Image.new(
        "RGB", (max(p.width for p in parts), sum(p.height for p in parts)), BACKGROUND
    )
    y = 0
    for part in parts:
        canvas.paste(part, (0, y))
        y += part.height
    return canvas


def save_png(image: Image.Image, path: str | os.PathLike) -> pathlib.Path:
    """Write a PNG atomically (a temporary file in the same folder, then rename)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".png", delete=False) as tmp:
        image.save(tmp, format="PNG")
    os.replace(tmp.name, path)
    return path


def save_panel(
    rows: list[list[np.ndarray]],
    path: str | os.PathLike,
    titles: Sequence[str] | None = None,
    scale: int | None = None,
    *,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
) -> pathlib.Path:
    """Write a grid of uint8 tiles ((H, W) grey or (H, W, 3) RGB) as one PNG.

    Tiles are upsampled by `scale` (default: to about TILE_PX wide) with a bicubic filter;
    `titles` name the columns, `row_labels` the rows (e.g. the condition a sample was drawn
    under), `title` goes above the grid. The file is written atomically."""
    width = max(np.shape(t)[1] for row in rows for t in row)
    scale = display_factor(width, 128) if scale is None else scale
    cells = [
        [
            Image.fromarray(_rgb(np.asarray(t, np.uint8))).resize(
                (np.shape(t)[1] * scale, np.shape(t)[0] * scale), Image.BICUBIC
            )
            for t in row
        ]
        for row in rows
    ]
    image, _ = grid(cells, titles, row_labels)
    if title:
        image = stack([text_image(title, 15), image])
    return save_png(image, path)


# -- the counterfactual case panel -------------------------------------------------------------


def channel_names(channels: int) -> tuple[str, ...]:
    """Row labels for `channels` image channels: BraTS modalities for 4, else numbered."""
    if channels == len(BRATS_CHANNELS):
        return BRATS_CHANNELS
    return ("image",) if channels == 1 else tuple(f"channel {c}" for c in range(channels))


def _caption(
    case_id: str | None,
    slice_index: int | None,
    method: str | None,
    shape: tuple[int, int],
    factor: int,
    scores: dict | None,
) -> str:
    head = [
        f"case {case_id}" if case_id else "",
        "" if slice_index is None or slice_index < 0 else f"slice {slice_index}",
        method or "",
    ]
    if scores:
        head.append(f"Dice {scores['dice']:.3f}  IoU {scores['iou']:.3f}")
    size = f"{shape[0]}x{shape[1]} px" + (f", shown x{factor} (bicubic)" if factor > 1 else "")
    return "   ".join(h for h in head if h) + "\n" + size


def label_width(labels: Sequence[str]) -> int:
    """The width in pixels of the widest of `labels` as grid draws them."""
    return max((_text_size(s, font(14))[0] for s in labels), default=0)


def _modality_section(
    image: np.ndarray,
    counterfactual: np.ndarray,
    names: Sequence[str],
    factor: int,
    label_w: int,
) -> Image.Image:
    """Rows per channel: input, counterfactual, |input - cf| (one shared colour bar)."""
    diff = np.abs(image - counterfactual)
    vmax = max(float(diff.max()), 1e-6)
    cells = [
        [
            Image.fromarray(to_uint8(upsample(image[..., c], factor), -1.0, 1.0)),
            Image.fromarray(to_uint8(upsample(counterfactual[..., c], factor), -1.0, 1.0)),
            Image.fromarray(heatmap_rgb(upsample(diff[..., c], factor), vmax)),
        ]
        for c in range(image.shape[-1])
    ]
    titles = ["input", "counterfactual", "|input - cf|"]
    section, origins = grid(cells, titles, list(names), label_w)
    bar = colorbar(origins[-1][2][1] + cells[-1][2].height - origins[0][2][1], 0.0, vmax)
    out = Image.new("RGB", (section.width + bar.width + PAD, section.height), BACKGROUND)
    out.paste(section, (0, 0))
    out.paste(bar, (section.width, origins[0][2][1]))
    return out


def _result_section(
    flair: np.ndarray,
    heatmap: np.ndarray,
    mask: np.ndarray,
    truth: np.ndarray | None,
    factor: int,
    label: str,
    base: str,
    label_w: int,
) -> Image.Image:
    """One row: the method's heatmap with its colour bar, and predicted vs true mask over
    the last channel (FLAIR) with a legend and pixel counts at the images' resolution."""
    vmax = max(float(np.max(heatmap)), 1e-6)
    heat = Image.fromarray(heatmap_rgb(upsample(heatmap, factor), vmax))
    big_truth = None if truth is None else upsample_mask(truth, factor)
    overlay = confusion_overlay(upsample(flair, factor), upsample_mask(mask, factor), big_truth)
    if truth is None:
        entries = [(FP_COLOUR, f"predicted ({int(mask.sum())} px)")]
    else:
        tp, fp, fn = (int(v.sum()) for v in (mask & truth, mask & ~truth, ~mask & truth))
        entries = [
            (TP_COLOUR, f"true positive ({tp} px)"),
            (FP_COLOUR, f"false positive ({fp} px)"),
            (FN_COLOUR, f"false negative ({fn} px)"),
        ]
    cells = [[heat, colorbar(heat.height, 0.0, vmax), Image.fromarray(overlay), legend(entries)]]
    what = "prediction vs truth" if truth is not None else "prediction"
    titles = ["heatmap", "", f"{what} on {base}", ""]
    return grid(cells, titles, [label], label_w)[0]


def save_case_panel(
    path: str | os.PathLike,
    image: np.ndarray,
    counterfactual: np.ndarray,
    heatmap: np.ndarray,
    mask: np.ndarray,
    truth: np.ndarray | None = None,
    scale: int | None = None,
    *,
    case_id: str | None = None,
    slice_index: int | None = None,
    method: str | None = None,
    names: Sequence[str] | None = None,
) -> pathlib.Path:
    """One slice of a counterfactual segmentation as a PNG.

    A caption (case, slice, method, Dice / IoU of this slice when truth is given, the
    image size and upsampling); a row per channel, labelled (BraTS: T1, T1ce, T2, FLAIR),
    with columns input, counterfactual and |input - cf| (one colour bar); a last row with
    the method's heatmap (its colour bar) and the predicted mask against the truth over the
    last channel (true / false positives, false negatives; legend with pixel counts).
    image / counterfactual (H, W, C) in [-1, 1]; heatmap (H, W); mask / truth (H, W) bool.
    scale: the upsampling factor (default: tiles about TILE_PX wide)."""
    image, counterfactual = np.asarray(image, np.float32), np.asarray(counterfactual, np.float32)
    mask = np.asarray(mask, bool)
    truth = None if truth is None else np.asarray(truth, bool)
    factor = display_factor(image.shape[1]) if scale is None else scale
    names = channel_names(image.shape[-1]) if names is None else names
    scores = case_metrics(mask, truth) if truth is not None else None
    caption = _caption(case_id, slice_index, method, image.shape[:2], factor, scores)
    result = wrap(method or "result", 14)
    label_w = label_width([*names, result])
    parts = [
        text_image(caption, 15),
        _modality_section(image, counterfactual, names, factor, label_w),
        _result_section(
            image[..., -1], np.asarray(heatmap), mask, truth, factor, result, names[-1], label_w
        ),
    ]
    return save_png(stack(parts), path)
