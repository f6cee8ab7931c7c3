"""Denoiser throughput: forward evaluations/s and achieved TFLOP/s per preset.

    python benchmarks/denoisers.py [--size toy|real] [--batch 1 8 ...] [--dtype float32 bfloat16]

Sizes: "toy" (CPU-friendly small networks) or "real" (the papers' networks: the 64 and
128 px Diff-SCM UNets, DiT-B/2 on 16x16x4 latents, WDM on 128^3 volumes); the default is
"real" on a GPU and "toy" otherwise. Without --batch each real network runs at its own
batch sizes (REAL_BATCHES: up to the papers' training batches, DiT-B/2 up to 256). FLOPs
per forward come from XLA's cost analysis (2 per multiply-add). Model-FLOPs utilisation
(MFU) = achieved FLOP/s / the device's dense peak for the compute dtype
(common.PEAK_TFLOPS, matched on jax.devices()[0].device_kind; none on CPUs). Writes JSON to
--out/<date>_<device>_denoisers.json (--out defaults to $JAXCF_BENCH_OUT or
benchmarks/results).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import default_out, peak_tflops, time_call, write_result

from jaxcf import models

# (label, model config, sample shape without batch, cond builder)
_LABEL = lambda b: {"label": jnp.zeros((b,), jnp.int32)}
_TEXT = lambda width: (
    lambda b: {"context": jnp.zeros((b, 16, width)), "context_mask": jnp.ones((b, 16))}
)
CASES = {
    "toy": [
        ("unet tiny2d 32^2", {"family": "unet", "preset": "tiny2d"}, (32, 32, 4), _LABEL),
        ("unet tiny3d 16^3", {"family": "unet", "preset": "tiny3d"}, (16, 16, 16, 1), None),
        ("wdm tiny 16^3", {"family": "wdm", "preset": "wdm_tiny"}, (8, 8, 8, 8), None),
        (
            "DiT-S/2 16^2x4",
            {"family": "dit", "preset": "DiT-S/2", "input_size": 16, "num_classes": 2},
            (16, 16, 4),
            _LABEL,
        ),
    ],
    "real": [
        (
            "Diff-SCM UNet 64^2",
            {"family": "unet", "preset": "diffscm_brats64"},
            (64, 64, 4),
            _LABEL,
        ),
        (
            "PCF UNet 128^2",
            {"family": "unet", "preset": "pcf_unet_brats128"},
            (128, 128, 4),
            _LABEL,
        ),
        (
            "DiT-B/2 16^2x4",
            {"family": "dit", "preset": "DiT-B/2", "input_size": 16, "num_classes": 2},
            (16, 16, 4),
            _LABEL,
        ),
        ("WDM 128^3", {"family": "wdm", "preset": "wdm128"}, (64, 64, 64, 8), None),
        ("WDM-text 128^3", {"family": "wdm", "preset": "wdm128_text"}, (64, 64, 64, 8), _TEXT(768)),
    ],
}

# Batch sizes per real network when --batch is not given: 1, a middle one, and the
# papers' training batch (Diff-SCM 64, PCF 128) or the MFU goal's (DiT-B/2 >= 256); WDM
# volumes are large (one 128^3 forward is ~1 TFLOP), so 1 and 4.
REAL_BATCHES = {
    "Diff-SCM UNet 64^2": [1, 64],
    "PCF UNet 128^2": [1, 128],
    "DiT-B/2 16^2x4": [1, 64, 256],
    "WDM 128^3": [1, 4],
    "WDM-text 128^3": [1],
}


def _inputs(shape, cond_fn, batch, abstract: bool):
    make = (lambda s, d: jax.ShapeDtypeStruct(s, d)) if abstract else (lambda s, d: jnp.zeros(s, d))
    x = make((batch, *shape), jnp.float32)
    t = make((batch,), jnp.int32)
    cond = None
    if cond_fn:
        cond = jax.tree.map(lambda a: make(a.shape, a.dtype), cond_fn(batch))
    return x, t, cond


def bench_case(label, config, shape, cond_fn, batch, dtype, repeats, flops_only=False):
    """One row: parameters and FLOPs (abstract, nothing allocated), then timings."""
    config = dict(config, dtype=dtype)
    abstract_fn, abstract = models.build_abstract(config)
    flops = models.forward_flops(abstract_fn, abstract, *_inputs(shape, cond_fn, batch, True))
    row = {
        "model": label,
        "config": config,
        "dtype": dtype,
        "batch": batch,
        "params": models.param_count(abstract),
        "gflops_per_forward": round(flops / 1e9, 3),
    }
    if flops_only:
        return row
    apply_fn, params = models.build(config, jax.random.key(0))
    x, t, cond = _inputs(shape, cond_fn, batch, False)
    x = jax.random.normal(jax.random.key(1), x.shape)
    forward = jax.jit(apply_fn)
    first, run = time_call(lambda: forward(params, x, t, cond), repeats)
    tflops = flops / run / 1e12
    peak = peak_tflops(jax.devices()[0].device_kind, dtype)
    row.update(
        first_call_s=round(first, 3),
        forward_s=round(run, 6),
        forwards_per_s=round(batch / run, 2),
        achieved_tflops=round(tflops, 4),
        mfu=round(tflops / peak, 4) if peak else None,
    )
    return row


def main(argv=None) -> dict:
    on_gpu = jax.devices()[0].platform == "gpu"
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(CASES), default="real" if on_gpu else "toy")
    parser.add_argument(
        "--batch",
        type=int,
        nargs="+",
        default=None,
        help="batch sizes (default: toy 1 8; real: each network's REAL_BATCHES)",
    )
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument(
        "--only", nargs="*", default=None, help="substrings of model labels to run, in order"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--flops-only", action="store_true", help="parameters and FLOPs only (no allocation)"
    )
    parser.add_argument("--out", type=pathlib.Path, default=default_out())
    args = parser.parse_args(argv)

    rows = []
    name = "denoisers_flops" if args.flops_only else "denoisers"
    print(
        f"{'model':<20}{'dtype':>10}{'batch':>6}{'params':>10}{'GFLOP/fwd':>11}{'fwd/s':>10}{'TFLOP/s':>9}{'MFU':>7}"
    )
    cases = CASES[args.size]
    if args.only:  # in the order given: what matters most runs first
        cases = [c for s in args.only for c in cases if s in c[0]]
        cases = list({c[0]: c for c in cases}.values())
    for label, config, shape, cond_fn in cases:
        batches = args.batch or (REAL_BATCHES.get(label, [1, 8]) if args.size == "real" else [1, 8])
        for dtype in args.dtype:
            for batch in batches:
                try:
                    r = bench_case(
                        label, config, shape, cond_fn, batch, dtype, args.repeats, args.flops_only
                    )
                except Exception as err:  # e.g. out of memory at a large batch: record, go on
                    failure = f"{type(err).__name__}: {str(err)[:80]}"
                    print(f"{label:<20}{dtype:>10}{batch:>6}  failed: {failure}")
                    rows.append(
                        {"model": label, "dtype": dtype, "batch": batch, "error": str(err)[:500]}
                    )
                    continue
                rows.append(r)
                mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
                timing = (
                    f"{r['forwards_per_s']:>10.1f}{r['achieved_tflops']:>9.3f}"
                    if "forwards_per_s" in r
                    else f"{'-':>10}{'-':>9}"
                )
                print(
                    f"{label:<20}{dtype:>10}{batch:>6}{r['params'] / 1e6:>9.1f}M"
                    f"{r['gflops_per_forward']:>11.2f}{timing}{mfu:>7}"
                )
                # Rewritten after every row: a run cut short by a timeout keeps its rows.
                write_result(name, rows, args.out, size=args.size)
    path = write_result(name, rows, args.out, size=args.size)
    print(f"wrote {path}")
    return {"results": rows}


if __name__ == "__main__":
    main()
