"""The CPU path of 3-D convolutions (sum of 2-D convolutions over depth offsets) equals
XLA's native convolution, forward and backward, for every configuration the models use."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from jaxcf.models import conv3d, layers

DN = ("NDHWC", "DHWIO", "NDHWC")


def _bound(x, w, strides, padding):
    """Float32 accumulation bound of a K-term dot product, K = kd*kh*kw*Cin, summed in any
    order: |error| <= K * eps * (|x| conv |w|), elementwise (Higham, Accuracy and Stability
    of Numerical Algorithms, 2nd ed., Eq. 3.5); the two sides each carry one such error."""
    k = np.prod(w.shape[:4])
    eps = np.finfo(np.float32).eps
    mag = lax.conv_general_dilated(jnp.abs(x), jnp.abs(w), strides, padding, dimension_numbers=DN)
    return 2 * k * eps * mag


@pytest.mark.parametrize(
    "shape,kernel,strides,padding",
    [
        ((2, 6, 5, 7, 3), (3, 3, 3, 3, 4), (1, 1, 1), "SAME"),
        ((2, 8, 8, 8, 4), (3, 3, 3, 4, 5), (2, 2, 2), ((1, 1),) * 3),  # Downsample
        ((1, 7, 6, 6, 2), (3, 3, 3, 2, 2), (2, 2, 2), "VALID"),
        ((1, 5, 4, 4, 3), (2, 1, 3, 3, 2), (1, 1, 1), ((0, 1), (0, 0), (1, 1))),
    ],
)
def test_depth_decomposition_equals_native(shape, kernel, strides, padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal(kernel), jnp.float32)
    want = lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=DN)
    got = conv3d.conv3d_by_depth(x, w, strides, padding)
    assert got.shape == want.shape
    assert np.all(np.abs(got - want) <= _bound(x, w, strides, padding))

    def loss(f):
        return lambda x, w: jnp.sum(jnp.sin(f(x, w)))

    native = loss(
        lambda x, w: lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=DN)
    )
    split = loss(lambda x, w: conv3d.conv3d_by_depth(x, w, strides, padding))
    for g_want, g_got in zip(
        jax.grad(native, (0, 1))(x, w), jax.grad(split, (0, 1))(x, w), strict=True
    ):
        scale = float(jnp.max(jnp.abs(g_want)))
        np.testing.assert_allclose(g_got, g_want, atol=1e-5 * scale)


def test_layers_conv_uses_the_cpu_path_only_for_3d():
    """layers.conv's 3-D module compiles to 2-D convolutions only on CPU (so the fast
    path is really taken), and a 2-D one to its single native convolution."""
    assert jax.default_backend() == "cpu"
    rngs = nnx.Rngs(0)
    for dims, want in ((3, 3), (2, 1)):
        module = layers.conv(dims, 2, 3, rngs=rngs)
        x = jnp.ones((1,) + (4,) * dims + (2,))
        hlo = jax.jit(lambda x, m=module: m(x)).lower(x).compile().as_text()
        assert "dim_labels=b012f_012io->b012f" not in hlo  # no 3-D convolution left
        assert hlo.count("dim_labels=b01f_01io->b01f") == want, hlo
    module3 = layers.conv(3, 2, 3, rngs=rngs)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 5, 6, 4, 2)), jnp.float32)
    want = lax.conv_general_dilated(x, module3.kernel[...], (1, 1, 1), "SAME", dimension_numbers=DN)
    np.testing.assert_allclose(module3(x), want + module3.bias[...], atol=1e-5)
