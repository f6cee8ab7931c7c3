"""jaxcf.models: pure-functional Flax NNX denoisers (UNet 2D/3D, DiT, WDM), the VAE and the
DenseNet classifier.

apply_fn, params = jaxcf.models.build(model_config, key)
apply_fn, params = jaxcf.models.build_pretrained(model_config, key)   # model.checkpoint's weights
"""

from jaxcf.models.pretrained import LOADERS, build_pretrained
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
    "LOADERS",
    "abstract_params",
    "attention_maps",
    "build",
    "build_abstract",
    "build_module",
    "build_pretrained",
    "forward_flops",
    "model_kwargs",
    "param_count",
    "presets",
]
