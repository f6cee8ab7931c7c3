"""Numpy data transforms (jaxcf.data.transforms) and the prompt tokenizer (jaxcf.data.text)."""

import json

import grain
import numpy as np
import pytest

from jaxcf.data import transforms as T
from jaxcf.data.text import Tokenizer, build_vocab, words


def _volume(shape=(24, 24, 10), channels=2, seed=0):
    rng = np.random.default_rng(seed)
    vol = np.zeros((*shape, channels), np.float32)
    box = (*(slice(n // 6, n - n // 6) for n in shape[:2]), slice(2, shape[2] - 2))
    vol[box] = rng.uniform(1, 100, (*vol[box].shape[:3], channels))
    return vol


# ---------------------------------------------------------------------------- Diff-SCM
def test_diffscm_normalize_percentile_and_background():
    vol = _volume()
    out = T.diffscm_normalize(vol)
    assert out.dtype == np.float32 and out.min() >= -1 and out.max() <= 1
    assert np.all(out[vol[..., 0] == 0] == -1.0)  # background -> -1
    for c in range(2):
        fg = vol[..., c][vol[..., c] != 0]
        p99 = np.percentile(fg, 99)
        # the 99th percentile maps to +1, half of it to 0, brighter voxels clip to +1
        x = vol[..., c]
        np.testing.assert_allclose(out[..., c][x != 0], np.clip(2 * x[x != 0] / p99 - 1, -1, 1))
        assert np.isclose(np.mean(out[..., c][x != 0] >= 1.0 - 1e-6), 0.01, atol=0.005)


def test_diffscm_normalize_empty_channel():
    vol = _volume()
    vol[..., 1] = 0
    assert np.all(T.diffscm_normalize(vol)[..., 1] == -1.0)


def test_diffscm_slices_filtering_labels_and_size():
    vol = _volume(shape=(24, 20, 10), channels=4)
    seg = np.zeros(vol.shape[:3], np.uint8)
    seg[10:12, 10:12, 4] = 4  # tumour only in slice 4
    recs = T.diffscm_slices({"image": vol, "seg": seg}, image_size=16, min_brain_fraction=0.05)
    # brain (16 x 14 of 24 x 20 pixels = 0.47) only in slices 2..7
    assert [r["slice_index"] for r in recs] == [2, 3, 4, 5, 6, 7]
    assert [int(r["label"]) for r in recs] == [0, 0, 1, 0, 0, 0]
    r = recs[2]
    assert r["image"].shape == (16, 16, 4) and r["image"].dtype == np.float32
    assert r["seg"].shape == (16, 16) and set(np.unique(r["seg"])) <= {0, 4}
    assert r["image"][0, 0, 0] == -1.0  # padding and background stay -1
    assert len(T.diffscm_slices({"image": vol, "seg": seg}, 16, min_brain_fraction=0.6)) == 0
    assert len(T.diffscm_slices({"image": vol, "seg": seg}, 16, min_brain_fraction=0.0)) == 10


def test_diffscm_label_from_full_resolution():
    vol = _volume(shape=(32, 32, 10), channels=1)
    seg = np.zeros(vol.shape[:3], np.uint8)
    seg[8, 8, 4] = 1  # one voxel that nearest resizing to 8 x 8 drops; the label must not
    rec = T.diffscm_slices({"image": vol, "seg": seg}, 8, 0.0)[4]
    assert rec["slice_index"] == 4 and rec["label"] == 1 and not rec["seg"].any()


# ---------------------------------------------------------------------------- WDM
def test_cube_geometry():
    assert T.cube_geometry((240, 240, 155), 128) == (256, 2)  # WDM: pad 256, pool 2
    assert T.cube_geometry((240, 240, 155), 64) == (256, 4)
    assert T.cube_geometry((32, 32, 20), 16) == (32, 2)
    assert T.cube_geometry((30, 30, 20), 16) == (32, 2)
    assert T.cube_geometry((20, 20, 20), 16) == (20, None)  # generic resize path


def test_wdm_volume_pool_path_matches_manual():
    rng = np.random.default_rng(0)
    vol = rng.uniform(0, 10, (16, 16, 12, 2)).astype(np.float32)
    vol[0, 0, 0, 0] = 1e6  # a hot voxel must not squash the range (0.1 / 99.9 clipping)
    out = T.wdm_volume(vol, volume_size=8, value_range=(0.0, 1.0))
    assert out.shape == (8, 8, 8, 2) and out.dtype == np.float32
    ref = np.empty_like(vol)
    for c in range(2):
        lo, hi = np.percentile(vol[..., c], [0.1, 99.9])
        x = np.clip(vol[..., c], lo, hi)
        ref[..., c] = (x - x.min()) / (x.max() - x.min())
    ref = np.pad(ref, ((0, 0), (0, 0), (2, 2), (0, 0)))  # 12 -> 16, centred
    ref = ref.reshape(8, 2, 8, 2, 8, 2, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    assert out[..., 0].mean() > 0.2  # without clipping the hot voxel would leave ~0


def test_wdm_volume_value_range_and_generic_path():
    vol = _volume(shape=(20, 18, 14), channels=1)
    out = T.wdm_volume(vol, volume_size=16, value_range=(-1.0, 1.0))
    assert out.shape == (16, 16, 16, 1)
    assert out.min() == pytest.approx(-1.0) and out.max() <= 1.0 and out.max() > 0.5
    seg = np.zeros(vol.shape[:3], np.uint8)
    seg[8:12, 8:12, 5:9] = 2
    s = T.wdm_seg(seg, 16)
    assert s.shape == (16, 16, 16) and set(np.unique(s)) == {0, 2}


# ---------------------------------------------------------------------------- paper 002
def test_foreground_crop_and_zscore():
    vol = _volume(channels=2)
    seg = np.zeros(vol.shape[:3], np.uint8)
    rec = T.seg3d_preprocess({"image": vol, "seg": seg})
    assert rec["image"].shape == (16, 16, 6, 2) and rec["seg"].shape == (16, 16, 6)
    for c in range(2):
        x = rec["image"][..., c]
        assert abs(x.mean()) < 1e-5 and abs(x.std() - 1) < 1e-4  # all voxels are foreground
    vol[5, 5, 3, :] = 0
    z = T.zscore_nonzero(vol)
    assert np.all(z[vol == 0] == 0)


@pytest.mark.parametrize("p", [0.2, 0.7])
def test_pos_neg_crops_balanced(p):
    vol = np.ones((48, 48, 48, 1), np.float32)
    seg = np.zeros((48, 48, 48), np.uint8)
    seg[40:42, 40:42, 40:42] = 1  # a tiny tumour in a corner
    crop = T.RandomPosNegCrop(crop_size=12, pos_fraction=p)
    rng = np.random.default_rng(0)
    hits = []
    for _ in range(600):
        out = crop.random_map({"image": vol, "seg": seg}, rng)
        assert out["image"].shape == (12, 12, 12, 1) and out["seg"].shape == (12, 12, 12)
        hits.append(out["seg"].any())
    # negative crops reach the tumour only by chance (~2%), positive crops always contain it
    assert abs(np.mean(hits) - p) < 0.07


def test_crop_pads_small_volumes():
    out = T.RandomPosNegCrop(crop_size=8).random_map(
        {"image": np.ones((4, 6, 5, 2), np.float32), "seg": np.zeros((4, 6, 5), np.uint8)},
        np.random.default_rng(0),
    )
    assert out["image"].shape == (8, 8, 8, 2)


def _aligned(shape):
    rng = np.random.default_rng(1)
    seg = rng.integers(0, 4, shape).astype(np.uint8)
    img = np.stack([seg.astype(np.float32), rng.normal(size=shape).astype(np.float32)], -1)
    return {"image": img, "seg": seg}


@pytest.mark.parametrize("shape", [(8, 8, 6), (8, 6, 5)])
def test_flips_and_rot90_keep_image_and_seg_aligned(shape):
    rec = _aligned(shape)
    rng = np.random.default_rng(0)
    changed = 0
    for aug in (T.RandomFlip((0, 1, 2)), T.RandomRot90((0, 1))):
        for _ in range(8):
            out = aug.random_map(rec, rng)
            np.testing.assert_array_equal(out["image"][..., 0], out["seg"])
            assert out["image"].shape == rec["image"].shape  # non-square planes: k in {0, 2}
            changed += not np.array_equal(out["seg"], rec["seg"])
    assert changed > 4
    np.testing.assert_array_equal(rec["image"][..., 0], rec["seg"])  # input not modified


def test_intensity_jitter_bounds():
    img = np.ones((4, 4, 4, 3), np.float32)
    out = T.RandomIntensity(0.1, 0.1).random_map({"image": img}, np.random.default_rng(0))
    assert out["image"].dtype == np.float32
    per_channel = out["image"][0, 0, 0]
    assert np.all(np.abs(per_channel - 1) <= 0.2 + 1e-6) and np.ptp(per_channel) > 0
    assert np.all(out["image"] == per_channel)  # one scale/shift per channel


def test_random_maps_in_grain_are_seeded():
    rec = _aligned((8, 8, 8))
    ds = grain.MapDataset.source([rec] * 4)
    for aug in T.seg3d_augmentations(crop_size=6, pos_fraction=0.5):
        ds = ds.random_map(aug, seed=3)
    a, b = list(ds), list(ds)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        assert x["image"].shape == (6, 6, 6, 2)
    assert not all(np.array_equal(a[0]["seg"], x["seg"]) for x in a[1:])


# ---------------------------------------------------------------------------- CXR
def test_cxr_preprocess():
    img = np.zeros((40, 30, 1), np.float32)
    img[10:30, 5:25] = 255.0
    masks = np.zeros((40, 30, 3), np.uint8)
    masks[10:30, 5:15, 0] = 1
    out = T.CXRPreprocess(20).map({"image": img, "masks": masks, "label": 1})
    assert out["image"].shape == (20, 20, 1) and out["masks"].shape == (20, 20, 3)
    assert out["image"].min() == -1.0 and out["image"].max() == pytest.approx(1.0)
    assert set(np.unique(out["masks"])) == {0, 1} and out["label"] == 1
    assert np.all(out["image"][:, :2] == -1.0)  # 30 -> 40 wide: black padding at the sides


def test_map_wrappers():
    vol = _volume(channels=2)
    np.testing.assert_array_equal(
        T.DiffSCMNormalize().map({"image": vol})["image"], T.diffscm_normalize(vol)
    )
    out = T.WDMPreprocess(8).map({"image": vol, "seg": np.zeros(vol.shape[:3], np.uint8)})
    assert out["image"].shape == (8, 8, 8, 2) and out["seg"].shape == (8, 8, 8)


# ---------------------------------------------------------------------------- tokenizer
PROMPTS = ["Subject has minimal lesion load", "Subject has high lesion load"]


def test_vocab_specials_and_order():
    vocab = build_vocab(PROMPTS)
    assert vocab[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    assert set(vocab[4:]) == {"subject", "has", "minimal", "high", "lesion", "load"}
    assert build_vocab(PROMPTS[::-1]) == vocab  # independent of prompt order
    assert words("Alzheimer's disease, 5-cm") == ["alzheimer", "s", "disease", "5", "cm"]


def test_tokenizer_round_trip_padding_and_mask(tmp_path):
    tok = Tokenizer(build_vocab(PROMPTS), max_len=10)
    ids, mask = tok.encode(PROMPTS[0])
    assert ids.shape == (10,) and ids.dtype == np.int32 and mask.dtype == bool
    assert ids[0] == 2 and ids[6] == 3 and np.all(ids[7:] == 0)
    assert mask.tolist() == [True] * 7 + [False] * 3
    assert tok.decode(ids) == PROMPTS[0].lower()
    assert tok.decode(tok.encode("Subject has MODERATE load")[0]) == "subject has <unk> load"
    ids, mask = Tokenizer(tok.vocab, 4).encode(PROMPTS[0])  # truncation keeps <eos>
    assert ids.tolist()[0] == 2 and ids.tolist()[-1] == 3 and mask.all()
    tok.save(tmp_path / "tok.json")
    tok2 = Tokenizer.load(tmp_path / "tok.json")
    assert tok2.vocab == tok.vocab and tok2.max_len == 10
    assert json.loads((tmp_path / "tok.json").read_text())["max_len"] == 10
    ids2, mask2 = tok2.encode_batch(PROMPTS)
    assert ids2.shape == (2, 10) and mask2.sum() == 14


def test_tokenize_prompt_map():
    tok = Tokenizer(build_vocab(PROMPTS), max_len=8)
    out = T.TokenizePrompt(tok).map({"prompt": PROMPTS[1]})
    assert out["prompt_ids"].shape == (8,) and tok.decode(out["prompt_ids"]) == PROMPTS[1].lower()
