"""Load a trained model from a training workdir for sampling and counterfactuals.

    trained = load_trained("runs/quickstart")            # config from the workdir
    model_fn = trained.model_fn()                         # model_fn(x_t, t, cond), EMA weights
    x0 = trained.encode(images)                           # data space -> diffusion variable

The network that was trained is described by the workdir's `config.json` (written by
`jaxcf.train` with every override resolved, including the prompt vocabulary), so that is
the default config; pass `config` to use another (its model / text / vae / diffusion
groups must describe the same network, or the restore names the mismatching parameter).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax
import ml_collections

from jaxcf.checkpoint import Checkpoints, abstract_like
from jaxcf.training.optim import make_optimizer
from jaxcf.training.step import init_state
from jaxcf.training.tasks import DiffusionTask, make_task

# Groups that describe the trained network: taken from the workdir's config.json (and its
# data group, unless data.root is given).
NETWORK_GROUPS = ("model", "text", "vae", "diffusion")


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
        raise FileNotFoundError(f"--checkpoint: no config.json in {workdir} (not a jaxcf workdir)")
    try:
        return ml_collections.ConfigDict(json.loads(path.read_text()))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None


def merge_network(config: ml_collections.ConfigDict, trained: ml_collections.ConfigDict):
    """config with the network groups replaced by those of the trained run."""
    merged = ml_collections.ConfigDict(config.to_dict())
    for group in NETWORK_GROUPS:
        if group in trained:
            merged[group] = ml_collections.ConfigDict(trained[group].to_dict())
    if "data" in trained:
        # The data the model was trained on (resolution, phantom set, preprocessing), unless
        # the command line points at another dataset root.
        merged.data = ml_collections.ConfigDict(trained.data.to_dict())
        if config.data.get("root"):
            merged.data.root = config.data.root
            merged.data.prepared = config.data.get("prepared")
    return merged


@dataclasses.dataclass
class TrainedModel:
    """A diffusion task with restored weights. params: EMA (default) or raw weights."""

    config: ml_collections.ConfigDict
    task: DiffusionTask
    params: Any
    frozen: Any
    step: int

    @property
    def schedule(self):
        return self.task.schedule

    @property
    def num_classes(self) -> int:
        return self.task.num_classes

    def model_fn(self):
        """model_fn(x_t, t, cond) of the restored network (no dropout)."""
        return self.task.model_fn(self.params, self.frozen)

    def encode(self, images: jax.Array) -> jax.Array:
        """(B, ..., C) data-space images -> diffusion variable (latents, wavelets or pixels)."""
        return self.task.encode(self.frozen, images)

    def decode(self, x0: jax.Array) -> jax.Array:
        return self.task.decode(self.frozen, x0)

    @property
    def space(self) -> str:
        return self.task.space


def load_trained(
    checkpoint: str | pathlib.Path,
    config: ml_collections.ConfigDict | None = None,
    *,
    step: int | None = None,
    use_ema: bool = True,
) -> TrainedModel:
    """Restore the latest (or given) checkpoint of a diffusion training workdir."""
    workdir = workdir_of(checkpoint)
    trained_config = saved_config(workdir)
    config = trained_config if config is None else merge_network(config, trained_config)
    if config.train.task != "diffusion":
        raise ValueError(f"{workdir}: train.task is {config.train.task!r}, not a diffusion model")
    checkpoints = Checkpoints(workdir)
    try:
        if checkpoints.latest_step is None:
            raise FileNotFoundError(f"--checkpoint: no checkpoint in {checkpoints.directory}")
        task = make_task(config, jax.random.key(int(config.train.seed)))
        optimizer = make_optimizer(config.optim, int(config.train.num_steps))
        abstract = jax.eval_shape(lambda: init_state(task, optimizer))
        try:
            state, _, _ = checkpoints.restore(abstract_like(abstract), step)
        except (ValueError, KeyError) as err:
            raise ValueError(
                f"{checkpoints.directory}: checkpoint does not match the config's network "
                f"({str(err).splitlines()[0][:200]})"
            ) from None
    finally:
        checkpoints.close()
    params = state.ema if use_ema else state.params
    return TrainedModel(config, task, params, state.frozen, int(state.step))
