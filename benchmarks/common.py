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
