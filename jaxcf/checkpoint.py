"""Checkpoints: the training state and the data iterator's position, saved together.

Orbax writes each step into a temporary directory and renames it when complete, so a
crash or Ctrl-C during a save leaves the previous checkpoint as the latest one. Saves are
synchronous: when `save` returns, the step is on disk (the signal handlers rely on that).
Training resumes from the latest step in `workdir/checkpoints` by default.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


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
