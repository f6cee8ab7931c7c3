"""Hugging Face `BertModel` checkpoints -> :class:`jaxcf.models.bert.Bert`.

Reads a `.safetensors` file (numpy API, no torch), a torch `.bin` / `.pt` (needs torch),
or a `save_pretrained` folder (model.safetensors, else pytorch_model.bin, plus its
config.json). Keys are HF's (`embeddings.word_embeddings.weight`,
`encoder.layer.N.attention.self.query.weight`, ...) behind an optional prefix: none for a
BertModel, `bert.` for BertFor* heads, `text.transformer.` for OpenCLIP's HFTextEncoder
(BiomedCLIP), whose projection head is read from `text.proj.0.weight` /
`text.proj.2.weight` ("mlp") or `text.proj.weight` ("linear"). The prefix is detected
from the word-embedding key unless given.

Keys outside the prefix (an image tower, MLM heads, logit_scale) are ignored. Inside it,
the pooler (`pooler.dense.*`, BertModel's tanh head, unused by mean / [CLS]-state pooling)
and the `position_ids` / `token_type_ids` buffers are ignored; any other unknown key, and
any missing one, is a CheckpointError naming the file. TF-era `LayerNorm.gamma` /
`LayerNorm.beta` names load as weight / bias.
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
from jaxcf.models.bert import Bert, BertConfig

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"
# Inside the prefix, read by nobody on purpose (see the module docstring).
IGNORED = ("embeddings.position_ids", "embeddings.token_type_ids", "pooler.dense.")


# --- the key table --------------------------------------------------------------------------


def _layer(i: int, prefix: str) -> list[Entry]:
    key, path = f"{prefix}encoder.layer.{i}", ("layers", i)
    entries: list[Entry] = []
    for name in ("query", "key", "value"):
        entries += dense_entries(f"{key}.attention.self.{name}", (*path, name))
    entries += dense_entries(f"{key}.attention.output.dense", (*path, "attn_out"))
    entries += norm_entries(f"{key}.attention.output.LayerNorm", (*path, "attn_norm"))
    entries += dense_entries(f"{key}.intermediate.dense", (*path, "fc1"))
    entries += dense_entries(f"{key}.output.dense", (*path, "fc2"))
    return entries + norm_entries(f"{key}.output.LayerNorm", (*path, "out_norm"))


def key_table(config: BertConfig, prefix: str = "", head: str | None = None) -> list[Entry]:
    """(checkpoint key, jaxcf parameter path, layout) for every parameter of Bert(config);
    `head` is the projection's key prefix (e.g. "text.proj.")."""
    entries: list[Entry] = []
    for name in ("word", "position", "token_type"):
        key = f"{prefix}embeddings.{name}_embeddings.weight"
        entries.append((key, (f"{name}_embeddings", "embedding"), "vec"))
    entries += norm_entries(f"{prefix}embeddings.LayerNorm", ("embed_norm",))
    for i in range(config.num_layers):
        entries += _layer(i, prefix)
    if config.proj == "mlp":
        entries += dense_entries(f"{head}0", ("proj", "fc1"), bias=False)
        entries += dense_entries(f"{head}2", ("proj", "fc2"), bias=False)
    elif config.proj == "linear":
        entries.append((f"{head}weight", ("proj", "fc1", "kernel"), "linear"))
    return entries


# --- layout of the checkpoint -----------------------------------------------------------------


def detect_prefix(state: Mapping[str, Any], source: str) -> str:
    """The key prefix in front of `embeddings.word_embeddings.weight` ("" for BertModel)."""
    prefixes = (k[: -len(WORD_EMBEDDINGS)] for k in state if k.endswith(WORD_EMBEDDINGS))
    found = sorted(p for p in prefixes if p == "" or p.endswith("."))
    if not found:
        shown = shorten(sorted(state), 8)
        raise CheckpointError(
            f"{source}: not a BERT checkpoint (no {WORD_EMBEDDINGS}; keys: {shown})"
        )
    if len(found) > 1:
        raise CheckpointError(f"{source}: several BERT encoders ({found}); pass prefix=")
    return found[0]


def head_prefix(prefix: str) -> str | None:
    """OpenCLIP's projection keys beside its transformer: "text.transformer." -> "text.proj."."""
    if prefix.endswith("transformer."):
        return prefix[: -len("transformer.")] + "proj."
    return None


def _rename_legacy(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """TF-era BERT names: LayerNorm.gamma / .beta -> .weight / .bias."""
    out = {}
    for k, v in state.items():
        if ".LayerNorm." in k and k.endswith((".gamma", ".beta")):
            k = k.rsplit(".", 1)[0] + (".weight" if k.endswith(".gamma") else ".bias")
        out[k] = v
    return out


def infer_config(
    state: Mapping[str, np.ndarray],
    prefix: str,
    head: str | None,
    *,
    hf_config: Mapping[str, Any] | None,
    num_heads: int | None,
    source: str,
) -> BertConfig:
    """BertConfig from config.json when there is one, else from the tensor shapes
    (layer_norm_eps then takes BERT's 1e-12; num_heads must be given); the projection
    head always comes from the keys."""
    proj: dict[str, Any] = {}
    if head is not None and f"{head}0.weight" in state and f"{head}2.weight" in state:
        proj = {"proj": "mlp", "proj_dim": int(state[f"{head}2.weight"].shape[0])}
    elif head is not None and f"{head}weight" in state:
        proj = {"proj": "linear", "proj_dim": int(state[f"{head}weight"].shape[0])}
    extra = {**proj, **({} if num_heads is None else {"num_heads": num_heads})}
    if hf_config is not None:
        return BertConfig.from_hf(hf_config, **extra)
    if num_heads is None:
        raise CheckpointError(
            f"{source}: the number of attention heads is not in the weights and there is no "
            "config.json; pass num_heads= or config="
        )
    layer_key = re.compile(rf"{re.escape(prefix)}encoder\.layer\.(\d+)\.")
    layers = {int(m.group(1)) for m in map(layer_key.match, state) if m}
    shape = lambda key, axis: int(state[f"{prefix}{key}"].shape[axis])
    try:
        return BertConfig(
            vocab_size=shape(WORD_EMBEDDINGS, 0),
            hidden_size=shape(WORD_EMBEDDINGS, 1),
            num_layers=len(layers),
            intermediate_size=shape("encoder.layer.0.intermediate.dense.weight", 0),
            max_position=shape("embeddings.position_embeddings.weight", 0),
            type_vocab_size=shape("embeddings.token_type_embeddings.weight", 0),
            **extra,
        )
    except KeyError as err:
        raise CheckpointError(f"{source}: missing key {err.args[0]}") from None


# --- conversion -------------------------------------------------------------------------------


def bert_params_from_hf(
    state: Mapping[str, np.ndarray],
    params: nnx.State,
    config: BertConfig,
    *,
    prefix: str = "",
    head: str | None = None,
    source: str = "BERT state dict",
) -> nnx.State:
    """Fill `params` (nnx.state of Bert(config), concrete or abstract) from a HF state dict
    {name: torch-layout array}; returns `params`. Raises CheckpointError on missing /
    unexpected keys or tensors whose shape does not fit `config` (reported in torch layout)."""
    if config.proj is not None and head is None:
        raise CheckpointError(
            f"{source}: a projection head ({config.proj}) is read only from OpenCLIP "
            "checkpoints (prefix '...transformer.', head '...proj.')"
        )
    state = _rename_legacy(state)
    table = key_table(config, prefix, head)
    owned = [prefix, head] if head else [prefix]
    check_table_keys(state, table, owned, IGNORED, "BERT", source)
    return params_from_table(state, params, table, config, source)


def bert_state_dict(model: Bert, prefix: str = "") -> dict[str, np.ndarray]:
    """The inverse: a HF-layout state dict of float32 numpy arrays (no pooler), e.g. to save
    with safetensors.numpy.save_file and load in transformers' BertModel. A projection head
    needs an OpenCLIP prefix ("text.transformer."; the head goes to "text.proj.")."""
    head = head_prefix(prefix)
    if model.config.proj is not None and head is None:
        raise CheckpointError("bert_state_dict: a projection head needs a '...transformer.' prefix")
    return state_from_table(model, key_table(model.config, prefix, head))


def load_bert(
    path: str | os.PathLike,
    config: BertConfig | None = None,
    prefix: str | None = None,
    *,
    num_heads: int | None = None,
    dtype: Any = None,
) -> tuple[Bert, BertConfig]:
    """Build a Bert from a HF / OpenCLIP checkpoint file or save_pretrained folder.

    config: the model's sizes; by default the folder's config.json, else inferred from the
    tensor shapes (then num_heads= is needed). prefix: the encoder's key prefix ("",
    "bert.", "text.transformer."), detected by default. dtype: compute dtype of the dense
    layers. Returns (model, config); the model's parameters are float32.
    """
    folder = pathlib.Path(path)
    file = resolve_checkpoint(folder, HF_WEIGHT_FILES)
    source = str(file)
    state = load_state_dict(file)
    prefix = detect_prefix(state, source) if prefix is None else prefix
    head = head_prefix(prefix)
    if config is None:
        config = infer_config(
            state,
            prefix,
            head,
            hf_config=read_hf_config(folder),
            num_heads=num_heads,
            source=source,
        )
    model = nnx.eval_shape(lambda: Bert(config, dtype=dtype, rngs=nnx.Rngs(0)))
    params = bert_params_from_hf(
        state, nnx.state(model, nnx.Param), config, prefix=prefix, head=head, source=source
    )
    nnx.update(model, params)
    return model, config


__all__ = [
    "HF_WEIGHT_FILES",
    "bert_params_from_hf",
    "bert_state_dict",
    "detect_prefix",
    "head_prefix",
    "infer_config",
    "key_table",
    "load_bert",
]
