"""Checkpoints: the training state and the data iterator's position, saved together.

Orbax writes each step into a temporary directory and renames it when complete, so a
crash or Ctrl-C during a save leaves the previous checkpoint as the latest one. Saves are
synchronous: when `save` returns, the step is on disk (the signal handlers rely on that).
Training resumes from the latest step in `workdir/checkpoints` by default.

A trained workdir is read back with `saved_config` (its config.json), `workdir_of` (given
the workdir or its checkpoints/ folder) and `restore_ema` (the weights of a checkpoint).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from jaxcf.errors import InputError


class Checkpoints:
    """workdir/checkpoints/<step>/{state, data, meta}."""

    def __init__(self, workdir: str | os.PathLike, *, keep: int = 3):
        self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    @property
    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict | None, meta: dict) -> None:
        """Save state (a pytree of arrays), the data iterator state and JSON metadata."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state or {}),
            meta=ocp.args.JsonSave(meta),
        )
        self.manager.save(step, args=args, force=True)
        self.manager.wait_until_finished()

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, dict]:
        """(state, data state, meta) of `step` (default: latest). abstract_state gives the
        tree structure, shapes, dtypes and shardings to restore into."""
        step = self.latest_step if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore(),
        )
        restored = self.manager.restore(step, args=args)
        return restored.state, dict(restored.data or {}), dict(restored.meta or {})

    def restore_subtrees(self, abstract: dict, step: int | None = None) -> dict:
        """Only some top-level entries of the saved state (e.g. {"step", "ema"}: inference
        needs neither the raw weights nor the optimizer state, so it need not rebuild the
        optimizer). abstract: {name: pytree of ShapeDtypeStructs} for the wanted entries.
        Orbax partial restore: the rest is never read."""
        step = self.latest_step if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
        args = ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item=abstract, restore_args=restore_args, partial_restore=True
            )
        )
        return dict(self.manager.restore(step, args=args).state)

    def close(self) -> None:
        self.manager.close()


def abstract_like(tree: Any, shardings: Any = None) -> Any:
    """ShapeDtypeStructs (with shardings if given) describing a state to restore into."""
    if shardings is None:
        return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings
    )


def workdir_of(checkpoint: str | pathlib.Path) -> pathlib.Path:
    """A training workdir, given it or its `checkpoints/` folder."""
    path = pathlib.Path(checkpoint)
    if path.name == "checkpoints" and (path.parent / "config.json").is_file():
        return path.parent
    return path


def saved_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The resolved config a training run wrote to workdir/config.json."""
    path = pathlib.Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in {workdir} (not a jaxcf training workdir)")
    try:
        return ml_collections.ConfigDict(json.loads(path.read_text()))
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None


def restore_ema(
    workdir: str | os.PathLike, params: Any, step: int | None = None
) -> tuple[Any, int]:
    """(EMA weights, step) of a training workdir's latest (or given) checkpoint, restored
    into the structure of `params` (a freshly built task's). FileNotFoundError when the
    workdir has no checkpoint; InputError when its weights do not fit that structure (a
    checkpoint of another network)."""
    checkpoints = Checkpoints(workdir)
    try:
        if checkpoints.latest_step is None:
            raise FileNotFoundError(f"--checkpoint: no checkpoint in {checkpoints.directory}")
        wanted = {"step": jax.ShapeDtypeStruct((), "int32"), "ema": abstract_like(params)}
        try:
            restored = checkpoints.restore_subtrees(wanted, step)
        except (ValueError, KeyError, TypeError) as err:
            detail = " ".join(str(err).split())[:300]
            raise InputError(
                f"{checkpoints.directory}: the checkpoint's weights do not match the network "
                f"of {pathlib.Path(workdir) / 'config.json'} ({detail})"
            ) from None
    finally:
        checkpoints.close()
    return jax.tree.map(jnp.asarray, restored["ema"]), int(restored["step"])


def restore_trained(
    workdir: str | os.PathLike,
    kind: str,
    build_task: Callable[[ml_collections.ConfigDict, jax.Array], Any],
    refusal: str,
    step: int | None = None,
) -> tuple[pathlib.Path, ml_collections.ConfigDict, Any, Any, int]:
    """(workdir, config, task, weights, step) of a workdir trained with train.task = kind:
    its config.json, the task build_task(config, key of train.seed) builds (restoring), and
    the weights of its latest (or given) checkpoint. Another kind of workdir is an InputError
    ending in `refusal` (what it is not, and how to train one)."""
    workdir = workdir_of(workdir)
    config = saved_config(workdir)
    found = config.get("train", {}).get("task", "diffusion")
    if found != kind:
        raise InputError(f"{workdir}: train.task is {found!r}, {refusal}")
    task = build_task(config, jax.random.key(int(config.train.get("seed", 0))))
    params, restored_step = restore_ema(workdir, task.params, step)
    return workdir, config, task, params, restored_step
