"""3-D convolution as a sum of 2-D convolutions over depth offsets, on XLA:CPU only.

XLA:CPU's generic N-d convolution runs a 3x3x3 kernel 1.5-4x slower than the same work
as three 2-D convolutions (one per depth offset kd, each over all output depths at once,
summed), and its backward for strided 3-D convolutions is ~8x slower (measured in the
issue-10 note). GPUs keep the native convolution: `lax.platform_dependent` picks the
branch when the function is lowered, so cuDNN never sees the decomposition.

    y[:, d] = sum_kd conv2d(x_padded[:, s * d + kd], w[kd])

The result equals the native convolution up to float summation order (the test bounds
the difference by the accumulation error of a K-term dot product).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import jax
from jax import lax

_NDHWC = ("NDHWC", "DHWIO", "NDHWC")
_native_only = False


@contextlib.contextmanager
def native_only() -> Iterator[None]:
    """Trace 3-D convolutions natively on every backend inside this block, e.g. to read the
    memory an accelerator would need from an XLA:CPU compilation (benchmarks/memory3d.py)."""
    global _native_only
    previous, _native_only = _native_only, True
    try:
        yield
    finally:
        _native_only = previous


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    precision=None,
    **kwargs,
) -> jax.Array:
    """Drop-in for `lax.conv_general_dilated` (the `conv_general_dilated=` hook of
    `nnx.Conv`): channels-last 3-D convolutions without dilation or groups run by depth
    offsets on CPU; everything else, and every other backend, calls the native op."""

    def native(x, w):
        return lax.conv_general_dilated(
            x,
            w,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            precision=precision,
            **kwargs,
        )

    decomposable = (
        not _native_only
        and lhs.ndim == 5
        and rhs.shape[0] > 1
        and feature_group_count == 1
        and all(d == 1 for d in (lhs_dilation or (1,)))
        and all(d == 1 for d in (rhs_dilation or (1,)))
        and kwargs.get("out_sharding") is None
        and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NDHWC)
    )
    if not decomposable:
        return native(lhs, rhs)
    kwargs.pop("out_sharding", None)

    def by_depth_offsets(x, w):
        return conv3d_by_depth(x, w, window_strides, padding, precision=precision, **kwargs)

    return lax.platform_dependent(lhs, rhs, cpu=by_depth_offsets, default=native)


def conv3d_by_depth(
    x: jax.Array,
    w: jax.Array,
    strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    *,
    precision=None,
    preferred_element_type=None,
) -> jax.Array:
    """(B, D, H, W, Cin) * (kd, kh, kw, Cin, Cout) -> (B, D', H', W', Cout), as kd 2-D
    convolutions of the depth slices x[:, s*d + i] (d over all output depths) by w[i]."""
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(x.shape[1:4], w.shape[:3], strides, padding)
    (lo, hi), pads_hw = padding[0], tuple(padding[1:])
    batch, depth = x.shape[:2]
    kd, sd = w.shape[0], strides[0]
    x = lax.pad(x, jax.numpy.zeros((), x.dtype), [(0, 0, 0), (lo, hi, 0)] + [(0, 0, 0)] * 3)
    depth_out = (depth + lo + hi - kd) // sd + 1
    out = None
    for i in range(kd):
        xs = lax.slice_in_dim(x, i, i + sd * (depth_out - 1) + 1, stride=sd, axis=1)
        y = lax.conv_general_dilated(
            xs.reshape(batch * depth_out, *xs.shape[2:]),
            w[i],
            tuple(strides[1:]),
            pads_hw,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=precision,
            preferred_element_type=preferred_element_type,
        )
        out = y if out is None else out + y
    return out.reshape(batch, depth_out, *out.shape[1:])
