"""Reading reference checkpoints and mapping their tensors onto jaxcf parameters.

Converters read `.safetensors` with the safetensors numpy API (no torch needed) and
`.pt` / `.pth` / `.bin` with torch only when it is installed. A converter builds a nested
dict mirroring `nnx.to_pure_dict(params)` and hands it to :func:`fill_params`, which
checks every leaf's shape; unknown or missing keys are listed in the error.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcf.errors import InputError


class CheckpointError(InputError):
    """A checkpoint that cannot be converted (bad input: exit code 2 from a CLI); the message
    names the file and the keys."""


# The weight files of a diffusers save_pretrained model folder; .fp16 variants last.
DIFFUSERS_WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.bin",
)


def shorten(names: Sequence[str], limit: int = 20, sep: str = ", ") -> str:
    """The first `limit` names joined, with " ..." when there are more."""
    return sep.join(names[:limit]) + (" ..." if len(names) > limit else "")


def tree_get(tree: Mapping, path: Sequence[Any]) -> Any:
    """tree[path[0]][path[1]]... in a nested dict such as nnx.to_pure_dict(params)."""
    for key in path:
        tree = tree[key]
    return tree


def tree_set(tree: dict, path: Sequence[Any], value: Any) -> None:
    """Set tree[path[0]]...[path[-1]] = value, creating the groups on the way."""
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def resolve_checkpoint(
    path: str | os.PathLike, filenames: Sequence[str], subfolders: Sequence[str] = ()
) -> pathlib.Path:
    """A checkpoint file, or the first of `filenames` inside the folder `path` or one of its
    `subfolders` (diffusers' save_pretrained folders: e.g. a pipeline's vae/, transformer/)."""
    path = pathlib.Path(path)
    if not path.is_dir():
        return path  # load_state_dict reports a missing file
    for folder in (path, *(path / sub for sub in subfolders)):
        for name in filenames:
            if (folder / name).is_file():
                return folder / name
    looked = ", ".join(filenames)
    also = f", also under {', '.join(subfolders)}" if subfolders else ""
    raise CheckpointError(f"{path}: a folder without a checkpoint (looked for {looked}{also})")


def load_state_dict(path: str | os.PathLike, *, subkey: str | None = None) -> dict[str, np.ndarray]:
    """Tensors of a checkpoint as numpy arrays keyed by their names (torch floats become
    float32; safetensors keep their stored dtype).

    subkey: for torch pickles holding several dicts (facebookresearch DiT: {model, ema, opt,
    args}), the entry to take; by default "ema" then "model" then the top level.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as err:  # the library raises several types for corrupt files
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path}: reading PyTorch pickles needs torch (pip install 'jaxcf[ref]'), "
            "or convert the file to .safetensors"
        ) from None
    try:
        # facebookresearch training checkpoints keep their argparse.Namespace "args" beside
        # the weights; allow that one class in torch's safe (weights_only) unpickler.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({err})") from None
    if subkey is not None:
        if subkey not in obj:
            raise CheckpointError(f"{path}: no entry {subkey!r} (entries: {sorted(obj)})")
        obj = obj[subkey]
    else:
        for name in ("ema", "model", "state_dict"):
            if isinstance(obj, Mapping) and name in obj and isinstance(obj[name], Mapping):
                obj = obj[name]
                break
    # Keep tensors only: flat training dicts also hold entries like "epoch": 3.
    return {
        k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
        for k, v in obj.items()
        if isinstance(v, torch.Tensor)
    }


def check_keys(state: Mapping[str, Any], used: Iterable[str], source: str) -> None:
    """Raise if the checkpoint has keys the converter did not use (e.g. another
    architecture); the unused names go into the message."""
    used = set(used)
    unknown = sorted(set(state) - used)
    if unknown:
        raise CheckpointError(f"{source}: {len(unknown)} unexpected keys: {shorten(unknown)}")


class KeyReader:
    """Takes tensors out of a state dict by name, remembering which were used.

    Call :meth:`require` with every name a conversion needs before reading, so that all
    missing names are reported in one error; `__call__` on a missing name raises at once.
    """

    def __init__(self, state: Mapping[str, np.ndarray], source: str):
        self.state, self.source = state, source
        self.used: set[str] = set()
        self.missing: list[str] = []

    def require(self, keys: Iterable[str]) -> None:
        """Raise one CheckpointError listing every name in `keys` the checkpoint lacks."""
        self.missing = [k for k in keys if k not in self.state]
        self._raise_missing()

    def _raise_missing(self) -> None:
        if self.missing:
            missing = shorten(self.missing)
            raise CheckpointError(f"{self.source}: {len(self.missing)} missing keys: {missing}")

    def __call__(self, key: str) -> np.ndarray:
        if key not in self.state:
            self.missing.append(key)
            self._raise_missing()
        self.used.add(key)
        return np.asarray(self.state[key])

    def has(self, key: str) -> bool:
        return key in self.state

    def finish(self) -> None:
        """Raise if names were missing or if the checkpoint holds keys nobody read."""
        self._raise_missing()
        check_keys(self.state, self.used, self.source)


def linear_kernel(w: np.ndarray) -> np.ndarray:
    """torch Linear weight (out, in) -> flax kernel (in, out)."""
    return np.ascontiguousarray(w.T)


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """torch ConvNd weight (out, in, *k) -> flax kernel (*k, in, out)."""
    return np.ascontiguousarray(np.moveaxis(w, (0, 1), (-1, -2)))


def fill_params(params: nnx.State, values: Mapping, source: str) -> nnx.State:
    """Replace every leaf of `params` by `values` (a nested dict with the same structure as
    nnx.to_pure_dict(params)), checking that the structure and every shape match. The
    target may be abstract (from nnx.eval_shape); the leaves become jax arrays."""
    target = nnx.to_pure_dict(params)
    problems: list[str] = []

    def walk(t, v, path):
        if isinstance(t, Mapping):
            if not isinstance(v, Mapping):
                problems.append(f"{path or '<root>'}: expected a group, got {type(v).__name__}")
                return {}
            missing = sorted(set(map(str, t)) - set(map(str, v)))
            extra = sorted(set(map(str, v)) - set(map(str, t)))
            problems.extend(f"{path}/{k}: not produced by the converter" for k in missing)
            problems.extend(f"{path}/{k}: not a parameter of the model" for k in extra)
            lookup = {str(k): k for k in v}
            return {k: walk(t[k], v[lookup[str(k)]], f"{path}/{k}") for k in t if str(k) in lookup}
        arr = np.asarray(v)
        if arr.shape != tuple(t.shape):
            problems.append(
                f"{path}: shape {arr.shape} from the checkpoint, {tuple(t.shape)} in the model"
            )
        # t may be an array or an abstract jax.ShapeDtypeStruct (params from nnx.eval_shape).
        return arr.astype(t.dtype)

    filled = walk(target, values, "")
    if problems:
        raise CheckpointError(
            f"{source}: {len(problems)} mismatches: {shorten(problems, sep='; ')}"
        )
    nnx.replace_by_pure_dict(params, jax.tree.map(jnp.asarray, filled))
    return params


# --- key tables: transformer checkpoints mapped tensor by tensor ---------------------------------

Path = tuple[Any, ...]  # a path into nnx.to_pure_dict(params)
Entry = tuple[str, Path, str]  # (checkpoint key, parameter path, "linear" | "vec")


def dense_entries(key: str, path: Path, bias: bool = True) -> list[Entry]:
    """A torch Linear `key` -> the jaxcf linear at `path` (kernel, and bias if any)."""
    entries = [(f"{key}.weight", (*path, "kernel"), "linear")]
    return entries + ([(f"{key}.bias", (*path, "bias"), "vec")] if bias else [])


def norm_entries(key: str, path: Path) -> list[Entry]:
    """A torch LayerNorm `key` -> the nnx.LayerNorm at `path`."""
    return [(f"{key}.weight", (*path, "scale"), "vec"), (f"{key}.bias", (*path, "bias"), "vec")]


def check_table_keys(
    state: Mapping[str, Any],
    table: Sequence[Entry],
    owned: Sequence[str],
    ignored: Sequence[str],
    what: str,
    source: str,
) -> None:
    """One CheckpointError listing the table's keys the checkpoint lacks and the keys behind
    the `owned` prefixes (the model's; "" owns every key) that the table does not name,
    minus those that continue the first prefix with an `ignored` name (buffers such as
    position_ids); `what` names the model in the message."""
    wanted = [key for key, _, _ in table]
    missing = [k for k in wanted if k not in state]
    known = set(wanted)
    first = owned[0]
    unexpected = sorted(
        k
        for k in state
        if k.startswith(tuple(owned))
        and k not in known
        and not k[len(first) :].startswith(tuple(ignored))
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {shorten(missing, 8)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {shorten(unexpected, 8)}")
    if problems:
        where = f" (prefix {first!r})" if first else ""
        raise CheckpointError(f"{source}: not this {what}{where}: {'; '.join(problems)}")


def params_from_table(
    state: Mapping[str, np.ndarray],
    params: nnx.State,
    table: Sequence[Entry],
    config: Any,
    source: str,
) -> nnx.State:
    """Fill `params` (concrete or abstract) from a torch-layout state dict by a key table;
    tensors whose shape does not fit `config` are listed in one CheckpointError (torch
    layout)."""
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


def state_from_table(model: nnx.Module, table: Sequence[Entry]) -> dict[str, np.ndarray]:
    """The inverse: a torch-layout state dict (float32 numpy) of `model` by a key table."""
    tree = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    out = {}
    for key, path, layout in table:
        w = np.asarray(tree_get(tree, path), np.float32)
        out[key] = np.ascontiguousarray(w.T) if layout == "linear" else w
    return out


def read_hf_config(folder: pathlib.Path) -> dict[str, Any] | None:
    """A save_pretrained folder's config.json as a dict; None when there is none."""
    file = folder / "config.json"
    if not folder.is_dir() or not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file}: not a readable config.json ({err})") from None
