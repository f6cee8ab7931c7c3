"""MONAI SwinUNETR state dicts (monai.networks.nets.SwinUNETR, use_v2=False, norm_name
"instance") -> jaxcf `SwinUNETR` parameters.

    params = swin_unetr_params(state_dict, params)     # params: the target's, e.g. nnx.state
    params = load_swin_unetr_checkpoint("model.pt", params)

Key map (i, j from 0; MONAI numbers the stages from 1 and wraps each in a ModuleList):
  swinViT.patch_embed.proj                          -> swin_vit.patch_embed
  swinViT.layers{i+1}.0.blocks.{j}.{norm1,norm2}    -> swin_vit.layers.i.blocks.j.{norm1,norm2}
  swinViT.layers{i+1}.0.blocks.{j}.attn.{qkv,proj,relative_position_bias_table}
                                                    -> ....blocks.j.attn.{same names}
  swinViT.layers{i+1}.0.blocks.{j}.mlp.{linear1,linear2} -> ....blocks.j.mlp.{same}
  swinViT.layers{i+1}.0.downsample.{norm,reduction} -> swin_vit.layers.i.downsample.{same}
  encoder{1,2,3,4,10}.layer.conv{1,2,3}.conv        -> encoder{..}.conv{1,2,3}
  decoder{1..5}.transp_conv.conv                    -> decoder{..}.transp_conv
  decoder{1..5}.conv_block.conv{1,2,3}.conv         -> decoder{..}.conv_block.conv{1,2,3}
  out.conv.conv                                     -> out
Buffers (relative_position_index, attn_mask) are recomputed by the model and skipped by
name. Training checkpoints that wrap the weights ({"state_dict": ...}, as the BraTS 2021
fold checkpoints of MONAI's research-contributions) are unwrapped by load_state_dict; a
"module." prefix on every key (torch DataParallel) is dropped. Norm parameters or running
statistics (affine instance norm, batch norm) have no place in this network and are
reported as unexpected keys. The self-supervised encoder weights (model_swinvit.pt) are
not a SwinUNETR state dict (different names, no decoder) and are refused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
from flax import nnx

from jaxcf.convert.common import (
    KeyReader,
    conv_kernel,
    fill_params,
    linear_kernel,
    load_state_dict,
    tree_set,
)

__all__ = ["load_swin_unetr_checkpoint", "swin_unetr_params"]

_BUFFERS = ("relative_position_index", "attn_mask")


def _transposed_kernel(w: np.ndarray) -> np.ndarray:
    """torch ConvTransposeNd weight (in, out, *k) -> jaxcf kernel (*k, in, out)."""
    return np.ascontiguousarray(np.moveaxis(w, (0, 1), (-2, -1)))


def _conv_entries(name: str, path: tuple, node: Mapping) -> list[tuple[str, tuple, str]]:
    entries = [(f"{name}.weight", (*path, "kernel"), "conv")]
    if "bias" in node:
        entries.append((f"{name}.bias", (*path, "bias"), "vec"))
    return entries


def _linear_entries(name: str, path: tuple, node: Mapping) -> list[tuple[str, tuple, str]]:
    entries = [(f"{name}.weight", (*path, "kernel"), "linear")]
    if "bias" in node:
        entries.append((f"{name}.bias", (*path, "bias"), "vec"))
    return entries


def _norm_entries(name: str, path: tuple) -> list[tuple[str, tuple, str]]:
    return [(f"{name}.weight", (*path, "scale"), "vec"), (f"{name}.bias", (*path, "bias"), "vec")]


def _res_entries(name: str, path: tuple, node: Mapping) -> list[tuple[str, tuple, str]]:
    entries = []
    for conv in ("conv1", "conv2", "conv3"):
        if node.get(conv):  # conv3 only where the width changes
            entries += _conv_entries(f"{name}.{conv}.conv", (*path, conv), node[conv])
    return entries


def _entries(tree: Mapping) -> list[tuple[str, tuple, str]]:
    """(MONAI key, parameter path, layout) for every parameter of the target network."""
    vit = tree["swin_vit"]
    entries = _conv_entries(
        "swinViT.patch_embed.proj", ("swin_vit", "patch_embed"), vit["patch_embed"]
    )
    for i, stage in sorted(vit["layers"].items()):
        prefix, path = f"swinViT.layers{i + 1}.0", ("swin_vit", "layers", i)
        for j, block in sorted(stage["blocks"].items()):
            bname, bpath = f"{prefix}.blocks.{j}", (*path, "blocks", j)
            entries += _norm_entries(f"{bname}.norm1", (*bpath, "norm1"))
            entries.append(
                (
                    f"{bname}.attn.relative_position_bias_table",
                    (*bpath, "attn", "relative_position_bias_table"),
                    "vec",
                )
            )
            for lin in ("qkv", "proj"):
                entries += _linear_entries(
                    f"{bname}.attn.{lin}", (*bpath, "attn", lin), block["attn"][lin]
                )
            entries += _norm_entries(f"{bname}.norm2", (*bpath, "norm2"))
            for lin in ("linear1", "linear2"):
                entries += _linear_entries(
                    f"{bname}.mlp.{lin}", (*bpath, "mlp", lin), block["mlp"][lin]
                )
        down = stage["downsample"]
        entries += _norm_entries(f"{prefix}.downsample.norm", (*path, "downsample", "norm"))
        entries += _linear_entries(
            f"{prefix}.downsample.reduction", (*path, "downsample", "reduction"), down["reduction"]
        )
    for enc in ("encoder1", "encoder2", "encoder3", "encoder4", "encoder10"):
        entries += _res_entries(f"{enc}.layer", (enc,), tree[enc])
    for k in range(5, 0, -1):
        dec = f"decoder{k}"
        entries.append((f"{dec}.transp_conv.conv.weight", (dec, "transp_conv", "kernel"), "tconv"))
        entries += _res_entries(f"{dec}.conv_block", (dec, "conv_block"), tree[dec]["conv_block"])
    entries += _conv_entries("out.conv.conv", ("out",), tree["out"])
    return entries


_CONVERT = {
    "conv": conv_kernel,
    "tconv": _transposed_kernel,
    "linear": linear_kernel,
    "vec": lambda w: w,
}


def swin_unetr_params(
    state: Mapping[str, np.ndarray], params: nnx.State, source: str = "state dict"
) -> nnx.State:
    """A MONAI SwinUNETR state dict (name -> numpy array, torch layout) -> `params` (the
    target network's, concrete or abstract) filled. Missing keys, unexpected keys and shape
    mismatches raise one CheckpointError each, naming the keys."""
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if k.rsplit(".", 1)[-1] not in _BUFFERS}
    read = KeyReader(state, source)
    entries = _entries(nnx.to_pure_dict(params))
    read.require([key for key, _, _ in entries])
    values: dict = {}
    for key, path, layout in entries:
        tree_set(values, path, _CONVERT[layout](read(key)))
    read.finish()  # keys nobody read: another architecture or configuration
    return fill_params(params, values, source)


def load_swin_unetr_checkpoint(path: str | os.PathLike, params: nnx.State) -> nnx.State:
    """A MONAI SwinUNETR .pt / .pth / .safetensors file (a bare state dict or one under
    "state_dict") -> `params` filled (see swin_unetr_params)."""
    return swin_unetr_params(load_state_dict(path), params, str(path))
