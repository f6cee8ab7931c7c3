"""Readers of the contract layouts (jaxcf.data.sources): shapes, affine, spacing, labels,
prompts, and one DataError per kind of bad input, naming the file / column / subject."""

import gzip
import pathlib

import data_fixtures as fx
import numpy as np
import pytest

from jaxcf.data import sources
from jaxcf.data.errors import DataError


@pytest.mark.parametrize("layout", ["brats2021", "brats2023", "brats-peds"])
def test_brats_layouts(tmp_path, layout):
    ids = fx.write_brats(tmp_path, layout, n=3, shape=(32, 32, 20), spacing=(1.5, 1.5, 2.0))
    src = sources.BraTSSource(tmp_path)  # layout auto-detected from the folder names
    assert src.layout == layout and src.case_ids == ids and len(src) == 3
    rec = src[0]
    assert rec["image"].shape == (32, 32, 20, 4) and rec["image"].dtype == np.float32
    assert rec["seg"].shape == (32, 32, 20) and rec["seg"].dtype == np.uint8
    np.testing.assert_allclose(rec["affine"], fx.brats_affine((32, 32, 20), (1.5, 1.5, 2.0)))
    np.testing.assert_allclose(rec["spacing"], [1.5, 1.5, 2.0])
    et = 4 if layout == "brats2021" else 3
    assert set(np.unique(rec["seg"])) == {0, 1, 2, et} and src.et_label == et
    assert rec["label"] == 1 and rec["case_id"] == ids[0]
    # Canonical channel order t1, t1ce, t2, flair: the fixture scales modality m by (m + 1).
    brain = rec["image"][..., 0] > 0
    means = [rec["image"][..., c][brain & (rec["seg"] == 0)].mean() for c in range(4)]
    np.testing.assert_allclose(np.array(means) / means[0], [1, 2, 3, 4], rtol=0.05)


def test_brats_healthy_case_and_explicit_layout(tmp_path):
    fx.write_brats(tmp_path, "brats2023", n=4, healthy=(3,))
    src = sources.open_source("brats2023", tmp_path)
    assert src[3]["label"] == 0 and not src[3]["seg"].any()
    with pytest.raises(DataError, match="no cases found"):
        sources.BraTSSource(tmp_path, layout="brats2021")


def test_listing_reads_no_volumes(tmp_path):
    fx.write_brats(tmp_path, n=2)
    for p in tmp_path.rglob("*.nii.gz"):
        p.write_bytes(b"garbage")
    src = sources.BraTSSource(tmp_path)  # cheap: directory listing only
    assert len(src) == 2
    with pytest.raises(DataError, match="cannot read NIfTI"):
        src[0]


def test_ms_source(tmp_path):
    ids = fx.write_ms(tmp_path, n=6)
    src = sources.open_source("ms", tmp_path)
    assert src.case_ids == ids
    for i in range(6):
        rec = src[i]
        assert rec["image"].shape == (16, 16, 12, 1)
        assert rec["label"] == i % 3
        assert rec["prompt"] == f"Subject has {fx.MS_CATS[i % 3]} lesion load"
        assert rec["seg"].dtype == np.uint8 and set(np.unique(rec["seg"])) == {0, 1}
    np.testing.assert_allclose(src[0]["spacing"], [1.0, 1.0, 1.2])


def test_ms_without_masks(tmp_path):
    fx.write_ms(tmp_path, n=3, masks=False)
    assert "seg" not in sources.MSSource(tmp_path)[0]


def test_adni_source(tmp_path):
    ids = fx.write_adni(tmp_path, n=6)
    src = sources.open_source("adni", tmp_path)
    assert src.case_ids == ids
    prompts = {0: "Subject is cognitively normal", 2: "Subject has Alzheimer's disease"}
    labels = []
    for i in range(6):
        rec = src[i]
        assert rec["image"].shape == (16, 18, 14, 1) and rec["sex"] in ("M", "F")
        labels.append(int(rec["label"]))
        if int(rec["label"]) in prompts:
            assert rec["prompt"] == prompts[int(rec["label"])]
    assert sorted(labels) == [0, 0, 1, 1, 2, 2]


def test_cxr_source(tmp_path):
    ids = fx.write_cxr(tmp_path, n=6, size=(64, 48))
    src = sources.open_source("cxr", tmp_path)
    assert src.case_ids == ids
    rec = src[0]
    assert rec["image"].shape == (64, 48, 1) and rec["image"].dtype == np.float32
    assert rec["image"].max() > 200
    assert rec["masks"].shape == (64, 48, 3) and set(np.unique(rec["masks"])) == {0, 1}
    assert rec["masks"][32, 5].tolist() == [1, 0, 0] and rec["masks"][32, 40].tolist() == [0, 0, 1]
    assert rec["label"] == 0 and src[1]["label"] == 1
    words = rec["prompt"].split()
    assert len(words) == 77 and words[:2] == ["clear", "word0"]  # impression, truncated
    assert src[1]["prompt"] == "opacity word0 word1 word2 word3"


def test_impression_fallbacks():
    assert sources.impression("FINDINGS: a b\nIMPRESSION: c  d\n\nRECOMMENDATION: e") == "c d"
    assert sources.impression("FINDINGS: a b\n") == "a b"
    assert sources.impression("free text only") == "free text only"


# ---------------------------------------------------------------------------- errors
def test_missing_modality_names_expected_path(tmp_path):
    fx.write_brats(tmp_path, n=2)
    missing = fx.brats_file(tmp_path, "brats2021", 1, "flair")
    missing.unlink()
    with pytest.raises(DataError, match="missing file") as e:
        sources.BraTSSource(tmp_path)[1]
    assert str(missing) in str(e.value)


def test_truncated_gzip(tmp_path):
    fx.write_brats(tmp_path, n=1)
    p = fx.brats_file(tmp_path, "brats2021", 0, "t2")
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError) as e:
        sources.BraTSSource(tmp_path)[0]
    assert str(p) in str(e.value) and "cannot read NIfTI" in str(e.value)


def test_shape_mismatch_names_both_files(tmp_path):
    fx.write_brats(tmp_path, n=1, shape=(32, 32, 20))
    p = fx.brats_file(tmp_path, "brats2021", 0, "t1ce")
    fx.save_nifti(p, np.ones((32, 32, 18), np.float32), np.eye(4))
    with pytest.raises(DataError, match="shape mismatch") as e:
        sources.BraTSSource(tmp_path)[0]
    msg = str(e.value)
    assert str(p) in msg and "(32, 32, 18)" in msg and "_t1.nii.gz" in msg


def test_label_values_outside_the_layout_name_the_file(tmp_path):
    """BraTS 2021 stores ET as 4: a 3 there (BraTS 2023's ET) is refused, not read as ET."""
    fx.write_brats(tmp_path, n=1, shape=(32, 32, 20))
    p = fx.brats_file(tmp_path, "brats2021", 0, "seg")
    seg = np.zeros((32, 32, 20), np.float32)
    seg[10:12, 10:12, 10] = 3
    fx.save_nifti(p, seg, np.eye(4))
    with pytest.raises(DataError, match=r"label values \[3\] outside brats2021's \[0, 1, 2, 4\]"):
        sources.BraTSSource(tmp_path)[0]


def test_nan_voxels_counted(tmp_path):
    fx.write_brats(tmp_path, n=1)
    p = fx.brats_file(tmp_path, "brats2021", 0, "t1")
    vol = np.ones((32, 32, 20), np.float32)
    vol[0, 0, :3] = np.nan
    vol[1, 1, 1] = np.inf
    fx.save_nifti(p, vol, np.eye(4))
    with pytest.raises(DataError, match="4 NaN/inf voxels") as e:
        sources.BraTSSource(tmp_path)[0]
    assert str(p) in str(e.value)


@pytest.mark.parametrize("kind", ["brats", "brats2021", "ms", "adni"])
def test_empty_root(tmp_path, kind):
    if kind == "ms":
        (tmp_path / "participants.csv").write_text("subject,lesion_volume_ml,category\n")
    with pytest.raises(DataError, match=r"no cases found|no BraTS layouts") as e:
        sources.open_source(kind, tmp_path)
    assert str(tmp_path) in str(e.value)


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        sources.open_source("cxr", tmp_path / "nope")


def test_csv_missing_column(tmp_path):
    fx.write_ms(tmp_path, n=2)
    csv = tmp_path / "participants.csv"
    csv.write_text("subject,category\nsub-000,minimal\nsub-001,high\n")
    with pytest.raises(DataError, match="missing column 'lesion_volume_ml'") as e:
        sources.MSSource(tmp_path)
    assert str(csv) in str(e.value)


def test_csv_missing_subject(tmp_path):
    fx.write_adni(tmp_path, n=3)
    csv = tmp_path / "diagnosis.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match="no row for subject") as e:
        sources.ADNISource(tmp_path)
    assert str(csv) in str(e.value)


def test_csv_bad_value(tmp_path):
    fx.write_ms(tmp_path, n=2)
    csv = tmp_path / "participants.csv"
    csv.write_text(csv.read_text().replace("minimal", "tiny"))
    with pytest.raises(DataError, match="'category' of sub-000 is 'tiny'"):
        sources.MSSource(tmp_path)


def test_unknown_kind_lists_known(tmp_path):
    with pytest.raises(DataError, match="unknown dataset kind 'mnist'") as e:
        sources.open_source("mnist", tmp_path)
    for k in ("brats2021", "brats2023", "brats-peds", "ms", "adni", "cxr"):
        assert k in str(e.value)


def test_cxr_errors(tmp_path):
    ids = fx.write_cxr(tmp_path, n=3)
    src = sources.CXRSource(tmp_path)
    mask = tmp_path / "masks" / f"{ids[0]}_heart.png"
    mask.unlink()
    with pytest.raises(DataError, match="missing file") as e:
        src[0]
    assert str(mask) in str(e.value)
    jpg = src.paths(ids[1])["image"]
    jpg.write_bytes(jpg.read_bytes()[:200])
    with pytest.raises(DataError, match="cannot read image") as e:
        src[1]
    assert str(jpg) in str(e.value)
    findings = tmp_path / "jaxcf-cxr-findings.csv"
    findings.write_text(findings.read_text().splitlines()[0] + "\n")
    with pytest.raises(DataError, match="no row for subject") as e:
        sources.CXRSource(tmp_path)
    assert str(findings) in str(e.value)


def test_read_nifti_rejects_4d(tmp_path):
    p = pathlib.Path(tmp_path) / "x.nii.gz"
    fx.save_nifti(p, np.zeros((4, 4, 4, 2), np.float32), np.eye(4))
    with pytest.raises(DataError, match="expected a 3-D volume"):
        sources.read_nifti(p)
    assert gzip.open(p).read(4)  # the file itself is a fine gzip
