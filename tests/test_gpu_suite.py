"""benchmarks/gpu_suite.sh --smoke runs every stage of the GPU suite at toy sizes on the CPU
and leaves one JSON file per stage, holding measured numbers, in $JAXCF_BENCH_OUT."""

import json
import math
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.sh"

# stage file -> (a field every row has, fields that must be positive finite numbers)
EXPECTED = {
    "denoisers": ("model", ["forward_s", "forwards_per_s", "gflops_per_forward"]),
    "wdm_sampling": ("sampler", ["seconds_per_volume", "steps_per_s", "gflops_per_forward"]),
    "counterfactual": ("method", ["seconds_per_slice", "slices_per_s"]),
    "train_step": ("model", ["step_s", "steps_per_s", "gflops_per_step"]),
    "memory3d": ("step", ["peak_bytes", "temp_bytes", "argument_bytes", "compile_s"]),
}


def _positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_suite_script_parses():
    subprocess.run(["bash", "-n", str(SUITE)], check=True)


def test_suite_rejects_unknown_arguments():
    out = subprocess.run(["bash", str(SUITE), "--bogus"], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown argument --bogus" in out.stderr


def test_smoke_suite_writes_numbers(tmp_path):
    env = dict(os.environ, JAXCF_BENCH_OUT=str(tmp_path), JAXCF_PYTHON=sys.executable)
    env.pop("XLA_FLAGS", None)  # one CPU device, as the suite's users have
    run = subprocess.run(
        ["bash", str(SUITE), "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for stage, (key, numbers) in EXPECTED.items():
        files = sorted(tmp_path.glob(f"*_cpu_{stage}.json"))
        assert len(files) == 1, (stage, sorted(p.name for p in tmp_path.iterdir()))
        result = json.loads(files[0].read_text())
        assert result["benchmark"] == stage and result["platform"] == "cpu"
        rows = result["results"]
        assert rows, stage
        for row in rows:
            assert "error" not in row, (stage, row)
            assert key in row, (stage, row)
            for field in numbers:
                assert _positive(row[field]), (stage, field, row)
    memory = json.loads(next(tmp_path.glob("*_cpu_memory3d.json")).read_text())
    # Two volumes need more memory than one; the linear fit gives a batch that fits 80 GB.
    for step in {r["step"] for r in memory["results"]}:
        by_batch = {r["batch"]: r["peak_bytes"] for r in memory["results"] if r["step"] == step}
        assert by_batch[2] > by_batch[1], step
    assert all(s["max_batch"] >= 1 for s in memory["summary"])
    assert next(tmp_path.glob("*_cpu_memory3d.md")).read_text().startswith("| volume |")
    assert (tmp_path / next(tmp_path.glob("*_gpu_suite.log")).name).stat().st_size > 0
