"""Load a trained model from a training workdir for sampling and counterfactuals.

    trained = load_trained("runs/quickstart")            # config from the workdir
    model_fn = trained.model_fn()                         # model_fn(x_t, t, cond), EMA weights
    x0 = trained.encode(images)                           # data space -> diffusion variable
    model, weights = trained.method_model(), trained.weights   # what methods take

Only the EMA weights are read from the checkpoint (an Orbax partial restore): inference
never rebuilds the optimizer, so a method config can be paired with any compatible
checkpoint. Frozen networks (a latent model's VAE, prompt embeddings from a file) are not
in checkpoints; building the task loads them from their own paths, as training did.

The network that was trained is described by the workdir's `config.json` (written by
`jaxcf.train` with every override resolved, including the prompt vocabulary), so that is
the default config; pass `config` to use another (its model / text / vae / diffusion
groups must describe the same network, or the restore names the mismatching parameter).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxcf.checkpoint import restore_ema, saved_config, workdir_of
from jaxcf.counterfactual import registry
from jaxcf.counterfactual.model import MethodModel
from jaxcf.data.text import Tokenizer
from jaxcf.errors import InputError
from jaxcf.training.conditioners import Conditioner
from jaxcf.training.tasks import DiffusionTask, make_task

# Groups that describe the trained network: taken from the workdir's config.json (and its
# data group, unless data.root is given).
NETWORK_GROUPS = ("model", "text", "vae", "diffusion", "refiner", "medsegdiff")


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


def _add_method_defaults(config: ml_collections.ConfigDict) -> None:
    """Give every registered method its default sub-config where the config has none (a
    workdir's config.json from before a method was registered), and its default for any
    field its sub-config lacks (one added since). A config.json from before
    the per-method sub-configs keeps its flat settings (counterfactual.num_steps, ...,
    healthy_label -> target_label) for every method that has the field."""
    group = config.get("counterfactual")
    if group is None:
        return
    flat = {k: v for k, v in group.items() if not isinstance(v, ml_collections.ConfigDict)}
    if "healthy_label" in flat:
        flat["target_label"] = flat["healthy_label"]
    for name, defaults in registry.default_configs().items():
        if name not in group:
            defaults.update({k: v for k, v in flat.items() if k in defaults})
            group[name] = defaults
        elif isinstance(group[name], ml_collections.ConfigDict):
            # Fields a method gained since the run (e.g. promptable.first_pass_steps).
            for field, value in defaults.items():
                if field not in group[name]:
                    group[name][field] = value


@dataclasses.dataclass
class TrainedModel:
    """A diffusion task with restored weights. params: the EMA weights;
    frozen: the task's frozen weights (loaded from their own paths, never from the
    checkpoint); workdir: the training workdir (where the prompt tokenizer is found)."""

    config: ml_collections.ConfigDict
    task: DiffusionTask
    params: Any
    frozen: Any
    step: int
    workdir: pathlib.Path | None = None

    @property
    def schedule(self):
        return self.task.schedule

    @property
    def num_classes(self) -> int:
        return self.task.num_classes

    def model_fn(self, **apply_kwargs):
        """model_fn(x_t, t, cond) of the restored network (no dropout); apply_kwargs go to
        the network (control=, return_attention=)."""
        return self.task.model_fn(self.params, self.frozen, **apply_kwargs)

    def encode(self, images: jax.Array) -> jax.Array:
        """(B, ..., C) data-space images -> diffusion variable (latents, wavelets or pixels)."""
        return self.task.encode(self.frozen, images)

    def decode(self, x0: jax.Array) -> jax.Array:
        return self.task.decode(self.frozen, x0)

    def autoencode(self, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
        """(N, ..., C) data-space images or volumes through encode then decode, in chunks:
        what a latent model's VAE keeps of them (the identity in pixel space)."""
        task, frozen = self.task, self.frozen
        round_trip = jax.jit(lambda x: task.decode(frozen, task.encode(frozen, x)))
        parts = [
            np.asarray(round_trip(images[i : i + batch_size]))
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(parts)

    def prepare_cond(self, cond: Any) -> Any:
        """cond encoded once for the network (a prompt -> its context tokens); pass it to
        samplers so the text encoder does not run at every step."""
        return self.task.prepare_cond(self.params, self.frozen, cond)

    @property
    def space(self) -> str:
        return self.task.space

    @property
    def conditioner(self) -> Conditioner:
        """The task's conditioner (cond(batch), null_cond, encode; see
        jaxcf.training.conditioners)."""
        return self.task.conditioner

    @functools.cached_property
    def tokenizer(self) -> Tokenizer | None:
        """The prompt tokenizer the model was trained with (prompt models; None otherwise):
        workdir/tokenizer.json, written by training, else the prepared data's meta.json."""
        if self.task.condition != "prompt":
            return None
        places = []
        if self.workdir is not None:
            places.append(self.workdir / "tokenizer.json")
        data = self.config.data
        if data.get("prepared"):
            places.append(pathlib.Path(data.prepared) / "meta.json")
        if self.workdir is not None:
            prepared = self.workdir / "prepared" / f"{data.dataset}_{data.task}"
            places.append(prepared / "meta.json")
        for path in places:
            if path.is_file():
                obj = json.loads(path.read_text())
                obj = obj if path.name == "tokenizer.json" else obj.get("tokenizer")
                if obj:
                    return Tokenizer.from_json(obj)
        raise FileNotFoundError(
            f"no prompt tokenizer for this model: looked for {', '.join(map(str, places))}"
        )

    @property
    def weights(self) -> dict:
        """Everything the network needs, as one pytree: {"params", "frozen"}."""
        return {"params": self.params, "frozen": self.frozen}

    def method_model(self) -> MethodModel:
        """The restored network as counterfactual methods take it (weights not bound)."""
        task = self.task

        def apply(weights, x, t, cond, **kwargs):
            return task.model_fn(weights["params"], weights["frozen"], **kwargs)(x, t, cond)

        def encode(weights, images):
            return task.encode(weights["frozen"], images)

        def decode(weights, x0):
            return task.decode(weights["frozen"], x0)

        def prepare_cond(weights, cond):
            return task.prepare_cond(weights["params"], weights["frozen"], cond)

        # A text tower re-tokenises prompts: its Retokenizer knows the context positions.
        retokenizer = getattr(task.text_apply, "retokenizer", None)
        return MethodModel(
            apply=apply,
            schedule=task.schedule,
            null_cond=task.null_cond if task.condition != "none" else None,
            encode=encode,
            decode=decode,
            prepare_cond=prepare_cond,
            space=task.space,
            num_classes=task.num_classes if task.condition == "label" else 0,
            # The x0 estimate's transform where the data range is known (the space's).
            x0_transform=task.space_impl.x0_transform,
            tokenizer=self.tokenizer if task.condition == "prompt" else None,
            token_positions=None if retokenizer is None else retokenizer.spread,
        )


def load_trained(
    checkpoint: str | pathlib.Path,
    config: ml_collections.ConfigDict | None = None,
    *,
    step: int | None = None,
) -> TrainedModel:
    """Restore the EMA weights of the latest (or given) checkpoint of a diffusion workdir.

    The network comes from the workdir's config.json; `config` (e.g. a method config from
    the command line) contributes everything else (counterfactual.*, eval.*, mesh).
    Frozen networks are not in checkpoints: building the task loads them from their paths
    (vae.checkpoint, text.file), and an untrained smoke-run VAE (vae.allow_untrained, empty
    vae.checkpoint) is rebuilt from train.seed exactly as training built it."""
    workdir = workdir_of(checkpoint)
    trained_config = saved_config(workdir)
    config = trained_config if config is None else merge_network(config, trained_config)
    _add_method_defaults(config)
    trained_train = trained_config.get("train", {})  # the run's own, not the command line's
    if trained_train.get("task", "diffusion") != "diffusion":
        raise InputError(
            f"{workdir}: train.task is {trained_train.get('task')!r}, not a diffusion model"
        )
    # The task's key is training's (train.seed): an untrained VAE comes out identical.
    seed = int(trained_train.get("seed", config.train.seed))
    task = make_task(config, jax.random.key(seed), restoring=True)
    params, restored_step = restore_ema(workdir, task.params, step)
    return TrainedModel(config, task, params, task.frozen, restored_step, workdir)


@dataclasses.dataclass
class Refiner:
    """A trained diffusion refiner (train.task = "refiner" or "medsegdiff"): its config,
    task (RefinerTask or MedSegDiffTask, with the frozen coarse segmenter, task.coarse, when
    conditional), restored weights, step and workdir."""

    config: ml_collections.ConfigDict
    task: Any  # jaxcf.training.refine_task.RefinerTask or its MedSegDiffTask subclass
    params: Any
    step: int
    workdir: pathlib.Path


def load_refiner(
    workdir: str | pathlib.Path,
    config: ml_collections.ConfigDict | None = None,
    *,
    step: int | None = None,
) -> Refiner:
    """The weights of the latest (or given) checkpoint of a refiner workdir; its coarse
    segmenter is loaded from refiner.coarse. `config` (e.g. from the command line)
    contributes counterfactual.* and eval.*; the network and data are the workdir's."""
    workdir = workdir_of(workdir)
    trained = saved_config(workdir)
    kind = trained.get("train", {}).get("task", "diffusion")
    if kind not in ("refiner", "medsegdiff"):
        raise InputError(
            f"{workdir}: train.task is {kind!r}, not a diffusion refiner (train one with "
            "configs/refiner_peds.py or configs/medsegdiff_peds.py)"
        )
    config = trained if config is None else merge_network(config, trained)
    config.train.task = kind  # the workdir's kind of refiner, whatever --config names
    key = jax.random.key(int(trained.train.get("seed", 0)))
    task = make_task(config, key, restoring=True)
    params, restored_step = restore_ema(workdir, task.params, step)
    return Refiner(config, task, params, restored_step, workdir)
