"""Sampler loop overhead: steps/s of every sampler with a trivial denoiser.

    python benchmarks/samplers.py [--batch 1 64] [--shape 64 64 4] [--steps 50] [--out DIR]

The denoiser is one multiply, so the numbers measure what the sampler itself costs per
step (schedule arithmetic, noise, the scan), the part that must vanish next to a real
network. A Python loop that dispatches one jitted step per iteration (how PyTorch
pipelines drive a scheduler) is timed beside the scans for comparison. Prints a table and
writes JSON to DIR/<date>_<device>_samplers.json.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import time_call, write_result

from jaxcf import diffusion as D


def trivial_model(x, t, cond):
    return 0.1 * x


def _samplers(sched, flow, steps):
    key = jax.random.key(0)
    null = {"label": jnp.array([0])}
    cfg = D.classifier_free_guidance(lambda x, t, c: trivial_model(x, t, c), 3.0, null)
    return {
        "ddpm": lambda x: D.ddpm_sample(trivial_model, sched, x, key=key, num_steps=steps),
        "ddim": lambda x: D.ddim_sample(trivial_model, sched, x, num_steps=steps),
        "ddim_eta1": lambda x: D.ddim_sample(
            trivial_model, sched, x, key=key, num_steps=steps, eta=1.0
        ),
        "ddim_cfg": lambda x: D.ddim_sample(
            cfg, sched, x, num_steps=steps, cond={"label": jnp.ones((x.shape[0],), jnp.int32)}
        ),
        "ddim_invert": lambda x: D.ddim_invert(trivial_model, sched, x, num_steps=steps),
        "dpm_solver_pp": lambda x: D.dpm_solver_pp(trivial_model, sched, x, num_steps=steps),
        "flow_euler": lambda x: D.flow_sample(trivial_model, flow, x, num_steps=steps),
        "flow_heun": lambda x: D.flow_sample(
            trivial_model, flow, x, num_steps=steps, solver="heun"
        ),
    }


def _python_loop_ddim(sched, steps):
    """One jitted DDIM step dispatched from Python per iteration."""
    ts = D.respace(sched.num_timesteps, steps)
    step = jax.jit(
        lambda x, t, tp: D.ddim_step(sched, trivial_model(x, t, None), x, t, tp, jnp.zeros_like(x))[
            0
        ]
    )

    def run(x):
        b = x.shape[0]
        for i, t in enumerate(ts):
            tp = ts[i + 1] if i + 1 < len(ts) else -1
            x = step(x, jnp.full((b,), t), jnp.full((b,), tp))
        return x

    return run


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    parser.add_argument(
        "--shape", type=int, nargs="+", default=[64, 64, 4], help="H W C or D H W C"
    )
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"))
    args = parser.parse_args(argv)

    sched, flow = D.linear(), D.rectified_flow()
    rows = []
    for batch in args.batch:
        x = jax.random.normal(jax.random.key(1), (batch, *args.shape))
        cases = {name: jax.jit(fn) for name, fn in _samplers(sched, flow, args.steps).items()}
        cases["ddim_python_loop"] = _python_loop_ddim(sched, args.steps)
        for name, fn in cases.items():
            compile_s, run_s = time_call(lambda fn=fn, x=x: fn(x), args.repeats)
            rows.append(
                {
                    "sampler": name,
                    "batch": batch,
                    "steps": args.steps,
                    "first_call_s": round(compile_s, 4),
                    "run_s": round(run_s, 6),
                    "steps_per_s": round(args.steps / run_s, 1),
                    "us_per_step": round(1e6 * run_s / args.steps, 1),
                }
            )
    dev = jax.devices()[0]
    meta = {"sample_shape": args.shape, "model": "trivial (0.1 * x)"}
    print(
        f"{dev.device_kind} ({dev.platform}), sample shape {args.shape}, "
        f"{args.steps} steps, trivial model"
    )
    print(f"{'sampler':<18}{'batch':>6}{'first call s':>14}{'steps/s':>10}{'us/step':>10}")
    for r in rows:
        print(
            f"{r['sampler']:<18}{r['batch']:>6}{r['first_call_s']:>14.2f}"
            f"{r['steps_per_s']:>10.0f}{r['us_per_step']:>10.1f}"
        )
    path = write_result("samplers", rows, args.out, **meta)
    print(f"wrote {path}")
    return {"results": rows, **meta}


if __name__ == "__main__":
    main()
