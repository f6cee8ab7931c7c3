"""diffusers `AutoencoderKL` checkpoints <-> :class:`jaxcf.models.vae.AutoencoderKL` params.

Reads the layout of diffusers' `diffusion_pytorch_model.safetensors` (e.g. the `vae/`
folder of a Stable Diffusion pipeline, or stabilityai/sd-vae-ft-mse). The mid-block
attention is named to_q / to_k / to_v / to_out.0 in current checkpoints and query / key /
value / proj_attn in older ones; both load. Both directions use one table of
(checkpoint key, jaxcf parameter path, layout), derived from the model's own parameter
tree, so the model's configuration (levels, blocks per level, 2-D or 3-D) needs no
separate description.

Layouts: torch ConvNd weights (out, in, *k) <-> flax kernels (*k, in, out); torch Linear
(out, in) <-> flax (in, out); norms and biases unchanged. Channels-first vs channels-last
activations need nothing else: attention flattens positions in the same (D,) H, W order.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from jaxcf.convert.common import (
    DIFFUSERS_WEIGHT_FILES,
    CheckpointError,
    KeyReader,
    conv_kernel,
    fill_params,
    linear_kernel,
    load_state_dict,
    resolve_checkpoint,
    shorten,
    tree_get,
    tree_set,
)

ATTENTION_NAMES = {"q": "to_q", "k": "to_k", "v": "to_v", "out": "to_out.0"}
LEGACY_ATTENTION_NAMES = {"q": "query", "k": "key", "v": "value", "out": "proj_attn"}

Path = tuple[Any, ...]  # a path of keys into nnx.to_pure_dict(params)
Entry = tuple[str, Path, str]  # (checkpoint key, parameter path, layout)


# --- the key table --------------------------------------------------------------------------


def _conv(key: str, path: Path) -> list[Entry]:
    return [(f"{key}.weight", (*path, "kernel"), "conv"), (f"{key}.bias", (*path, "bias"), "vec")]


def _norm(key: str, path: Path) -> list[Entry]:
    # jaxcf.models.layers.GroupNorm wraps nnx.GroupNorm as `.norm`.
    return [
        (f"{key}.weight", (*path, "norm", "scale"), "vec"),
        (f"{key}.bias", (*path, "norm", "bias"), "vec"),
    ]


def _resnet(tree: Mapping, key: str, path: Path) -> list[Entry]:
    entries = _norm(f"{key}.norm1", (*path, "norm1")) + _conv(f"{key}.conv1", (*path, "conv1"))
    entries += _norm(f"{key}.norm2", (*path, "norm2")) + _conv(f"{key}.conv2", (*path, "conv2"))
    if "skip" in tree:  # a 1x1 conv where the block changes the channel count
        entries += _conv(f"{key}.conv_shortcut", (*path, "skip"))
    return entries


def _mid(tree: Mapping, key: str, path: Path, names: Mapping[str, str]) -> list[Entry]:
    entries = _resnet(tree["res1"], f"{key}.resnets.0", (*path, "res1"))
    if "attn" in tree:
        a, p = f"{key}.attentions.0", (*path, "attn")
        entries += _norm(f"{a}.group_norm", (*p, "norm"))
        for ours, theirs in names.items():
            entries += [
                (f"{a}.{theirs}.weight", (*p, ours, "kernel"), "linear"),
                (f"{a}.{theirs}.bias", (*p, ours, "bias"), "vec"),
            ]
    return entries + _resnet(tree["res2"], f"{key}.resnets.1", (*path, "res2"))


def _levels(tree: Mapping, prefix: str, ours: str, blocks: str, resample: str) -> list[Entry]:
    """Encoder `down` <-> down_blocks (downsamplers), decoder `up` <-> up_blocks
    (upsamplers); both jaxcf and diffusers order the decoder's from the lowest resolution."""
    entries: list[Entry] = []
    for i, level in sorted(tree[ours].items()):
        for j, res in sorted(level["resnets"].items()):
            key = f"{prefix}.{blocks}.{i}.resnets.{j}"
            entries += _resnet(res, key, (prefix, ours, i, "resnets", j))
        if "resample" in level:
            inner = "conv" if "conv" in level["resample"] else "op"  # Downsample / Upsample
            key = f"{prefix}.{blocks}.{i}.{resample}.0.conv"
            entries += _conv(key, (prefix, ours, i, "resample", inner))
    return entries


def key_table(tree: Mapping, *, legacy_attention: bool = False) -> list[Entry]:
    """(diffusers key, jaxcf path, layout) for every parameter of the model whose pure-dict
    parameter tree is `tree`."""
    names = LEGACY_ATTENTION_NAMES if legacy_attention else ATTENTION_NAMES
    entries: list[Entry] = []
    for part, ours, blocks, resample in (
        ("encoder", "down", "down_blocks", "downsamplers"),
        ("decoder", "up", "up_blocks", "upsamplers"),
    ):
        t = tree[part]
        entries += _conv(f"{part}.conv_in", (part, "conv_in"))
        entries += _levels(t, part, ours, blocks, resample)
        entries += _mid(t["mid"], f"{part}.mid_block", (part, "mid"), names)
        entries += _norm(f"{part}.conv_norm_out", (part, "norm_out"))
        entries += _conv(f"{part}.conv_out", (part, "conv_out"))
    entries += _conv("quant_conv", ("quant_conv",)) + _conv("post_quant_conv", ("post_quant_conv",))
    return entries


# --- layouts --------------------------------------------------------------------------------


def _to_jax(w: np.ndarray, layout: str) -> np.ndarray:
    if layout == "conv":
        return conv_kernel(w) if w.ndim >= 3 else w  # a wrong rank is reported by shape
    if layout == "linear":
        # Some converted LDM checkpoints store the attention projections as 1x1 convs.
        while w.ndim > 2 and w.shape[-1] == 1:
            w = w[..., 0]
        return linear_kernel(w) if w.ndim == 2 else w
    return w


def _to_torch(w: np.ndarray, layout: str) -> np.ndarray:
    if layout == "conv":
        return np.ascontiguousarray(np.moveaxis(w, (-1, -2), (0, 1)))
    return np.ascontiguousarray(w.T) if layout == "linear" else np.asarray(w)


def _torch_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    return _to_torch(np.empty(shape, np.float32), layout).shape


# --- conversion -----------------------------------------------------------------------------


def vae_params_from_diffusers(
    state: Mapping[str, np.ndarray],
    params: nnx.State,
    *,
    source: str = "diffusers AutoencoderKL state dict",
) -> nnx.State:
    """Fill `params` (nnx.state of an AutoencoderKL, concrete or from nnx.eval_shape) with a
    diffusers AutoencoderKL state dict {name: (torch-layout) array}; returns `params`.

    Raises CheckpointError listing missing keys, unexpected keys, or keys whose shape does
    not fit the model (in torch layout), naming `source`.
    """
    tree = nnx.to_pure_dict(params)
    legacy = not any(k.endswith(".to_q.weight") for k in state) and any(
        k.endswith(".query.weight") for k in state
    )
    read = KeyReader(state, source)
    table = key_table(tree, legacy_attention=legacy)
    read.require([key for key, _, _ in table])  # every missing name in one error
    values: dict = {}
    bad_shapes: list[str] = []
    for key, path, layout in table:
        want = tuple(np.shape(tree_get(tree, path)))
        raw = read(key)
        w = _to_jax(raw, layout)
        if w.shape != want:
            bad_shapes.append(
                f"{key}: shape {tuple(raw.shape)} in the checkpoint, the model expects "
                f"{_torch_shape(want, layout)}"
            )
            continue
        tree_set(values, path, w)
    read.finish()
    if bad_shapes:
        raise CheckpointError(
            f"{source}: {len(bad_shapes)} tensors do not fit the model "
            f"(another VAE configuration?): {shorten(bad_shapes, sep='; ')}"
        )
    return fill_params(params, values, source)


def vae_params_to_diffusers(params: nnx.State) -> dict[str, np.ndarray]:
    """The inverse: AutoencoderKL params -> a diffusers state dict of float32 numpy arrays
    in torch layout (e.g. to save a trained VAE with safetensors.numpy.save_file and load it
    with diffusers' AutoencoderKL)."""
    tree = nnx.to_pure_dict(params)
    return {
        key: _to_torch(np.asarray(tree_get(tree, path), np.float32), layout)
        for key, path, layout in key_table(tree)
    }


def load_vae_checkpoint(path: str | os.PathLike, params: nnx.State) -> nnx.State:
    """Read a diffusers AutoencoderKL checkpoint (.safetensors without torch; .bin / .pt
    with torch), or a folder written by `save_pretrained`, into `params`."""
    file = resolve_checkpoint(path, DIFFUSERS_WEIGHT_FILES, subfolders=("vae",))
    return vae_params_from_diffusers(load_state_dict(file), params, source=str(file))
