"""Stable Diffusion UNet checkpoints <-> :class:`jaxcf.models.sd_unet.SDUNet` params.

Two key layouts:
  - diffusers' UNet2DConditionModel (`conv_in.*`, `time_embedding.linear_1.*`,
    `down_blocks.0.resnets.0.norm1.*`, `down_blocks.0.attentions.0.transformer_blocks.0
    .attn1.to_q.weight`, ..., `conv_out.*`): a save_pretrained folder (or a pipeline
    folder with `unet/`) holding diffusion_pytorch_model.safetensors (else the .bin, else
    the .fp16 variants) and config.json, or a bare weight file;
  - single-file original Stable Diffusion (CompVis / LDM; `.ckpt` or `.safetensors`):
    the same tensors under `model.diffusion_model.` with LDM's block names
    (`time_embed.0`, `input_blocks.N.M`, `middle_block.N`, `output_blocks.N.M`, `out.0`,
    ResBlock parts `in_layers.0`, `emb_layers.1`, `out_layers.3`, `skip_connection`);
    the text encoder, the VAE, `model_ema.*` and schedule buffers beside it are ignored.
    Such files carry no config: the sizes are read from the tensor shapes, the head
    count and GroupNorm groups are SD 1.5's unless `config=` says otherwise.

Both go through one key table (diffusers key, jaxcf parameter path, layout) built from
the config; LDM names are diffusers names rewritten block by block (:func:`ldm_key`).
Missing and unexpected keys are listed in one CheckpointError naming the file.
Layouts: torch Conv2d weights (out, in, kh, kw) <-> flax kernels (kh, kw, in, out);
Linear (out, in) <-> (in, out); norms and biases unchanged. Channels-first vs
channels-last activations need nothing else: attention flattens positions row-major in
both.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from jaxcf.convert.common import (
    DIFFUSERS_WEIGHT_FILES,
    CheckpointError,
    check_table_keys,
    conv_kernel,
    fill_params,
    linear_kernel,
    load_state_dict,
    read_hf_config,
    resolve_checkpoint,
    tree_get,
    tree_set,
)
from jaxcf.errors import InputError
from jaxcf.models.sd_unet import (
    CROSS_DOWN,
    CROSS_UP,
    PLAIN_DOWN,
    PLAIN_UP,
    SDUNet,
    SDUNetConfig,
)

LDM_PREFIX = "model.diffusion_model."

Path = tuple[Any, ...]  # a path into nnx.to_pure_dict(params)
Entry = tuple[str, Path, str]  # (diffusers key, parameter path, "conv" | "linear" | "vec")


# --- the key table (diffusers names) ----------------------------------------------------------


def _conv(key: str, path: Path, layout: str = "conv") -> list[Entry]:
    return [(f"{key}.weight", (*path, "kernel"), layout), (f"{key}.bias", (*path, "bias"), "vec")]


def _norm(key: str, path: Path, group_norm: bool = True) -> list[Entry]:
    # jaxcf.models.layers.GroupNorm keeps its nnx.GroupNorm as `.norm`; LayerNorms are bare.
    inner = (*path, "norm") if group_norm else path
    return [(f"{key}.weight", (*inner, "scale"), "vec"), (f"{key}.bias", (*inner, "bias"), "vec")]


def _resnet(key: str, path: Path, has_shortcut: bool) -> list[Entry]:
    entries = _norm(f"{key}.norm1", (*path, "norm1")) + _conv(f"{key}.conv1", (*path, "conv1"))
    entries += _conv(f"{key}.time_emb_proj", (*path, "emb_proj"), "linear")
    entries += _norm(f"{key}.norm2", (*path, "norm2")) + _conv(f"{key}.conv2", (*path, "conv2"))
    if has_shortcut:  # a 1x1 conv where the block changes the channel count
        entries += _conv(f"{key}.conv_shortcut", (*path, "skip"))
    return entries


def _transformer(key: str, path: Path, depth: int, linear_projection: bool) -> list[Entry]:
    proj = "linear" if linear_projection else "conv"
    entries = _norm(f"{key}.norm", (*path, "norm")) + _conv(
        f"{key}.proj_in", (*path, "proj_in"), proj
    )
    for b in range(depth):
        k, p = f"{key}.transformer_blocks.{b}", (*path, "transformer_blocks", b)
        for n in (1, 2, 3):
            entries += _norm(f"{k}.norm{n}", (*p, f"norm{n}"), group_norm=False)
        for attn in ("attn1", "attn2"):
            for name in ("to_q", "to_k", "to_v"):
                entries.append((f"{k}.{attn}.{name}.weight", (*p, attn, name, "kernel"), "linear"))
            entries += _conv(f"{k}.{attn}.to_out.0", (*p, attn, "to_out"), "linear")
        entries += _conv(f"{k}.ff.net.0.proj", (*p, "ff", "proj"), "linear")
        entries += _conv(f"{k}.ff.net.2", (*p, "ff", "out"), "linear")
    return entries + _conv(f"{key}.proj_out", (*path, "proj_out"), proj)


def key_table(config: SDUNetConfig) -> list[Entry]:
    """(diffusers key, jaxcf path, layout) for every parameter of SDUNet(config)."""
    chans, n = config.block_out_channels, len(config.block_out_channels)
    lin = config.use_linear_projection
    entries = _conv("conv_in", ("conv_in",))
    entries += _conv("time_embedding.linear_1", ("time_embedding", "fc1"), "linear")
    entries += _conv("time_embedding.linear_2", ("time_embedding", "fc2"), "linear")
    skips, ch = [chans[0]], chans[0]
    for i, kind in enumerate(config.down_block_types):
        key, path = f"down_blocks.{i}", ("down_blocks", i)
        for j in range(config.layers_per_block):
            entries += _resnet(f"{key}.resnets.{j}", (*path, "resnets", j), ch != chans[i])
            if kind == CROSS_DOWN:
                k, p = f"{key}.attentions.{j}", (*path, "attentions", j)
                entries += _transformer(k, p, config.depths[i], lin)
            ch = chans[i]
            skips.append(ch)
        if i < n - 1:
            entries += _conv(f"{key}.downsamplers.0.conv", (*path, "resample", "op"))
            skips.append(ch)
    entries += _resnet("mid_block.resnets.0", ("mid_block", "resnets", 0), False)
    entries += _transformer(
        "mid_block.attentions.0", ("mid_block", "attentions", 0), config.depths[-1], lin
    )
    entries += _resnet("mid_block.resnets.1", ("mid_block", "resnets", 1), False)
    for i, kind in enumerate(config.up_block_types):
        level = n - 1 - i
        key, path = f"up_blocks.{i}", ("up_blocks", i)
        for j in range(config.layers_per_block + 1):
            cin = ch + skips.pop()
            entries += _resnet(f"{key}.resnets.{j}", (*path, "resnets", j), cin != chans[level])
            if kind == CROSS_UP:
                k, p = f"{key}.attentions.{j}", (*path, "attentions", j)
                entries += _transformer(k, p, config.depths[level], lin)
            ch = chans[level]
        if level:
            entries += _conv(f"{key}.upsamplers.0.conv", (*path, "resample", "op"))
    entries += _norm("conv_norm_out", ("conv_norm_out",))
    return entries + _conv("conv_out", ("conv_out",))


# --- the single-file (LDM) layout ------------------------------------------------------------

_LDM_RESNET = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
_RESNET_TO_LDM = {ours: theirs for theirs, ours in _LDM_RESNET.items()}


def ldm_names(config: SDUNetConfig) -> dict[str, str]:
    """{diffusers module prefix: LDM module prefix} for SDUNet(config): LDM numbers the
    encoder's layers and downsamplers in one sequence (input_blocks, conv_in first), the
    decoder's likewise (output_blocks, a block's upsampler shares the index of its last
    layer), and a layer's parts as .0 (ResBlock), .1 (transformer), last (resampler)."""
    names = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0"}
    names |= {"time_embedding.linear_2": "time_embed.2"}
    names |= {"conv_norm_out": "out.0", "conv_out": "out.2"}
    n, per = len(config.block_out_channels), config.layers_per_block
    index = 1
    for i, kind in enumerate(config.down_block_types):
        for j in range(per):
            names[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{index}.0"
            if kind == CROSS_DOWN:
                names[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{index}.1"
            index += 1
        if i < n - 1:
            names[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{index}.0.op"
            index += 1
    names["mid_block.resnets.0"] = "middle_block.0"
    names["mid_block.attentions.0"] = "middle_block.1"
    names["mid_block.resnets.1"] = "middle_block.2"
    index = 0
    for i, kind in enumerate(config.up_block_types):
        for j in range(per + 1):
            names[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{index}.0"
            if kind == CROSS_UP:
                names[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{index}.1"
            index += 1
        if i < n - 1:
            part = 2 if kind == CROSS_UP else 1
            names[f"up_blocks.{i}.upsamplers.0.conv"] = f"output_blocks.{index - 1}.{part}.conv"
    return names


def ldm_key(key: str, names: Mapping[str, str], prefix: str = LDM_PREFIX) -> str:
    """A diffusers key -> its single-file name (inside transformers the names agree)."""
    module, _, leaf = key.rpartition(".")
    for theirs in sorted(names, key=len, reverse=True):
        if module == theirs or module.startswith(theirs + "."):
            rest = module[len(theirs) :]  # "" or ".norm1", ".transformer_blocks.0.attn1..."
            if ".resnets." in theirs and rest:
                rest = "." + _RESNET_TO_LDM[rest[1:]]
            return f"{prefix}{names[theirs]}{rest}.{leaf}"
    raise CheckpointError(f"no single-file name for {key}")  # a bug: every module is named


# --- conversion ---------------------------------------------------------------------------------


def _to_jax(w: np.ndarray, layout: str) -> np.ndarray:
    if layout == "conv":
        return conv_kernel(w)
    return linear_kernel(w) if layout == "linear" else w


def _to_torch(w: np.ndarray, layout: str) -> np.ndarray:
    if layout == "conv":  # (kh, kw, in, out) -> (out, in, kh, kw)
        return np.ascontiguousarray(np.moveaxis(w, (-1, -2), (0, 1)))
    return np.ascontiguousarray(w.T) if layout == "linear" else w


def _torch_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    if layout == "conv":
        return (shape[-1], shape[-2], *shape[:-2])
    return shape[::-1] if layout == "linear" else shape


def _table(config: SDUNetConfig, layout: str) -> list[Entry]:
    table = key_table(config)
    if layout == "diffusers":
        return table
    if layout != "ldm":
        raise InputError(f"layout must be 'diffusers' or 'ldm', got {layout!r}")
    names = ldm_names(config)
    return [(ldm_key(key, names), path, kind) for key, path, kind in table]


def detect_layout(state: Mapping[str, Any], source: str) -> str:
    """ "diffusers" (conv_in.weight) or "ldm" (model.diffusion_model.input_blocks.0.0.weight)."""
    if "conv_in.weight" in state:
        return "diffusers"
    if f"{LDM_PREFIX}input_blocks.0.0.weight" in state:
        return "ldm"
    shown = ", ".join(sorted(state)[:8])
    raise CheckpointError(
        f"{source}: not a Stable Diffusion UNet (no conv_in.weight or "
        f"{LDM_PREFIX}input_blocks.0.0.weight; keys: {shown} ...)"
    )


def _strip(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: w for k, w in state.items() if k.startswith(prefix)}


def infer_config(state: Mapping[str, Any], layout: str, source: str) -> SDUNetConfig:
    """SDUNetConfig from the tensor shapes of a file without config.json: widths, levels,
    layers per block, block types, transformer depth, context width, channels in / out and
    the projection kind. Head counts and GroupNorm groups leave no trace in the shapes:
    they keep SD 1.5's values (8 heads, 32 groups); pass config= for anything else."""
    v = dict(state) if layout == "diffusers" else _strip(state, LDM_PREFIX)
    if layout == "diffusers":
        conv_in, conv_out = v["conv_in.weight"], v["conv_out.weight"]
        res = lambda i, j: f"down_blocks.{i}.resnets.{j}.conv1.weight"
        attn = lambda i: f"down_blocks.{i}.attentions.0.proj_in.weight"
        blocks = 1 + max(int(k.split(".")[1]) for k in v if k.startswith("down_blocks."))
        per = 1 + max(int(k.split(".")[3]) for k in v if k.startswith("down_blocks.0.resnets."))
        chans = tuple(int(v[res(i, 0)].shape[0]) for i in range(blocks))
        cross = [attn(i) in v for i in range(blocks)]
        mid = "mid_block.attentions.0"
    else:
        conv_in, conv_out = v["input_blocks.0.0.weight"], v["out.2.weight"]
        blocks_in = 1 + max(int(k.split(".")[1]) for k in v if k.startswith("input_blocks."))
        with_op = sorted({int(k.split(".")[1]) for k in v if ".0.op." in k})
        per = with_op[0] - 1 if with_op else blocks_in - 1
        blocks = len(with_op) + 1
        first = [1 + i * (per + 1) for i in range(blocks)]
        chans = tuple(int(v[f"input_blocks.{b}.0.in_layers.2.weight"].shape[0]) for b in first)
        cross = [f"input_blocks.{b}.1.proj_in.weight" in v for b in first]
        mid = "middle_block.1"
    proj = v.get(f"{mid}.proj_in.weight")
    if proj is None:
        raise CheckpointError(f"{source}: no mid-block transformer ({mid}.proj_in.weight)")
    depth = len({k for k in v if k.startswith(f"{mid}.transformer_blocks.") and "attn1.to_q" in k})
    context = v[f"{mid}.transformer_blocks.0.attn2.to_k.weight"]
    return SDUNetConfig(
        in_channels=int(conv_in.shape[1]),
        out_channels=int(conv_out.shape[0]),
        block_out_channels=chans,
        down_block_types=tuple(CROSS_DOWN if c else PLAIN_DOWN for c in cross),
        up_block_types=tuple(CROSS_UP if c else PLAIN_UP for c in reversed(cross)),
        layers_per_block=per,
        cross_attention_dim=int(context.shape[1]),
        transformer_layers_per_block=depth,
        use_linear_projection=np.ndim(proj) == 2,
    )


def sd_unet_params(
    state: Mapping[str, np.ndarray],
    params: nnx.State,
    config: SDUNetConfig,
    *,
    layout: str = "diffusers",
    source: str = "SD UNet state dict",
) -> nnx.State:
    """Fill `params` (nnx.state of SDUNet(config), concrete or abstract) from a torch-layout
    state dict; returns `params`. Raises CheckpointError listing missing and unexpected
    keys, or tensors whose shape does not fit `config` (reported in torch layout)."""
    table = _table(config, layout)
    owned = [""] if layout == "diffusers" else [LDM_PREFIX]
    check_table_keys(state, table, owned, (), "Stable Diffusion UNet", source)
    tree = nnx.to_pure_dict(params)
    values: dict = {}
    bad = []
    for key, path, kind in table:
        w = np.asarray(state[key], np.float32)
        want = _torch_shape(tuple(np.shape(tree_get(tree, path))), kind)
        if w.shape != want:
            bad.append(f"{key}: {w.shape} in the checkpoint, {want} in the model")
            continue
        tree_set(values, path, _to_jax(w, kind))
    if bad:
        shown = "; ".join(bad[:8]) + (" ..." if len(bad) > 8 else "")
        raise CheckpointError(f"{source}: {len(bad)} tensors do not fit {config}: {shown}")
    return fill_params(params, values, source)


def sd_unet_state_dict(model: SDUNet, layout: str = "diffusers") -> dict[str, np.ndarray]:
    """The inverse: a torch-layout state dict (float32 numpy) of `model`, with diffusers'
    names (layout="diffusers") or single-file SD's (layout="ldm", `model.diffusion_model.*`)."""
    tree = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return {
        key: _to_torch(np.asarray(tree_get(tree, path), np.float32), kind)
        for key, path, kind in _table(model.config, layout)
    }


# What a config.json must agree on with the network it is loaded into: the fields that
# leave no trace in the tensor shapes (heads, norms, the time embedding) and the rest, which
# the shapes would catch less legibly. sample_size (a default latent side) does not matter.
_SAME_NETWORK = (
    "in_channels",
    "out_channels",
    "block_out_channels",
    "down_block_types",
    "up_block_types",
    "layers_per_block",
    "cross_attention_dim",
    "heads",
    "depths",
    "norm_num_groups",
    "norm_eps",
    "use_linear_projection",
    "flip_sin_to_cos",
    "freq_shift",
)


def load_sd_unet_params(
    path: str | os.PathLike, params: nnx.State, config: SDUNetConfig
) -> nnx.State:
    """Fill `params` (nnx.state of an SDUNet(config) or of the registry's "sd_unet" family,
    concrete or abstract) from a checkpoint file or folder (see the module docstring), e.g.
    to fine-tune SD 1.5 (jaxcf.models.pretrained). A diffusers folder's config.json must
    describe `config`'s network (head counts and norms leave no trace in the shapes):
    fields that differ raise CheckpointError naming the file, as do missing, unexpected or
    misshapen tensors."""
    folder = pathlib.Path(path)
    file = resolve_checkpoint(folder, DIFFUSERS_WEIGHT_FILES, subfolders=("unet",))
    state = load_state_dict(file)
    layout = detect_layout(state, str(file))
    hf = read_hf_config(file.parent) if folder.is_dir() else None
    if hf is not None:
        where = file.parent / "config.json"
        try:
            theirs = SDUNetConfig.from_diffusers(hf)
        except (InputError, TypeError) as err:
            raise CheckpointError(f"{where}: {err}") from None
        differ = [
            f"{name} {getattr(theirs, name)!r} there, {getattr(config, name)!r} in the model"
            for name in _SAME_NETWORK
            if getattr(theirs, name) != getattr(config, name)
        ]
        if differ:
            raise CheckpointError(f"{where}: another UNet: {'; '.join(differ)}")
    return sd_unet_params(state, params, config, layout=layout, source=str(file))


def load_sd_unet(
    path: str | os.PathLike, config: SDUNetConfig | None = None, *, dtype: Any = None
) -> tuple[SDUNet, SDUNetConfig]:
    """Build an SDUNet from a checkpoint file or folder (see the module docstring).

    config: the UNet's sizes; by default the folder's config.json (diffusers), else
    inferred from the tensor shapes with SD 1.5's head count and GroupNorm groups (see
    :func:`infer_config`). dtype: compute dtype. Returns (model, config); the parameters
    are float32.
    """
    folder = pathlib.Path(path)
    file = resolve_checkpoint(folder, DIFFUSERS_WEIGHT_FILES, subfolders=("unet",))
    source = str(file)
    state = load_state_dict(file)
    layout = detect_layout(state, source)
    if config is None:
        hf = read_hf_config(file.parent) if folder.is_dir() else None
        try:
            if hf is not None:
                config = SDUNetConfig.from_diffusers(hf)
            else:
                config = infer_config(state, layout, source)
        except KeyError as err:
            raise CheckpointError(f"{source}: missing key {err.args[0]}") from None
        except (InputError, TypeError) as err:
            where = source if hf is None else file.parent / "config.json"
            raise CheckpointError(f"{where}: {err}") from None
    model = nnx.eval_shape(lambda: SDUNet(config, dtype=dtype, rngs=nnx.Rngs(0)))
    params = sd_unet_params(
        state, nnx.state(model, nnx.Param), config, layout=layout, source=source
    )
    nnx.update(model, params)
    return model, config


__all__ = [
    "LDM_PREFIX",
    "detect_layout",
    "infer_config",
    "key_table",
    "ldm_key",
    "ldm_names",
    "load_sd_unet",
    "load_sd_unet_params",
    "sd_unet_params",
    "sd_unet_state_dict",
]
