"""Process-level JAX settings shared by the command-line entry points."""

from __future__ import annotations

import os
import pathlib

import jax


def enable_compilation_cache(path: str | os.PathLike | None = None) -> pathlib.Path:
    """Turn on JAX's persistent compilation cache so reruns skip XLA compiles.

    The directory is `path`, else $JAXCF_CACHE_DIR, else ~/.cache/jaxcf/jax.
    """
    default = pathlib.Path.home() / ".cache" / "jaxcf" / "jax"
    cache = pathlib.Path(path or os.environ.get("JAXCF_CACHE_DIR") or default)
    cache.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return cache
