"""jaxcf against PyTorch on this machine's CPU: the same workloads side by side, in one run.

    python benchmarks/vs_torch.py [--reps 5] [--warmup 1] [--only NAME[,NAME]] [--quick]
    python benchmarks/vs_torch.py --render benchmarks/results/<date>_cpu_vs_torch.json

Workloads (NAME):
  dit_s2, dit_b2   DiT-S/2 and DiT-B/2 forward, 16x16x4 latents, batch 8; PyTorch side:
                   diffusers' DiTTransformer2DModel, its weights converted into jaxcf's DiT
                   with jaxcf.convert.dit (one set of weights on both sides).
  diffscm_unet     Diff-SCM's ADM UNet (preset diffscm_brats64, 64x64x4) forward, batch 1
                   and 8; PyTorch side: benchmarks/torch_reference/adm_unet.py, the same
                   network written in PyTorch, jaxcf's weights copied in.
  wdm_unet         WDM's 3-D UNet on wavelet coefficients, batch 8: a 32^3 volume (16^3 x 8
                   sub-bands, 32 channels, mult 1,2,2,4) and the tiny preset (16^3 volume);
                   PyTorch side: the same reference module in 3-D.
  ddim_cfg         50-step DDIM with classifier-free guidance (cond and uncond in one
                   doubled forward on both sides), batch 8, on the Diff-SCM UNet at half
                   width (32 channels; the full network takes minutes per run on a CPU):
                   jaxcf's jitted one-scan ddim_sample vs a diffusers DDIMScheduler loop.
  train_step       one training step on the full Diff-SCM UNet, batch 8: eps-MSE loss
                   with dropout 0.1, AdamW, EMA; jaxcf's jitted make_train_step (buffers
                   donated) vs forward + backward + torch.optim.AdamW + an EMA update.

Before anything is timed, both sides get the same inputs and their outputs are compared
(forwards and whole DDIM chains: max |difference| <= tolerance x max(1, max |output|);
training: loss and gradient norm at fixed noise, dropout off); a mismatch stops the run.

Timing. Both sides run fp32 in eager/jitted form as users run them (PyTorch eager, no
torch.compile; jaxcf under jax.jit). After `--warmup` calls per side (the first compiles
jaxcf's function; its time is reported as first_call_s), the `--reps` timed calls are
interleaved A, B, A, B, ... so that load from other processes hits both sides alike; each
side's min / median / max are reported with the ratio torch_median / jaxcf_median (> 1:
jaxcf faster). Threads: XLA's CPU client uses every core by default; PyTorch is given
torch.set_num_threads(os.cpu_count()). OMP_WAIT_POLICY=PASSIVE is set before torch is
imported: otherwise PyTorch's OpenMP workers spin-wait after each parallel region, keeping
cores busy while the JAX side runs (and while Python code runs between PyTorch ops), which
distorts the comparison. Override it in the environment to measure the other policy.

FLOPs (2 per multiply-add): jaxcf's from XLA's cost analysis, PyTorch's from
torch.utils.flop_counter. They count differently: XLA includes elementwise work but skips
the multiplications of a convolution's zero padding; PyTorch counts matrix products,
convolutions (padding included) and attention only. On 2-D networks they agree within a
few percent; on small 3-D grids (8^3, 4^3), where most kernel taps touch padding, XLA's
count is up to ~30% lower for the same network.

Writes <out>/<date>_cpu_vs_torch.json (device, versions, threads, per-case timings,
parameters, GFLOPs, checks) and the markdown table next to it (.md); `render_table(json)`
builds that table.
"""

from __future__ import annotations

import os

# Before torch (diffusers imports it) is loaded: see the module docstring.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import dataclasses
import datetime
import gc
import json
import math
import pathlib
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

WORKLOADS = ("dit_s2", "dit_b2", "diffscm_unet", "wdm_unet", "ddim_cfg", "train_step")
FORWARD_TOL = 1e-4  # forwards: max |jaxcf - torch| <= FORWARD_TOL * max(1, max |output|)
CHAIN_TOL = 1e-3  # a whole DDIM chain (50 steps of rounding differences), same scaling
GRAD_TOL = 1e-3  # training: relative difference of the loss and of the gradient norm


# --- small helpers -------------------------------------------------------------------------------


def _torch():
    import torch

    return torch


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _unflatten_like(tree: dict, flat: dict, prefix: str = "") -> dict:
    return {
        k: _unflatten_like(v, flat, f"{prefix}{k}.")
        if isinstance(v, dict)
        else jnp.asarray(flat[f"{prefix}{k}"])
        for k, v in tree.items()
    }


def _param_count(params) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def _torch_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _torch_flops(fn: Callable[[], Any]) -> float:
    """FLOPs PyTorch's flop counter sees in fn() (attention through the math kernel, whose
    matrix products the counter can see; the fused CPU kernel is invisible to it)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def _xla_flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0]
    return float(cost.get("flops", float("nan")))


def _gflops(flops: float) -> float:
    return round(flops / 1e9, 3)


def _compare(got: np.ndarray, want: np.ndarray, tol: float, what: str) -> dict:
    """Max |got - want| against tol * max(1, max |want|); raises on a mismatch."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise AssertionError(f"{what}: shapes differ, jaxcf {got.shape} vs torch {want.shape}")
    diff = float(np.max(np.abs(got - want)))
    scale = float(np.max(np.abs(want)))
    bound = tol * max(1.0, scale)
    if not diff <= bound:  # also catches NaN
        raise AssertionError(f"{what}: max |jaxcf - torch| = {diff:.3g} > {bound:.3g}")
    return {"max_abs_diff": diff, "max_abs_output": scale, "tolerance": bound, "passed": True}


def _channels_first(x: np.ndarray):
    return _torch().from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))


def _channels_last(x) -> np.ndarray:
    return np.moveaxis(x.detach().numpy(), 1, -1)


def _randomise_zero_kernels(flat: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """jaxcf zero-initialises the last layer of every residual branch (adaLN-Zero, ADM's
    zero convs), so a fresh network is nearly the identity and a parity check would compare
    zeros: give those kernels random values of PyTorch's default scale."""
    rng = np.random.default_rng(seed)
    out = {}
    for path, value in flat.items():
        value = np.asarray(value)
        if path.endswith("kernel") and not value.any():
            fan_in = math.prod(value.shape[:-1])
            value = (rng.standard_normal(value.shape) / math.sqrt(fan_in)).astype(np.float32)
        out[path] = value
    return out


# --- cases and the interleaved timer -------------------------------------------------------------


@dataclasses.dataclass
class Case:
    """One row of the table: a jaxcf and a torch callable doing the same work."""

    workload: str
    label: str
    batch: int
    run_jaxcf: Callable[[], Any]
    run_torch: Callable[[], Any]
    check: Callable[[Any, Any], dict] | None
    info: dict


def _stats(times: list[float]) -> dict:
    return {
        "times_s": [round(t, 6) for t in times],
        "min_s": round(min(times), 6),
        "median_s": round(statistics.median(times), 6),
        "max_s": round(max(times), 6),
    }


def measure(case: Case, warmup: int, reps: int) -> dict:
    """First call of each side (compiles jaxcf), the output check, warmup - 1 more calls each,
    then reps timed calls interleaved jaxcf, torch, jaxcf, torch, ..."""
    torch = _torch()
    sides = {
        "jaxcf": (case.run_jaxcf, jax.block_until_ready),
        "torch": (case.run_torch, lambda out: out),  # eager CPU torch returns when done
    }
    first, outputs = {}, {}
    with torch.inference_mode(case.workload != "train_step"):
        for name, (fn, sync) in sides.items():
            start = time.perf_counter()
            outputs[name] = sync(fn())
            first[name] = time.perf_counter() - start
        check = case.check(outputs["jaxcf"], outputs["torch"]) if case.check else None
        del outputs
        for _ in range(warmup - 1):
            for fn, sync in sides.values():
                sync(fn())
        times = {name: [] for name in sides}
        for _ in range(reps):
            for name, (fn, sync) in sides.items():
                start = time.perf_counter()
                sync(fn())
                times[name].append(time.perf_counter() - start)
    row = {"workload": case.workload, "case": case.label, "batch": case.batch}
    row.update({k: v for k, v in case.info.items() if k not in ("jaxcf", "torch")})
    for name in sides:
        row[name] = {
            **case.info.get(name, {}),
            "first_call_s": round(first[name], 4),
            **_stats(times[name]),
        }
    row["ratio_torch_over_jaxcf"] = round(row["torch"]["median_s"] / row["jaxcf"]["median_s"], 3)
    row["check"] = check
    return row


# --- DiT: jaxcf vs diffusers DiTTransformer2DModel -----------------------------------------------

_DIT = {"DiT-S/2": (12, 384, 6), "DiT-B/2": (12, 768, 12)}  # depth, hidden, heads (DiT Table 1)
_DIT_QUICK = {"DiT-S/2": (2, 64, 2), "DiT-B/2": (2, 96, 2)}


def dit_cases(workload: str, quick: bool) -> list[Case]:
    import diffusers
    import torch

    from jaxcf import models
    from jaxcf.convert.dit import dit_params_from_diffusers

    name = {"dit_s2": "DiT-S/2", "dit_b2": "DiT-B/2"}[workload]
    depth, hidden, heads = (_DIT_QUICK if quick else _DIT)[name]
    size, batch, classes = (8, 2, 2) if quick else (16, 8, 2)
    torch.manual_seed(0)
    ref = diffusers.DiTTransformer2DModel(
        num_attention_heads=heads,
        attention_head_dim=hidden // heads,
        in_channels=4,
        out_channels=8,  # learned sigma, as the presets
        num_layers=depth,
        sample_size=size,
        patch_size=2,
        num_embeds_ada_norm=classes,
        norm_eps=1e-6,  # the original DiT's (diffusers defaults to 1e-5 before the MLP)
    ).eval()
    with torch.no_grad():
        for p in ref.parameters():  # adaLN-Zero and output layers start at zero
            if not p.any():
                p.normal_(0.0, 0.02)
        shared = ref.transformer_blocks[0].norm1.emb.state_dict()
        for block in ref.transformer_blocks[1:]:  # jaxcf (as the original DiT) shares one
            block.norm1.emb.load_state_dict(shared)
    config = dict(
        family="dit",
        input_size=size,
        patch_size=2,
        in_channels=4,
        hidden_size=hidden,
        depth=depth,
        num_heads=heads,
        num_classes=classes,
        learn_sigma=True,
        freq_shift=1.0,  # diffusers' timestep frequencies
    )
    apply_fn, params = models.build(config, jax.random.key(0))
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    params = dit_params_from_diffusers(state, params)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, size, size, 4)).astype(np.float32)
    t = rng.integers(0, 1000, batch).astype(np.int32)
    labels = rng.integers(0, classes, batch).astype(np.int32)
    xj, tj, cj = jnp.asarray(x), jnp.asarray(t), {"label": jnp.asarray(labels)}
    xt, tt, lt = _channels_first(x), torch.from_numpy(t).long(), torch.from_numpy(labels).long()
    forward = jax.jit(apply_fn)
    run_torch = lambda: ref(xt, timestep=tt, class_labels=lt, return_dict=False)[0]
    with torch.no_grad():
        torch_flops = _torch_flops(run_torch)
    info = {
        "reference": "diffusers DiTTransformer2DModel (weights converted by jaxcf.convert.dit)",
        "shape": [size, size, 4],
        "notes": (
            "diffusers keeps a copy of the timestep / label embedder in every block (and "
            "runs each); jaxcf, like the original DiT, one shared: hence the parameter gap"
        ),
        "jaxcf": {
            "params": _param_count(params),
            "gflops": _gflops(models.forward_flops(apply_fn, params, xj, tj, cj)),
        },
        "torch": {"params": _torch_params(ref), "gflops": _gflops(torch_flops)},
    }
    check = lambda got, want: _compare(got, _channels_last(want), FORWARD_TOL, name)
    label = f"{name} forward, {size}x{size}x4" + (" (quick: tiny)" if quick else "")
    return [
        Case(workload, label, batch, lambda: forward(params, xj, tj, cj), run_torch, check, info)
    ]


# --- ADM UNets: jaxcf vs benchmarks/torch_reference/adm_unet.py ---------------------------------

_DIFFSCM = {"family": "unet", "preset": "diffscm_brats64"}
_TINY2D = {"family": "unet", "preset": "tiny2d"}
# The torch reference takes the UNet's constructor arguments except these (text
# cross-attention and options the benchmark's networks leave at their defaults).
_JAX_ONLY = (
    "dtype",
    "remat",
    "dropout_min_level",
    "context_dim",
    "cross_attention_resolutions",
    "conv_resample",
)


def unet_pair(config: dict, seed: int = 0):
    """(apply_fn, params, torch UNet, config kwargs): a jaxcf UNet with random values in its
    zero-initialised kernels, and the PyTorch reference holding the same weights."""
    from flax import nnx
    from torch_reference.adm_unet import UNet, state_dict_from_jaxcf

    from jaxcf import models

    _, kwargs = models.model_kwargs(config)
    if kwargs.get("dropout_min_level") or kwargs.get("cross_attention_resolutions"):
        raise ValueError("the torch reference has no dropout levels or text cross-attention")
    apply_fn, params = models.build(config, jax.random.key(seed))
    pure = nnx.to_pure_dict(params)
    flat = _randomise_zero_kernels(jax.tree.map(np.asarray, _flatten(pure)), seed)
    nnx.replace_by_pure_dict(params, _unflatten_like(pure, flat))
    module = UNet(**{k: v for k, v in kwargs.items() if k not in _JAX_ONLY})
    module.load_state_dict(state_dict_from_jaxcf(flat), strict=True)
    return apply_fn, params, module.eval(), kwargs


def _unet_inputs(shape, batch, num_classes, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *shape)).astype(np.float32)
    t = rng.integers(0, 1000, batch).astype(np.int32)
    labels = rng.integers(0, num_classes, batch).astype(np.int32) if num_classes else None
    return x, t, labels


def _unet_forward_case(workload, label, config, shape, batch, reference) -> Case:
    torch = _torch()
    from jaxcf import models

    apply_fn, params, module, kwargs = unet_pair(config)
    x, t, labels = _unet_inputs(shape, batch, kwargs.get("num_classes", 0))
    xj, tj = jnp.asarray(x), jnp.asarray(t)
    cj = None if labels is None else {"label": jnp.asarray(labels)}
    xt, tt = _channels_first(x), torch.from_numpy(t).long()
    lt = None if labels is None else torch.from_numpy(labels).long()
    forward = jax.jit(apply_fn)
    run_torch = lambda: module(xt, tt, lt)
    with torch.no_grad():
        torch_flops = _torch_flops(run_torch)
    info = {
        "reference": reference,
        "shape": list(shape),
        "jaxcf": {
            "params": _param_count(params),
            "gflops": _gflops(models.forward_flops(apply_fn, params, xj, tj, cj)),
        },
        "torch": {"params": _torch_params(module), "gflops": _gflops(torch_flops)},
    }
    check = lambda got, want: _compare(got, _channels_last(want), FORWARD_TOL, label)
    return Case(workload, label, batch, lambda: forward(params, xj, tj, cj), run_torch, check, info)


_REFERENCE = "benchmarks/torch_reference/adm_unet.py (same architecture, jaxcf's weights)"


def diffscm_cases(workload: str, quick: bool) -> list[Case]:
    config, shape, name = (
        (_TINY2D, (32, 32, 4), "UNet tiny2d (quick)")
        if quick
        else (_DIFFSCM, (64, 64, 4), "Diff-SCM UNet")
    )
    batches = (1, 2) if quick else (1, 8)
    label = f"{name} forward, {'x'.join(map(str, shape))}"
    return [_unet_forward_case(workload, label, config, shape, b, _REFERENCE) for b in batches]


# 32^3 volumes -> a 16^3 grid of 8 Haar sub-bands; WDM's UNet at half width, one level less.
_WDM32 = {
    "family": "wdm",
    "preset": "wdm128",
    "image_size": 16,
    "model_channels": 32,
    "channel_mult": (1, 2, 2, 4),
}
_WDM_TINY = {"family": "wdm", "preset": "wdm_tiny"}


def wdm_cases(workload: str, quick: bool) -> list[Case]:
    cases = [("WDM UNet tiny, 16^3 volume (8^3x8 wavelet grid)", _WDM_TINY, (8, 8, 8, 8))]
    if not quick:
        label = "WDM UNet 32 ch mult 1,2,2,4, 32^3 volume (16^3x8 wavelet grid)"
        cases.insert(0, (label, _WDM32, (16, 16, 16, 8)))
    batch = 2 if quick else 8
    return [_unet_forward_case(workload, *c, batch, _REFERENCE) for c in cases]


# --- DDIM with classifier-free guidance ----------------------------------------------------------

# Diff-SCM's network at half width for the sampler (50 doubled forwards per run).
_DIFFSCM_HALF = dict(_DIFFSCM, model_channels=32)
GUIDANCE_SCALE = 3.0


def ddim_cases(workload: str, quick: bool) -> list[Case]:
    import torch
    from diffusers import DDIMScheduler
    from torch_reference.loops import ddim_cfg_sample

    from jaxcf import diffusion as D
    from jaxcf import models

    config, shape = (_TINY2D, (32, 32, 4)) if quick else (_DIFFSCM_HALF, (64, 64, 4))
    batch, steps = (2, 4) if quick else (8, 50)
    apply_fn, params, module, kwargs = unet_pair(config)
    null = kwargs["num_classes"]  # the null label of guidance
    x, _, labels = _unet_inputs(shape, batch, kwargs["num_classes"])
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=True,  # the last step lands on abar = 1, as jaxcf's t = -1
        timestep_spacing="leading",
        prediction_type="epsilon",
    )
    # The same float32 abar_t on both sides (diffusers computes its betas in float32).
    schedule = D.from_alphas_cumprod(scheduler.alphas_cumprod.numpy())

    def sample(params, x_T, labels):
        model_fn = D.classifier_free_guidance(
            lambda x, t, c: apply_fn(params, x, t, c), GUIDANCE_SCALE, {"label": jnp.array([null])}
        )
        return D.ddim_sample(model_fn, schedule, x_T, num_steps=steps, cond={"label": labels})

    sample_jit = jax.jit(sample)
    xj, lj = jnp.asarray(x), jnp.asarray(labels)
    xt, lt = _channels_first(x), torch.from_numpy(labels).long()
    run_torch = lambda: ddim_cfg_sample(
        module, scheduler, xt, lt, null_label=null, scale=GUIDANCE_SCALE, steps=steps
    )

    x2, t2 = jnp.concatenate([xj, xj]), jnp.full((2 * batch,), 500, jnp.int32)
    per_forward = models.forward_flops(apply_fn, params, x2, t2, {"label": jnp.tile(lj, 2)})
    with torch.no_grad():
        xt2, tt2, lt2 = torch.cat([xt, xt]), torch.full((2 * batch,), 500), torch.cat([lt, lt])
        torch_per_forward = _torch_flops(lambda: module(xt2, tt2, lt2))
    width = kwargs["model_channels"]
    info = {
        "reference": "diffusers DDIMScheduler loop driving " + _REFERENCE,
        "shape": list(shape),
        "steps": steps,
        "guidance_scale": GUIDANCE_SCALE,
        "notes": (
            f"UNet: Diff-SCM architecture at {width} channels; GFLOPs = steps x one "
            f"forward at batch {2 * batch} (cond + uncond)"
        ),
        "jaxcf": {"params": _param_count(params), "gflops": _gflops(steps * per_forward)},
        "torch": {"params": _torch_params(module), "gflops": _gflops(steps * torch_per_forward)},
    }
    name = "UNet tiny2d (quick)" if quick else f"Diff-SCM UNet ({width} ch)"
    label = f"DDIM {steps} steps + CFG, {name}, {'x'.join(map(str, shape))}"
    check = lambda got, want: _compare(got, _channels_last(want), CHAIN_TOL, label)
    return [
        Case(workload, label, batch, lambda: sample_jit(params, xj, lj), run_torch, check, info)
    ]


# --- one training step ---------------------------------------------------------------------------

LR, BETAS, EPS, WEIGHT_DECAY, EMA_DECAY = 1e-4, (0.9, 0.999), 1e-8, 0.01, 0.9999


def train_cases(workload: str, quick: bool) -> list[Case]:
    import ml_collections
    import optax
    import torch
    from torch_reference.loops import TrainStep, loss_and_grad_norm

    from jaxcf import diffusion as D
    from jaxcf.training.step import init_state, make_train_step

    config, shape = (_TINY2D, (32, 32, 4)) if quick else (_DIFFSCM, (64, 64, 4))
    batch = 2 if quick else 8
    apply_fn, params, module, kwargs = unet_pair(config)
    x, t, labels = _unet_inputs(shape, batch, kwargs["num_classes"])
    schedule = D.linear()
    abar = torch.from_numpy(np.array(schedule.alphas_cumprod))

    # jaxcf: the library's train step around a minimal task (eps-MSE, dropout on).
    class Task:
        def __init__(self, params):
            self.params = {"model": params}

        @staticmethod
        def loss(params, frozen, batch, key):
            k_loss, k_drop = jax.random.split(key)
            model_fn = lambda x, t, c: apply_fn(params["model"], x, t, c, dropout_key=k_drop)
            return D.diffusion_loss(
                model_fn, schedule, batch["image"], k_loss, {"label": batch["label"]}
            )

    task = Task(params)
    optimizer = optax.adamw(LR, b1=BETAS[0], b2=BETAS[1], eps=EPS, weight_decay=WEIGHT_DECAY)
    optim = ml_collections.ConfigDict({"ema_decay": EMA_DECAY, "ema_warmup": False})
    train_step = make_train_step(task, optimizer, optim, seed=0)
    step_jit = jax.jit(train_step, donate_argnums=0)
    jbatch = {"image": jnp.asarray(x), "label": jnp.asarray(labels)}
    state = [init_state(task, optimizer)]

    def run_jaxcf():
        state[0], metrics = step_jit(state[0], {}, jbatch)
        return state[0], metrics

    # torch: the same step, written by hand (torch_reference/loops.py).
    xt, lt = _channels_first(x), torch.from_numpy(labels).long()
    torch_step = TrainStep(
        module, abar, lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY, ema_decay=EMA_DECAY
    )
    run_torch = lambda: torch_step(xt, lt)

    # Parity before timing: loss and gradient norm at fixed noise and timesteps, no dropout.
    rng = np.random.default_rng(2)
    noise = rng.standard_normal(x.shape).astype(np.float32)
    abar_np = np.asarray(schedule.alphas_cumprod)[t].reshape(-1, *(1,) * len(shape))
    x_t = (np.sqrt(abar_np) * x + np.sqrt(1 - abar_np) * noise).astype(np.float32)
    eps_t = _channels_first(noise)
    cond = {"label": jnp.asarray(labels)}

    def fixed_loss(p, x_t, t, noise):
        return jnp.mean((apply_fn(p, x_t, t, cond) - noise) ** 2)

    loss_j, grads_j = jax.jit(jax.value_and_grad(fixed_loss))(
        params, jnp.asarray(x_t), jnp.asarray(t), jnp.asarray(noise)
    )
    norm_j = float(optax.tree.norm(grads_j))
    del grads_j
    module.eval()
    xt_fixed, tt_fixed = _channels_first(x_t), torch.from_numpy(t).long()
    forward = lambda m: m(xt_fixed, tt_fixed, lt)
    out = []  # counted on the check's own pass: forward + backward
    torch_flops = _torch_flops(lambda: out.extend(loss_and_grad_norm(module, forward, eps_t)))
    loss_t, norm_t = (float(v) for v in out)
    rel = lambda a, b: abs(a - b) / max(abs(b), 1e-12)
    check = {
        "loss": [float(loss_j), loss_t],
        "grad_norm": [norm_j, norm_t],
        "max_rel_diff": max(rel(float(loss_j), loss_t), rel(norm_j, norm_t)),
        "tolerance": GRAD_TOL,
    }
    if not check["max_rel_diff"] <= GRAD_TOL:
        raise AssertionError(f"train step parity: {check}")
    check["passed"] = True

    jax_flops = _xla_flops(train_step, state[0], {}, jbatch)
    name = "UNet tiny2d (quick)" if quick else "Diff-SCM UNet"
    label = f"train step (eps MSE, AdamW, EMA), {name}, {'x'.join(map(str, shape))}"
    info = {
        "reference": "torch_reference/loops.py TrainStep: forward + backward + "
        "torch.optim.AdamW (default implementation) + EMA, on " + _REFERENCE,
        "shape": list(shape),
        "notes": (
            f"dropout {kwargs.get('dropout', 0.0)} on both sides; AdamW lr {LR}, weight decay "
            f"{WEIGHT_DECAY}; EMA {EMA_DECAY}; check: loss and gradient norm at fixed noise"
        ),
        "jaxcf": {"params": _param_count(params), "gflops": _gflops(jax_flops)},
        "torch": {"params": _torch_params(module), "gflops": _gflops(torch_flops)},
    }
    return [Case(workload, label, batch, run_jaxcf, run_torch, lambda *_: check, info)]


BUILDERS: dict[str, Callable[[str, bool], list[Case]]] = {
    "dit_s2": dit_cases,
    "dit_b2": dit_cases,
    "diffscm_unet": diffscm_cases,
    "wdm_unet": wdm_cases,
    "ddim_cfg": ddim_cases,
    "train_step": train_cases,
}


# --- environment, output --------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    import diffusers
    import flax
    import jaxlib
    import optax
    import torch

    return {
        "device": jax.devices()[0].device_kind,
        "platform": jax.devices()[0].platform,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "host": platform.node(),
        "threads": {
            "torch_intra_op": torch.get_num_threads(),
            "torch_inter_op": torch.get_num_interop_threads(),
            "xla": "XLA CPU client default (one worker per core)",
        },
        "env": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "XLA_FLAGS")},
        "versions": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "jaxlib": jaxlib.__version__,
            "flax": flax.__version__,
            "optax": optax.__version__,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "numpy": np.__version__,
        },
    }


def _fmt_s(side: dict) -> str:
    return f"{side['median_s']:.4g} [{side['min_s']:.4g}, {side['max_s']:.4g}]"


def _fmt_check(check: dict | None) -> str:
    if not check:
        return "-"
    if "grad_norm" in check:
        return f"loss, |grad| rel. diff {check['max_rel_diff']:.1e}"
    return f"max abs diff {check['max_abs_diff']:.1e}"


def render_table(result: dict) -> str:
    """The markdown table (with a one-line header of conditions) for a vs_torch JSON result."""
    env = result
    threads = env["threads"]
    lines = [
        f"jaxcf vs PyTorch, {env['date']}, {env['cpu_model']} ({env['cpu_count']} cores; "
        f"torch {threads['torch_intra_op']} threads, OMP_WAIT_POLICY="
        f"{env['env']['OMP_WAIT_POLICY']}), fp32, {env['reps']} interleaved timed runs per "
        f"side after {env['warmup']} warm-up; seconds per call: median [min, max].",
        "",
        "| Workload | Batch | jaxcf s | PyTorch s | PyTorch / jaxcf | Params jaxcf / PyTorch "
        "| GFLOP jaxcf / PyTorch | Outputs agree |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["results"]:
        j, t = r["jaxcf"], r["torch"]
        params = f"{j['params'] / 1e6:.2f}M / {t['params'] / 1e6:.2f}M"
        gflops = f"{j['gflops']:.4g} / {t['gflops']:.4g}"
        lines.append(
            f"| {r['case']} | {r['batch']} | {_fmt_s(j)} | {_fmt_s(t)} | "
            f"{r['ratio_torch_over_jaxcf']:.2f}x | {params} | {gflops} | {_fmt_check(r['check'])} |"
        )
    return "\n".join(lines) + "\n"


def _selected(only: str | None) -> list[str]:
    if not only:
        return list(WORKLOADS)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise SystemExit(f"--only: unknown workload(s) {unknown}; choose from {list(WORKLOADS)}")
    return names


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="timed runs per side")
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed runs per side (the first compiles jaxcf)"
    )
    parser.add_argument("--only", default=None, help="comma-separated: " + ",".join(WORKLOADS))
    parser.add_argument("--quick", action="store_true", help="tiny sizes (tests)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"))
    parser.add_argument("--render", type=pathlib.Path, help="print the table of a result JSON")
    args = parser.parse_args(argv)
    if args.render:
        result = json.loads(args.render.read_text())
        print(render_table(result), end="")
        return result
    if args.reps < 1 or args.warmup < 1:
        raise SystemExit("--reps and --warmup must be >= 1")
    names = _selected(args.only)

    torch = _torch()
    torch.set_num_threads(os.cpu_count())
    result = {
        "benchmark": "vs_torch",
        "date": datetime.date.today().isoformat(),
        **environment(),
        "dtype": "float32",
        "reps": args.reps,
        "warmup": args.warmup,
        "quick": args.quick,
        "command": " ".join(["python benchmarks/vs_torch.py", *(argv or sys.argv[1:])]),
        "results": [],
    }
    for name in names:
        for case in BUILDERS[name](name, args.quick):
            print(f"{case.label}, batch {case.batch} ...", flush=True)
            row = measure(case, args.warmup, args.reps)
            result["results"].append(row)
            print(
                f"  jaxcf {_fmt_s(row['jaxcf'])} s | torch {_fmt_s(row['torch'])} s | "
                f"torch/jaxcf {row['ratio_torch_over_jaxcf']:.2f}x | {_fmt_check(row['check'])}",
                flush=True,
            )
            del case
            gc.collect()
    args.out.mkdir(parents=True, exist_ok=True)
    slug = "cpu" if result["platform"] == "cpu" else result["device"].lower().replace(" ", "-")
    path = args.out / f"{result['date']}_{slug}_vs_torch.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    table = render_table(result)
    path.with_suffix(".md").write_text(table)
    print()
    print(table, end="")
    print(f"wrote {path} and {path.with_suffix('.md').name}")
    return result


if __name__ == "__main__":
    main()
