"""Grain pipelines over prepared shards (jaxcf.data.prepare).

``make_dataset`` builds, with Grain's MapDataset API:

    split item indices -> this host's shard -> shuffle (seeded, new order every epoch)
    -> repeat (train: forever) -> read the memory-mapped row -> random augmentation (train)
    -> batch (per-host batch = global batch / shard_count) -> to_iter_dataset (threads)
    [-> mp_prefetch when num_workers > 0]

Batches are dicts of numeric numpy arrays with fixed shapes (see :func:`batch_spec`); the
iterator's ``get_state()`` is a small JSON-able dict, so ``set_state(json.loads(...))`` on a
fresh iterator continues exactly where a checkpoint left off.

Multiprocessing (``num_workers > 0``) starts workers with the *spawn* method: the program's
entry module is re-imported in every worker, so it must keep its work under
``if __name__ == "__main__":``; and Grain reads absl flags, so unless the program parsed them
(absl.app.run does) :func:`make_dataset` marks them parsed with their defaults. Close such
iterators (``it.close()``) when done to stop the workers.
"""

from __future__ import annotations

import os
import pathlib
import threading
from typing import Any

import grain
import numpy as np

from jaxcf.data import transforms
from jaxcf.data.errors import DataError
from jaxcf.data.prepare import SPLITS, prepared_info

_ORDER = ("image", "label", "seg", "masks", "prompt_ids", "prompt_mask")
_DTYPES = {
    "image": np.dtype(np.float32),
    "label": np.dtype(np.int32),
    "seg": np.dtype(np.uint8),
    "masks": np.dtype(np.uint8),
    "prompt_ids": np.dtype(np.int32),
    "prompt_mask": np.dtype(np.bool_),
}
# Config fields that must agree with the parameters the shards were prepared with.
_CHECKED = (
    "image_size",
    "volume_size",
    "value_range",
    "min_brain_fraction",
    "prompt_max_len",
    "splits",
    "seed",
)


class PreparedArrays:
    """Random-access source over a prepared directory: item i -> {field: row array}.

    The arrays are memory-mapped lazily and dropped on pickling, so Grain workers map the
    files themselves instead of receiving copies of whole arrays. Opening is serialised by a
    lock: Grain's reader threads would otherwise all parse the .npy headers at once, and
    concurrent ``ast.literal_eval`` (inside np.load) crashes on CPython 3.11 < 3.11.8
    ("AST constructor recursion depth mismatch").
    """

    def __init__(self, path: str | os.PathLike, fields: tuple[str, ...], n_items: int):
        self.path, self.fields, self.n_items = pathlib.Path(path), tuple(fields), int(n_items)
        self._arrays: dict[str, np.ndarray] | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_arrays", "_lock")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _arrays=None, _lock=threading.Lock())

    def __len__(self) -> int:
        return self.n_items

    def _open(self) -> dict[str, np.ndarray]:
        with self._lock:
            if self._arrays is None:
                self._arrays = {
                    f: np.load(self.path / f"{f}.npy", mmap_mode="r") for f in self.fields
                }
            return self._arrays

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        arrays = self._arrays if self._arrays is not None else self._open()
        return {f: np.array(a[index]) for f, a in arrays.items()}


class _Lookup(grain.transforms.Map):
    """Item index -> record plus ``index`` (int32, the item's row in the shards, -1 for eval
    padding, which repeats item 0) and ``valid`` (bool, False for padding)."""

    def __init__(self, arrays: PreparedArrays):
        self.arrays = arrays

    def map(self, element: Any) -> dict[str, np.ndarray]:
        i = int(element)
        rec = self.arrays[max(i, 0)]
        rec["index"] = np.int32(i)
        rec["valid"] = np.bool_(i >= 0)
        return rec


def _seed(*parts: int) -> int:
    """A 32-bit seed from a tuple of ints (Grain seeds must be < 2**32)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _check_config(meta: dict, cfg: Any, prepared: str) -> None:
    """Refuses shards prepared with other parameters than the config's (e.g. 64 vs 128 px),
    which would otherwise train silently on the wrong data."""
    p = meta["params"]
    wrong = []
    if cfg.dataset not in ("brats", meta["dataset"]):
        wrong.append(f"dataset: config {cfg.dataset!r}, prepared {meta['dataset']!r}")
    if cfg.task != meta["task"]:
        wrong.append(f"task: config {cfg.task!r}, prepared {meta['task']!r}")
    for k in _CHECKED:
        if k in p:
            mine = list(cfg[k]) if isinstance(p[k], list) else cfg[k]
            if mine != p[k]:
                wrong.append(f"{k}: config {mine}, prepared {p[k]}")
    if wrong:
        raise DataError(
            f"data config does not match the shards in {prepared} ({'; '.join(wrong)}); "
            "re-run jaxcf.data.prepare with --overwrite or fix the config"
        )


def _augmentations(cfg: Any, task: str) -> list[Any]:
    if not cfg.augment:
        return []
    if task == "seg3d":  # paper 002's training chain
        return transforms.seg3d_augmentations(cfg.crop_size, cfg.pos_fraction)
    if task == "volumes":
        return [transforms.RandomFlip((0, 1, 2))]
    if task == "slices2d":
        return [transforms.RandomFlip((0,))]  # x = left-right in BraTS
    return []  # cxr: a flip would contradict "left" / "right" in prompts and masks


def _open(cfg: Any, split: str) -> tuple[dict, pathlib.Path]:
    if not cfg.get("prepared"):
        raise DataError("data.prepared is not set: run jaxcf.data.prepare or set the directory")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    path = pathlib.Path(cfg.prepared)
    meta = prepared_info(path)
    _check_config(meta, cfg, str(path))
    return meta, path


def _per_host_batch(cfg: Any, shard_index: int, shard_count: int) -> int:
    if shard_count < 1 or not 0 <= shard_index < shard_count:
        raise DataError(f"shard_index {shard_index} out of range for shard_count {shard_count}")
    if cfg.batch_size % shard_count or cfg.batch_size < shard_count:
        raise DataError(
            f"data.batch_size {cfg.batch_size} (global) is not divisible by {shard_count} hosts"
        )
    return cfg.batch_size // shard_count


def make_dataset(
    data_config: Any,
    split: str,
    *,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
    train: bool = True,
    drop_remainder: bool | None = None,
) -> grain.IterDataset:
    """The batches of ``split`` for host ``shard_index`` of ``shard_count``.

    train=True: infinite, shuffled every epoch (``data.shuffle``), class-balanced when
    ``data.balanced`` (each label equally frequent: per-class shuffled, repeated streams mixed
    with equal weights), augmented when ``data.augment``; always full batches.
    train=False: one pass in item order, no augmentation; the last batch is padded (rows with
    ``valid`` False) unless ``drop_remainder`` (default ``data.drop_remainder_eval``), and every
    host yields the same number of batches so multi-host evaluation stays in lockstep.
    Hosts take items ``shard_index::shard_count`` of the split (balanced: of each class):
    disjoint, together complete.
    """
    meta, path = _open(data_config, split)
    per_host = _per_host_batch(data_config, shard_index, shard_count)
    item_split = np.array([meta["cases"][c]["split"] for c in meta["item_case_index"]])
    items = np.flatnonzero(item_split == split)
    if items.size < shard_count:
        raise DataError(f"split {split!r} of {path} has {items.size} items for {shard_count} hosts")
    host = items[shard_index::shard_count]
    fields = tuple(f for f in _ORDER if f in meta["fields"])
    lookup = _Lookup(PreparedArrays(path, fields, meta["n_items"]))
    if train:
        ds = _train_indices(data_config, path, split, items, (shard_index, shard_count), seed)
        ds = ds.map(lookup)
        for k, aug in enumerate(_augmentations(data_config, meta["task"])):
            ds = ds.random_map(aug, seed=_seed(seed, 2, shard_index, k))
        ds = ds.batch(per_host, drop_remainder=True)
    else:
        drop = data_config.drop_remainder_eval if drop_remainder is None else drop_remainder
        if not drop:  # same padded length on every host: ceil over the largest shard
            longest = -(-items.size // shard_count)
            host = np.pad(
                host, (0, -(-longest // per_host) * per_host - host.size), constant_values=-1
            )
        ds = grain.MapDataset.source(host).map(lookup).batch(per_host, drop_remainder=drop)
    read = grain.ReadOptions(
        num_threads=int(data_config.num_threads), prefetch_buffer_size=int(data_config.prefetch)
    )
    out = ds.to_iter_dataset(read)
    if data_config.num_workers > 0:
        _ensure_absl_flags()
        out = out.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=int(data_config.num_workers),
                per_worker_buffer_size=max(1, int(data_config.prefetch)),
            )
        )
    return out


def _train_indices(
    cfg: Any, path: pathlib.Path, split: str, items: np.ndarray, shard: tuple[int, int], seed: int
) -> grain.MapDataset:
    """Infinite stream of this host's item indices for training (plain or class-balanced)."""
    index, count = shard
    if not cfg.balanced:
        ds = grain.MapDataset.source(items[index::count])
        if cfg.shuffle:
            ds = ds.shuffle(seed=_seed(seed, 0))
        return ds.repeat()
    labels = np.load(path / "label.npy", mmap_mode="r")[items]
    streams = []
    for c in np.unique(labels):  # the whole split's classes, so every host mixes the same set
        idx = items[labels == c][index::count]  # each class is spread over all hosts
        if idx.size == 0:
            raise DataError(
                f"balanced sampling: label {c} of split {split!r} has fewer items than the "
                f"{count} hosts"
            )
        ds = grain.MapDataset.source(idx)
        streams.append((ds.shuffle(seed=_seed(seed, 1, int(c))) if cfg.shuffle else ds).repeat())
    # Paper 004 samples classes with inverse-frequency weights; equal-weight mixing of
    # per-class repeated streams gives exactly that expectation, and each class is still
    # reshuffled every time it wraps around.
    return grain.MapDataset.mix(streams, [1.0] * len(streams))


def _ensure_absl_flags() -> None:
    """Grain's worker processes read absl flags; mark them parsed (defaults) if nobody did."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def batch_spec(
    data_config: Any, split: str = "train", *, shard_count: int = 1, train: bool | None = None
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{field: (shape, dtype)} of the per-host batches of ``make_dataset`` without reading
    data (only meta.json, for which fields exist and the seg3d volume shape)."""
    meta, _ = _open(data_config, split)
    train = split == "train" if train is None else train
    b = _per_host_batch(data_config, 0, shard_count)
    shapes = {f: tuple(meta["item_shapes"][f]) for f in _ORDER if f in meta["fields"]}
    if train and meta["task"] == "seg3d" and data_config.augment:
        crop = (data_config.crop_size,) * 3
        shapes["image"], shapes["seg"] = (*crop, shapes["image"][-1]), crop
    spec = {f: ((b, *s), _DTYPES[f]) for f, s in shapes.items()}
    spec["index"] = ((b,), np.dtype(np.int32))
    spec["valid"] = ((b,), np.dtype(np.bool_))
    return spec


def info(data_config: Any) -> dict[str, Any]:
    """meta.json of ``data_config.prepared`` (same as prepare.prepared_info)."""
    return prepared_info(data_config.prepared)


__all__ = ["PreparedArrays", "batch_spec", "info", "make_dataset", "prepared_info"]
