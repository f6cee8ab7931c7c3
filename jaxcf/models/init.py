"""Parameter initialisers that sample on the host.

jax.random initialisers compile one threefry kernel per parameter shape: building a small
UNet eagerly cost ~20 s of XLA compiles on a 2-core CPU (54 shapes x ~0.3 s), on every
run, because each compile is too short for the persistent cache. These initialisers draw
with NumPy from a generator seeded by the JAX key instead: with a concrete key they never
touch XLA; under tracing (jax.jit, nnx.eval_shape) the same NumPy code runs through
jax.pure_callback, so a key gives the same parameters either way.

Each function returns an initializer `init(key, shape, dtype) -> array`, the signature
Flax expects for kernel_init / embedding_init.

Caveats: NumPy guarantees its Generator streams within a NumPy version only (NEP 19), so
"same key, same parameters" holds across runs of one environment. Under jit on several
devices the callback's output lands on one device first; initialise eagerly (jaxcf.models
.build does) and place parameters afterwards for sharded models.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Initializer = Callable[..., jax.Array]


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a dense (in, out) or conv (*kernel, in, out) kernel."""
    if len(shape) < 2:
        return shape[0], shape[0]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def _generator(key_data: np.ndarray) -> np.random.Generator:
    return np.random.default_rng(np.asarray(key_data, np.uint32).ravel().tolist())


def _host(sample: Callable[[np.random.Generator, tuple], np.ndarray]) -> Initializer:
    def init(key, shape, dtype=jnp.float32):
        shape = tuple(int(n) for n in shape)
        data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key

        def draw(key_data):
            return sample(_generator(key_data), shape).astype(np.dtype(dtype))

        if isinstance(data, jax.core.Tracer):
            return jax.pure_callback(
                draw, jax.ShapeDtypeStruct(shape, dtype), data, vmap_method="sequential"
            )
        return jnp.asarray(draw(np.asarray(data)))

    return init


def torch_default() -> Initializer:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's Linear / Conv weight default (kaiming
    uniform with a = sqrt(5)), which the reference UNets start from (their biases are
    uniform too; jaxcf's start at zero)."""

    def sample(rng, shape):
        bound = 1.0 / math.sqrt(_fans(shape)[0])
        return rng.uniform(-bound, bound, shape)

    return _host(sample)


def xavier_uniform() -> Initializer:
    """U(-a, a), a = sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010; DiT's linears)."""

    def sample(rng, shape):
        fan_in, fan_out = _fans(shape)
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-bound, bound, shape)

    return _host(sample)


def xavier_uniform_flat() -> Initializer:
    """xavier_uniform of a conv kernel viewed as a dense (prod(kernel) * in, out) matrix
    (DiT's patch embedding)."""

    def sample(rng, shape):
        fan_in = math.prod(shape[:-1])
        bound = math.sqrt(6.0 / (fan_in + shape[-1]))
        return rng.uniform(-bound, bound, shape)

    return _host(sample)


def normal(std: float) -> Initializer:
    """N(0, std^2) (DiT's embedders, label tables)."""
    return _host(lambda rng, shape: rng.normal(0.0, std, shape))
