"""jaxcf.models: pure-functional Flax NNX denoisers (UNet 2D/3D, DiT, WDM), the VAE and the
DenseNet classifier.

apply_fn, params = jaxcf.models.build(model_config, key)
"""

from jaxcf.models.registry import (
    FAMILIES,
    abstract_params,
    attention_maps,
    build,
    build_abstract,
    build_module,
    forward_flops,
    model_kwargs,
    param_count,
    presets,
)

__all__ = [
    "FAMILIES",
    "abstract_params",
    "attention_maps",
    "build",
    "build_abstract",
    "build_module",
    "forward_flops",
    "model_kwargs",
    "param_count",
    "presets",
]
