"""Sampler demonstration with a closed-form denoiser: `python -m jaxcf.closed_form_demo`.

No trained network is needed: the denoiser is the closed-form optimum for a small set of
procedural 2-D brain-slice phantoms (jaxcf.diffusion.mixture_denoiser), labelled healthy
(0) or tumour (1). The demo
  1. draws samples with every sampler and times them (compiled once, then re-run), and
  2. runs a Diff-SCM-style counterfactual on tumour slices whose images the model has
     never seen: DDIM-encode with the null label, decode with classifier-free guidance
     toward "healthy" under dynamic normalisation, and threshold |x - x_cf| into a mask,
     scored by Dice against the phantom's tumour mask.
It writes PNG panels and a JSON summary under --out (default runs/closed_form). The
closed-form denoiser knows every case's healthy anatomy, so this checks the samplers, not
how a trained model segments: `python -m jaxcf.demo` (make demo) does that.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxcf import diffusion as D
from jaxcf.counterfactual.diffscm import make_diffscm
from jaxcf.runtime import enable_compilation_cache
from jaxcf.visualization import heatmap_rgb, save_panel, to_uint8

HEALTHY, TUMOUR, NULL = 0, 1, 2


def phantom_slices(count: int, size: int, seed: int):
    """Axial FLAIR-like slices in [-1, 1]: (healthy, with_tumour, tumour_mask), each (N, S, S).

    Brain ellipse with grey/white matter, dark ventricles and a bright tumour (with a
    brighter rim) at a random position inside the white matter.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    healthy, tumour, masks = [], [], []
    for _ in range(count):
        ry, rx = rng.uniform(0.78, 0.92), rng.uniform(0.62, 0.76)
        cy, cx = rng.uniform(-0.05, 0.05, 2)
        head = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        img = np.full((size, size), -1.0)
        img[head < 1.0] = 0.1  # grey matter
        img[head < 0.7] = -0.2  # white matter (dark on FLAIR)
        vent_dx = rng.uniform(0.08, 0.16)
        for side in (-1, 1):
            vent = ((yy - cy + 0.05) / 0.22) ** 2 + ((xx - cx - side * vent_dx) / 0.07) ** 2
            img[vent < 1.0] = -0.8  # CSF suppressed on FLAIR
        healthy.append(img)
        angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.45)
        ty, tx = cy + dist * np.sin(angle) * ry, cx + dist * np.cos(angle) * rx
        r = rng.uniform(0.12, 0.2)
        d = np.sqrt((yy - ty) ** 2 + (xx - tx) ** 2) / r
        with_tumour = img.copy()
        with_tumour[d < 1.0] = 0.75  # oedema
        with_tumour[(d > 0.45) & (d < 0.65)] = 0.95  # enhancing rim
        tumour.append(with_tumour)
        masks.append(d < 1.0)
    return (np.stack(healthy)[..., None], np.stack(tumour)[..., None], np.stack(masks))


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    inter = np.logical_and(pred, truth).sum()
    return float(2 * inter / max(pred.sum() + truth.sum(), 1))


def _timed(fn, *args):
    """(result, seconds of the second call): the first call compiles."""
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def run(out_dir: pathlib.Path, size: int, steps: int, seed: int) -> dict:
    healthy, tumour, masks = phantom_slices(40, size, seed)
    held_out = 8  # tumour images of anatomies 0..7 are never shown to the model
    means = np.concatenate([healthy, tumour[held_out:]])
    labels = np.array([HEALTHY] * len(healthy) + [TUMOUR] * (len(tumour) - held_out))
    sched = D.linear()
    model = D.mixture_denoiser(sched, means, 0.05, labels=jnp.asarray(labels), null_label=NULL)
    key = jax.random.key(seed)
    shape = (6, size, size, 1)
    x_T = jax.random.normal(key, shape)
    null = {"label": jnp.full((shape[0],), NULL)}

    flow = D.rectified_flow()
    flow_model = D.mixture_denoiser(flow, means, 0.05, labels=jnp.asarray(labels), null_label=NULL)
    samplers = {
        "ddpm (ancestral)": jax.jit(
            lambda x: D.ddpm_sample(model, sched, x, key=key, num_steps=steps, cond=null)
        ),
        "ddim (eta 0)": jax.jit(
            lambda x: D.ddim_sample(model, sched, x, num_steps=steps, cond=null)
        ),
        "dpm-solver++ 2M": jax.jit(
            lambda x: D.dpm_solver_pp(model, sched, x, num_steps=min(steps, 25), cond=null)
        ),
        "flow (heun)": jax.jit(
            lambda x: D.flow_sample(
                flow_model, flow, x, num_steps=min(steps, 25), cond=null, solver="heun"
            )
        ),
    }
    rows, timings = [], {}
    for name, fn in samplers.items():
        samples, seconds = _timed(fn, x_T)
        n = steps if name.startswith("dd") else min(steps, 25)
        timings[name] = {"steps": n, "seconds": seconds, "steps_per_s": n / seconds}
        rows.append([to_uint8(s[..., 0], -1, 1) for s in np.asarray(samples)])
    save_panel(rows, out_dir / "samples.png", row_labels=list(samplers))

    # Diff-SCM counterfactual (Sanchez et al. 2022, Alg. 1) on the held-out tumour slices.
    x = jnp.asarray(tumour[:held_out], jnp.float32)
    cases = x.shape[0]

    # The encoding depth is 0.6 here (the paper's 0.75 is for trained models); the
    # inversion evaluates the model at the target time (jaxcf's default).
    # The "weights" of the closed-form denoiser are its component means: an argument of the
    # compiled counterfactual, as a trained network's parameters are.
    def apply(component_means, x_t, t, cond):
        return D.mixture_denoiser(
            sched, component_means, 0.05, labels=jnp.asarray(labels), null_label=NULL
        )(x_t, t, cond)

    counterfactual = make_diffscm(apply, sched, num_steps=100, strength=0.6, model_time="target")
    null_c = {"label": jnp.array([NULL])}
    healthy_c = {"label": jnp.full((cases,), HEALTHY)}
    out, cf_seconds = _timed(counterfactual, jnp.asarray(means), x, null_c, healthy_c)
    z, x_cf = out["latent"], out["counterfactual"]
    heat = np.asarray(out["heatmap"])
    pred = heat > 0.5 * heat.max(axis=(1, 2), keepdims=True)
    dices = [dice(p, m) for p, m in zip(pred, masks[:held_out], strict=True)]
    restored = float(np.abs(np.asarray(x_cf) - healthy[:held_out]).mean())
    panel = [
        [
            to_uint8(x[i, ..., 0], -1, 1),
            to_uint8(np.asarray(z)[i, ..., 0]),
            to_uint8(np.asarray(x_cf)[i, ..., 0], -1, 1),
            heatmap_rgb(heat[i]),
            to_uint8(pred[i]),
            to_uint8(masks[i]),
        ]
        for i in range(cases)
    ]
    save_panel(
        panel,
        out_dir / "counterfactual.png",
        titles=["input", "encoded", "healthy cf", "|x-cf|", "mask", "truth"],
        row_labels=[f"case {i}" for i in range(cases)],
    )
    summary = {
        "device": jax.devices()[0].device_kind,
        "image_size": size,
        "samplers": timings,
        "counterfactual": {
            "cases": cases,
            "seconds": cf_seconds,
            "dice_mean": float(np.mean(dices)),
            "dice_per_case": dices,
            "mean_abs_error_to_true_healthy": restored,
        },
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxcf.closed_form_demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/closed_form"))
    parser.add_argument("--size", type=int, default=64, help="phantom slice size in pixels")
    parser.add_argument("--steps", type=int, default=50, help="sampling steps for DDPM / DDIM")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.size < 16 or args.steps < 1:
        parser.error("--size must be >= 16 and --steps >= 1")
    enable_compilation_cache()
    summary = run(args.out, args.size, args.steps, args.seed)
    print(f"device: {summary['device']}, {args.size}x{args.size} phantoms, batch 6")
    print(f"{'sampler':<20}{'steps':>6}{'seconds':>10}{'steps/s':>10}")
    for name, t in summary["samplers"].items():
        print(f"{name:<20}{t['steps']:>6}{t['seconds']:>10.3f}{t['steps_per_s']:>10.0f}")
    cf = summary["counterfactual"]
    print(
        f"Diff-SCM counterfactual on {cf['cases']} unseen tumour slices: {cf['seconds']:.2f} s, "
        f"Dice {cf['dice_mean']:.3f}, "
        f"|x_cf - healthy truth| {cf['mean_abs_error_to_true_healthy']:.3f}"
    )
    print(f"wrote {args.out}/samples.png, counterfactual.png, summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
