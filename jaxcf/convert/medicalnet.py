"""MedicalNet / MONAI 3-D ResNet checkpoints -> :class:`jaxcf.models.med3d.Med3D`.

Sources. MedicalNet's pretrained files (github Tencent/MedicalNet, `resnet_50_23dataset.pth`,
also on huggingface.co/TencentMedicalNet) are torch pickles `{"state_dict": {...}}` saved
from an `nn.DataParallel`, so every key starts with `module.` (`module.conv1.weight`,
`module.layer1.0.bn1.running_mean`, ...). MONAI's `monai.networks.nets.ResNet` state dicts
have the same names without the prefix (MONAI strips `module.` when it loads MedicalNet
weights). Both are read from `.pth` / `.pt` (needs torch: a CheckpointError naming the file
otherwise), `.safetensors` or `.npz` (numpy, no torch).

What the weights do not say. Shapes give the block type, blocks per layer, widths, input
channels, stem kernel, shortcut type (type-B shortcuts have `downsample.*` keys, type A none)
and shortcut bias. They do not give the strides: MedicalNet dilates layers 3-4 at stride 1
(`dilated=True`, the default here), MONAI strides them by 2 (`dilated=False`); MONAI's
ResNet also defaults to a stride-1 stem (`conv1_t_stride=1`; its ResNetFeatures and the
MedicalNet loader use 2, the default here).

Ignored keys: MedicalNet's segmentation head (`conv_seg.*`), MONAI's classifier (`fc.*`) and
BatchNorm's `num_batches_tracked` counters. Any other unknown key, and any missing one, is
listed in one CheckpointError.
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from jaxcf.convert.common import (
    CheckpointError,
    Entry,
    Path,
    check_table_keys,
    conv_kernel,
    fill_params,
    load_state_dict,
    shorten,
    tree_get,
    tree_set,
)
from jaxcf.models.med3d import Med3D, Med3DConfig

STEM = "conv1.weight"
# Read by nobody on purpose (module docstring); relative to the key prefix.
IGNORED = ("conv_seg.", "fc.")
_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


# --- the key table ------------------------------------------------------------------------------


def _conv_entries(key: str, path: Path, conv: nnx.Conv) -> list[Entry]:
    entries = [(f"{key}.weight", (*path, "kernel"), "conv")]
    return entries + ([(f"{key}.bias", (*path, "bias"), "vec")] if conv.bias is not None else [])


def _bn_entries(key: str, path: Path) -> list[Entry]:
    return [(f"{key}.{name}", (*path, ours), "vec") for name, ours in _BN.items()]


def key_table(model: Med3D, prefix: str = "") -> list[Entry]:
    """(checkpoint key, jaxcf variable path, "conv" | "vec") for every parameter and BatchNorm
    statistic of `model` (concrete or from nnx.eval_shape), in torch's names behind `prefix`."""
    entries = _conv_entries(f"{prefix}conv1", ("conv1",), model.conv1)
    entries += _bn_entries(f"{prefix}bn1", ("bn1",))
    for i in range(1, 5):
        for j, block in enumerate(getattr(model, f"layer{i}")):
            key, path = f"{prefix}layer{i}.{j}", (f"layer{i}", j)
            for k in (1, 2, 3) if block.bottleneck else (1, 2):
                conv = getattr(block, f"conv{k}")
                entries += _conv_entries(f"{key}.conv{k}", (*path, f"conv{k}"), conv)
                entries += _bn_entries(f"{key}.bn{k}", (*path, f"bn{k}"))
            if block.downsample_conv is not None:
                conv = block.downsample_conv
                entries += _conv_entries(f"{key}.downsample.0", (*path, "downsample_conv"), conv)
                entries += _bn_entries(f"{key}.downsample.1", (*path, "downsample_bn"))
    return entries


# --- layout of the checkpoint -------------------------------------------------------------------


def detect_prefix(state: Mapping[str, Any], source: str) -> str:
    """The key prefix in front of the stem's `conv1.weight`: "module." for MedicalNet's
    DataParallel files, "" for MONAI."""
    found = sorted(
        k[: -len(STEM)]
        for k in state
        if k.endswith(STEM) and (k == STEM or k[: -len(STEM)].endswith(".")) and "layer" not in k
    )
    if not found:
        shown = shorten(sorted(state), 8)
        raise CheckpointError(
            f"{source}: not a Med3D / MedicalNet ResNet (no {STEM}; keys: {shown})"
        )
    if len(found) > 1:
        raise CheckpointError(f"{source}: several ResNet stems ({found}); pass prefix=")
    return found[0]


def infer_config(
    state: Mapping[str, np.ndarray], prefix: str, source: str, **overrides: Any
) -> Med3DConfig:
    """Med3DConfig from the tensor shapes (module docstring); `overrides` (e.g. dilated=False,
    stem_stride=1 for a MONAI ResNet) set what the weights cannot tell."""
    stem = np.shape(state[f"{prefix}{STEM}"])
    if len(stem) != 5 or len(set(stem[2:])) != 1:
        raise CheckpointError(f"{source}: {prefix}{STEM} has shape {stem}, not a cubic 3-D conv")
    bottleneck = f"{prefix}layer1.0.conv3.weight" in state
    layers, widths = [], []
    for i in range(1, 5):
        # Any key of a block counts it, so that a missing tensor is reported by name later.
        pattern = re.compile(rf"{re.escape(prefix)}layer{i}\.(\d+)\.")
        blocks = {int(m.group(1)) for m in map(pattern.match, state) if m}
        if not blocks or blocks != set(range(len(blocks))):
            raise CheckpointError(
                f"{source}: blocks of layer{i} are {sorted(blocks)}, expected 0..n-1 "
                f"({prefix}layer{i}.N.*)"
            )
        layers.append(len(blocks))
        first = f"{prefix}layer{i}.0."
        names = ["conv1.weight", *(f"bn1.{n}" for n in _BN)]
        width = next((np.shape(state[first + n])[0] for n in names if first + n in state), None)
        if width is None:
            raise CheckpointError(f"{source}: no {first}conv1.weight or {first}bn1.* tensors")
        widths.append(int(width))
    shortcut = "B" if any(".downsample.0.weight" in k for k in state) else "A"
    sizes = dict(
        block="bottleneck" if bottleneck else "basic",
        layers=tuple(layers),
        widths=tuple(widths),
        in_channels=int(stem[1]),
        stem_kernel=int(stem[2]),
        shortcut=shortcut,
        downsample_bias=any(".downsample.0.bias" in k for k in state),
    )
    return Med3DConfig(**{**sizes, **overrides})


# --- conversion ---------------------------------------------------------------------------------


def med3d_params_from_torch(
    state: Mapping[str, np.ndarray],
    variables: nnx.State,
    model: Med3D,
    *,
    prefix: str = "",
    source: str = "Med3D state dict",
) -> nnx.State:
    """Fill `variables` (nnx.state(model): parameters and BatchNorm statistics, concrete or
    abstract) from a torch-layout state dict {name: array}; returns `variables`. Raises one
    CheckpointError listing missing / unexpected keys, or tensors whose shape does not fit
    the model (reported in torch layout)."""
    state = {k: v for k, v in state.items() if not k.endswith(".num_batches_tracked")}
    table = key_table(model, prefix)
    check_table_keys(state, table, [prefix], IGNORED, "Med3D ResNet", source)
    tree = nnx.to_pure_dict(variables)
    values: dict = {}
    bad: list[str] = []
    for key, path, layout in table:
        want = tuple(np.shape(tree_get(tree, path)))
        if layout == "conv":  # flax (*k, in, out) -> torch (out, in, *k)
            want = (want[-1], want[-2], *want[:-2])
        w = np.asarray(state[key], np.float32)
        if w.shape != want:
            bad.append(f"{key}: {tuple(w.shape)} in the checkpoint, {want} in the model")
            continue
        tree_set(values, path, conv_kernel(w) if layout == "conv" else w)
    if bad:
        raise CheckpointError(
            f"{source}: {len(bad)} tensors do not fit {model.config}: {shorten(bad, 8, '; ')}"
        )
    return fill_params(variables, values, source)


def med3d_state_dict(model: Med3D, prefix: str = "module.") -> dict[str, np.ndarray]:
    """The inverse: a torch-layout state dict (float32 numpy, with BatchNorm running
    statistics), MedicalNet's `module.` prefix by default ("" for MONAI's ResNet)."""
    tree = nnx.to_pure_dict(nnx.state(model))
    out = {}
    for key, path, layout in key_table(model, prefix):
        w = np.asarray(tree_get(tree, path), np.float32)
        out[key] = np.ascontiguousarray(np.moveaxis(w, (-1, -2), (0, 1))) if layout == "conv" else w
    return out


def read_state(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Tensors of a `.pth` / `.pt` (torch; MedicalNet's {"state_dict": ...} is unwrapped),
    `.safetensors` or `.npz` file, as numpy arrays by name."""
    path = pathlib.Path(path)
    if path.suffix != ".npz":
        return load_state_dict(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable .npz file ({err})") from None


def load_medicalnet(
    path: str | os.PathLike,
    config: Med3DConfig | None = None,
    *,
    prefix: str | None = None,
    dilated: bool = True,
    stem_stride: int = 2,
    dtype: Any = None,
) -> tuple[Med3D, Med3DConfig]:
    """Build a Med3D from a MedicalNet or MONAI ResNet checkpoint file.

    config: the model's sizes; by default inferred from the tensor shapes, with `dilated`
    (MedicalNet's layers 3-4; False for a MONAI ResNet) and `stem_stride`. prefix: "module."
    (MedicalNet) or "" (MONAI), detected by default. dtype: conv compute dtype. Returns
    (model, config); variables are float32.
    """
    source = str(path)
    state = read_state(path)
    prefix = detect_prefix(state, source) if prefix is None else prefix
    if config is None:
        config = infer_config(state, prefix, source, dilated=dilated, stem_stride=stem_stride)
    model = nnx.eval_shape(lambda: Med3D(config, dtype=dtype, rngs=nnx.Rngs(0)))
    variables = med3d_params_from_torch(
        state, nnx.state(model), model, prefix=prefix, source=source
    )
    nnx.update(model, variables)
    return model, config


__all__ = [
    "IGNORED",
    "detect_prefix",
    "infer_config",
    "key_table",
    "load_medicalnet",
    "med3d_params_from_torch",
    "med3d_state_dict",
    "read_state",
]
