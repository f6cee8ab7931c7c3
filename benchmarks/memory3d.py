"""Peak memory of 3-D WDM training and sampling, from XLA's compiled memory analysis.

    python benchmarks/memory3d.py [--sizes 128 256] [--batches 1 2] [--remat off on]
                                  [--dtype float32] [--budget-gb 80] [--out DIR]

For each volume side (128^3: preset wdm128, 256^3: wdm256; the UNet runs on the 8 Haar
sub-bands at half the side), with and without remat (model.remat: each UNet stage
recomputed in the backward pass), two jitted functions are lowered and compiled, never
run, from jax.ShapeDtypeStruct inputs, so no volume, activation or optimizer state is
allocated (only the network's float32 parameters are initialised once, to build the task):

  train   jaxcf's real training step (jaxcf.training.step.make_train_step: the wavelet
          transform, the x0-prediction loss, forward + backward, grad-norm clipping, AdamW,
          the EMA update; the TrainState donated as in jaxcf.training.loop), batch B
          volumes of B x S^3 x 1.
  sample  one sampling step: a forward of the network on the (B, S/2, S/2, S/2, 8)
          wavelet grid plus the DDIM update with WDM's wavelet clip (what each step of a
          1000-step sampler scan holds live).

Peak bytes = arguments + outputs - aliased (donated) + temporaries + generated code, from
`jax.jit(f).lower(...).compile().memory_analysis()`. The largest batch that fits the
budget is extrapolated linearly from batches 1 and 2 (bytes(B) = fixed + B * per-sample,
per-sample = bytes(2) - bytes(1)): XLA's buffer assignment is close to linear in the batch
for these convolutional networks, but it is an estimate, not a run. The analysis is the
compiling backend's (XLA:CPU here): XLA:GPU fuses, schedules and picks convolution
algorithms (with cuDNN workspaces) differently, so GPU peaks differ; run this script on the
GPU for its own numbers (benchmarks/gpu_suite.sh does). Writes
DIR/<date>_<device>_memory3d.json and a markdown table beside it (.md).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import default_out, write_markdown, write_result

from jaxcf import diffusion as D
from jaxcf import models
from jaxcf.models import conv3d
from jaxcf.training.config import base_config
from jaxcf.training.optim import make_optimizer
from jaxcf.training.step import init_state, make_train_step
from jaxcf.training.tasks import make_task

# volume side -> WDM preset; tiny sides are for --smoke runs (seconds on a CPU).
PRESETS = {16: "wdm_tiny", 128: "wdm128", 256: "wdm256"}
_FIELDS = {
    "argument": "argument_size_in_bytes",
    "output": "output_size_in_bytes",
    "alias": "alias_size_in_bytes",
    "temp": "temp_size_in_bytes",
    "generated_code": "generated_code_size_in_bytes",
}


def wdm_config(size: int, remat: bool, dtype: str = "float32"):
    """WDM (Friedrich et al. 2024) as trained on BraTS: one modality in S^3 cubes, the
    UNet on Haar sub-bands, x0-prediction, 1000 linear steps, unconditional, AdamW 1e-5,
    gradient clipping 1.0, EMA."""
    if size not in PRESETS:
        raise SystemExit(f"--sizes: choose from {sorted(PRESETS)}, got {size}")
    c = base_config()
    c.data.update(task="volumes", volume_size=size, batch_size=1, channels=1)
    c.model.update(family="wdm", preset=PRESETS[size], dtype=dtype, remat=remat)
    c.diffusion.update(
        schedule="linear", prediction="x0", space="wavelet", condition="none", cond_drop_prob=0
    )
    c.optim.update(lr=1e-5, grad_clip=1.0)
    return c


def memory(lowered) -> tuple[dict, float]:
    """({field: bytes, ..., "peak": bytes}, compile seconds) of a lowered computation."""
    start = time.perf_counter()
    compiled = lowered.compile()
    seconds = time.perf_counter() - start
    stats = compiled.memory_analysis()
    out = {name: int(getattr(stats, attr)) for name, attr in _FIELDS.items()}
    out["peak"] = (
        out["argument"] + out["output"] - out["alias"] + out["temp"] + out["generated_code"]
    )
    return out, seconds


class Lowering:
    """Lowers a WDM step from abstract inputs; the network's parameters are initialised
    once per (size, remat, dtype) to build the task, everything else is a ShapeDtypeStruct."""

    def __init__(self, dtype: str):
        self.dtype = dtype
        self._key = None

    def task(self, size: int, remat: bool):
        if self._key != (size, remat):
            self.config = wdm_config(size, remat, self.dtype)
            self._task = make_task(self.config, jax.random.key(0))
            self.optimizer = make_optimizer(self.config.optim, 1000)
            self.state = jax.eval_shape(lambda: init_state(self._task, self.optimizer))
            self._key = (size, remat)
        return self._task

    def lower(self, step: str, size: int, remat: bool, batch: int):
        """(lowered computation, parameter count, wavelet grid shape); 3-D convolutions
        traced natively (the accelerator path), not as jaxcf's CPU-only decomposition."""
        with conv3d.native_only():
            return self._lower(step, size, remat, batch)

    def _lower(self, step: str, size: int, remat: bool, batch: int):
        task = self.task(size, remat)
        volume = jax.ShapeDtypeStruct((batch, size, size, size, 1), jnp.float32)
        grid = jax.eval_shape(task.encode, {}, volume)
        params = models.param_count(self.state.params)
        if step == "train":
            fn = make_train_step(task, self.optimizer, self.config.optim, 0)
            # Donated as jaxcf.training.loop donates it: outputs reuse the state's buffers.
            lowered = jax.jit(fn, donate_argnums=0).lower(self.state, {}, {"image": volume})
            return lowered, params, grid.shape
        schedule, clip = task.schedule, task.space_impl.x0_transform

        def sample_step(weights, x, t, t_prev):
            out = task.model_fn(weights, {})(x, t, None)
            return D.ddim_step(schedule, out, x, t, t_prev, jnp.zeros_like(x), x0_transform=clip)[0]

        t = jax.ShapeDtypeStruct((batch,), jnp.int32)
        return jax.jit(sample_step).lower(self.state.ema, grid, t, t), params, grid.shape


def fit_batch(rows: list[dict], budget: float) -> dict:
    """Linear extrapolation from batches 1 and 2: fixed + B * per_sample <= budget."""
    by_batch = {r["batch"]: r["peak_bytes"] for r in rows}
    if 1 not in by_batch or 2 not in by_batch:
        return {}
    per_sample = by_batch[2] - by_batch[1]
    fixed = by_batch[1] - per_sample
    fits = int((budget - fixed) // per_sample) if per_sample > 0 else None
    return {"per_sample_bytes": per_sample, "fixed_bytes": fixed, "max_batch": fits}


def gb(n: float) -> str:
    return f"{n / 1e9:.2f}"


def markdown(summary: list[dict], budget_gb: float, backend: str) -> str:
    lines = [
        f"| volume | step | remat | peak GB, batch 1 | peak GB, batch 2 | GB per extra volume "
        f"| largest batch in {budget_gb:g} GB | compile s (batch 1) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        lines.append(
            f"| {s['size']}^3 | {s['step']} | {'on' if s['remat'] else 'off'} "
            f"| {gb(s['peak_bytes'].get(1, float('nan')))} "
            f"| {gb(s['peak_bytes'].get(2, float('nan')))} "
            f"| {gb(s['per_sample_bytes']) if 'per_sample_bytes' in s else '-'} "
            f"| {s.get('max_batch', '-')} | {s['compile_s'].get(1, float('nan')):.1f} |"
        )
    lines.append("")
    lines.append(
        f"Peak = arguments + outputs - donated + temporaries + generated code, from "
        f"XLA:{backend.upper()}'s compiled memory analysis (nothing run or allocated); "
        f"largest batch extrapolated linearly from batches 1 and 2 "
        f"({budget_gb:g} GB = {budget_gb:g}e9 bytes)."
    )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--remat", nargs="+", choices=["off", "on"], default=["off", "on"])
    parser.add_argument(
        "--steps", nargs="+", choices=["train", "sample"], default=["train", "sample"]
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--budget-gb", type=float, default=80.0)
    parser.add_argument("--out", type=pathlib.Path, default=default_out())
    args = parser.parse_args(argv)

    rows, lowering = [], Lowering(args.dtype)
    budget = args.budget_gb * 1e9
    backend = jax.devices()[0].platform
    meta = {
        "dtype": args.dtype,
        "budget_bytes": budget,
        "extrapolation": "linear in batch from batches 1 and 2",
        "peak": "argument + output - alias + temp + generated_code (XLA compiled memory analysis)",
        "note": (
            f"XLA:{backend.upper()}'s buffer assignment and schedule; other backends (XLA:GPU) "
            "differ. remat only changes the backward pass: a sampling step does not change "
            "with it. XLA:CPU drops the optimization barriers jax.checkpoint emits and "
            "schedules the recomputation early, so on CPU remat does not lower the peak."
        ),
    }
    header = ("volume", 7), ("step", 7), ("remat", 6), ("batch", 6), ("peak GB", 9)
    header += ("temp GB", 9), ("compile s", 11)
    print("".join(f"{name:>{width}}" for name, width in header))
    # Training first (the numbers that decide batch sizes), sampling with remat last (the
    # same as without): a run cut short by a timeout loses the least useful rows.
    for size in args.sizes:
        for step in args.steps:
            for remat in args.remat:
                for batch in args.batches:
                    started = time.perf_counter()
                    lowered, params, grid = lowering.lower(step, size, remat == "on", batch)
                    lower_s = time.perf_counter() - started
                    stats, compile_s = memory(lowered)
                    rows.append(
                        {
                            "size": size,
                            "preset": PRESETS[size],
                            "wavelet_grid": list(grid[1:]),
                            "step": step,
                            "remat": remat == "on",
                            "dtype": args.dtype,
                            "batch": batch,
                            "params": params,
                            **{f"{k}_bytes": v for k, v in stats.items()},
                            "lower_s": round(lower_s, 2),
                            "compile_s": round(compile_s, 2),
                        }
                    )
                    print(
                        f"{size:>6}^3{step:>7}{remat:>6}{batch:>6}{gb(stats['peak']):>9}"
                        f"{gb(stats['temp']):>9}{compile_s:>11.1f}",
                        flush=True,
                    )
                    write_result("memory3d", rows, args.out, **meta)  # kept if cut short
    summary = []
    for size in args.sizes:
        for step in args.steps:
            for remat in args.remat:
                group = [
                    r
                    for r in rows
                    if (r["size"], r["remat"], r["step"]) == (size, remat == "on", step)
                ]
                if not group:
                    continue
                summary.append(
                    {
                        "size": size,
                        "step": step,
                        "remat": remat == "on",
                        "peak_bytes": {r["batch"]: r["peak_bytes"] for r in group},
                        "compile_s": {r["batch"]: r["compile_s"] for r in group},
                        **fit_batch(group, budget),
                    }
                )
    table = markdown(summary, args.budget_gb, backend)
    print(table)
    meta["summary"] = summary
    path = write_result("memory3d", rows, args.out, **meta)
    md = write_markdown(path.with_suffix(".md"), table)
    print(f"wrote {path} and {md}")
    return {"results": rows, **meta}


if __name__ == "__main__":
    main()
