"""Apply a registered method to arrays of any length, on a device mesh.

    runner = MethodRunner(model, weights, "diffscm", config.counterfactual, config.mesh)
    out = runner({"image": images})          # images (N, S, S, C) numpy, any N
    out["counterfactual"], out["heatmap"]    # numpy, (N, ...)

The rows are cut into fixed-size chunks of counterfactual.batch_size (rounded up to a
multiple of the mesh's batch devices; the last chunk is padded by repeating its last row),
so a method compiles once whatever N is. Each chunk is placed on the mesh with its batch
axis sharded over ("data", "fsdp") and the weights laid out as training lays them out
(replicated, or split over fsdp); chunk c's key is fold_in(key(seed), first row of c).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxcf import parallel
from jaxcf.counterfactual import registry
from jaxcf.counterfactual.model import MethodModel
from jaxcf.errors import InputError


def pad_rows(array: np.ndarray, size: int) -> np.ndarray:
    """Pad the leading axis to `size` by repeating the last row (shapes stay fixed)."""
    missing = size - array.shape[0]
    if missing <= 0:
        return array
    return np.concatenate([array, np.repeat(array[-1:], missing, axis=0)])


class MethodRunner:
    """One registered method, compiled once, applied chunk by chunk (module docstring)."""

    def __init__(
        self,
        model: MethodModel,
        weights: Any,
        name: str,
        config: Any,
        mesh_config: Any = None,
        *,
        progress: bool = True,
    ):
        self.name = name
        self.module = registry.get(name)
        self.cfg = config[name]
        self.mesh = parallel.make_mesh(mesh_config)
        if int(config.batch_size) < 1:
            raise InputError(f"counterfactual.batch_size must be >= 1, got {config.batch_size}")
        devices = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        self.chunk = math.ceil(int(config.batch_size) / devices) * devices
        self.seed = int(config.seed)
        self.progress = progress
        self._replicated = parallel.replicated(self.mesh)
        self._batch_sharding = parallel.batch_sharding(self.mesh)
        self.weights = parallel.put_replicas(weights, parallel.state_shardings(weights, self.mesh))
        self._fn = jax.jit(self.module.build(model, self.cfg))
        self._compiled_once = False

    @property
    def label(self) -> str:
        """The method's name in tables under this runner's settings (registry.label)."""
        return registry.label(self.name, self.cfg)

    def prepare(self, batch: dict) -> dict:
        """The method's inputs: its `prepare` (e.g. the mask prompt) when it has one, else
        just the images. Only these reach the device (other fields would only add
        transfers and recompiles)."""
        batch = {k: v for k, v in batch.items() if v is not None}
        if not hasattr(self.module, "prepare"):
            return {"image": batch["image"]}
        return registry.prepare(self.name, batch, self.cfg)

    def __call__(
        self, batch: dict[str, np.ndarray], *, key_offset: int = 0
    ) -> dict[str, np.ndarray]:
        """batch: {"image": (N, ...), ...} numpy -> the method's outputs, numpy (N, ...).

        Row r's chunk key is fold_in(key(seed), key_offset + first row of its chunk): the
        same call gives the same result; a caller streaming a split in several calls passes
        the rows it has already run, so no two batches share their noise."""
        batch = {k: np.asarray(v) for k, v in self.prepare(batch).items()}
        total = len(batch["image"])
        if total == 0:
            raise InputError(f"{self.name}: no images to run on")
        outputs: dict[str, list[np.ndarray]] = {}
        base = jax.random.key(self.seed)
        bar = tqdm(
            total=total,
            desc=self.name if self._compiled_once else f"{self.name} (compiling first)",
            unit="img",
            disable=not self.progress,
            dynamic_ncols=True,
            leave=False,
        )
        for start in range(0, total, self.chunk):
            rows = {
                k: pad_rows(v[start : start + self.chunk], self.chunk) for k, v in batch.items()
            }
            # Every process holds the same chunk; each places the rows of its own devices.
            chunk = {
                k: jax.make_array_from_callback(v.shape, self._batch_sharding, v.__getitem__)
                for k, v in rows.items()
            }
            key = parallel.put_replicas(
                jax.random.fold_in(base, key_offset + start), self._replicated
            )
            out = self._fn(self.weights, chunk, key)
            n = min(self.chunk, total - start)
            for name, value in out.items():
                outputs.setdefault(name, []).append(parallel.to_host(value)[:n])
            if not self._compiled_once:
                self._compiled_once = True
                bar.set_description(self.name)
            bar.update(n)
        bar.close()
        return {name: np.concatenate(parts) for name, parts in outputs.items()}
