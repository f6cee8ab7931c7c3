"""MONAI UNet state dicts (monai.networks.nets.UNet, instance norm) -> jaxcf `ResUNet`
parameters.

    params = resunet_params(state_dict, params)        # params: the target's, e.g. nnx.split's
    params = load_resunet_checkpoint("segmenter.pt", params)

MONAI nests its levels: level 0 is `model`, level i + 1 is level i's `.1.submodule`; a
level's `.0` is its down block and `.2` its up block, and the bottom block is the
deepest level's `.1.submodule`. Key map (P the level's prefix):
  P.0 (down), bottom            -> down.i, bottom
  P.2 (up; with residual units P.2.0 and P.2.1)
                                -> up.i.up (and up.i.res)
  a Convolution block C:  C.conv.{weight,bias}  -> conv.{kernel,bias}
                          C.adn.A.weight        -> act.weight (PReLU slope)
                          C.adn.N.{weight,bias} -> norm.{scale,bias} (affine instance norm)
  a ResidualUnit R:       R.conv.unit{j}.*      -> units.j.*
                          R.residual.{weight,bias} -> residual.{kernel,bias}
Transposed convolution weights (cin, cout, *k) keep torch's orientation (see
jaxcf.models.resunet._ConvTranspose). BatchNorm checkpoints carry running statistics that
jaxcf has no place for: they are refused by name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
from flax import nnx

from jaxcf.convert.common import (
    CheckpointError,
    KeyReader,
    conv_kernel,
    fill_params,
    load_state_dict,
    tree_set,
)

__all__ = ["load_resunet_checkpoint", "resunet_params"]

_RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")

# (parameter path, torch key, kind): kind "conv" | "convT" (kernels), "vec" (copied).
Entry = tuple[tuple, str, str]


def _conv_adn(tree: Mapping, path: tuple, key: str, transposed: bool = False) -> list[Entry]:
    entries = [((*path, "conv", "kernel"), f"{key}.conv.weight", "convT" if transposed else "conv")]
    if "bias" in tree["conv"]:
        entries.append(((*path, "conv", "bias"), f"{key}.conv.bias", "vec"))
    if "act" in tree:
        entries.append(((*path, "act", "weight"), f"{key}.adn.A.weight", "vec"))
    if "norm" in tree:
        entries.append(((*path, "norm", "scale"), f"{key}.adn.N.weight", "vec"))
        entries.append(((*path, "norm", "bias"), f"{key}.adn.N.bias", "vec"))
    return entries


def _block(tree: Mapping, path: tuple, key: str) -> list[Entry]:
    """A down / bottom block: a residual unit (has `units`) or one Convolution block."""
    if "units" not in tree:
        return _conv_adn(tree, path, key)
    entries = []
    for j, unit in sorted(tree["units"].items()):
        entries += _conv_adn(unit, (*path, "units", j), f"{key}.conv.unit{j}")
    if "residual" in tree:
        entries.append(((*path, "residual", "kernel"), f"{key}.residual.weight", "conv"))
        if "bias" in tree["residual"]:
            entries.append(((*path, "residual", "bias"), f"{key}.residual.bias", "vec"))
    return entries


def _entries(tree: Mapping) -> list[Entry]:
    """Every parameter of the target network with its MONAI key."""
    entries, prefix = [], "model"
    for i in sorted(tree["down"]):
        entries += _block(tree["down"][i], ("down", i), f"{prefix}.0")
        up = tree["up"][i]
        if "res" in up:
            entries += _conv_adn(up["up"], ("up", i, "up"), f"{prefix}.2.0", transposed=True)
            entries += _block(up["res"], ("up", i, "res"), f"{prefix}.2.1")
        else:
            entries += _conv_adn(up["up"], ("up", i, "up"), f"{prefix}.2", transposed=True)
        prefix = f"{prefix}.1.submodule"
    return entries + _block(tree["bottom"], ("bottom",), prefix)


def _value(w: np.ndarray, kind: str) -> np.ndarray:
    if kind == "conv":
        return conv_kernel(w)
    if kind == "convT":  # (cin, cout, *k) -> (*k, cin, cout)
        return np.ascontiguousarray(np.moveaxis(w, (0, 1), (-2, -1)))
    return w


def resunet_params(
    state: Mapping[str, np.ndarray], params: nnx.State, source: str = "state dict"
) -> nnx.State:
    """A MONAI UNet state dict (name -> numpy array, torch layout) -> `params` (the target
    ResUNet's, concrete or abstract) filled; missing or unexpected keys and shape mismatches
    raise one CheckpointError each."""
    stats = sorted(k for k in state if k.rsplit(".", 1)[-1] in _RUNNING_STATS)
    if stats:
        raise CheckpointError(
            f"{source}: a UNet with BatchNorm running statistics ({stats[0]} ...); jaxcf's "
            "ResUNet supports instance norm only (MONAI's default), see jaxcf.models.resunet"
        )
    read = KeyReader(state, source)
    entries = _entries(nnx.to_pure_dict(params))
    read.require([key for _, key, _ in entries])
    values: dict = {}
    for path, key, kind in entries:
        tree_set(values, path, _value(read(key), kind))
    read.finish()
    return fill_params(params, values, source)


def load_resunet_checkpoint(path: str | os.PathLike, params: nnx.State) -> nnx.State:
    """A MONAI UNet .pt / .pth / .safetensors file -> `params` filled (see resunet_params).
    Training dicts wrapping the weights under "model" or "state_dict" are unwrapped by
    jaxcf.convert.common.load_state_dict."""
    return resunet_params(load_state_dict(path), params, str(path))
