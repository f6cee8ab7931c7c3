"""DiT checkpoints (facebookresearch/DiT and diffusers' DiTTransformer2DModel) -> jaxcf
`DiT` parameters, and jaxcf parameters -> a facebookresearch-style state dict.

Layouts. Both sources number patch tokens row-major over the patch grid and order each
token's output vector (row in patch, column in patch, channel), as jaxcf does, so the
final linear maps across unchanged; only the image axes differ (sources channels-first,
jaxcf channels-last), which the conv-kernel transpose of the patch embedding absorbs.
The fused qkv projection is laid out [q | k | v], each head-major: diffusers' separate
to_q / to_k / to_v concatenate into it.

Timestep embedding. facebookresearch uses frequencies 10000^(-i/128) (freq_shift=0);
diffusers' DiT uses downscale_freq_shift=1, i.e. 10000^(-i/127). Build the target model
with `DiT(..., freq_shift=1)` for diffusers weights; `load_dit_checkpoint` checks this when
given the model. diffusers' blocks also normalise before the MLP with `norm_eps` (1e-5 by
default) where the original and jaxcf use 1e-6; at unit-scale activations that moves
outputs by a few 1e-6, below the parity tolerance.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

import jax
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
    tree_get,
    tree_set,
)
from jaxcf.errors import InputError
from jaxcf.models.dit import DiT, sincos_pos_embed_2d

Layout = Literal["facebook", "diffusers"]
FREQ_SHIFT: dict[str, float] = {"facebook": 0.0, "diffusers": 1.0}


# --- key tables ---------------------------------------------------------------------------------

# jaxcf Linear (path in the params tree) -> source module name (".weight" / ".bias" appended).
_FACEBOOK_TOP = {
    ("t_embed", "fc1"): "t_embedder.mlp.0",
    ("t_embed", "fc2"): "t_embedder.mlp.2",
    ("final", "ada"): "final_layer.adaLN_modulation.1",
    ("final", "linear"): "final_layer.linear",
}
_FACEBOOK_BLOCK = {
    "qkv": "attn.qkv",
    "proj": "attn.proj",
    "fc1": "mlp.fc1",
    "fc2": "mlp.fc2",
    "ada": "adaLN_modulation.1",
}
_DIFFUSERS_TOP = {("final", "ada"): "proj_out_1", ("final", "linear"): "proj_out_2"}
_DIFFUSERS_BLOCK = {
    "proj": "attn1.to_out.0",
    "fc1": "ff.net.0.proj",
    "fc2": "ff.net.2",
    "ada": "norm1.linear",
}  # qkv: attn1.to_q / to_k / to_v side by side
_DIFFUSERS_EMBEDDER = ["timestep_embedder.linear_1", "timestep_embedder.linear_2"]
_DIFFUSERS_TABLE = "class_embedder.embedding_table.weight"


def _linears(top: dict, block: dict, block_prefix: str, depth: int) -> dict[tuple, str]:
    names = dict(top)
    for i in range(depth):
        names.update({("blocks", i, ours): f"{block_prefix}{i}.{n}" for ours, n in block.items()})
    return names


def _weights(names) -> list[str]:
    return [f"{n}.{w}" for n in names for w in ("weight", "bias")]


# --- helpers ----------------------------------------------------------------------------------


def _linear(read: KeyReader, name: str) -> dict[str, np.ndarray]:
    return {"kernel": linear_kernel(read(f"{name}.weight")), "bias": read(f"{name}.bias")}


def _conv(read: KeyReader, name: str) -> dict[str, np.ndarray]:
    w = read(f"{name}.weight")
    # A tensor of the wrong rank is left as it is for fill_params to report its shape.
    return {"kernel": conv_kernel(w) if w.ndim == 4 else w, "bias": read(f"{name}.bias")}


def _fused_linear(read: KeyReader, names: list[str]) -> dict[str, np.ndarray]:
    """Separate Linear layers side by side as one fused flax Linear (kernel (in, sum out))."""
    parts = [_linear(read, n) for n in names]
    try:
        return {
            "kernel": np.concatenate([p["kernel"] for p in parts], axis=1),
            "bias": np.concatenate([p["bias"] for p in parts]),
        }
    except ValueError:  # inconsistent shapes: let fill_params report the first one
        return parts[0]


def _structure(params: nnx.State) -> dict[str, Any]:
    """Depth, patch, hidden size and which optional parts the target DiT has."""
    pure = nnx.to_pure_dict(params)
    try:
        kernel_shape = pure["patch_embed"]["kernel"].shape
        blocks = pure["blocks"]
    except (KeyError, TypeError, AttributeError):
        raise CheckpointError("target params are not those of a jaxcf DiT") from None
    return {
        "depth": len(blocks),
        "patch": kernel_shape[0],
        "hidden": kernel_shape[-1],
        "labels": "y_embed" in pure,
    }


def _check_pos_embed(pos: np.ndarray, hidden: int, patch: int, input_size, source: str) -> None:
    """jaxcf recomputes the fixed sin-cos embedding; make sure the checkpoint's is that one,
    for the grid the model will run on."""
    tokens = pos.shape[1] if pos.ndim == 3 else -1
    grid = round(tokens**0.5) if tokens > 0 else -1
    if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != hidden or grid * grid != tokens:
        raise CheckpointError(
            f"{source}: pos_embed has shape {pos.shape}, expected (1, N, {hidden}) with N square"
        )
    if input_size is not None and grid != input_size // patch:
        raise CheckpointError(
            f"{source}: pos_embed is for a {grid}x{grid} patch grid, the model's input_size "
            f"{input_size} with patch {patch} gives {input_size // patch}x{input_size // patch}"
        )
    # Half-precision exports round the embedding (|values| <= 1): allow a few of their ulps.
    tolerance = max(1e-5, 4 * float(np.finfo(pos.dtype).eps)) if pos.dtype.kind == "f" else 1e-5
    if not np.allclose(pos[0], sincos_pos_embed_2d(hidden, grid), atol=tolerance):
        raise CheckpointError(
            f"{source}: pos_embed is not the fixed 2-D sin-cos embedding jaxcf recomputes"
        )


# --- facebookresearch/DiT -------------------------------------------------------------------------


def dit_params_from_facebook(
    state: Mapping[str, np.ndarray],
    params: nnx.State,
    *,
    input_size: int | None = None,
    source: str = "facebookresearch DiT state dict",
) -> nnx.State:
    """A facebookresearch DiT state dict (torch layouts, numpy arrays) -> a parameter state
    shaped like `params` = nnx.state(DiT(..., freq_shift=0), nnx.Param) (concrete or from
    nnx.eval_shape); apply it with nnx.update(model, ...). pos_embed is checked, not loaded;
    with input_size its grid must match the model's."""
    s = _structure(params)
    linears = _linears(_FACEBOOK_TOP, _FACEBOOK_BLOCK, "blocks.", s["depth"])
    table = ["y_embedder.embedding_table.weight"] if s["labels"] else []
    read = KeyReader(state, source)
    read.require([*_weights([*linears.values(), "x_embedder.proj"]), "pos_embed", *table])
    values: dict[str, Any] = {"patch_embed": _conv(read, "x_embedder.proj")}
    for path, name in linears.items():
        tree_set(values, path, _linear(read, name))
    if table:
        # The last row of the table is the null class, as in jaxcf's LabelEmbedder.
        values["y_embed"] = {"table": {"embedding": read(table[0])}}
    pos = read("pos_embed")
    read.finish()
    params = fill_params(params, values, source)  # shape mismatches first: they say the most
    _check_pos_embed(pos, s["hidden"], s["patch"], input_size, source)
    return params


def export_facebook(params: nnx.State, *, input_size: int) -> dict[str, np.ndarray]:
    """jaxcf DiT params -> facebookresearch DiT state dict (numpy, torch layouts), with the
    fixed pos_embed (1, (input_size/p)^2, D) the reference stores. Cross-attention weights
    have no counterpart there and are refused."""
    pure = jax.tree.map(np.asarray, nnx.to_pure_dict(params))
    s = _structure(params)
    if any("cross" in str(k) for block in pure["blocks"].values() for k in block):
        raise CheckpointError("a DiT with cross-attention has no facebookresearch layout")
    kernel = pure["patch_embed"]["kernel"]  # (p, p, C, D) -> (D, C, p, p)
    out = {
        "x_embedder.proj.weight": np.ascontiguousarray(np.moveaxis(kernel, (-1, -2), (0, 1))),
        "x_embedder.proj.bias": np.array(pure["patch_embed"]["bias"]),
        "pos_embed": sincos_pos_embed_2d(s["hidden"], input_size // s["patch"])[None].copy(),
    }
    for path, name in _linears(_FACEBOOK_TOP, _FACEBOOK_BLOCK, "blocks.", s["depth"]).items():
        layer = tree_get(pure, path)
        out[f"{name}.weight"] = linear_kernel(layer["kernel"])
        out[f"{name}.bias"] = np.array(layer["bias"])
    if s["labels"]:
        out["y_embedder.embedding_table.weight"] = np.array(pure["y_embed"]["table"]["embedding"])
    return out


# --- diffusers DiTTransformer2DModel ------------------------------------------------------------


def _shared_embedder(read: KeyReader, depth: int, labels: bool, source: str) -> dict[str, Any]:
    """diffusers gives every block its own timestep / label embedder, jaxcf (like the original
    DiT) one shared embedder. Converted checkpoints hold identical copies: take block 0's and
    refuse copies that differ, which the shared embedder cannot represent."""
    names = _weights(_DIFFUSERS_EMBEDDER) + ([_DIFFUSERS_TABLE] if labels else [])
    first = {n: read(f"transformer_blocks.0.norm1.emb.{n}") for n in names}
    for i in range(1, depth):
        for n in names:
            if not np.array_equal(read(f"transformer_blocks.{i}.norm1.emb.{n}"), first[n]):
                raise CheckpointError(
                    f"{source}: transformer_blocks.{i}.norm1.emb.{n} differs from block 0's copy; "
                    "jaxcf's DiT has one timestep/label embedder shared by all blocks (as the "
                    "original DiT), so per-block embedders that were trained apart cannot be "
                    "converted"
                )
    linear = lambda name: {
        "kernel": linear_kernel(first[f"{name}.weight"]),
        "bias": first[f"{name}.bias"],
    }
    fc1, fc2 = (linear(n) for n in _DIFFUSERS_EMBEDDER)
    shared: dict[str, Any] = {"t_embed": {"fc1": fc1, "fc2": fc2}}
    if labels:
        shared["y_embed"] = {"table": {"embedding": first[_DIFFUSERS_TABLE]}}
    return shared


def dit_params_from_diffusers(
    state: Mapping[str, np.ndarray],
    params: nnx.State,
    *,
    source: str = "diffusers DiTTransformer2DModel state dict",
) -> nnx.State:
    """A diffusers DiTTransformer2DModel state dict -> a parameter state shaped like
    `params` = nnx.state(DiT(..., freq_shift=1), nnx.Param); apply it with nnx.update.
    Its class table has num_embeds_ada_norm + 1 rows, the last the null class, as jaxcf's."""
    s = _structure(params)
    linears = _linears(_DIFFUSERS_TOP, _DIFFUSERS_BLOCK, "transformer_blocks.", s["depth"])
    qkv = {i: [f"transformer_blocks.{i}.attn1.to_{n}" for n in "qkv"] for i in range(s["depth"])}
    embedders = [
        f"transformer_blocks.{i}.norm1.emb.{n}"
        for i in range(s["depth"])
        for n in _weights(_DIFFUSERS_EMBEDDER) + ([_DIFFUSERS_TABLE] if s["labels"] else [])
    ]
    read = KeyReader(state, source)
    fused = [n for names in qkv.values() for n in names]
    read.require(_weights([*linears.values(), *fused, "pos_embed.proj"]) + embedders)
    values: dict[str, Any] = {
        "patch_embed": _conv(read, "pos_embed.proj"),
        **_shared_embedder(read, s["depth"], s["labels"], source),
    }
    for path, name in linears.items():
        tree_set(values, path, _linear(read, name))
    for i, names in qkv.items():
        tree_set(values, ("blocks", i, "qkv"), _fused_linear(read, names))
    read.finish()
    return fill_params(params, values, source)


# --- files --------------------------------------------------------------------------------------


def detect_layout(state: Mapping[str, Any], source: str = "checkpoint") -> Layout:
    """'facebook' or 'diffusers', from the key names."""
    if "pos_embed.proj.weight" in state or any(k.startswith("transformer_blocks.") for k in state):
        return "diffusers"
    if "x_embedder.proj.weight" in state or any(k.startswith("blocks.") for k in state):
        return "facebook"
    shown = ", ".join(sorted(state)[:10])
    raise CheckpointError(f"{source}: not a DiT checkpoint of a known layout (keys: {shown})")


def load_dit_checkpoint(
    path: str | os.PathLike,
    target: DiT | nnx.State,
    *,
    layout: Layout | None = None,
    input_size: int | None = None,
) -> nnx.State:
    """Read a DiT checkpoint (.safetensors, or a torch .pt / .pth / .bin; training pickles
    {model, ema, opt, args} give their EMA weights) and convert it for `target`.

    target: a DiT (its parameters are replaced in place, and its freq_shift and input_size
    are checked against the checkpoint) or its nnx.state(model, nnx.Param).
    layout: 'facebook' / 'diffusers'; detected from the keys by default.
    Returns the filled parameter state.
    """
    if layout is not None and layout not in FREQ_SHIFT:
        raise InputError(f"layout must be one of {sorted(FREQ_SHIFT)}, got {layout!r}")
    path = resolve_checkpoint(path, DIFFUSERS_WEIGHT_FILES, subfolders=("transformer",))
    state = load_state_dict(path)
    layout = layout or detect_layout(state, str(path))
    model = target if isinstance(target, DiT) else None
    params = nnx.state(model, nnx.Param) if model is not None else target
    if model is not None:
        shift = model.t_embed.freq_shift
        if shift != FREQ_SHIFT[layout]:
            raise CheckpointError(
                f"{path}: a {layout} DiT embeds timesteps with freq_shift={FREQ_SHIFT[layout]:g}, "
                f"the target model was built with freq_shift={shift:g}; "
                f"build DiT(..., freq_shift={FREQ_SHIFT[layout]:g})"
            )
        input_size = model.input_size if input_size is None else input_size
    if layout == "facebook":
        params = dit_params_from_facebook(state, params, input_size=input_size, source=str(path))
    else:
        params = dit_params_from_diffusers(state, params, source=str(path))
    if model is not None:
        nnx.update(model, params)
    return params
