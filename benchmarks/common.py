"""Shared pieces of the benchmark scripts: timing, device naming, result files."""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import re
import statistics
import time

import jax

# Dense peak TFLOP/s by device kind (vendor data sheets, without sparsity; "float32" is
# plain FP32, TF32 tensor cores off). Matched by substring of jax.devices()[0].device_kind,
# first match wins, so more specific names come first.
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"bfloat16": 989.0, "float16": 989.0, "float32": 67.0}),
    ("H100 PCIe", {"bfloat16": 756.0, "float16": 756.0, "float32": 51.0}),
    ("H100", {"bfloat16": 989.0, "float16": 989.0, "float32": 67.0}),
    ("GH200", {"bfloat16": 989.0, "float16": 989.0, "float32": 67.0}),
    ("B200", {"bfloat16": 2250.0, "float16": 2250.0, "float32": 80.0}),
    ("A100", {"bfloat16": 312.0, "float16": 312.0, "float32": 19.5}),
    ("L40S", {"bfloat16": 362.0, "float16": 362.0, "float32": 91.6}),
    ("A10G", {"bfloat16": 70.0, "float16": 70.0, "float32": 31.2}),
    ("V100", {"float16": 125.0, "float32": 15.7}),
    ("TPU v5p", {"bfloat16": 459.0}),
    ("TPU v5 lite", {"bfloat16": 197.0}),
    ("TPU v4", {"bfloat16": 275.0}),
]


def peak_tflops(device_kind: str, dtype: str) -> float | None:
    """The device's dense peak TFLOP/s for a compute dtype, or None where unknown (CPUs)."""
    for name, peaks in PEAK_TFLOPS:
        if name.lower() in device_kind.lower():
            return peaks.get(dtype)
    return None


def default_out() -> pathlib.Path:
    """Where results go: $JAXCF_BENCH_OUT, else benchmarks/results."""
    return pathlib.Path(os.environ.get("JAXCF_BENCH_OUT") or "benchmarks/results")


def write_markdown(path: pathlib.Path, text: str) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def time_call(fn, repeats: int) -> tuple[float, float]:
    """(seconds of the first call, which compiles; median seconds of `repeats` more)."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        runs.append(time.perf_counter() - start)
    return first, statistics.median(runs)


def device_slug() -> str:
    """'cpu', 'nvidia-h100-80gb-hbm3', ...: the device part of result file names."""
    dev = jax.devices()[0]
    name = dev.device_kind if dev.platform != "cpu" else "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def write_result(benchmark: str, rows: list[dict], out_dir: pathlib.Path, **meta) -> pathlib.Path:
    """Write {benchmark, date, device, ..., results: rows} to <date>_<device>_<benchmark>.json."""
    dev = jax.devices()[0]
    result = {
        "benchmark": benchmark,
        "date": datetime.date.today().isoformat(),
        "device": dev.device_kind,
        "platform": dev.platform,
        "device_count": jax.device_count(),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        **meta,
        "results": rows,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{result['date']}_{device_slug()}_{benchmark}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
