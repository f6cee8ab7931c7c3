"""Panels and grids a researcher can read: labels drawn, colour bars, the TP / FP / FN
overlay, smooth upsampling, preview row conditions; per-slice / per-case reports."""

from __future__ import annotations

import csv
import json

import ml_collections
import numpy as np
import pytest
from PIL import Image

from jaxcf import visualization as viz
from jaxcf.data.text import Tokenizer
from jaxcf.evaluation import reports
from jaxcf.training import previews

BG = np.array(viz.BACKGROUND)


def _load(path) -> np.ndarray:
    with Image.open(path) as png:
        return np.asarray(png.convert("RGB")).astype(int)


def _text_pixels(region: np.ndarray) -> int:
    """Bright, grey pixels (text is drawn in TEXT on the dark background)."""
    bright = region.min(-1) > 150
    grey = region.max(-1) - region.min(-1) < 30
    return int((bright & grey).sum())


def _bands(column: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) runs of non-background pixels along a column (H, 3)."""
    on = np.any(column != BG, axis=-1).astype(int)
    edges = np.flatnonzero(np.diff(np.r_[0, on, 0]))
    return list(zip(edges[::2], edges[1::2], strict=True))


def _ramp_columns(panel: np.ndarray, min_len: int = 100) -> int:
    """Columns holding a full colour-bar ramp: heat colours from the top colour down to
    the bottom colour, monotone, with at least min_len distinct levels (a heatmap tile's
    edges pass through a few levels only)."""
    index = {tuple(c): i for i, c in enumerate(viz._HEAT.tolist())}
    count = 0
    for x in range(panel.shape[1]):
        ids = [index.get(tuple(p), -1) for p in panel[:, x].tolist()]
        run = []
        for i in [*ids, -1]:
            if i >= 0 and (not run or i <= run[-1]):
                run.append(i)
                continue
            if len(set(run)) >= min_len and run[0] >= 250 and run[-1] <= 5:
                count += 1
                break
            run = [i] if i >= 0 else []
    return count


def _case(size: int = 32):
    """A synthetic 4-channel slice: a square brain at 0 (grey), a square tumour brighter in
    the first three channels (FLAIR, the overlay's base, stays 0); the counterfactual
    without it; a mask shifted by 2 px."""
    image = np.full((size, size, 4), -1.0, np.float32)
    image[4:28, 4:28] = 0.0
    truth = np.zeros((size, size), bool)
    truth[10:18, 10:18] = True
    cf = image.copy()
    image[truth, :3] = 0.8
    pred = np.zeros_like(truth)
    pred[12:20, 10:18] = True
    heat = np.abs(image - cf).mean(-1)
    return image, cf, heat, pred, truth


def test_confusion_overlay_colours():
    grey = np.zeros((4, 4), np.float32)  # to_uint8 -> 128
    pred = np.zeros((4, 4), bool)
    truth = np.zeros((4, 4), bool)
    pred[0, 0] = truth[0, 0] = True  # TP
    pred[0, 1] = True  # FP
    truth[0, 2] = True  # FN
    out = viz.confusion_overlay(grey, pred, truth, alpha=0.5)
    blend = lambda c: tuple(round(0.5 * 128 + 0.5 * v) for v in c)
    assert tuple(out[0, 0]) == blend(viz.TP_COLOUR)
    assert tuple(out[0, 1]) == blend(viz.FP_COLOUR)
    assert tuple(out[0, 2]) == blend(viz.FN_COLOUR)
    assert (out[1:] == 128).all() and tuple(out[0, 3]) == (128, 128, 128)
    # Three colours that differ clearly from one another.
    colours = np.array([viz.TP_COLOUR, viz.FP_COLOUR, viz.FN_COLOUR], int)
    assert min(np.abs(a - b).sum() for i, a in enumerate(colours) for b in colours[i + 1 :]) > 150


def test_upsampling_is_smooth_not_blocky():
    checker = (np.indices((4, 4)).sum(0) % 2).astype(np.float32)
    big = viz.upsample(checker, 8)
    assert big.shape == (32, 32)
    assert len(np.unique(big.round(3))) > 10  # nearest neighbour would give 2 values
    assert big.min() >= 0.0 and big.max() <= 1.0  # bicubic overshoot clipped
    disc = np.hypot(*np.indices((16, 16)) - 7.5) < 5
    mask = viz.upsample_mask(disc, 4)
    assert mask.shape == (64, 64) and abs(mask.mean() - disc.mean()) < 0.02


def test_colorbar_ramp_and_ticks():
    bar = np.asarray(viz.colorbar(120, 0.0, 0.5, width=10)).astype(int)
    assert bar.shape[0] == 120 and bar.shape[1] > 10 + 10  # bar plus tick labels
    assert tuple(bar[0, 0]) == tuple(viz._HEAT[255]) and tuple(bar[-1, 0]) == tuple(viz._HEAT[0])
    assert _text_pixels(bar[:, 16:]) > 20


def test_case_panel_labels_colour_bars_and_overlay(tmp_path):
    image, cf, heat, pred, truth = _case()
    path = viz.save_case_panel(
        tmp_path / "p.png", image, cf, heat, pred, truth, case_id="BraTS_007", slice_index=42
    )
    panel = _load(path)
    factor = viz.display_factor(32)
    tile = 32 * factor
    # Caption (case, slice, Dice) above everything.
    assert _text_pixels(panel[:40]) > 200
    # Five rows of tiles (four modalities, the result row), each with a label on the left.
    x0 = next(x for x in range(panel.shape[1]) if (panel[:, x] == 0).all(-1).sum() > tile)
    bands = [(a, b) for a, b in _bands(panel[:, x0 + 2]) if b - a == tile]
    assert len(bands) == 5
    for a, b in bands:
        assert _text_pixels(panel[a:b, : x0 - 2]) > 20
    # Column headers above the first row and above the result row.
    assert _text_pixels(panel[bands[0][0] - 22 : bands[0][0]]) > 200
    assert _text_pixels(panel[bands[4][0] - 22 : bands[4][0]]) > 200
    # Two colour bars: |input - cf| and the heatmap.
    assert _ramp_columns(panel) >= 2 * 14
    # The overlay: TP / FP / FN blended over grey 0 (-> 128), smoothly upsampled.
    tp, fp, fn = pred & truth, pred & ~truth, ~pred & truth
    for where, colour in ((tp, viz.TP_COLOUR), (fp, viz.FP_COLOUR), (fn, viz.FN_COLOUR)):
        a = viz.OVERLAY_ALPHA
        expected = [round((1 - a) * 128 + a * v) for v in colour]
        found = int((panel == expected).all(-1).sum())
        assert abs(found - where.sum() * factor**2) <= 0.3 * where.sum() * factor**2


def test_case_panel_without_truth_and_one_channel(tmp_path):
    image, cf, heat, pred, _ = _case()
    path = viz.save_case_panel(tmp_path / "p.png", image[..., -1:], cf[..., -1:], heat, pred)
    panel = _load(path)
    a = viz.OVERLAY_ALPHA
    expected = [round((1 - a) * 128 + a * v) for v in viz.FP_COLOUR]  # predicted, no truth
    assert (panel == expected).all(-1).sum() > pred.sum() * viz.display_factor(32) ** 2 * 0.7
    assert viz.channel_names(1) == ("image",) and viz.channel_names(4)[-1] == "FLAIR"


def test_grid_row_labels_and_titles(tmp_path):
    tiles = [[np.full((8, 8), 200, np.uint8)] * 3 for _ in range(2)]
    plain = _load(viz.save_panel(tiles, tmp_path / "a.png"))
    labelled = _load(
        viz.save_panel(
            tiles,
            tmp_path / "b.png",
            ["T1", "T2", "FLAIR"],
            row_labels=["healthy (label 0)", "tumour (label 1)"],
            title="step 10",
        )
    )
    assert labelled.shape[1] > plain.shape[1] + 50  # room for the row labels
    x0 = labelled.shape[1] - plain.shape[1] + viz.PAD  # the tiles start here
    column = labelled[:, x0 + 4]
    bands = [(a, b) for a, b in _bands(column) if b - a == 8 * viz.display_factor(8, 128)]
    assert len(bands) == 2
    for a, b in bands:
        assert _text_pixels(labelled[a:b, : x0 - 4]) > 20
    assert _text_pixels(labelled[: bands[0][0], x0:]) > 100  # title and column headers


def _preview_config(condition: str, task: str = "diffusion"):
    return ml_collections.ConfigDict(
        {
            "train": {"task": task},
            "data": {"dataset": "brats2021"},
            "diffusion": {"condition": condition, "schedule": "linear"},
            "sampler": {"num_steps": 50, "guidance_scale": 3.0},
        }
    )


def test_preview_condition_names():
    fields = {"label": np.array([0, 1, 2, 0])}
    names = previews.condition_names(_preview_config("label"), fields, 3, num_classes=2)
    assert names == ["healthy (label 0)", "tumour (label 1)", "null (label 2)"]
    tok = Tokenizer(["<pad>", "<unk>", "<bos>", "<eos>", "tumour", "left"], 6)
    ids = np.stack([tok.encode("tumour left")[0], tok.encode("")[0]])
    names = previews.condition_names(
        _preview_config("prompt"), {"prompt_ids": ids}, 2, tokenizer=tok
    )
    assert names == ['"tumour left"', "null prompt"]
    assert previews.condition_names(_preview_config("none"), {}, 2) == ["unconditional"] * 2
    assert previews.preview_title(_preview_config("label"), 700) == (
        "step 700: DDIM samples, 50 steps, guidance w = 3"
    )


def test_preview_grid_has_row_labels(tmp_path):
    images = np.zeros((2, 16, 16, 4), np.float32)
    names = ["healthy (label 0)", "tumour (label 1)"]
    path = previews.save_preview(images, tmp_path / "s.png", names, "step 1")
    grid = _load(path)
    x0 = next(x for x in range(grid.shape[1]) if (grid[:, x] == 128).all(-1).sum() > 50)
    assert x0 > 60 and _text_pixels(grid[:, :x0]) > 100


def _slices():
    """Case A: two slices (a partial hit, an empty / empty slice); case B: a miss."""
    truth = np.zeros((3, 6, 6), bool)
    pred = np.zeros((3, 6, 6), bool)
    truth[0, 0:2, 0:2] = True  # 4 px
    pred[0, 1:3, 0:2] = True  # 4 px
    pred[0, 5, 4:6] = True  # + 2 px: tp 2, fp 4, fn 2
    truth[2, 3, 3:5] = True  # case B: 2 px missed
    ids = [("A", 10), ("A", 11), ("B", 5)]
    return reports.slice_records("diffscm", ids, pred, truth)


def test_slice_and_case_reports(tmp_path):
    rows = _slices()
    assert [(r["tp"], r["fp"], r["fn"]) for r in rows] == [(2, 4, 2), (0, 0, 0), (0, 0, 2)]
    assert rows[0]["dice"] == pytest.approx(4 / 10) and rows[1]["dice"] == 1.0
    paths = reports.write_reports(rows, tmp_path)
    cases = json.loads(paths["per_case_json"].read_text())
    assert [c["case_id"] for c in cases] == ["A", "B"]
    a, b = cases
    assert (a["slices"], a["tumour_slices"], a["tp"], a["fp"], a["fn"]) == (2, 1, 2, 4, 2)
    assert a["dice"] == pytest.approx(4 / 10) and a["mean_slice_dice"] == pytest.approx(0.7)
    assert a["iou"] == pytest.approx(2 / 8) and a["precision"] == pytest.approx(2 / 6)
    assert b["dice"] == 0.0 and b["sensitivity"] == 0.0 and b["fn"] == 2
    with paths["per_case_csv"].open() as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == reports.CASE_COLUMNS
    assert float(table[0]["dice"]) == pytest.approx(0.4) and table[1]["case_id"] == "B"
    with paths["per_slice_csv"].open() as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == reports.SLICE_COLUMNS
    assert [(t["case_id"], int(t["slice_index"])) for t in table] == [
        ("A", 10),
        ("A", 11),
        ("B", 5),
    ]
    assert json.loads(paths["per_slice_json"].read_text())[2]["fn"] == 2


def test_slice_ids_from_prepared_meta():
    meta = {
        "cases": [{"case_id": "c0"}, {"case_id": "c1"}],
        "item_case_index": [0, 0, 1],
        "item_slice_index": [3, 4, 9],
    }
    assert reports.slice_ids(meta, np.array([2, 0])) == [("c1", 9), ("c0", 3)]
