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

import json
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from jaxcf.convert.common import (
    CheckpointError,
    fill_params,
    linear_kernel,
    load_state_dict,
    resolve_checkpoint,
    shorten,
    tree_get,
    tree_set,
)
from jaxcf.models.bert import Bert, BertConfig

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"
# Inside the prefix, read by nobody on purpose (see the module docstring).
IGNORED = ("embeddings.position_ids", "embeddings.token_type_ids", "pooler.dense.")

Path = tuple[Any, ...]  # a path into nnx.to_pure_dict(params)
Entry = tuple[str, Path, str]  # (checkpoint key, parameter path, "linear" | "vec")


# --- the key table --------------------------------------------------------------------------


def _dense(key: str, path: Path, bias: bool = True) -> list[Entry]:
    entries = [(f"{key}.weight", (*path, "kernel"), "linear")]
    return entries + ([(f"{key}.bias", (*path, "bias"), "vec")] if bias else [])


def _norm(key: str, path: Path) -> list[Entry]:
    return [(f"{key}.weight", (*path, "scale"), "vec"), (f"{key}.bias", (*path, "bias"), "vec")]


def _layer(i: int, prefix: str) -> list[Entry]:
    key, path = f"{prefix}encoder.layer.{i}", ("layers", i)
    entries: list[Entry] = []
    for name in ("query", "key", "value"):
        entries += _dense(f"{key}.attention.self.{name}", (*path, name))
    entries += _dense(f"{key}.attention.output.dense", (*path, "attn_out"))
    entries += _norm(f"{key}.attention.output.LayerNorm", (*path, "attn_norm"))
    entries += _dense(f"{key}.intermediate.dense", (*path, "fc1"))
    entries += _dense(f"{key}.output.dense", (*path, "fc2"))
    return entries + _norm(f"{key}.output.LayerNorm", (*path, "out_norm"))


def key_table(config: BertConfig, prefix: str = "", head: str | None = None) -> list[Entry]:
    """(checkpoint key, jaxcf parameter path, layout) for every parameter of Bert(config);
    `head` is the projection's key prefix (e.g. "text.proj.")."""
    entries: list[Entry] = []
    for name in ("word", "position", "token_type"):
        key = f"{prefix}embeddings.{name}_embeddings.weight"
        entries.append((key, (f"{name}_embeddings", "embedding"), "vec"))
    entries += _norm(f"{prefix}embeddings.LayerNorm", ("embed_norm",))
    for i in range(config.num_layers):
        entries += _layer(i, prefix)
    if config.proj == "mlp":
        entries += _dense(f"{head}0", ("proj", "fc1"), bias=False)
        entries += _dense(f"{head}2", ("proj", "fc2"), bias=False)
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


def _check_keys(
    state: Mapping[str, Any], table: list[Entry], prefix: str, head: str | None, source: str
) -> None:
    """One error listing the missing and the unexpected keys (within prefix and head)."""
    wanted = [key for key, _, _ in table]
    missing = [k for k in wanted if k not in state]
    owned = [k for k in state if k.startswith(prefix) or (head and k.startswith(head))]
    known = set(wanted)
    unexpected = sorted(
        k for k in owned if k not in known and not k[len(prefix) :].startswith(IGNORED)
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {shorten(missing, 8)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {shorten(unexpected, 8)}")
    if problems:
        where = f" (prefix {prefix!r})" if prefix else ""
        raise CheckpointError(f"{source}: not this BERT{where}: {'; '.join(problems)}")


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
    _check_keys(state, table, prefix, head, source)
    tree = nnx.to_pure_dict(params)
    values: dict = {}
    bad: list[str] = []
    for key, path, layout in table:
        want = tuple(np.shape(tree_get(tree, path)))
        if layout == "linear":
            want = want[::-1]
        w = np.asarray(state[key])
        if w.shape != want:
            bad.append(f"{key}: {tuple(w.shape)} in the checkpoint, {want} in the model")
            continue
        tree_set(values, path, linear_kernel(w) if layout == "linear" else w)
    if bad:
        raise CheckpointError(
            f"{source}: {len(bad)} tensors do not fit {config}: {shorten(bad, 8, '; ')}"
        )
    return fill_params(params, values, source)


def bert_state_dict(model: Bert, prefix: str = "") -> dict[str, np.ndarray]:
    """The inverse: a HF-layout state dict of float32 numpy arrays (no pooler), e.g. to save
    with safetensors.numpy.save_file and load in transformers' BertModel. A projection head
    needs an OpenCLIP prefix ("text.transformer."; the head goes to "text.proj.")."""
    head = head_prefix(prefix)
    if model.config.proj is not None and head is None:
        raise CheckpointError("bert_state_dict: a projection head needs a '...transformer.' prefix")
    tree = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    out = {}
    for key, path, layout in key_table(model.config, prefix, head):
        w = np.asarray(tree_get(tree, path), np.float32)
        out[key] = np.ascontiguousarray(w.T) if layout == "linear" else w
    return out


def _read_hf_config(path: pathlib.Path) -> dict[str, Any] | None:
    file = path / "config.json"
    if not path.is_dir() or not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file}: not a readable config.json ({err})") from None


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
            hf_config=_read_hf_config(folder),
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
