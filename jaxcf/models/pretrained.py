"""Start a network from converted pretrained weights: model.checkpoint.

    apply_fn, params = jaxcf.models.build_pretrained(model_config, key)

With `model_config.checkpoint` empty this is `jaxcf.models.build`. With a path, the
family's loader (LOADERS: family -> converter of jaxcf.convert) reads that file or folder
into the parameters instead of drawing them at random, e.g. Stable Diffusion 1.5's UNet
(`{"family": "sd_unet", "preset": "sd15", "checkpoint": ".../stable-diffusion-v1-5/unet"}`)
to fine-tune it (paper 003). The parameters are never drawn first: the network is built
abstractly (nnx.eval_shape) and the converter fills every leaf, so SD's 860M parameters are
allocated once. A checkpoint that does not fit the configured network (missing or
unexpected keys, other shapes, another config.json) is one CheckpointError naming the
file; a family without a loader is refused by name.

A pretrained segmenter whose output head has another width (MONAI's BraTS Swin-UNETR
predicts 3 sigmoid channels TC / WT / ET; paper 002 fine-tunes it to 4 classes) is read
with `checkpoint_out_channels` = the checkpoint's width: the file is converted into the
network built with that width, and every parameter whose path and shape the configured
network shares is taken from it; the rest (the output layer) keeps its random init,
listed in a warning.

Training tasks call this once, at the start of a run; a resumed run or inference
(restoring=True) builds the random network that its own checkpoint then replaces, so the
pretrained file is read once, not on every resume.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
from flax import nnx

from jaxcf.errors import InputError
from jaxcf.models.registry import _as_dict, build, build_abstract, model_kwargs

Loader = Callable[[str, nnx.Module], nnx.State]


def _sd_unet(path: str, module: nnx.Module) -> nnx.State:
    from jaxcf.convert.diffusers_unet import load_sd_unet_params

    return load_sd_unet_params(path, nnx.state(module), module.config)


def _dit(path: str, module: nnx.Module) -> nnx.State:
    from jaxcf.convert.dit import load_dit_checkpoint

    # Given the module, the converter also checks its freq_shift and input_size.
    load_dit_checkpoint(path, module)
    return nnx.state(module)


def _vae(path: str, module: nnx.Module) -> nnx.State:
    from jaxcf.convert.diffusers_vae import load_vae_checkpoint

    return load_vae_checkpoint(path, nnx.state(module))


def _densenet(path: str, module: nnx.Module) -> nnx.State:
    from jaxcf.convert.densenet import load_densenet_checkpoint

    return load_densenet_checkpoint(path, nnx.state(module))


def _resunet(path: str, module: nnx.Module) -> nnx.State:
    from jaxcf.convert.monai_unet import load_resunet_checkpoint

    return load_resunet_checkpoint(path, nnx.state(module))


def _swin_unetr(path: str, module: nnx.Module) -> nnx.State:
    from jaxcf.convert.swin_unetr import load_swin_unetr_checkpoint

    return load_swin_unetr_checkpoint(path, nnx.state(module))


# family -> loader(path, module built abstractly) -> its filled parameter state
LOADERS: dict[str, Loader] = {
    "sd_unet": _sd_unet,  # diffusers UNet2DConditionModel folders, single-file SD checkpoints
    "dit": _dit,  # facebookresearch DiT and diffusers DiTTransformer2DModel
    "vae": _vae,  # diffusers AutoencoderKL
    "densenet": _densenet,  # MONAI DenseNet (GroupNorm)
    "resunet": _resunet,  # MONAI UNet with residual units
    "swin_unetr": _swin_unetr,  # MONAI SwinUNETR (e.g. its BraTS weights)
}


def checkpoint_of(model_config: Any) -> str:
    """model.checkpoint ("" when unset)."""
    return str(_as_dict(model_config).get("checkpoint") or "")


def checkpoint_width(model_config: Any) -> int:
    """model.checkpoint_out_channels (0 when unset: the checkpoint's head is the model's)."""
    return int(_as_dict(model_config).get("checkpoint_out_channels") or 0)


def load_params(
    model_config: Any, path: str, key: jax.Array | None = None
) -> tuple[Any, nnx.State]:
    """(apply_fn, params) of the configured network with `path`'s converted weights; with
    model.checkpoint_out_channels, a new output head drawn with `key` (module docstring)."""
    family, kwargs = model_kwargs(model_config)
    if family not in LOADERS:
        raise InputError(
            f"model.checkpoint={path!r}: the {family!r} family has no checkpoint loader "
            f"(families with one: {', '.join(sorted(LOADERS))})"
        )
    width = checkpoint_width(model_config)
    if width and width != kwargs.get("out_channels"):
        if "out_channels" not in kwargs:
            raise InputError(
                f"model.checkpoint_out_channels={width}: the {family!r} network has no "
                "out_channels to swap"
            )
        source = {**_as_dict(model_config), "out_channels": width, "checkpoint_out_channels": 0}
        _, pretrained = load_params(source, path)
        apply_fn, params = build(model_config, key if key is not None else jax.random.key(0))
        return apply_fn, _take_shared(pretrained, params, path)
    apply_fn, abstract = build_abstract(model_config)
    module = nnx.merge(apply_fn.graphdef, abstract)
    params = LOADERS[family](path, module)
    left = [leaf for leaf in jax.tree.leaves(params) if isinstance(leaf, jax.ShapeDtypeStruct)]
    if left:  # a loader that skips a leaf is a bug: the converters fill every parameter
        raise RuntimeError(f"{path}: the {family} loader left {len(left)} parameters unset")
    return apply_fn, params


def _take_shared(pretrained: nnx.State, params: nnx.State, path: str) -> nnx.State:
    """params with every leaf that `pretrained` has at the same path and shape replaced by
    it; warns with the paths of the leaves that keep their random init."""
    fresh: list[str] = []

    def take(mine, theirs, where):
        if isinstance(mine, Mapping):
            theirs = theirs if isinstance(theirs, Mapping) else {}
            return {k: take(v, theirs.get(k), f"{where}/{k}") for k, v in mine.items()}
        if theirs is not None and tuple(theirs.shape) == tuple(mine.shape):
            return theirs
        fresh.append(where.lstrip("/"))
        return mine

    merged = take(nnx.to_pure_dict(params), nnx.to_pure_dict(pretrained), "")
    nnx.replace_by_pure_dict(params, merged)
    if fresh:
        warnings.warn(
            f"{path}: {len(fresh)} parameters of another shape keep their random init "
            f"(a new output head): {', '.join(fresh)}",
            stacklevel=3,
        )
    return params


def build_pretrained(model_config: Any, key: jax.Array, *, restoring: bool = False):
    """(apply_fn, params) to start training from: model.checkpoint's converted weights
    when it is set, else `build(model_config, key)`'s random ones. restoring: the run's own
    checkpoint is about to replace the parameters (a resumed run, inference), so
    model.checkpoint is not read."""
    path = checkpoint_of(model_config)
    if not path or restoring:
        return build(model_config, key)
    return load_params(model_config, path, key)
