"""prepare (shards, splits, reuse, CLI) and the Grain pipelines (fixed-shape batches, host
shards, balanced sampling, checkpointable iterator state, eval passes)."""

import json
import os
import subprocess
import sys
import textwrap

import data_fixtures as fx
import numpy as np
import pytest

from jaxcf.data import pipeline, prepare, sources
from jaxcf.data.config import default_data_config
from jaxcf.data.errors import DataError


def _cfg(prepared, **kw):
    """Data config for ``prepared``; dataset / task follow the shards unless given."""
    c = default_data_config()
    c.prepared = str(prepared)
    if (prepared / "meta.json").is_file():
        meta = prepare.prepared_info(prepared)
        c.dataset, c.task = meta["dataset"], meta["task"]
    c.num_threads = 2
    c.prefetch = 2
    for k, v in kw.items():
        c[k] = v
    return c


@pytest.fixture(scope="module")
def brats(tmp_path_factory):
    """BraTS 2021 fixture (6 cases, 2 healthy) prepared as 16 x 16 Diff-SCM slices."""
    root = tmp_path_factory.mktemp("brats")
    fx.write_brats(root, n=6, healthy=(2, 5))
    out = root.parent / (root.name + "_prep")
    meta = prepare.prepare_dataset("brats", root, out, "slices2d", image_size=16, progress=False)
    return root, out, meta


@pytest.fixture(scope="module")
def ms(tmp_path_factory):
    root = tmp_path_factory.mktemp("ms")
    fx.write_ms(root, n=6)
    out = root.parent / (root.name + "_prep")
    meta = prepare.prepare_dataset("ms", root, out, "volumes", volume_size=8, progress=False)
    return root, out, meta


@pytest.fixture(scope="module")
def adni(tmp_path_factory):
    """Imbalanced ADNI (6 CN, 3 MCI, 2 AD), all in train, for balanced sampling."""
    root = tmp_path_factory.mktemp("adni")
    fx.write_adni(root, diagnoses=("CN",) * 6 + ("MCI",) * 3 + ("AD",) * 2)
    out = root.parent / (root.name + "_prep")
    meta = prepare.prepare_dataset(
        "adni", root, out, "volumes", volume_size=8, splits=(1.0, 0.0, 0.0), progress=False
    )
    return root, out, meta


def _batches(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


def _indices(cfg, n, **kw):
    """Item indices in the first ``n`` training batches."""
    ds = pipeline.make_dataset(cfg, "train", seed=0, **kw)
    return {int(i) for b in _batches(ds, n) for i in b["index"]}


def _item_split(meta):
    return np.array([meta["cases"][c]["split"] for c in meta["item_case_index"]])


# ---------------------------------------------------------------------------- prepare
def test_split_cases_by_fraction_and_seed():
    ids = [f"c{i:02d}" for i in range(20)]
    a = prepare.split_cases(ids, (0.7, 0.15, 0.15), seed=0)
    counts = {s: sum(v == s for v in a.values()) for s in prepare.SPLITS}
    assert counts == {"train": 14, "val": 3, "test": 3}
    assert a == prepare.split_cases(ids[::-1], (0.7, 0.15, 0.15), seed=0)  # order-free
    assert a != prepare.split_cases(ids, (0.7, 0.15, 0.15), seed=1)
    small = prepare.split_cases(["a", "b", "c"], (0.7, 0.15, 0.15), seed=0)
    assert sorted(small.values()) == ["test", "train", "val"]  # every split >= 1 case
    with pytest.raises(DataError, match="splits"):
        prepare.split_cases(ids, (0.5, 0.2, 0.2))


def test_prepare_slices2d_arrays_and_meta(brats):
    root, out, meta = brats
    image = np.load(out / "image.npy", mmap_mode="r")
    label = np.load(out / "label.npy")
    seg = np.load(out / "seg.npy", mmap_mode="r")
    n = meta["n_items"]
    assert image.shape == (n, 16, 16, 4) and image.dtype == np.float32
    assert label.shape == (n,) and label.dtype == np.int32 and seg.dtype == np.uint8
    assert image.min() == -1.0 and image.max() <= 1.0
    assert n == 6 * 14  # brain in slices 3..16 of 20
    assert meta["item_slice_index"][:14] == list(range(3, 17))
    # labels: tumour slices 6..13 of the tumour cases (ball of radius 4 / 2 around z = 9.5)
    src = sources.BraTSSource(root)
    rec = src[0]
    for i in range(14):
        z = meta["item_slice_index"][i]
        assert label[i] == int(rec["seg"][:, :, z].any())
    assert label[meta["item_case_index"].index(2) :][:14].sum() == 0  # healthy case 2
    assert meta["cases"][0]["affine"] == rec["affine"].tolist()
    assert meta["params"]["image_size"] == 16 and meta["dataset"] == "brats2021"
    total = sum(sum(c.values()) for c in meta["label_counts"].values())
    assert total == n and json.loads((out / "meta.json").read_text())["n_items"] == n


def test_prepare_splits_disjoint_by_case(brats):
    _, _, meta = brats
    by_case = {}
    for c, s in zip(meta["item_case_index"], _item_split(meta), strict=True):
        by_case.setdefault(c, set()).add(s)
    assert all(len(s) == 1 for s in by_case.values())  # never one patient in two splits
    assert {c["split"] for c in meta["cases"]} == {"train", "val", "test"}


def test_prepare_prompts_and_vocab(ms):
    _, out, meta = ms
    ids = np.load(out / "prompt_ids.npy")
    mask = np.load(out / "prompt_mask.npy")
    assert ids.shape == (6, 80) and mask.dtype == bool
    tok = prepare.Tokenizer.from_json(meta["tokenizer"])
    label = np.load(out / "label.npy")
    for i in range(6):
        assert tok.decode(ids[i]) == sources.MS_PROMPTS[label[i]].lower()
    assert np.load(out / "seg.npy").shape == (6, 8, 8, 8)
    assert np.load(out / "image.npy").shape == (6, 8, 8, 8, 1)


def test_prepare_cxr(tmp_path):
    fx.write_cxr(tmp_path / "cxr", n=6)
    meta = prepare.prepare_dataset(
        "cxr", tmp_path / "cxr", tmp_path / "p", "cxr", image_size=16, progress=False
    )
    assert np.load(tmp_path / "p" / "masks.npy").shape == (6, 16, 16, 3)
    assert np.load(tmp_path / "p" / "image.npy").shape == (6, 16, 16, 1)
    assert "word0" in meta["tokenizer"]["vocab"]


def test_prepare_seg3d_pads_to_largest_box(tmp_path):
    fx.write_brats(tmp_path / "b", "brats-peds", n=3)
    meta = prepare.prepare_dataset(
        "brats-peds", tmp_path / "b", tmp_path / "p", "seg3d", progress=False
    )
    image = np.load(tmp_path / "p" / "image.npy")
    assert image.shape == (3, 26, 26, 14, 4) and meta["et_label"] == 3
    assert meta["cases"][0]["bbox"] == [[3, 29], [3, 29], [3, 17]]


def test_prepare_partial_masks_dropped_and_reported(tmp_path):
    ids = fx.write_ms(tmp_path / "ms", n=3)
    (tmp_path / "ms" / ids[1] / "anat" / f"{ids[1]}_lesionmask.nii.gz").unlink()
    meta = prepare.prepare_dataset(
        "ms", tmp_path / "ms", tmp_path / "p", "volumes", volume_size=8, progress=False
    )
    assert "seg" not in meta["fields"] and "2 of 3" in meta["dropped_fields"]["seg"]


def test_prepare_reuse_and_overwrite(tmp_path):
    fx.write_brats(tmp_path / "b", n=3)
    kw = dict(image_size=8, progress=False, log=lambda s: None)
    prepare.prepare_dataset("brats2021", tmp_path / "b", tmp_path / "p", "slices2d", **kw)
    stamp = os.stat(tmp_path / "p" / "image.npy").st_mtime_ns
    prepare.prepare_dataset("brats2021", tmp_path / "b", tmp_path / "p", "slices2d", **kw)
    assert os.stat(tmp_path / "p" / "image.npy").st_mtime_ns == stamp  # reused
    kw["image_size"] = 12
    with pytest.raises(DataError, match=r"differs in: image_size\); pass --overwrite"):
        prepare.prepare_dataset("brats2021", tmp_path / "b", tmp_path / "p", "slices2d", **kw)
    meta = prepare.prepare_dataset(
        "brats2021", tmp_path / "b", tmp_path / "p", "slices2d", overwrite=True, **kw
    )
    assert meta["params"]["image_size"] == 12
    assert np.load(tmp_path / "p" / "image.npy").shape[1:] == (12, 12, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "p"]  # no tmp dirs left
    (tmp_path / "b" / "BraTS2021_00001").rename(tmp_path / "b" / "BraTS2021_00007")
    with pytest.raises(DataError, match="differs in: the cases under root"):
        prepare.prepare_dataset("brats2021", tmp_path / "b", tmp_path / "p", "slices2d", **kw)
    (tmp_path / "b" / "BraTS2021_00007").rename(tmp_path / "b" / "BraTS2021_00001")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a prepared dataset"):
        prepare.prepare_dataset(
            "brats2021", tmp_path / "b", tmp_path / "mine", "slices2d", overwrite=True, **kw
        )
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    prepare.prepare_dataset("brats2021", tmp_path / "b", tmp_path / "empty", "slices2d", **kw)
    assert (tmp_path / "empty" / "meta.json").is_file()


def test_prepare_rejects_wrong_task(tmp_path):
    fx.write_ms(tmp_path / "ms", n=2)
    with pytest.raises(DataError, match="does not apply"):
        prepare.prepare_dataset("ms", tmp_path / "ms", tmp_path / "p", "slices2d")
    assert not (tmp_path / "p").exists()


def test_cli_bad_input_one_line_exit_2(tmp_path, capsys):
    rc = prepare.main(
        [
            "--dataset",
            "brats",
            "--root",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "o"),
            "--task",
            "slices2d",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("jaxcf.prepare: ") and "none" in err[0]


def test_cli_module_entry_point_with_workers(tmp_path):
    """`python -m jaxcf.data.prepare` with 2 worker processes gives the in-process shards;
    bad input -> exit 2 and one line on stderr."""
    fx.write_ms(tmp_path / "ms", n=4)
    args = ["--dataset", "ms", "--root", str(tmp_path / "ms"), "--task", "volumes"]
    args += ["--volume-size", "8", "--no-progress"]
    cmd = [sys.executable, "-m", "jaxcf.data.prepare", *args, "--out", str(tmp_path / "p")]
    ok = subprocess.run([*cmd, "--workers", "2"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert prepare.main([*args, "--out", str(tmp_path / "q")]) == 0
    for f in ("image", "label", "seg", "prompt_ids"):
        np.testing.assert_array_equal(
            np.load(tmp_path / "p" / f"{f}.npy"), np.load(tmp_path / "q" / f"{f}.npy")
        )
    (tmp_path / "ms" / "participants.csv").write_text("subject,category\n")
    bad = subprocess.run([*cmd, "--overwrite"], capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "lesion_volume_ml" in bad.stderr and "participants.csv" in bad.stderr


# ---------------------------------------------------------------------------- pipeline
def test_train_batches_fixed_shape_and_correct(brats):
    _, out, meta = brats
    cfg = _cfg(out, image_size=16, batch_size=8)
    spec = pipeline.batch_spec(cfg, "train")
    image = np.load(out / "image.npy")
    label = np.load(out / "label.npy")
    train = set(np.flatnonzero(_item_split(meta) == "train"))
    for b in _batches(pipeline.make_dataset(cfg, "train", seed=0), 12):
        assert {k: (v.shape, v.dtype) for k, v in b.items()} == spec
        assert set(b["index"].tolist()) <= train and b["valid"].all()
        np.testing.assert_array_equal(b["image"], image[b["index"]])
        np.testing.assert_array_equal(b["label"], label[b["index"]])


def test_train_shuffles_and_reshuffles_each_epoch(ms):
    _, out, meta = ms
    cfg = _cfg(out, volume_size=8, batch_size=1)
    n = int((_item_split(meta) == "train").sum())
    idx = [int(b["index"][0]) for b in _batches(pipeline.make_dataset(cfg, "train", seed=0), 4 * n)]
    epochs = [idx[i * n : (i + 1) * n] for i in range(4)]
    assert all(sorted(e) == sorted(epochs[0]) for e in epochs)  # every epoch covers the split
    assert len({tuple(e) for e in epochs}) > 1  # and comes in a new order
    other = [int(b["index"][0]) for b in _batches(pipeline.make_dataset(cfg, "train", seed=1), n)]
    assert _batches(pipeline.make_dataset(cfg, "train", seed=0), 1)[0]["index"][0] == idx[0]
    assert sorted(other) == sorted(epochs[0])


def test_prompts_in_batches(ms):
    _, out, meta = ms
    cfg = _cfg(out, volume_size=8, batch_size=2)
    tok = prepare.Tokenizer.from_json(meta["tokenizer"])
    for b in _batches(pipeline.make_dataset(cfg, "train", seed=0), 5):
        assert b["prompt_ids"].shape == (2, 80) and b["prompt_mask"].dtype == bool
        for ids, lab in zip(b["prompt_ids"], b["label"], strict=True):
            assert tok.decode(ids) == sources.MS_PROMPTS[lab].lower()


def test_eval_pass_covers_each_item_once_and_pads(brats):
    _, out, meta = brats
    cfg = _cfg(out, image_size=16, batch_size=8)
    items = np.flatnonzero(_item_split(meta) == "val")
    batches = list(pipeline.make_dataset(cfg, "val", seed=0, train=False))
    assert all(b["image"].shape == (8, 16, 16, 4) for b in batches)
    assert len(batches) == -(-items.size // 8)
    seen = np.concatenate([b["index"][b["valid"]] for b in batches])
    assert seen.tolist() == items.tolist()  # in order, once each
    assert np.all(np.concatenate([b["index"][~b["valid"]] for b in batches]) == -1)
    dropped = list(pipeline.make_dataset(cfg, "val", seed=0, train=False, drop_remainder=True))
    assert len(dropped) == items.size // 8 and all(b["valid"].all() for b in dropped)


def test_host_shards_disjoint_and_covering(brats):
    _, out, meta = brats
    cfg = _cfg(out, image_size=16, batch_size=8)
    items = np.flatnonzero(_item_split(meta) == "train")
    seen, lengths = [], []
    for h in range(2):
        batches = list(
            pipeline.make_dataset(cfg, "train", seed=0, shard_index=h, shard_count=2, train=False)
        )
        assert all(b["image"].shape[0] == 4 for b in batches)  # per-host batch = 8 / 2
        seen.append({int(i) for b in batches for i in b["index"][b["valid"]]})
        lengths.append(len(batches))
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(items.tolist())
    assert lengths[0] == lengths[1]  # multi-host eval stays in lockstep
    for h in range(2):  # the training streams use the same host shards
        assert _indices(cfg, 20, shard_index=h, shard_count=2) == seen[h]


def test_balanced_sampling(adni):
    _, out, _ = adni
    cfg = _cfg(out, volume_size=8, batch_size=6, splits=(1.0, 0.0, 0.0))

    def frequencies():
        ds = pipeline.make_dataset(cfg, "train", seed=0)
        labels = np.concatenate([b["label"] for b in _batches(ds, 40)])
        return np.bincount(labels, minlength=3) / labels.size

    np.testing.assert_allclose(frequencies(), [6 / 11, 3 / 11, 2 / 11], atol=0.03)  # as stored
    cfg.balanced = True
    np.testing.assert_allclose(frequencies(), 1 / 3, atol=0.01)  # each class equally likely
    cfg.batch_size = 4
    hosts = [_indices(cfg, 30, shard_index=h, shard_count=2) for h in range(2)]
    assert not hosts[0] & hosts[1] and hosts[0] | hosts[1] == set(range(11))


@pytest.mark.parametrize("balanced", [False, True])
def test_iterator_state_json_round_trip(tmp_path, balanced):
    fx.write_brats(tmp_path / "b", "brats2023", n=4)
    prepare.prepare_dataset(
        "brats2023", tmp_path / "b", tmp_path / "p", "seg3d", splits=(1.0, 0.0, 0.0), progress=False
    )
    cfg = _cfg(
        tmp_path / "p",
        task="seg3d",
        dataset="brats2023",
        augment=True,
        crop_size=8,
        batch_size=2,
        balanced=balanced,
        splits=(1.0, 0.0, 0.0),
    )
    assert pipeline.batch_spec(cfg, "train")["image"] == ((2, 8, 8, 8, 4), np.float32)
    it = iter(pipeline.make_dataset(cfg, "train", seed=3))
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(6)]
    it2 = iter(pipeline.make_dataset(cfg, "train", seed=3))
    it2.set_state(state)
    for a in expected:
        b = next(it2)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(expected[0]["image"], expected[1]["image"])  # augmentation varies


def test_config_mismatch_and_bad_batch(brats):
    _, out, _ = brats
    with pytest.raises(DataError, match="image_size: config 64, prepared 16"):
        pipeline.make_dataset(_cfg(out), "train", seed=0)
    with pytest.raises(DataError, match="not divisible"):
        pipeline.make_dataset(
            _cfg(out, image_size=16, batch_size=6), "train", seed=0, shard_count=4
        )
    with pytest.raises(DataError, match="unknown split"):
        pipeline.make_dataset(_cfg(out, image_size=16), "dev", seed=0)
    with pytest.raises(DataError, match="not a prepared dataset"):
        pipeline.make_dataset(_cfg(out.parent / "nothing", image_size=16), "train", seed=0)


def test_multiprocessing_workers_match_in_process(ms, tmp_path):
    """num_workers > 0 spawns Grain workers; a guarded script gives the in-process batches."""
    _, out, _ = ms
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(f"""
        import json, pathlib, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_pipeline import _cfg
        from jaxcf.data import pipeline

        if __name__ == "__main__":
            cfg = _cfg(pathlib.Path({str(out)!r}), volume_size=8, batch_size=2)
            ref = iter(pipeline.make_dataset(cfg, "train", seed=0))
            ref = [next(ref)["index"].tolist() for _ in range(4)]
            cfg.num_workers = 1
            it = iter(pipeline.make_dataset(cfg, "train", seed=0))
            got = [next(it)["index"].tolist() for _ in range(2)]
            state = json.dumps(it.get_state())
            it.close()
            it = iter(pipeline.make_dataset(cfg, "train", seed=0))
            it.set_state(json.loads(state))
            got += [next(it)["index"].tolist() for _ in range(2)]
            it.close()
            print(json.dumps([ref, got]))
    """)
    )
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    ref, got = json.loads(run.stdout.strip().splitlines()[-1])
    assert ref == got
