"""Per-case tumour report (paper 002 Sec. 3.5): volumes, location, Markdown, prompt, PNG, client."""

import base64
import http.server
import json
import socket
import threading
import warnings

import numpy as np
import pytest
from PIL import Image

from jaxcf.errors import InputError
from jaxcf.evaluation import brats
from jaxcf.evaluation import tumour_report as tr

SPACING = (0.5, 0.75, 2.0)  # anisotropic: 0.75 mm^3 per voxel
SHAPE = (40, 24, 12)
COUNTS = {"NC": 8, "ED": 40, "ET": 12}


def _labels(convention="peds"):
    """NC 2x2x2 = 8, ET 2x3x2 = 12, ED 4x5x2 = 40 voxels; tumour over i 30..35, k 5..6."""
    codes = brats.LABEL_SETS[convention]
    lab = np.zeros(SHAPE, np.int16)
    lab[30:34, 10:15, 5:7] = codes["ED"]  # 40
    lab[30:32, 10:12, 5:7] = codes["NC"]  # 8 of them become NC -> ED 32
    lab[32:34, 10:13, 5:7] = codes["ET"]  # 12 -> ED 32 - 12 = 20
    lab[34:36, 10:15, 5:7] = codes["ED"]  # +20 -> ED 40
    return lab


def _affine(flip=False):
    """Voxel -> RAS mm; x = -10 + 0.5 i (tumour at x ~ +6 mm: right), or flipped
    x = 10 - 0.5 i (tumour at x ~ -6 mm: left)."""
    a = np.diag([*SPACING, 1.0])
    a[:3, 3] = (-10.0, -9.0, -12.0)
    if flip:
        a[0, 0], a[0, 3] = -SPACING[0], 10.0
    return a


def _image(labels):
    image = np.zeros((*labels.shape, 4), np.float32)
    image[4:-4, 2:-2, 1:-1] = 1.0  # a constant "brain": displayed black, overlays pure
    return image


def test_volumes_exact_with_anisotropic_spacing():
    lab = _labels()
    for name, n in COUNTS.items():
        assert np.count_nonzero(lab == brats.LABEL_SETS["peds"][name]) == n
    rep = tr.case_report("c1", lab, SPACING)
    voxel = 0.5 * 0.75 * 2.0
    assert rep["voxel_volume_mm3"] == pytest.approx(voxel)
    expected = {**COUNTS, "WT": 60, "TC": 20}
    for r, n in expected.items():
        assert rep["volumes"][r]["voxels"] == n
        assert rep["volumes"][r]["mm3"] == pytest.approx(n * voxel, rel=1e-12)
        assert rep["volumes"][r]["mL"] == pytest.approx(n * voxel / 1000, rel=1e-12)
    assert rep["tumour_present"] is True
    assert rep["fractions"] == pytest.approx({"ET/WT": 12 / 60, "NC/WT": 8 / 60, "ED/WT": 40 / 60})
    loc = rep["location"]
    assert loc["bbox"]["min_voxel"] == [30, 10, 5]
    assert loc["bbox"]["extent_voxels"] == [6, 5, 2]
    assert loc["bbox"]["extent_mm"] == pytest.approx([3.0, 3.75, 4.0])
    assert rep["axial_axis"] == 2
    assert rep["largest_axial_slice"]["voxels"] == 30
    assert rep["largest_axial_slice"]["index"] == 5  # tie between 5 and 6: first
    assert rep["largest_axial_slice"]["area_mm2"] == pytest.approx(30 * 0.5 * 0.75)
    assert loc["side"] == "unknown" and loc["centroid_world_mm"] is None
    json.dumps(rep, allow_nan=False)  # JSON-ready, no NaN


def test_brats2021_convention_and_affine_spacing():
    lab = _labels("brats2021")
    rep = tr.case_report("c2", lab, None, convention="brats2021", affine=_affine())
    assert rep["spacing_mm"] == pytest.approx(SPACING)  # from the affine, no warning
    assert rep["volumes"]["ET"]["voxels"] == 12


def test_side_flips_with_affine():
    lab = _labels()
    right = tr.case_report("c", lab, SPACING, affine=_affine())
    left = tr.case_report("c", lab, SPACING, affine=_affine(flip=True))
    centroid = np.array(right["location"]["centroid_voxel"])
    x_right = -10.0 + 0.5 * centroid[0]
    assert right["location"]["centroid_world_mm"][0] == pytest.approx(x_right, abs=0.01)
    assert left["location"]["centroid_world_mm"][0] == pytest.approx(-x_right, abs=0.01)
    assert right["location"]["side"] == "right"  # RAS+: +x toward the patient's right
    assert left["location"]["side"] == "left"
    assert right["location"]["world_x_fraction"] == {"right": 1.0, "left": 0.0}
    assert left["location"]["world_x_fraction"] == {"right": 0.0, "left": 1.0}
    assert right["location"]["axis_codes"] == ["R", "A", "S"]
    assert left["location"]["axis_codes"] == ["L", "A", "S"]
    # Near x = 0: midline.
    mid = np.zeros(SHAPE, np.int16)
    mid[19:22, 10:12, 5] = 3
    assert tr.case_report("m", mid, SPACING, affine=_affine())["location"]["side"] == "midline"


def test_side_is_measured_from_the_heads_midline_not_the_origin():
    """A header whose x = 0 is at the volume's edge (world x = -i): without the image the
    tumour at i = 8 reads left of x = 0; the head spans i = 0..39, so it is 11.5 mm right of
    the head's midline (x = -19.5)."""
    labels = np.zeros((40, 8, 8), np.uint8)
    labels[8, 3:5, 3:5] = 2
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    head = np.ones((40, 8, 8, 1), np.float32)
    alone = tr.case_report("c", labels, (1, 1, 1), affine=affine)
    seen = tr.case_report("c", labels, (1, 1, 1), affine=affine, image=head, modalities=("t1",))
    assert alone["location"]["side"] == "left" and seen["location"]["side"] == "right"
    assert seen["location"]["midline_world_x_mm"] == -19.5


def test_axial_axis_from_affine():
    # Voxel axis 0 runs superior: axial slices are taken along axis 0.
    a = np.zeros((4, 4))
    a[2, 0], a[0, 1], a[1, 2], a[3, 3] = 1.0, 1.0, 1.0, 1.0
    lab = np.zeros((6, 8, 8), np.int16)
    lab[4, 1:5, 1:5] = 2
    lab[2, 1:3, 1:3] = 2
    rep = tr.case_report("p", lab, None, affine=a)
    assert rep["axial_axis"] == 0
    assert rep["largest_axial_slice"]["index"] == 4


def test_empty_labels_give_no_tumour_report(tmp_path):
    rep = tr.case_report("empty", np.zeros(SHAPE, np.uint8), SPACING, affine=_affine())
    assert rep["tumour_present"] is False
    assert rep["volumes"]["WT"] == {"voxels": 0, "mm3": 0.0, "mL": 0.0}
    assert all(v is None for v in rep["fractions"].values())
    assert rep["location"]["side"] == "none" and rep["location"]["bbox"] is None
    assert "No tumour was segmented" in rep["summary"]
    md = tr.markdown(rep)
    assert "No tumour was segmented" in md
    prompt = tr.llm_prompt(rep)
    assert "found no tumour" in prompt
    image = _image(np.zeros(SHAPE, np.uint8))
    paths = tr.write_case_report(rep, tmp_path, image=image, labels=np.zeros(SHAPE, np.uint8))
    assert json.loads(paths["json"].read_text())["tumour_present"] is False
    assert paths["png"].exists()


def test_markdown_contains_numbers():
    rep = tr.case_report("BraTS-PED-00001-000", _labels(), SPACING, affine=_affine())
    md = tr.markdown(rep)
    assert md.startswith("# Tumour segmentation report: BraTS-PED-00001-000")
    assert "automatic segmentation" in md
    assert "| NC (necrotic / non-enhancing core) | 8 | 6.0 | 0.006 |" in md
    assert "| WT (whole tumour) | 60 | 45.0 | 0.045 |" in md
    assert "ET/WT: 0.20" in md and "ED/WT: 0.67" in md
    assert "Side: right" in md and "+x toward the patient's right" in md
    assert "Largest axial slice (axis 2): index 5, 11.2 mm^2" in md


def test_write_case_report_files_prompt_and_png(tmp_path):
    lab = _labels()
    image = _image(lab)
    rep = tr.case_report("case7", lab, SPACING, affine=_affine(), image=image)
    paths = tr.write_case_report(rep, tmp_path / "out", image=image, labels=lab)
    assert {p.name for p in paths.values()} == {
        "case7.json",
        "case7.md",
        "case7_prompt.txt",
        "case7_axial.png",
    }
    assert json.loads(paths["json"].read_text()) == json.loads(json.dumps(rep))
    prompt = paths["prompt"].read_text()
    assert prompt == tr.llm_prompt(rep, [paths["png"]])
    for text in ("case7_axial.png", "NC (necrotic / non-enhancing core): 0.006 mL (8 voxels)"):
        assert text in prompt
    assert "WT (whole tumour): 0.045 mL (60 voxels)" in prompt
    assert "left-to-right runs toward patient R, top-to-bottom toward patient A" in prompt
    assert "do not invent measurements" in prompt and "uncertainty" in prompt
    assert "DIFFERENTIAL" in prompt
    # PNG: 3 tiles of 40 x 24 voxels upsampled x4 (display_factor(40) = 4) + legend, caption.
    png = Image.open(paths["png"])
    assert png.mode == "RGB"
    assert png.width >= 3 * 160 and 4 * 24 <= png.height < 4 * 24 + 120
    pixels = {tuple(p) for p in np.asarray(png).reshape(-1, 3)}
    # Black brain, 50 % overlays: each sub-region's colour at half intensity.
    for colour in tr.REGION_COLOURS.values():
        assert tuple(int(0.5 * c) for c in colour) in pixels
    assert rep["overlay_slices"] == [4, 5, 6]


def test_overlay_png_single_channel_and_options(tmp_path):
    lab = _labels()
    image = _image(lab)[..., :1]
    path = tr.overlay_png(image, lab, tmp_path / "one.png", slices=1)
    assert Image.open(path).width >= 160
    with pytest.raises(InputError, match="channel 2"):
        tr.overlay_png(image, lab, tmp_path / "x.png", channel=2)
    with pytest.raises(InputError, match="does not match"):
        tr.overlay_png(image[:, :-1], lab, tmp_path / "x.png")


def test_overlay_slices():
    lab = np.zeros((4, 4, 30), np.int8)
    lab[1, 1, 10:20] = 1
    lab[:, :, 15] = 1
    assert tr.overlay_slices(lab, 3) == [12, 15, 18]  # extent 10 -> step 3
    assert tr.overlay_slices(lab, 3, step=1) == [14, 15, 16]
    assert tr.overlay_slices(np.zeros((4, 4, 5)), 3) == [1, 2, 3]
    edge = np.zeros((4, 4, 5), np.int8)
    edge[:, :, 0] = 1
    assert tr.overlay_slices(edge, 3) == [0, 1]  # clipped, no repeats


def test_errors():
    lab = _labels()
    bad = lab.copy()
    bad[0, 0, 0] = 4  # brats2021's ET code, not a peds label
    with pytest.raises(InputError, match="outside peds"):
        tr.case_report("c", bad, SPACING)
    with pytest.raises(InputError, match="does not match"):
        tr.case_report("c", lab, SPACING, image=np.zeros((*SHAPE[:2], 5, 4)))
    with pytest.raises(InputError, match="modalities"):
        tr.case_report("c", lab, SPACING, image=np.zeros((*SHAPE, 2)))
    with pytest.raises(InputError, match="disagrees with the affine"):
        tr.case_report("c", lab, (1.0, 1.0, 1.0), affine=_affine())
    with pytest.raises(InputError, match="must be an"):
        tr.case_report("c", lab[0], SPACING)
    with pytest.raises(InputError, match="spacing"):
        tr.case_report("c", lab, (1.0, 0.0, 1.0))
    with pytest.raises(InputError, match="both image and labels"):
        tr.write_case_report(tr.case_report("c", lab, SPACING), "/tmp", image=_image(lab))


def test_missing_spacing_warns_and_assumes_1mm():
    with pytest.warns(brats.SpacingWarning, match="nospacing"):
        rep = tr.case_report("nospacing", _labels(), None)
    assert rep["spacing_mm"] == [1.0, 1.0, 1.0]
    assert rep["volumes"]["WT"]["mL"] == pytest.approx(0.06)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tr.case_report("withaffine", _labels(), None, affine=_affine())


# ---------------------------------------------------------------- the optional client


class _Handler(http.server.BaseHTTPRequestHandler):
    requests: list = []  # noqa: RUF012
    reply: tuple[int, bytes] = (200, b"")

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).requests.append((self.path, dict(self.headers), json.loads(body)))
        status, payload = type(self).reply
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    _Handler.requests = []
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def test_send_prompt_round_trip(server, tmp_path):
    png = tmp_path / "a.png"
    Image.new("RGB", (4, 3), (1, 2, 3)).save(png)
    canned = {"choices": [{"message": {"role": "assistant", "content": "FINDINGS: ..."}}]}
    _Handler.reply = (200, json.dumps(canned).encode())
    text = tr.send_prompt(
        "hello", url=server, model="m1", api_key="k", image_paths=[png], timeout=10
    )
    assert text == "FINDINGS: ..."
    path, headers, body = _Handler.requests[-1]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer k"
    assert body["model"] == "m1" and body["temperature"] == 0.0
    content = body["messages"][0]["content"]
    assert body["messages"][0]["role"] == "user"
    assert content[0] == {"type": "text", "text": "hello"}
    url = content[1]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == png.read_bytes()
    # Content as a list of parts; full endpoint URL given; no key -> no header.
    parts = {"choices": [{"message": {"content": [{"type": "text", "text": "a"}, {"text": "b"}]}}]}
    _Handler.reply = (200, json.dumps(parts).encode())
    assert tr.send_prompt("x", url=server + "/chat/completions", model="m", timeout=10) == "ab"
    assert "Authorization" not in _Handler.requests[-1][1]


def test_send_prompt_errors(server, tmp_path):
    _Handler.reply = (500, b'{"error": "boom"}')
    with pytest.raises(InputError, match=r"127\.0\.0\.1.*HTTP 500.*boom"):
        tr.send_prompt("x", url=server, model="m", timeout=10)
    _Handler.reply = (200, b'{"choices": []}')
    with pytest.raises(InputError, match="malformed reply"):
        tr.send_prompt("x", url=server, model="m", timeout=10)
    _Handler.reply = (200, b"not json")
    with pytest.raises(InputError, match="malformed reply"):
        tr.send_prompt("x", url=server, model="m", timeout=10)
    with pytest.raises(InputError, match="cannot read"):
        tr.send_prompt("x", url=server, model="m", image_paths=[tmp_path / "no.png"])
    with pytest.raises(InputError, match="http"):
        tr.send_prompt("x", url="ftp://host", model="m")
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(InputError, match=rf"127\.0\.0\.1:{port}.*request failed"):
        tr.send_prompt("x", url=f"http://127.0.0.1:{port}", model="m", timeout=5)
