"""CLIP text-encoder checkpoints -> :class:`jaxcf.models.clip_text.CLIPTextModel`.

Two key layouts, told apart by the prefix in front of
`embeddings.token_embedding.weight`:
  - transformers / diffusers: `text_model.embeddings.token_embedding.weight`,
    `text_model.encoder.layers.N.self_attn.q_proj.weight`, ...,
    `text_model.final_layer_norm.*` (a CLIPTextModel, an SD pipeline's `text_encoder/`,
    or a whole CLIPModel, whose vision tower and projections are ignored);
  - single-file Stable Diffusion (.ckpt / .safetensors): the same names behind
    `cond_stage_model.transformer.text_model.`; the UNet (`model.diffusion_model.*`), the
    VAE (`first_stage_model.*`) and anything else outside the prefix are ignored.

Reads a `.safetensors` file (numpy API, no torch), a torch `.bin` / `.ckpt` / `.pt` (needs
torch), or a folder: a transformers `save_pretrained` folder or a diffusers pipeline
(its `text_encoder/`), with model.safetensors (else pytorch_model.bin, else the .fp16
variants) and config.json. Inside the prefix the `embeddings.position_ids` buffer is
ignored; any other unknown key, and any missing one, is a one-line CheckpointError naming
the file.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from jaxcf.convert.common import (
    CheckpointError,
    Entry,
    check_table_keys,
    dense_entries,
    load_state_dict,
    norm_entries,
    params_from_table,
    read_hf_config,
    resolve_checkpoint,
    shorten,
    state_from_table,
)
from jaxcf.models.clip_text import CLIPTextConfig, CLIPTextModel

HF_WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.fp16.safetensors",
    "pytorch_model.fp16.bin",
)
TOKEN_EMBEDDING = "embeddings.token_embedding.weight"
HF_PREFIX = "text_model."
SD_PREFIX = "cond_stage_model.transformer.text_model."
IGNORED = ("embeddings.position_ids",)  # inside the prefix, read by nobody on purpose
# CLIP's text towers all use 64-wide heads (ViT-B 512/8, ViT-L 768/12, ViT-H 1024/16).
HEAD_WIDTH = 64


# --- the key table --------------------------------------------------------------------------


def _layer(i: int, prefix: str) -> list[Entry]:
    key, path = f"{prefix}encoder.layers.{i}", ("layers", i)
    entries = norm_entries(f"{key}.layer_norm1", (*path, "norm1"))
    for ours, theirs in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("out", "out_proj")):
        entries += dense_entries(f"{key}.self_attn.{theirs}", (*path, ours))
    entries += norm_entries(f"{key}.layer_norm2", (*path, "norm2"))
    return (
        entries
        + dense_entries(f"{key}.mlp.fc1", (*path, "fc1"))
        + dense_entries(f"{key}.mlp.fc2", (*path, "fc2"))
    )


def key_table(config: CLIPTextConfig, prefix: str = HF_PREFIX) -> list[Entry]:
    """(checkpoint key, jaxcf parameter path, layout) for every parameter of
    CLIPTextModel(config), keys behind `prefix`."""
    entries: list[Entry] = [
        (f"{prefix}{TOKEN_EMBEDDING}", ("token_embedding", "embedding"), "vec"),
        (
            f"{prefix}embeddings.position_embedding.weight",
            ("position_embedding", "embedding"),
            "vec",
        ),
    ]
    for i in range(config.num_layers):
        entries += _layer(i, prefix)
    return entries + norm_entries(f"{prefix}final_layer_norm", ("final_norm",))


# --- layout of the checkpoint -----------------------------------------------------------------


def detect_prefix(state: Mapping[str, Any], source: str) -> str:
    """The prefix in front of `embeddings.token_embedding.weight`: "text_model."
    (transformers / diffusers), "cond_stage_model.transformer.text_model." (single-file
    SD), or any other dotted prefix."""
    cut = lambda k: k[: -len(TOKEN_EMBEDDING)]
    found = sorted(
        cut(k) for k in state if k.endswith(TOKEN_EMBEDDING) and cut(k)[-1:] in ("", ".")
    )
    if not found:
        shown = shorten(sorted(state), 8)
        raise CheckpointError(
            f"{source}: not a CLIP text encoder (no ...{TOKEN_EMBEDDING}; keys: {shown})"
        )
    if len(found) > 1:
        raise CheckpointError(f"{source}: several CLIP text encoders ({found}); pass prefix=")
    return found[0]


def infer_config(
    state: Mapping[str, np.ndarray],
    prefix: str,
    *,
    hf_config: Mapping[str, Any] | None,
    num_heads: int | None,
    source: str,
) -> CLIPTextConfig:
    """CLIPTextConfig from config.json when there is one, else from the tensor shapes:
    heads of width 64 unless num_heads is given, quick_gelu, eps 1e-5, pooled at the argmax
    of the ids (all as OpenAI CLIP and SD 1.x)."""
    extra = {} if num_heads is None else {"num_heads": num_heads}
    if hf_config is not None:
        return CLIPTextConfig.from_hf(hf_config, **extra)
    layers = {
        int(k[len(prefix) :].split(".")[2])
        for k in state
        if k.startswith(f"{prefix}encoder.layers.")
    }
    token = state[f"{prefix}{TOKEN_EMBEDDING}"]
    hidden = int(token.shape[1])
    if num_heads is None and hidden % HEAD_WIDTH:
        raise CheckpointError(
            f"{source}: hidden size {hidden} is not a multiple of 64 and there is no "
            "config.json; pass num_heads= or config="
        )
    try:
        return CLIPTextConfig(
            vocab_size=int(token.shape[0]),
            hidden_size=hidden,
            num_layers=len(layers),
            num_heads=num_heads or hidden // HEAD_WIDTH,
            intermediate_size=int(state[f"{prefix}encoder.layers.0.mlp.fc1.weight"].shape[0]),
            max_position=int(state[f"{prefix}embeddings.position_embedding.weight"].shape[0]),
        )
    except KeyError as err:
        raise CheckpointError(f"{source}: missing key {err.args[0]}") from None


# --- conversion -------------------------------------------------------------------------------


def clip_text_params_from_hf(
    state: Mapping[str, np.ndarray],
    params: nnx.State,
    config: CLIPTextConfig,
    *,
    prefix: str = HF_PREFIX,
    source: str = "CLIP text state dict",
) -> nnx.State:
    """Fill `params` (nnx.state of CLIPTextModel(config), concrete or abstract) from a state
    dict {name: torch-layout array}; returns `params`. Raises CheckpointError on missing /
    unexpected keys or tensors whose shape does not fit `config` (reported in torch layout)."""
    table = key_table(config, prefix)
    check_table_keys(state, table, [prefix], IGNORED, "CLIP text encoder", source)
    return params_from_table(state, params, table, config, source)


def clip_text_state_dict(model: CLIPTextModel, prefix: str = HF_PREFIX) -> dict[str, np.ndarray]:
    """The inverse: a state dict of float32 numpy arrays in torch layout behind `prefix`
    (HF_PREFIX for transformers' CLIPTextModel, SD_PREFIX for a single-file checkpoint)."""
    return state_from_table(model, key_table(model.config, prefix))


def load_clip_text(
    path: str | os.PathLike,
    config: CLIPTextConfig | None = None,
    *,
    prefix: str | None = None,
    num_heads: int | None = None,
    dtype: Any = None,
) -> tuple[CLIPTextModel, CLIPTextConfig]:
    """Build a CLIPTextModel from a checkpoint file or folder (see the module docstring).

    config: the model's sizes; by default the folder's config.json, else inferred from the
    tensor shapes. prefix: the key prefix, detected by default. num_heads: overrides the
    head count (default: config.json's, else hidden / 64). dtype: compute dtype of the
    dense layers. Returns (model, config); the parameters are float32.
    """
    folder = pathlib.Path(path)
    file = resolve_checkpoint(folder, HF_WEIGHT_FILES, subfolders=("text_encoder",))
    source = str(file)
    state = load_state_dict(file)
    prefix = detect_prefix(state, source) if prefix is None else prefix
    if config is None:
        hf_config = read_hf_config(file.parent) if folder.is_dir() else None
        config = infer_config(
            state, prefix, hf_config=hf_config, num_heads=num_heads, source=source
        )
    model = nnx.eval_shape(lambda: CLIPTextModel(config, dtype=dtype, rngs=nnx.Rngs(0)))
    params = clip_text_params_from_hf(
        state, nnx.state(model, nnx.Param), config, prefix=prefix, source=source
    )
    nnx.update(model, params)
    return model, config


__all__ = [
    "HF_PREFIX",
    "HF_WEIGHT_FILES",
    "SD_PREFIX",
    "clip_text_params_from_hf",
    "clip_text_state_dict",
    "detect_prefix",
    "infer_config",
    "key_table",
    "load_clip_text",
]
