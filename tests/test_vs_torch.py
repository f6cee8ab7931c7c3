"""benchmarks/vs_torch.py end to end at toy sizes: it runs, both sides compute the same
numbers, and the JSON and markdown table it writes hold what the README table needs."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

pytestmark = pytest.mark.ref

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "vs_torch.py"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One --quick run of a transformer and a UNet workload (a subprocess, so that the
    script sets OMP_WAIT_POLICY before torch is imported, as it does from the command line)."""
    out = tmp_path_factory.mktemp("vs_torch")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "XLA_FLAGS")}
    cmd = [sys.executable, str(SCRIPT), "--quick", "--reps", "3", "--warmup", "1"]
    cmd += ["--only", "dit_s2,diffscm_unet", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    (path,) = out.glob("*_cpu_vs_torch.json")
    return json.loads(path.read_text()), path, proc.stdout


def test_json_records_conditions(quick_run):
    result, path, _ = quick_run
    assert path.name == f"{result['date']}_cpu_vs_torch.json"
    assert result["benchmark"] == "vs_torch" and result["quick"] is True
    assert (result["reps"], result["warmup"], result["dtype"]) == (3, 1, "float32")
    assert result["env"]["OMP_WAIT_POLICY"] == "PASSIVE"
    assert result["threads"]["torch_intra_op"] == os.cpu_count()
    for lib in ("jax", "jaxlib", "flax", "torch", "diffusers"):
        assert result["versions"][lib]


def test_rows_have_timings_params_and_checks(quick_run):
    result, _, _ = quick_run
    rows = result["results"]
    # dit_s2 gives one row, diffscm_unet one per batch size, in the order asked for.
    assert [(r["workload"], r["batch"]) for r in rows] == [
        ("dit_s2", 2),
        ("diffscm_unet", 1),
        ("diffscm_unet", 2),
    ]
    for r in rows:
        for side in ("jaxcf", "torch"):
            s = r[side]
            assert len(s["times_s"]) == 3 and all(t > 0 for t in s["times_s"])
            assert s["min_s"] <= s["median_s"] <= s["max_s"]
            assert s["median_s"] == sorted(s["times_s"])[1]
            assert s["params"] > 0 and s["gflops"] > 0
        ratio = r["torch"]["median_s"] / r["jaxcf"]["median_s"]
        assert r["ratio_torch_over_jaxcf"] == pytest.approx(ratio, rel=1e-2)
        # Same weights on both sides: the outputs were compared before timing.
        assert r["check"]["passed"] and r["check"]["max_abs_diff"] < 1e-4
        assert r["check"]["max_abs_output"] > 0.1  # not a comparison of zeros
    dit, unet_1, unet_2 = rows
    # The PyTorch ADM UNet is the same network: identical parameter count.
    assert unet_1["jaxcf"]["params"] == unet_1["torch"]["params"] == 894_500
    # diffusers' DiT holds a timestep / label embedder per block, jaxcf one shared.
    assert dit["torch"]["params"] > dit["jaxcf"]["params"]
    # Twice the batch, twice the FLOPs (XLA's count).
    assert unet_2["jaxcf"]["gflops"] == pytest.approx(2 * unet_1["jaxcf"]["gflops"], rel=1e-2)


def test_table_rendered_from_json(quick_run):
    result, path, stdout = quick_run
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from vs_torch import render_table
    finally:
        sys.path.remove(str(SCRIPT.parent))
    table = render_table(result)
    assert path.with_suffix(".md").read_text() == table
    assert table in stdout
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(result["results"])  # header + one line per case
    assert "PyTorch / jaxcf" in rows[0]
    assert f"{result['results'][0]['ratio_torch_over_jaxcf']:.2f}x" in rows[1]


def test_unknown_workload_is_refused():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--only", "dit_s2,nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "unknown workload(s) ['nope']" in proc.stderr
