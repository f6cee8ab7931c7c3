"""MONAI DenseNet state dicts (monai.networks.nets.DenseNet / DenseNet121 built with
norm=("group", {"num_groups": G})) -> jaxcf `DenseNet` parameters.

    params = densenet_params(state_dict, params)          # params: the target's, e.g. build's
    params = load_densenet_checkpoint("classifier.pt", params)

Key map (i, j from 0; MONAI numbers blocks and layers from 1):
  features.conv0 / norm0                         -> conv0 / norm0
  features.denseblock{i+1}.denselayer{j+1}.layers.{norm1,conv1,norm2,conv2}
                                                 -> blocks.i.j.{norm1,conv1,norm2,conv2}
  features.transition{i+1}.{norm,conv}           -> transitions.i.{norm,conv}
  features.norm5, class_layers.out               -> norm5, out
MONAI's default BatchNorm checkpoints carry running statistics that a GroupNorm network has
no place for (jaxcf.models.densenet says why it uses GroupNorm): they are refused by name
rather than converted into a different function.
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
    linear_kernel,
    load_state_dict,
    tree_set,
)

__all__ = ["densenet_params", "load_densenet_checkpoint"]

_BATCHNORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _layer_names(tree: Mapping) -> list[tuple[tuple, str, str]]:
    """(parameter path, MONAI module name, kind) for every layer of the target network."""
    names = [(("conv0",), "features.conv0", "conv"), (("norm0",), "features.norm0", "norm")]
    for i, block in sorted(tree["blocks"].items()):
        for j in sorted(block):
            prefix = f"features.denseblock{i + 1}.denselayer{j + 1}.layers"
            for part in ("norm1", "conv1", "norm2", "conv2"):
                names.append((("blocks", i, j, part), f"{prefix}.{part}", part[:4]))
        if i in tree["transitions"]:
            prefix = f"features.transition{i + 1}"
            names.append((("transitions", i, "norm"), f"{prefix}.norm", "norm"))
            names.append((("transitions", i, "conv"), f"{prefix}.conv", "conv"))
    names.append((("norm5",), "features.norm5", "norm"))
    names.append((("out",), "class_layers.out", "linear"))
    return names


def densenet_params(
    state: Mapping[str, np.ndarray], params: nnx.State, source: str = "state dict"
) -> nnx.State:
    """A MONAI DenseNet state dict (name -> numpy array, torch layout) -> `params` (the
    target network's, concrete or abstract) filled; shapes and key sets are checked."""
    batchnorm = sorted(k for k in state if k.rsplit(".", 1)[-1] in _BATCHNORM_BUFFERS)
    if batchnorm:
        raise CheckpointError(
            f"{source}: a BatchNorm DenseNet ({batchnorm[0]} ...); jaxcf's DenseNet uses "
            "GroupNorm (MONAI: norm=('group', {'num_groups': G})), see jaxcf.models.densenet"
        )
    read = KeyReader(state, source)
    tree = nnx.to_pure_dict(params)
    layers = _layer_names(tree)
    wanted = []
    for _, name, kind in layers:
        wanted += [f"{name}.weight", f"{name}.bias"] if kind in ("norm", "linear") else []
        wanted += [f"{name}.weight"] if kind == "conv" else []
    read.require(wanted)
    values: dict = {}
    for path, name, kind in layers:
        if kind == "conv":
            tree_set(values, (*path, "kernel"), conv_kernel(read(f"{name}.weight")))
        elif kind == "norm":  # jaxcf's GroupNorm keeps its parameters in an nnx.GroupNorm
            tree_set(values, (*path, "norm", "scale"), read(f"{name}.weight"))
            tree_set(values, (*path, "norm", "bias"), read(f"{name}.bias"))
        else:
            tree_set(values, (*path, "kernel"), linear_kernel(read(f"{name}.weight")))
            tree_set(values, (*path, "bias"), read(f"{name}.bias"))
    read.finish()
    return fill_params(params, values, source)


def load_densenet_checkpoint(path: str | os.PathLike, params: nnx.State) -> nnx.State:
    """A MONAI DenseNet .pt / .pth / .safetensors file -> `params` filled (see
    densenet_params)."""
    return densenet_params(load_state_dict(path), params, str(path))
