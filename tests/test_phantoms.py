"""Phantom datasets: exact on-disk layouts, geometry, labels, contrasts, pathology models,
determinism and the make_phantom CLI (toy sizes, CPU, seconds)."""

import csv
import dataclasses
import functools
import hashlib
import pathlib
import re
import sys

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from jaxcf.data import make_phantom, phantoms
from jaxcf.data.errors import DataError
from jaxcf.data.phantoms import anatomy, brain, calibrate, confounders, cxr, files, lesions
from jaxcf.data.phantoms.grid import make_grid

NEW_SUFFIXES = ("t1n", "t1c", "t2w", "t2f")
BRATS_FILES = {
    "brats2021": ("BraTS2021_{:05d}", "BraTS2021_{:05d}_{}.nii.gz", ("t1", "t1ce", "t2", "flair")),
    "brats2023": ("BraTS-GLI-{:05d}-000", "BraTS-GLI-{:05d}-000-{}.nii.gz", NEW_SUFFIXES),
    "brats-peds": ("BraTS-PED-{:05d}-000", "BraTS-PED-{:05d}-000-{}.nii.gz", NEW_SUFFIXES),
}
ET_LABEL = {"brats2021": 4, "brats2023": 3, "brats-peds": 3}


def read_csv(path: pathlib.Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def tree(root: pathlib.Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under root."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def brats_sets(tmp_path_factory):
    """Each BraTS kind, 6 cases at size 32 (2 tumour-free)."""
    roots = {}
    for kind in BRATS_FILES:
        roots[kind] = tmp_path_factory.mktemp(kind)
        phantoms.generate(kind, roots[kind], cases=6, size=32, seed=3)
    return roots


# ---------------------------------------------------------------------------------- geometry


def test_grid_has_brats_proportions_and_physical_spacing():
    full = make_grid(240)
    assert full.shape == (240, 240, 155)
    np.testing.assert_allclose(full.spacing, (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(
        full.affine, [[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]]
    )
    small = make_grid(64)
    assert small.shape == (64, 64, 41)
    np.testing.assert_allclose(small.spacing, (3.75, 3.75, 155 / 41))
    # Same physical field of view at every size.
    np.testing.assert_allclose(np.multiply(small.shape, small.spacing), (240, 240, 155))
    with pytest.raises(ValueError, match="size must be >= 16"):
        make_grid(8)


# ------------------------------------------------------------------------------------- BraTS


@pytest.mark.parametrize("kind", list(BRATS_FILES))
def test_brats_layout_shapes_affine_and_labels(brats_sets, kind):
    root = brats_sets[kind]
    folder, name, suffixes = BRATS_FILES[kind]
    grid = make_grid(32)
    assert sorted(p.name for p in root.iterdir()) == [folder.format(i) for i in range(6)]
    labels, tumour_free = set(), 0
    for i in range(6):
        case = root / folder.format(i)
        expected = [name.format(i, s) for s in (*suffixes, "seg")]
        assert sorted(p.name for p in case.iterdir()) == sorted(expected)
        images = []
        for suffix in suffixes:
            img = nib.load(case / name.format(i, suffix))
            assert img.shape == grid.shape and img.get_data_dtype() == np.float32
            np.testing.assert_allclose(img.header.get_zooms(), grid.spacing, rtol=1e-6)
            np.testing.assert_allclose(img.affine, grid.affine, atol=1e-5)
            images.append(np.asarray(img.dataobj))
        seg_img = nib.load(case / name.format(i, "seg"))
        assert seg_img.get_data_dtype() == np.uint8
        seg = np.asarray(seg_img.dataobj)
        labels |= set(np.unique(seg).tolist())
        tumour_free += not seg.any()
        # Skull-stripped: exactly 0 outside one shared brain mask, positive inside it.
        brain_mask = images[0] > 0
        for image in images[1:]:
            np.testing.assert_array_equal(image > 0, brain_mask)
        assert 0.08 < brain_mask.mean() < 0.4
        assert not brain_mask[0].any() and not brain_mask[:, :, -1].any()
        assert not (seg > 0)[~brain_mask].any()
        # Scanner-like arbitrary units, not [0, 1].
        assert 100 < np.median(images[0][brain_mask]) < 5000
    assert tumour_free == 2  # round(0.25 * 6)
    assert labels <= {0, 1, 2, ET_LABEL[kind]} and {1, 2} <= labels
    if kind != "brats-peds":  # paediatric tumours enhance less often; checked below
        assert ET_LABEL[kind] in labels


@pytest.mark.parametrize(("fraction", "cases", "free"), [(0.5, 4, 2), (0.0, 3, 0), (1.0, 2, 2)])
def test_tumour_free_fraction_is_exact(tmp_path, fraction, cases, free):
    phantoms.generate(
        "brats2023", tmp_path, cases=cases, size=16, seed=0, tumour_free_fraction=fraction
    )
    segs = [np.asarray(nib.load(p).dataobj) for p in sorted(tmp_path.rglob("*-seg.nii.gz"))]
    assert len(segs) == cases
    assert sum(not s.any() for s in segs) == free


def _means(case, modality, region):
    return float(case.images[modality][region].mean())


def test_modality_contrasts_follow_the_sequences():
    checked = 0
    for index in range(6):
        case = brain.brats_case("brats2021", index, size=48, seed=1)
        t, s = case.tissue, case.seg
        wm, gm = (t == anatomy.WM) & (s == 0), (t == anatomy.GM) & (s == 0)
        csf = np.isin(t, (anatomy.CSF, anatomy.VENTRICLE)) & (s == 0)
        m = functools.partial(_means, case)
        assert m("t1", wm) > m("t1", gm) > m("t1", csf)
        assert m("t2", csf) > m("t2", gm) > m("t2", wm)
        assert m("flair", gm) > m("flair", wm) > m("flair", csf)
        if (s == 2).sum() >= 5:
            assert m("flair", s == 2) > 1.5 * m("flair", wm)
            assert m("t2", s == 2) > 1.5 * m("t2", wm)
        if (s == 4).sum() >= 5:
            # Enhancing rim: bright on T1ce, not on T1 (relative to each sequence's WM).
            ratio_t1ce = m("t1ce", s == 4) / m("t1ce", wm)
            assert ratio_t1ce > 1.4 * m("t1", s == 4) / m("t1", wm)
            checked += 1
        if (s == 1).sum() >= 5:
            assert m("t2", s == 1) > 1.5 * m("t2", wm)
    assert checked >= 2


def test_healthy_rerender_shares_anatomy_and_noise():
    sick = brain.brats_case("brats2021", 2, size=32, seed=0, tumour=True)
    healthy = brain.brats_case("brats2021", 2, size=32, seed=0, tumour=False)
    assert sick.seg.any() and not healthy.seg.any()
    wt = ndimage.binary_dilation(sick.seg > 0, iterations=4)
    for modality in brain.CANONICAL_MODALITIES:
        far = ~wt & (healthy.tissue > 0)
        same = np.isclose(sick.images[modality][far], healthy.images[modality][far], rtol=0.02)
        assert same.mean() > 0.9
    # Mass effect: near the tumour the healthy tissue was pushed, so labels moved.
    ring = ndimage.binary_dilation(sick.seg > 0, iterations=2) & (sick.seg == 0)
    assert (sick.tissue[ring] != healthy.tissue[ring]).any()


def test_tumour_sizes_vary_and_leave_healthy_slices():
    fractions = []
    for index in range(10):
        case = brain.brats_case("brats2021", index, size=32, seed=5)
        in_brain = (case.tissue > 0).any(axis=(0, 1))
        fractions.append((case.seg > 0).any(axis=(0, 1))[in_brain].mean())
    # BraTS-sized whole tumours (tens to a few hundred mL) cover ~1/3 to 2/3 of the slices.
    assert min(fractions) < 0.4 and max(fractions) > 0.45 and max(fractions) - min(fractions) > 0.1
    assert np.mean(fractions) < 0.65


def test_paediatric_tumours_sometimes_enhance_and_use_label_3():
    segs = [brain.brats_case("brats-peds", i, size=32, seed=0).seg for i in range(8)]
    assert sum(bool((s == 3).any()) for s in segs) >= 2
    assert all(set(np.unique(s).tolist()) <= {0, 1, 2, 3} for s in segs)


def test_paediatric_brains_are_smaller():
    adult = [brain.brats_case("brats2023", i, size=32, seed=0, tumour=False) for i in range(3)]
    child = [brain.brats_case("brats-peds", i, size=32, seed=0, tumour=False) for i in range(3)]
    volume = lambda cases: np.mean([(c.tissue > 0).sum() for c in cases])
    assert volume(child) < 0.92 * volume(adult)


# ---------------------------------------------------------------------------------------- MS


def test_ms_layout_volumes_and_categories(tmp_path):
    phantoms.generate("ms", tmp_path, cases=6, size=32, seed=0)
    header, rows = read_csv(tmp_path / "participants.csv")
    assert header == ["subject", "lesion_volume_ml", "category"]
    assert [r["subject"] for r in rows] == [f"sub-{i:03d}" for i in range(1, 7)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["participants.csv"] + [r["subject"] for r in rows]
    )
    for row in rows:
        anat = tmp_path / row["subject"] / "anat"
        assert sorted(p.name for p in anat.iterdir()) == sorted(
            [f"{row['subject']}_FLAIR.nii.gz", f"{row['subject']}_lesionmask.nii.gz"]
        )
        flair = nib.load(anat / f"{row['subject']}_FLAIR.nii.gz")
        mask_img = nib.load(anat / f"{row['subject']}_lesionmask.nii.gz")
        assert flair.get_data_dtype() == np.float32 and mask_img.get_data_dtype() == np.uint8
        mask = np.asarray(mask_img.dataobj)
        assert set(np.unique(mask).tolist()) <= {0, 1}
        voxel_ml = float(np.prod(mask_img.header.get_zooms())) / 1000.0
        assert re.fullmatch(r"\d+\.\d{3}", row["lesion_volume_ml"])
        volume = float(row["lesion_volume_ml"])
        assert abs(volume - mask.sum() * voxel_ml) < 1e-3
        assert volume > 0 and row["category"] == lesions.ms_category(volume)
        image = np.asarray(flair.dataobj)
        assert image[mask > 0].mean() > 1.3 * np.median(image[image > 0])
    assert {r["category"] for r in rows} == {"minimal", "moderate", "high"}


def test_ms_lesions_are_mostly_periventricular_white_matter():
    case = brain.ms_case(2, size=64, seed=0, category="high")
    assert case.info["category"] == "high"
    lesion = case.seg > 0
    assert np.isin(case.tissue[lesion], (anatomy.WM, anatomy.DEEP_GM, anatomy.GM)).all()
    vent = np.isin(case.tissue, (anatomy.VENTRICLE, anatomy.CHOROID))
    distance = ndimage.distance_transform_edt(~vent, sampling=case.grid.spacing)
    assert (distance[lesion] < 12.0).mean() > 0.25


# -------------------------------------------------------------------------------------- ADNI


def test_adni_layout_and_atrophy_ordering(tmp_path):
    phantoms.generate("adni", tmp_path, cases=9, size=40, seed=0)
    header, rows = read_csv(tmp_path / "diagnosis.csv")
    assert header == ["subject", "diagnosis", "age", "sex"]
    assert [r["diagnosis"] for r in rows] == ["CN", "MCI", "AD"] * 3
    assert len({r["subject"] for r in rows}) == 9
    grid = make_grid(40)
    ventricles = {"CN": [], "MCI": [], "AD": []}
    for row in rows:
        ptid = row["subject"]
        assert re.fullmatch(r"\d{3}_S_\d{4}", ptid)
        assert 60 <= int(row["age"]) <= 90 and row["sex"] in ("M", "F")
        assert [p.name for p in (tmp_path / ptid).iterdir()] == [f"{ptid}_T1w.nii.gz"]
        img = nib.load(tmp_path / ptid / f"{ptid}_T1w.nii.gz")
        assert img.shape == grid.shape and img.get_data_dtype() == np.float32
        t1 = np.asarray(img.dataobj)
        # Ventricles as seen on the image: dark (CSF) voxels deep inside the brain.
        depth = ndimage.distance_transform_edt(t1 > 0, sampling=grid.spacing)
        dark = t1 < 0.45 * np.median(t1[t1 > 0])
        ventricles[row["diagnosis"]].append(float((dark & (depth > 20)).sum()))
    mean = {k: np.mean(v) for k, v in ventricles.items()}
    assert mean["CN"] < mean["MCI"] < mean["AD"]


def test_adni_atrophy_thins_cortex_and_shrinks_hippocampi():
    counts = {}
    for diagnosis in ("CN", "AD"):
        cases = [brain.adni_case(i, size=48, seed=2, diagnosis=diagnosis) for i in range(3)]
        counts[diagnosis] = {
            label: np.mean([(c.tissue == label).sum() for c in cases])
            for label in (anatomy.GM, anatomy.HIPPOCAMPUS, anatomy.VENTRICLE)
        }
    assert counts["AD"][anatomy.GM] < 0.9 * counts["CN"][anatomy.GM]
    assert counts["AD"][anatomy.HIPPOCAMPUS] < counts["CN"][anatomy.HIPPOCAMPUS]
    assert counts["AD"][anatomy.VENTRICLE] > 1.5 * counts["CN"][anatomy.VENTRICLE]
    ages = {d: [lesions.sample_adni_subject(np.random.default_rng(i), d)[0] for i in range(200)]
            for d in ("CN", "AD")}  # fmt: skip
    assert np.mean(ages["AD"]) > np.mean(ages["CN"])


# --------------------------------------------------------------------------------------- CXR


def test_cxr_layout_masks_and_reports(tmp_path):
    phantoms.generate("cxr", tmp_path, cases=8, size=64, seed=0)
    header, meta = read_csv(tmp_path / "mimic-cxr-2.0.0-metadata.csv")
    assert header == ["dicom_id", "subject_id", "study_id", "ViewPosition", "Rows", "Columns"]
    header, findings = read_csv(tmp_path / "jaxcf-cxr-findings.csv")
    assert header == ["dicom_id", "opacity", "side", "zone", "extent"]
    assert [f["dicom_id"] for f in findings] == [m["dicom_id"] for m in meta]
    assert sum(f["opacity"] == "0" for f in findings) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["files", "reports", "masks", "mimic-cxr-2.0.0-metadata.csv", "jaxcf-cxr-findings.csv"]
    )
    assert len(list((tmp_path / "masks").iterdir())) == 3 * 8
    for m, f in zip(meta, findings, strict=True):
        subject, study, dicom = m["subject_id"], m["study_id"], m["dicom_id"]
        assert re.fullmatch(r"1\d{7}", subject) and re.fullmatch(r"\d{8}", study)
        assert re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}", dicom)
        assert (m["ViewPosition"], m["Rows"], m["Columns"]) == ("PA", "64", "64")
        folder = f"p{subject[:2]}/p{subject}/s{study}"
        with Image.open(tmp_path / "files" / folder / f"{dicom}.jpg") as jpg:
            assert jpg.format == "JPEG" and jpg.mode == "L" and jpg.size == (64, 64)
        masks = {}
        for name in ("left_lung", "right_lung", "heart"):
            with Image.open(tmp_path / "masks" / f"{dicom}_{name}.png") as png:
                assert png.mode == "L" and png.size == (64, 64)
                masks[name] = np.asarray(png)
            assert set(np.unique(masks[name]).tolist()) == {0, 255}
            assert not masks[name][0].any() and not masks[name][-1].any()
        column = lambda mask: np.nonzero(mask)[1].mean()
        # Patient left is image right: the left lung and the heart sit right of centre.
        assert column(masks["left_lung"]) > 32 > column(masks["right_lung"])
        assert column(masks["heart"]) > 32
        assert not (masks["left_lung"] & masks["right_lung"]).any()
        text = (tmp_path / "reports" / "files" / f"{folder}.txt").read_text()
        assert "FINDINGS:" in text and "IMPRESSION:" in text
        if f["opacity"] == "1":
            assert f["side"] in text and f["zone"] in text and f["extent"] in text
        else:
            assert (f["side"], f["zone"], f["extent"]) == ("none", "none", "none")
            assert "opacit" not in text.lower()


def test_cxr_opacity_is_brighter_than_the_same_subject_without_it():
    for seed in range(4):
        rng = np.random.default_rng(seed)
        params = cxr.sample_chest(rng)
        finding = cxr.sample_finding(rng, params)
        sick = cxr.render(params, 128, finding, np.random.default_rng(9))
        normal = cxr.render(params, 128, None, np.random.default_rng(9))
        region = sick.opacity > 0.5 * sick.opacity.max()
        assert region.sum() > 10
        gain = sick.image[region].astype(float).mean() - normal.image[region].astype(float).mean()
        assert gain > 10
        np.testing.assert_array_equal(sick.masks, normal.masks)
        lungs = sick.masks[..., 0] | sick.masks[..., 1]
        assert (lungs[region]).mean() > 0.8
        # The image is a radiograph: lungs dark, mediastinum / below-diaphragm bright.
        assert normal.image[lungs].mean() + 40 < normal.image[sick.masks[..., 2]].mean()


# ------------------------------------------------------------------------------ determinism


def test_same_seed_same_bytes_and_different_seed_differs(tmp_path):
    for kind in ("brats2021", "cxr", "ms"):
        a, b, c = (tmp_path / f"{kind}-{n}" for n in "abc")
        phantoms.generate(kind, a, cases=2, size=16 if kind != "cxr" else 48, seed=7)
        phantoms.generate(kind, b, cases=2, size=16 if kind != "cxr" else 48, seed=7)
        phantoms.generate(kind, c, cases=2, size=16 if kind != "cxr" else 48, seed=8)
        assert tree(a) == tree(b)
        images = [p for p in tree(a) if p.endswith((".jpg", "_flair.nii.gz", "_FLAIR.nii.gz"))]
        assert images and all(tree(a)[p] != tree(c).get(p) for p in images)


def test_cases_do_not_depend_on_the_number_of_cases():
    one = brain.brats_case("brats2021", 1, size=16, seed=4)
    again = brain.brats_case("brats2021", 1, size=16, seed=4)
    np.testing.assert_array_equal(one.images["t1"], again.images["t1"])
    assert brain.adni_ptids(5, 0)[:3] == brain.adni_ptids(3, 0)


# -------------------------------------------------------------------------- files and errors


def test_atomic_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    target = tmp_path / "a" / "x.nii.gz"
    files.write_nifti(target, np.ones((2, 2, 2), np.float32), np.eye(4))
    assert [p.name for p in target.parent.iterdir()] == ["x.nii.gz"]

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        files.write_text(tmp_path / "a" / "y.txt", "hello")
    assert [p.name for p in target.parent.iterdir()] == ["x.nii.gz"]


def test_generate_rejects_bad_arguments(tmp_path):
    with pytest.raises(DataError, match="known kinds: brats2021, brats2023"):
        phantoms.generate("brats2019", tmp_path, cases=1, size=16)
    with pytest.raises(ValueError, match="cases must be in"):
        phantoms.generate("ms", tmp_path, cases=1000, size=16)
    with pytest.raises(ValueError, match="tumour_free_fraction"):
        phantoms.generate("brats2021", tmp_path, cases=1, size=16, tumour_free_fraction=1.5)
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(DataError, match=re.escape(str(tmp_path))):
        phantoms.generate("brats2021", tmp_path, cases=1, size=16)


def test_mni152_needs_nilearn(monkeypatch):
    from jaxcf.data.phantoms import mni152

    mni152._atlas.cache_clear()
    monkeypatch.setitem(sys.modules, "nilearn", None)
    with pytest.raises(DataError, match=r"needs nilearn .*pip install nilearn"):
        brain.brats_case("brats2021", 0, size=16, anatomy="mni152")
    mni152._atlas.cache_clear()


def test_mni152_anatomy_renders_real_tissue():
    case = brain.brats_case("brats2021", 0, size=32, seed=0, anatomy="mni152")
    t = case.tissue
    for label in (anatomy.CSF, anatomy.GM, anatomy.WM, anatomy.VENTRICLE):
        assert (t == label).sum() > 20
    t1 = case.images["t1"]
    assert t1[t == anatomy.WM].mean() > t1[t == anatomy.GM].mean() > t1[t == anatomy.CSF].mean()
    assert case.seg.any() and not case.seg[t == 0].any()
    assert (t == anatomy.CHOROID).any()  # glomus in the atria, not in the templates


def test_mni152_subjects_are_deformed_not_only_scaled():
    source = anatomy.get_anatomy("mni152", 3.0)
    a, b = (source.sample(np.random.default_rng(i)) for i in (0, 1))
    assert np.abs(a.amps).max() > 0.5 and not np.allclose(a.freqs, b.freqs)
    # The same affine without the waves moves labels: the deformation is real.
    flat = dataclasses.replace(a, amps=np.zeros_like(a.amps))
    grid = make_grid(32)
    x, y, z = np.meshgrid(*grid.axes_mm(), indexing="ij")
    assert (source.labels(x, y, z, a) != source.labels(x, y, z, flat)).mean() > 0.01


def test_flair_confounders_brighten_healthy_white_matter_only_in_the_brain():
    case = brain.brats_case("brats2021", 1, size=48, seed=0, tumour=False)
    grid = case.grid
    fields = [
        confounders.periventricular(np.random.default_rng(0), case.tissue, grid),
        confounders.flow_artefacts(np.random.default_rng(3), case.tissue, grid),
    ]
    for field in fields:
        assert not field[case.tissue == 0].any() and (field >= 0).all()
    caps = fields[0]
    next_to_ventricle = ndimage.binary_dilation(case.tissue == anatomy.VENTRICLE, iterations=1)
    wm = case.tissue == anatomy.WM
    assert caps[next_to_ventricle & wm].mean() > 3 * caps[~next_to_ventricle & wm].mean()
    # Healthy re-renders share the confounders: FLAIR far from the tumour is the same.
    sick = brain.brats_case("brats2021", 1, size=48, seed=0)
    far = ~ndimage.binary_dilation(sick.seg > 0, iterations=4) & (case.tissue > 0)
    same = np.isclose(sick.images["flair"][far], case.images["flair"][far], rtol=0.02)
    assert same.mean() > 0.9


def test_flair_threshold_calibration_on_held_out_mni152_phantoms():
    # Diff-SCM's protocol (every slice, pooled over brain pixels) on 8 held-out 64^3 cases,
    # ~3 s. Paper 001's real BraTS 2021 values are 68.4 / 66.7; a 64-case set of these
    # phantoms gives 70.5 / 64.0 (docs/data.md), but 8 cases spread by ~+-13 points from seed
    # to seed (16-case sets: AUPRC 66-90), so this checks the band [55, 95] that separates
    # the calibrated phantoms from the uncalibrated ones (procedural, no confounders: ~36 / 40)
    # and from trivially easy ones (> 95), not the +-8 of the full calibration.
    result = calibrate.calibrate(cases=8, size=64)
    assert result.slices > 200 and result.tumour_pixels > 0.02 * result.brain_pixels
    assert 55.0 <= result.auprc <= 95.0
    assert 55.0 <= result.ideal_dice <= 92.0


# ---------------------------------------------------------------------------------------- CLI


def test_cli_writes_a_dataset(tmp_path, capsys):
    out = tmp_path / "brats"
    argv = ["--kind", "brats2021", "--out", str(out), "--cases", "2", "--size", "16"]
    assert make_phantom.main([*argv, "--seed", "1", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 2 brats2021 cases" in printed and "16x16x10" in printed and "mm" in printed
    assert len(list(out.rglob("*.nii.gz"))) == 10


def test_cli_refuses_non_empty_dir_unless_overwrite(tmp_path, capsys):
    argv = ["--kind", "ms", "--out", str(tmp_path), "--size", "16", "--workers", "1"]
    assert make_phantom.main([*argv, "--cases", "3"]) == 0
    capsys.readouterr()
    assert make_phantom.main([*argv, "--cases", "2"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(tmp_path) in err and "--overwrite" in err
    assert make_phantom.main([*argv, "--cases", "2", "--overwrite"]) == 0
    # Stale subjects of the earlier, larger run are gone.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["participants.csv", "sub-001", "sub-002"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--kind", "brats2019"], "invalid choice"),
        (["--kind", "ms", "--size", "4"], "size must be >= 16"),
        (["--kind", "cxr", "--anatomy", "mni152"], "applies to brain kinds"),
        (["--kind", "adni", "--cases", "0"], "cases must be in [1, 9999]"),
    ],
)
def test_cli_bad_arguments_exit_2_with_one_line(tmp_path, capsys, argv, message):
    try:
        code = make_phantom.main([*argv, "--out", str(tmp_path / "x")])
    except SystemExit as exit_info:  # argparse's own errors
        code = exit_info.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("jaxcf.make_phantom: ")
    assert not (tmp_path / "x").exists()
