"""End-to-end workloads with random-init weights: WDM sampling, counterfactuals, training.

    python benchmarks/workloads.py sample          [--smoke] [--steps 1000] [--dtype ...]
    python benchmarks/workloads.py counterfactual  [--smoke] [--slices 64] [--dtype ...]
    python benchmarks/workloads.py train           [--smoke] [--steps 10] [--models ...]

sample          seconds for one WDM 128^3 volume (batch 1, the wavelet UNet of preset
                wdm128): a 1000-step DDIM (eta 0) and a 1000-step DDPM chain, each one
                compiled lax.scan with WDM's wavelet clip, as jaxcf samples.
counterfactual  seconds per slice of Diff-SCM and promptable counterfactual diffusion
                through jaxcf.counterfactual's runner (chunks of counterfactual.batch_size
                on the mesh, paper settings: 100 respaced steps, guidance w = 3) with the
                64 px Diff-SCM UNet (configs/diffscm_brats.py) and the 128 px UNet
                (configs/pcf_unet_brats.py); post-processing not included.
train           steps/s of jaxcf's training step (forward + backward + AdamW + EMA, the
                state donated; jaxcf.training.step) at the papers' batch sizes, per model.

Weights are random: the timings are those of trained networks, the outputs mean nothing.
Compile time is measured apart from run time (AOT lower + compile). FLOPs come from XLA's
cost analysis (2 per multiply-add), model-FLOPs utilisation against the device's dense
peak (common.PEAK_TFLOPS; none on CPUs). Each subcommand rewrites its JSON after every
row, so a stage cut short by a timeout keeps what it measured:
DIR/<date>_<device>_{wdm_sampling,counterfactual,train_step}.json. --smoke: toy sizes that
run in seconds on a CPU (the suite's test).
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import default_out, peak_tflops, write_result
from memory3d import wdm_config

from jaxcf import diffusion as D
from jaxcf import models
from jaxcf.training.optim import make_optimizer
from jaxcf.training.step import init_state, make_train_step
from jaxcf.training.tasks import make_task

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def load_config(name: str, arg: str | None = None):
    """configs/<name>.py's get_config(arg)."""
    spec = importlib.util.spec_from_file_location(f"bench_config_{name}", CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def smoke_config(name: str):
    """configs/<name>.py's toy variant, shrunk further to a one-level UNet without attention
    (the suite's --smoke test compiles it in seconds; the numbers mean nothing)."""
    config = load_config(name, "toy")
    config.model.update(channel_mult=(1,), attention_resolutions=(), model_channels=16)
    return config


def _mfu(flops: float | None, seconds: float, dtype: str) -> tuple[float | None, float | None]:
    """(achieved TFLOP/s, fraction of the device's dense peak or None)."""
    if not flops or not seconds:
        return None, None
    tflops = flops / seconds / 1e12
    peak = peak_tflops(jax.devices()[0].device_kind, dtype)
    return round(tflops, 4), (round(tflops / peak, 4) if peak else None)


def _compiled_flops(compiled) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def _aot(fn, *args, donate=()):
    """(compiled, lower + compile seconds)."""
    start = time.perf_counter()
    compiled = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
    return compiled, time.perf_counter() - start


def _timed(fn, *args):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def _error_row(base: dict, err: BaseException) -> dict:
    traceback.print_exc()
    print(f"{base}: failed: {type(err).__name__}: {str(err)[:200]}", flush=True)
    return {**base, "error": f"{type(err).__name__}: {str(err)[:500]}"}


# -- sample -------------------------------------------------------------------------------------


def _wdm_samplers(task, steps: int) -> dict:
    """name -> fn(params, x_T, key) -> x_0: WDM's samplers with its wavelet clip."""
    clip, schedule = task.space_impl.x0_transform, task.schedule
    return {
        "ddim": lambda p, x, key: D.ddim_sample(
            task.model_fn(p, {}), schedule, x, num_steps=steps, x0_transform=clip
        ),
        "ddpm": lambda p, x, key: D.ddpm_sample(
            task.model_fn(p, {}), schedule, x, key=key, num_steps=steps, x0_transform=clip
        ),
    }


def run_sample(args) -> list[dict]:
    size = 16 if args.smoke else args.size
    steps = args.steps or (10 if args.smoke else 1000)
    rows = []
    for dtype in args.dtype:
        task = make_task(wdm_config(size, remat=False, dtype=dtype), jax.random.key(0))
        params = task.params
        grid = jax.eval_shape(task.encode, {}, jnp.zeros((args.batch, size, size, size, 1)))
        x_T = jax.random.normal(jax.random.key(1), grid.shape)
        t = jnp.zeros((args.batch,), jnp.int32)
        fwd_flops = models.forward_flops(task.model_apply, params["model"], x_T, t, None)
        samplers = _wdm_samplers(task, steps)
        for name in args.samplers:
            base = {"sampler": name, "size": size, "dtype": dtype, "batch": args.batch}
            base.update(steps=steps, wavelet_grid=list(grid.shape[1:]))
            try:
                key = jax.random.key(2)
                # One timed run after the AOT compile (autotuning included there): a
                # 1000-step chain is long enough that a second run would only cost time.
                compiled, compile_s = _aot(samplers[name], params, x_T, key)
                _, run_s = _timed(compiled, params, x_T, key)
                tflops, mfu = _mfu(fwd_flops * steps, run_s, dtype)
                row = {
                    **base,
                    "params": models.param_count(params),
                    "gflops_per_forward": round(fwd_flops / 1e9, 3),
                    "compile_s": round(compile_s, 3),
                    "seconds_per_volume": round(run_s / args.batch, 4),
                    "steps_per_s": round(steps / run_s, 2),
                    "achieved_tflops": tflops,
                    "mfu": mfu,
                }
            except Exception as err:  # out of memory, a cuDNN refusal: record, go on
                row = _error_row(base, err)
            rows.append(row)
            if "error" not in row:
                print(
                    f"WDM {size}^3 {name} {steps} steps {dtype}: {row['seconds_per_volume']:.3f} s "
                    f"per volume, {row['steps_per_s']:.1f} steps/s, compile {compile_s:.1f} s, "
                    f"MFU {mfu}",
                    flush=True,
                )
            write_result("wdm_sampling", rows, args.out, smoke=args.smoke)
    return rows


# -- counterfactual -----------------------------------------------------------------------------


def _slices(n: int, size: int, channels: int, seed: int = 0) -> dict:
    """n synthetic slices in [-1, 1] (a disc of 'brain' on a -1 background) with a square
    'tumour' segmentation: what the methods' prompts and masks need."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    brain = np.hypot(yy, xx) < 0.4 * size
    image = np.where(brain[None, ..., None], rng.uniform(-0.8, 0.8, (n, size, size, channels)), -1)
    seg = np.zeros((n, size, size), np.uint8)
    a, b = size // 2 - size // 8, size // 2 + size // 8
    seg[:, a:b, a:b] = 1
    return {"image": image.astype(np.float32), "seg": seg}


def run_counterfactual(args) -> list[dict]:
    from jaxcf.experiments.segmentation import method_runner
    from jaxcf.inference import TrainedModel

    cases = (
        [("diffscm_brats", "toy")]
        if args.smoke
        else [("diffscm_brats", None), ("pcf_unet_brats", None)]
    )
    rows = []
    for name, arg in cases:
        for dtype in args.dtype:
            config = smoke_config(name) if arg else load_config(name)
            config.model.dtype = dtype
            task = make_task(config, jax.random.key(0))
            trained = TrainedModel(config, task, task.params, task.frozen, step=0)
            size = int(config.data.image_size)
            n = args.slices or (4 if args.smoke else int(config.counterfactual.batch_size))
            batch = _slices(n, size, int(config.data.channels))
            for method in args.methods:
                base = {
                    "method": method,
                    "config": f"configs/{name}.py" + (f":{arg}" if arg else ""),
                    "model": config.model.preset,
                    "image_size": size,
                    "dtype": dtype,
                    "slices": n,
                    "chunk": int(config.counterfactual.batch_size),
                    "num_steps": int(config.counterfactual[method].num_steps),
                }
                try:
                    runner = method_runner(trained, method, progress=False)
                    _, first_s = _timed(runner, batch)  # compiles
                    _, run_s = _timed(runner, batch)
                    row = {
                        **base,
                        "first_call_s": round(first_s, 3),
                        "run_s": round(run_s, 4),
                        "seconds_per_slice": round(run_s / n, 5),
                        "slices_per_s": round(n / run_s, 2),
                    }
                    print(
                        f"{method} {size} px {dtype}: {row['seconds_per_slice']:.4f} s/slice "
                        f"({n} slices, first call {first_s:.1f} s)",
                        flush=True,
                    )
                except Exception as err:
                    row = _error_row(base, err)
                rows.append(row)
                write_result("counterfactual", rows, args.out, smoke=args.smoke)
    return rows


# -- train --------------------------------------------------------------------------------------


def train_configs(smoke: bool) -> dict:
    """name -> (config, batch size): the papers' recipes (or their toy variants)."""
    if smoke:
        return {"diffscm": smoke_config("diffscm_brats")}
    dit = load_config("pcf_dit_brats")
    dit.vae.allow_untrained = True  # random weights: only the cost of encoding matters
    wdm_text = load_config("wdm_ms")
    wdm_text.text.vocab_size = 64  # training reads it from the prepared data
    # The GPU goals' models first: a stage cut short by its timeout loses the others.
    return {
        "wdm128": wdm_config(128, remat=False),
        "pcf_dit": dit,
        "diffscm": load_config("diffscm_brats"),
        "pcf_unet": load_config("pcf_unet_brats"),
        "wdm128_text": wdm_text,
    }


def _train_batch(config, task, batch: int) -> dict:
    """A synthetic batch with the fields the task's conditioner reads."""
    data = config.data
    side = int(data.volume_size if data.task == "volumes" else data.image_size)
    dims = 3 if data.task == "volumes" else 2
    shape = (batch, *(side,) * dims, int(data.channels))
    out = {"image": jax.random.uniform(jax.random.key(3), shape, minval=-1, maxval=1)}
    if task.condition == "label":
        out["label"] = jnp.arange(batch, dtype=jnp.int32) % max(task.num_classes, 1)
    elif task.condition == "prompt":
        length = int(config.text.max_len)
        out["prompt_ids"] = jnp.ones((batch, length), jnp.int32)
        out["prompt_mask"] = jnp.arange(length)[None].repeat(batch, 0) < 4
    return out


def run_train(args) -> list[dict]:
    rows = []
    for name, config in train_configs(args.smoke).items():
        if args.models and name not in args.models:
            continue
        for dtype in args.dtype:
            config.model.dtype = dtype
            batch_size = args.batch or int(config.data.batch_size)
            base = {"model": name, "preset": config.model.preset, "dtype": dtype}
            base.update(batch=batch_size, space=config.diffusion.space)
            try:
                task = make_task(config, jax.random.key(0))
                optimizer = make_optimizer(config.optim, 1000)
                state = init_state(task, optimizer)
                batch = _train_batch(config, task, batch_size)
                step = make_train_step(task, optimizer, config.optim, 0)
                compiled, compile_s = _aot(step, state, task.frozen, batch, donate=(0,))
                flops = _compiled_flops(compiled)
                state, metrics = compiled(state, task.frozen, batch)  # warm-up
                jax.block_until_ready(metrics)
                steps = args.steps or (2 if args.smoke else 10)
                start = time.perf_counter()
                for _ in range(steps):
                    state, metrics = compiled(state, task.frozen, batch)
                jax.block_until_ready(metrics)
                run_s = (time.perf_counter() - start) / steps
                tflops, mfu = _mfu(flops, run_s, dtype)
                row = {
                    **base,
                    "params": models.param_count(state.params),
                    "gflops_per_step": round(flops / 1e9, 3) if flops else None,
                    "compile_s": round(compile_s, 3),
                    "step_s": round(run_s, 5),
                    "steps_per_s": round(1 / run_s, 3),
                    "samples_per_s": round(batch_size / run_s, 2),
                    "achieved_tflops": tflops,
                    "mfu": mfu,
                    "loss_finite": bool(np.isfinite(float(metrics["loss"]))),
                }
                print(
                    f"train {name} {dtype} batch {batch_size}: {row['steps_per_s']:.2f} steps/s, "
                    f"compile {compile_s:.1f} s, MFU {mfu}",
                    flush=True,
                )
                del state
            except Exception as err:
                row = _error_row(base, err)
            rows.append(row)
            write_result("train_step", rows, args.out, smoke=args.smoke)
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="workload", required=True)
    on_cpu = jax.devices()[0].platform == "cpu"
    default_dtype = ["float32"] if on_cpu else ["bfloat16"]
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--smoke", action="store_true", help="toy sizes, seconds on a CPU")
    common.add_argument("--dtype", nargs="+", default=default_dtype)
    common.add_argument("--out", type=pathlib.Path, default=default_out())

    p = sub.add_parser("sample", parents=[common], help="WDM 128^3 sampling time")
    p.add_argument("--size", type=int, default=128, choices=[128, 256])
    p.add_argument("--steps", type=int, default=0, help="0: 1000 (10 with --smoke)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--samplers", nargs="+", choices=["ddim", "ddpm"], default=["ddim", "ddpm"])
    p.set_defaults(run=run_sample)

    p = sub.add_parser("counterfactual", parents=[common], help="seconds per slice")
    p.add_argument(
        "--slices", type=int, default=0, help="0: one chunk, counterfactual.batch_size (32)"
    )
    p.add_argument(
        "--methods", nargs="+", choices=["diffscm", "promptable"], default=["diffscm", "promptable"]
    )
    p.set_defaults(run=run_counterfactual)

    p = sub.add_parser("train", parents=[common], help="training steps/s per model")
    p.add_argument("--steps", type=int, default=0, help="timed steps (0: 10, 2 with --smoke)")
    p.add_argument("--batch", type=int, default=0, help="0: each recipe's own batch size")
    p.add_argument("--models", nargs="*", default=None)
    p.set_defaults(run=run_train)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    main()
