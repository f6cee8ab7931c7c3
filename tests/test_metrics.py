"""Segmentation metrics: overlap scores on known answers, StreamingAUPRC (exact cases, bounded
memory, sklearn parity under -m ref), the FLAIR thresholding baseline and the tables."""

import warnings

import numpy as np
import pytest

from jaxcf.evaluation.metrics import (
    StreamingAUPRC,
    case_metrics,
    dice,
    flair_scores,
    iou,
    markdown_table,
    precision,
    sensitivity,
    summarize,
    threshold_baseline,
)

# ---------------------------------------------------------------- per-case scores


def _square(r0, c0, size=4, shape=(10, 10)):
    m = np.zeros(shape, bool)
    m[r0 : r0 + size, c0 : c0 + size] = True
    return m


def test_half_overlapping_squares():
    a, b = _square(2, 2), _square(2, 4)  # 16 px each, overlap 8
    assert dice(a, b) == pytest.approx(0.5)
    assert iou(a, b) == pytest.approx(8 / 24)
    assert sensitivity(a, b) == pytest.approx(0.5)
    assert precision(a, b) == pytest.approx(0.5)


def test_prediction_inside_truth():
    truth = _square(2, 2)
    pred = truth.copy()
    pred[:, 4:] = False  # left half: 8 px, all correct
    assert case_metrics(pred, truth) == pytest.approx(
        {"dice": 2 / 3, "iou": 0.5, "sensitivity": 0.5, "precision": 1.0}
    )


def test_empty_cases():
    empty, full = np.zeros((5, 5), bool), _square(1, 1, 2, (5, 5))
    both = case_metrics(empty, empty)
    assert both == {"dice": 1.0, "iou": 1.0, "sensitivity": 1.0, "precision": 1.0}
    missed = case_metrics(empty, full)  # tumour not found
    assert missed == {"dice": 0.0, "iou": 0.0, "sensitivity": 0.0, "precision": 0.0}
    phantom = case_metrics(full, empty)  # tumour where there is none
    assert phantom == {"dice": 0.0, "iou": 0.0, "sensitivity": 0.0, "precision": 0.0}
    with pytest.raises(ValueError, match="same shape"):
        dice(empty, np.zeros((4, 4), bool))


# ---------------------------------------------------------------- StreamingAUPRC, exact cases


def test_hand_computed_ap_and_ideal_dice():
    acc = StreamingAUPRC(0.0, 1.0, num_bins=10)
    # Scores on bin centres, ranked: pos, neg, pos, neg.
    acc.update(np.array([0.95, 0.85, 0.75, 0.15]), np.array([1, 0, 1, 0], bool))
    # AP = 1/2 * 1 + 1/2 * 2/3.
    assert acc.result() == pytest.approx(5 / 6, abs=1e-12)
    # Dice at the top-1/2/3/4 thresholds: 2/3, 1/2, 4/5, 2/3 -> best 0.8 at score >= 0.7.
    d, thr = acc.ideal_dice()
    assert d == pytest.approx(0.8, abs=1e-12)
    assert thr == pytest.approx(0.7)


def test_perfect_separation():
    rng = np.random.default_rng(0)
    neg = rng.uniform(0.0, 0.4, 5000)
    pos = rng.uniform(0.6, 1.0, 500)
    acc = StreamingAUPRC(0.0, 1.0)
    acc.update(np.concatenate([neg, pos]), np.r_[np.zeros(5000, bool), np.ones(500, bool)])
    assert acc.result() == pytest.approx(1.0, abs=1e-12)
    d, thr = acc.ideal_dice()
    assert d == pytest.approx(1.0, abs=1e-12)
    assert neg.max() < thr <= pos.min()


def test_random_scores_give_positive_rate():
    rng = np.random.default_rng(1)
    truth = rng.random(200_000) < 0.2
    acc = StreamingAUPRC(0.0, 1.0)
    acc.update(rng.random(200_000), truth)
    assert acc.result() == pytest.approx(truth.mean(), abs=0.01)
    # Best Dice of an uninformative score is predicting everything: 2p / (1 + p).
    p = truth.mean()
    assert acc.ideal_dice()[0] == pytest.approx(2 * p / (1 + p), abs=0.01)


def test_ideal_dice_matches_brute_force_sweep():
    rng = np.random.default_rng(2)
    truth = rng.random(20_000) < 0.1
    scores = np.clip(rng.normal(0.3 + 0.3 * truth, 0.15), 0, 1)
    acc = StreamingAUPRC(0.0, 1.0)
    for part in np.array_split(np.arange(scores.size), 4):
        acc.update(scores[part], truth[part])
    order = np.argsort(-scores)
    tp = np.cumsum(truth[order])
    exact = np.max(2 * tp / (np.arange(1, scores.size + 1) + truth.sum()))
    d, thr = acc.ideal_dice()
    assert d == pytest.approx(exact, abs=2e-3)
    assert dice(scores >= thr, truth) == pytest.approx(d, abs=1e-9)


def test_updates_split_valid_and_merge_agree():
    rng = np.random.default_rng(3)
    scores, truth = rng.random((6, 16, 16)), rng.random((6, 16, 16)) < 0.3
    valid = rng.random((6, 16, 16)) < 0.8
    whole = StreamingAUPRC(0.0, 1.0, num_bins=100)
    whole.update(scores[valid], truth[valid])
    split, other = StreamingAUPRC(0.0, 1.0, 100), StreamingAUPRC(0.0, 1.0, 100)
    for i in range(3):
        split.update(scores[i], truth[i], valid[i])
    for i in range(3, 6):
        other.update(scores[i], truth[i], valid[i])
    split.merge(other)
    np.testing.assert_array_equal(split.pos, whole.pos)
    np.testing.assert_array_equal(split.neg, whole.neg)
    assert split.pos.sum() + split.neg.sum() == valid.sum()
    assert split.result() == whole.result()
    with pytest.raises(ValueError, match="merge"):
        split.merge(StreamingAUPRC(0.0, 2.0, 100))


def test_memory_does_not_grow():
    rng = np.random.default_rng(4)
    acc = StreamingAUPRC(0.0, 1.0, num_bins=1000)

    def footprint():
        return {k: v.nbytes for k, v in vars(acc).items() if isinstance(v, np.ndarray)}

    before = footprint()
    assert sum(before.values()) == 2 * 1000 * 8
    for _ in range(200):
        acc.update(rng.random((32, 32)), rng.random((32, 32)) < 0.1)
    assert footprint() == before
    assert all(not isinstance(v, list | dict) for v in vars(acc).values())
    assert acc.pos.sum() + acc.neg.sum() == 200 * 32 * 32


def test_clipping_nan_and_no_positives():
    acc = StreamingAUPRC(0.0, 1.0, num_bins=4)
    acc.update(np.array([-3.0, 0.5, 7.0]), np.array([False, False, False]))
    assert acc.n_clipped == 2
    np.testing.assert_array_equal(acc.neg, [1, 0, 1, 1])
    with pytest.warns(RuntimeWarning, match="1 scores above the histogram range"):
        assert np.isnan(acc.result())
    assert all(np.isnan(v) for v in acc.ideal_dice())
    with pytest.raises(ValueError, match="NaN"):
        acc.update(np.array([np.nan]), np.array([True]))
    with pytest.raises(ValueError, match="hi > lo"):
        StreamingAUPRC(1.0, 1.0)


def test_scores_outside_the_range_are_reported():
    # A counterfactual that left the data range gives |x - x_cf| > 2 = HEAT_RANGE's top:
    # those pixels are tied into the top bin, and the result must say how many there were.
    acc, other = StreamingAUPRC(0.0, 2.0, num_bins=8), StreamingAUPRC(0.0, 2.0, num_bins=8)
    acc.update(np.array([0.5, 2.5, 37.0, 1.0]), np.array([True, False, False, True]))
    other.update(np.array([-0.1, 3.0]), np.array([True, True]))
    assert acc.out_of_range() == {"scores_above_range": 2, "scores_below_range": 0}
    acc.merge(other)
    assert acc.out_of_range() == {"scores_above_range": 3, "scores_below_range": 1}
    assert (acc.n_above, acc.n_below, acc.n_clipped) == (3, 1, 4)
    with pytest.warns(RuntimeWarning, match=r"3 scores above the histogram range \[0.0, 2.0\]"):
        acc.result()
    inside = StreamingAUPRC(0.0, 2.0, num_bins=8)
    inside.update(np.array([0.5, 1.5]), np.array([False, True]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert inside.result() == 1.0
    assert inside.out_of_range() == {"scores_above_range": 0, "scores_below_range": 0}


def test_the_evaluation_writes_the_out_of_range_counts(tmp_path):
    # evaluate_split's per-method results (metrics.json) carry the counts beside the AUPRC.
    import importlib.util
    import json
    import pathlib

    from jaxcf.evaluation import benchmark
    from jaxcf.training.data import ensure_data

    path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "quickstart.py"
    spec = importlib.util.spec_from_file_location("quickstart_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = ensure_data(module.get_config("toy").data, tmp_path)
    seen = []

    def exploded(batch):  # a counterfactual 3 above the image everywhere: |x - x_cf| = 3
        images = batch["image"]
        seen.append(benchmark.brain_masks(images).sum())
        return images + 3.0, np.full(images.shape[:-1], 3.0, np.float32), batch["seg"] > 0

    with pytest.warns(RuntimeWarning, match="above the histogram range"):
        results, _ = benchmark.evaluate_split(
            {"exploded": exploded},
            data,
            "test",
            batch_size=4,
            max_items=4,
            bins=100,
            baseline_threshold=0.5,
            progress=False,
        )
    assert results["exploded"]["scores_above_range"] == sum(seen) > 0
    assert results["exploded"]["scores_below_range"] == 0
    assert results[benchmark.BASELINE]["scores_above_range"] == 0  # FLAIR stays in [-1, 1]
    assert json.loads(json.dumps(results))["exploded"]["scores_above_range"] == sum(seen)


# ---------------------------------------------------------------- sklearn parity (ref)


@pytest.mark.ref
def test_streaming_auprc_matches_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(5)
    truth = rng.random(50_000) < 0.15
    scores = np.clip(rng.normal(0.35 + 0.25 * truth, 0.15), 0.0, 1.0)
    acc = StreamingAUPRC(0.0, 1.0, num_bins=10_000)
    for part in np.array_split(np.arange(scores.size), 7):
        acc.update(scores[part], truth[part])
    assert acc.result() == pytest.approx(skm.average_precision_score(truth, scores), abs=2e-3)
    # Few distinct values on bin centres: exact.
    centres = (rng.integers(0, 20, 5000) + 0.5) / 20
    t2 = rng.random(5000) < (0.1 + 0.8 * centres)
    exact = StreamingAUPRC(0.0, 1.0, num_bins=20)
    exact.update(centres, t2)
    assert exact.result() == pytest.approx(skm.average_precision_score(t2, centres), abs=1e-12)


# ---------------------------------------------------------------- thresholding baseline


def test_flair_threshold_baseline():
    rng = np.random.default_rng(6)
    image = rng.uniform(-1.0, 0.2, (3, 16, 16, 4)).astype(np.float32)
    truth = np.zeros((3, 16, 16), bool)
    truth[:, 4:9, 5:11] = True
    image[truth, 3] = rng.uniform(0.5, 1.0, truth.sum())  # hyperintense on FLAIR only
    image[truth, 0] = -1.0  # other channels must not be read
    scores = flair_scores(image)
    np.testing.assert_array_equal(scores, image[..., 3])
    acc = StreamingAUPRC(-1.0, 1.0)
    for s, t in zip(scores, truth, strict=True):
        acc.update(s, t)
    assert acc.result() == pytest.approx(1.0, abs=1e-12)
    d, thr = acc.ideal_dice()
    assert d == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_array_equal(threshold_baseline(scores, thr), truth)
    with pytest.raises(ValueError, match="flair_channel"):
        flair_scores(image, flair_channel=4)


# ---------------------------------------------------------------- summaries


def test_summarize():
    rows = [{"dice": 0.5, "iou": 1 / 3}, {"dice": 1.0, "iou": 1.0}, {"dice": np.nan, "iou": 0.0}]
    s = summarize(rows)
    assert s["dice"] == pytest.approx({"mean": 0.75, "std": 0.25, "n": 2})
    assert s["iou"]["mean"] == pytest.approx(4 / 9)
    assert s["iou"]["std"] == pytest.approx(np.std([1 / 3, 1.0, 0.0]))


def test_markdown_table():
    results = {
        "Thresholding": {"auprc": 0.684, "ideal_dice": 0.667},
        "Ours": {"auprc": (0.828, 0.004), "ideal_dice": {"mean": 0.762, "std": 0.003}},
        "Broken": {"auprc": float("nan")},
    }
    text = markdown_table(results, ["auprc", "ideal_dice"], "Table 1")
    assert text == (
        "**Table 1**\n\n"
        "| Method | AUPRC | ideal Dice |\n"
        "|---|---:|---:|\n"
        "| Thresholding | 68.4 | 66.7 |\n"
        "| Ours | 82.8 ± 0.4 | 76.2 ± 0.3 |\n"
        "| Broken | n/a | n/a |\n"
    )
    frac = markdown_table(
        {"PCF+DiT": {"iou": 0.6531, "dice": 0.7849}}, ["iou", "dice"], percent=False
    )
    assert frac.splitlines()[-1] == "| PCF+DiT | 0.653 | 0.785 |"
    assert frac.splitlines()[0] == "| Method | IoU | Dice |"


def test_rebatch_regroups_filtered_batches_into_fixed_chunks():
    from jaxcf.evaluation.benchmark import rebatch

    parts = [np.arange(0, 5), np.arange(5, 21), np.arange(21, 24), np.arange(24, 24)]
    chunks = [b["image"] for b in rebatch(iter({"image": p} for p in parts), 8)]
    assert [len(c) for c in chunks] == [8, 8, 8]
    np.testing.assert_array_equal(np.concatenate(chunks), np.arange(24))
    tail = [b["image"] for b in rebatch(iter([{"image": np.arange(3)}]), 8)]
    assert [len(c) for c in tail] == [3]


def test_examples_keep_the_largest_tumours_in_split_order():
    """Panels show the slices with the most tumour (every slice is scored under paper
    001's protocol, and the first slices of a case are usually healthy)."""
    from jaxcf.evaluation.benchmark import Example, example_candidates, keep_largest_tumours

    def example(area: int, index: int) -> Example:
        truth = np.zeros((4, 4), bool)
        truth.flat[:area] = True
        return Example(np.zeros((4, 4, 1)), truth, {}, "case", index)

    kept: list[Example] = []
    for start, areas in ((0, [0, 0, 3]), (3, [5, 0, 1]), (6, [2, 9, 0])):
        areas = np.array(areas)
        for i in example_candidates(kept, areas, 2):
            kept = keep_largest_tumours([*kept, example(int(areas[i]), start + i)], 2)
    assert [e.slice_index for e in kept] == [3, 7]  # areas 5 and 9, in split order
