"""Data for the training loop: phantoms when no dataset is given, one-off preparation
into shards, and this host's training iterator."""

from __future__ import annotations

import os
import pathlib
import shutil
from typing import Any

import jax
from jax.experimental import multihost_utils

from jaxcf.data import phantoms
from jaxcf.data.pipeline import info, make_dataset
from jaxcf.data.prepare import prepare_from_config


def ensure_data(data_config: Any, workdir: pathlib.Path) -> Any:
    """A copy of the data config with `root` and `prepared` set and the shards on disk.

    root unset: a phantom dataset of data.dataset is written to workdir/phantom/<dataset>
    (into a .partial directory renamed when complete, so an interrupted run regenerates it
    instead of using half a dataset). prepared unset: workdir/prepared/<dataset>_<task>;
    preparation reuses shards made with the same parameters.
    """
    cfg = data_config.copy_and_resolve_references()
    lead = jax.process_index() == 0
    if not cfg.root:
        root = workdir / "phantom" / cfg.dataset
        if not root.is_dir() and lead:
            partial = root.with_name(root.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            phantoms.generate(
                cfg.dataset,
                partial,
                cfg.phantom.cases,
                cfg.phantom.size,
                cfg.seed,
                tumour_free_fraction=cfg.phantom.tumour_free_fraction,
                anatomy=cfg.phantom.anatomy,
                progress=True,
            )
            os.replace(partial, root)
        cfg.root = str(root)
    if not cfg.prepared:
        cfg.prepared = str(workdir / "prepared" / f"{cfg.dataset}_{cfg.task}")
    if lead:
        prepare_from_config(cfg)
    # Multi-host: the other processes read what process 0 wrote only after it is complete.
    wait_for_lead("jaxcf.ensure_data")
    return cfg


def wait_for_lead(name: str) -> None:
    """A barrier across processes (a no-op in a single-process run)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def train_iterator(data_config: Any, *, seed: int):
    """This host's infinite, shuffled training iterator (get_state / set_state)."""
    dataset = make_dataset(
        data_config,
        "train",
        seed=seed,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
        train=True,
    )
    return iter(dataset)


def vocabulary(data_config: Any) -> list[str]:
    """The prepared data's prompt vocabulary (jaxcf.data.text.Tokenizer.vocab; [] when it
    has no prompts)."""
    tokenizer = info(data_config).get("tokenizer") or {}
    return list(tokenizer.get("vocab") or [])


def vocab_size(data_config: Any) -> int:
    """Size of the prepared data's prompt vocabulary (0 when it has no prompts)."""
    return len(vocabulary(data_config))
