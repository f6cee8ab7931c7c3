"""Test session setup: 8 fake CPU devices for sharding tests, and JAX's persistent
compilation cache so reruns skip most XLA compiles."""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import pytest

_CACHE = pathlib.Path(__file__).resolve().parents[1] / ".cache" / "jax"
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture
def key():
    return jax.random.key(0)
