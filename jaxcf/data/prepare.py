"""One-off conversion of a dataset into memory-mapped shards, so training never decompresses
NIfTI / JPEG in the step loop.

    python -m jaxcf.data.prepare --dataset brats2021 --root DIR --out DIR --task slices2d

Output directory (built in a temporary sibling, moved into place with ``os.replace``):

- ``image.npy`` float32 (N, ...) — slices2d (N, S, S, 4) in [-1, 1]; volumes (N, V, V, V, C) in
  value_range; seg3d (N, X, Y, Z, 4) z-scored, zero-padded to the largest foreground box;
  cxr (N, S, S, 1) in [-1, 1].
- ``label.npy`` int32 (N,); ``seg.npy`` uint8 (N, spatial...) when every item has one;
  ``masks.npy`` uint8 (N, S, S, 3) (cxr); ``prompt_ids.npy`` int32 (N, L) and
  ``prompt_mask.npy`` bool (N, L) (ms / adni / cxr).
- ``meta.json``: format version, parameters, source root, per-item case index and slice
  index, per-case id / split / affine / spacing / label, label counts per split, the prompt
  vocabulary.

Re-running with the same parameters reuses the shards; other parameters need ``--overwrite``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import pathlib
import shutil
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from jaxcf.data import sources, transforms
from jaxcf.data.config import TASKS, TASKS_FOR
from jaxcf.data.errors import DataError
from jaxcf.data.text import Tokenizer, build_vocab
from jaxcf.errors import InputError

PROG = "jaxcf.prepare"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
_HEADER_BYTES = 256  # fixed .npy header room so rows can stream in before N is known


class _NpyWriter:
    """Appends equally shaped rows to a .npy file whose row count is written at the end."""

    def __init__(self, path: pathlib.Path):
        self.path, self.n, self.row_shape, self.dtype = path, 0, None, None
        self._f = open(path, "wb")
        self._f.write(b"\0" * _HEADER_BYTES)

    def append(self, row: np.ndarray, what: str) -> None:
        row = np.asarray(row, order="C")  # (ascontiguousarray would make 0-d rows 1-d)
        if self.row_shape is None:
            self.row_shape, self.dtype = row.shape, row.dtype
        elif row.shape != self.row_shape or row.dtype != self.dtype:
            raise DataError(
                f"{what}: {self.path.stem} shape/dtype {row.shape} {row.dtype} differs from the "
                f"first item's {self.row_shape} {self.dtype}"
            )
        self._f.write(row.tobytes())
        self.n += 1

    def close(self) -> None:
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (self.n, *self.row_shape),
        }
        text = repr(header).encode("latin1")
        body = _HEADER_BYTES - 10  # magic (6) + version (2) + header length (2)
        text = text + b" " * (body - len(text) - 1) + b"\n"
        self._f.seek(0)
        self._f.write(np.lib.format.MAGIC_PREFIX + bytes([1, 0]) + body.to_bytes(2, "little"))
        self._f.write(text)
        self._f.close()


def split_cases(
    case_ids: Sequence[str], fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0
) -> dict[str, str]:
    """Assigns each case to train / val / test (all items of a case share its split).

    Seeded permutation of the sorted ids; counts are the fractions rounded by largest
    remainder, then every split with a positive fraction gets >= 1 case when there are enough
    cases (taken from the largest split), so tiny datasets still validate and test.
    """
    f = np.asarray(fractions, np.float64)
    if f.shape != (3,) or (f < 0).any() or abs(f.sum() - 1.0) > 1e-6:
        raise DataError(f"splits must be 3 non-negative fractions summing to 1, got {fractions}")
    ids = sorted(case_ids)
    n = len(ids)
    counts = np.floor(f * n).astype(int)
    for i in np.argsort(-(f * n - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    for i in range(3):
        if f[i] > 0 and counts[i] == 0 and counts.max() > 1:
            counts[np.argmax(counts)] -= 1
            counts[i] += 1
    perm = np.random.default_rng(seed).permutation(n)
    bounds = np.cumsum(counts)
    return {
        ids[j]: SPLITS[int(np.searchsorted(bounds, r, side="right"))] for r, j in enumerate(perm)
    }


def _params(kind: str, task: str, root: pathlib.Path, **kw: Any) -> dict[str, Any]:
    """The parameters that define the shards (only those relevant to the task)."""
    p: dict[str, Any] = {"format_version": FORMAT_VERSION, "dataset": kind, "task": task}
    p["root"] = str(root.resolve())
    keep = {
        "slices2d": ("image_size", "min_brain_fraction"),
        "volumes": ("volume_size", "value_range"),
        "seg3d": (),
        "cxr": ("image_size",),
    }[task]
    p.update({k: kw[k] for k in keep})
    if "value_range" in p:
        p["value_range"] = [float(v) for v in p["value_range"]]
    if kind in ("ms", "adni", "cxr"):
        p["prompt_max_len"] = int(kw["prompt_max_len"])
    p["splits"] = [float(s) for s in kw["splits"]]
    p["seed"] = int(kw["seed"])
    return p


def _items(task: str, rec: dict, kw: dict) -> list[dict]:
    """One source record -> the stored items of ``task`` (arrays + slice index)."""
    if task == "slices2d":
        return transforms.diffscm_slices(rec, kw["image_size"], kw["min_brain_fraction"])
    if task == "volumes":
        item = transforms.WDMPreprocess(kw["volume_size"], tuple(kw["value_range"])).map(rec)
    elif task == "seg3d":
        item = transforms.seg3d_preprocess(rec)
    else:
        item = transforms.cxr_preprocess(rec, kw["image_size"])
    return [dict(item, slice_index=-1)]


def _process_case(source: Any, index: int, task: str, kw: dict) -> tuple[dict, list[dict]]:
    """Reads case ``index`` and preprocesses it -> (case meta, items). Runs in a worker
    process when ``workers > 0``, so it returns only what is stored, not the raw volume."""
    rec = source[index]
    meta = {
        "case_id": rec["case_id"],
        "affine": np.asarray(rec["affine"]).tolist(),
        "spacing": np.asarray(rec["spacing"]).tolist(),
        "shape": list(rec["image"].shape),
    }
    for k in ("label", "prompt", "lesion_volume_ml", "age", "sex", "findings"):
        if k in rec:
            meta[k] = rec[k].item() if isinstance(rec[k], np.generic) else rec[k]
    items = _items(task, rec, kw)
    if task == "seg3d":
        meta["bbox"] = [[s.start, s.stop] for s in items[0].pop("bbox")]
    keep = ("image", "label", "seg", "masks", "slice_index")
    return meta, [{k: it[k] for k in keep if k in it} for it in items]


def _processed(source: Any, task: str, kw: dict, workers: int):
    """Yields _process_case results in case order, from ``workers`` spawned processes
    (at most 2 cases in flight per worker, so finished volumes do not pile up in memory)."""
    if workers <= 0:
        for i in range(len(source)):
            yield _process_case(source, i, task, kw)
        return
    ctx = multiprocessing.get_context("spawn")  # fork is unsafe once jax threads exist
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        pending: collections.deque = collections.deque()
        for i in range(len(source)):
            pending.append(pool.submit(_process_case, source, i, task, kw))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _write(
    source: Any,
    task: str,
    kw: dict,
    split_of: dict,
    tmp: pathlib.Path,
    progress: bool,
    workers: int,
):
    """Streams every case through the task's preprocessing into ``tmp``; returns meta parts."""
    writers: dict[str, _NpyWriter] = {}
    rows: dict[str, int] = {}
    cases, item_case, item_slice, prompts = [], [], [], []
    staged: list[pathlib.Path] = []  # seg3d: per-case arrays, padded to a common shape later
    results = _processed(source, task, kw, workers)
    for ci, (meta, items) in enumerate(
        tqdm(results, total=len(source), desc=f"prepare {task}", disable=not progress)
    ):
        meta["split"] = split_of[meta["case_id"]]
        if task == "seg3d":
            path = tmp / f"_stage_{ci}.npz"
            np.savez(path, image=items[0]["image"], seg=items[0]["seg"])
            staged.append(path)
        for it in items:
            item_case.append(ci)
            item_slice.append(int(it["slice_index"]))
            if "prompt" in meta:
                prompts.append(meta["prompt"])
            for k in ("image", "label", "seg", "masks"):
                if k in it and (task != "seg3d" or k == "label"):
                    w = writers.get(k) or writers.setdefault(k, _NpyWriter(tmp / f"{k}.npy"))
                    w.append(np.asarray(it[k]), f"case {meta['case_id']}")
                    rows[k] = rows.get(k, 0) + 1
        meta["n_items"] = len(items)
        cases.append(meta)
    if task == "seg3d":
        _pad_staged(staged, tmp)
        rows["image"] = rows["seg"] = len(staged)
    n = len(item_case)
    if n == 0:
        raise DataError(
            f"{source.root}: no items left after preprocessing ({task}); check min_brain_fraction"
        )
    dropped = {}
    for k, w in writers.items():
        w.close()
        if rows[k] != n:  # e.g. MS lesion masks present for some subjects only
            (tmp / f"{k}.npy").unlink()
            dropped[k] = f"present for {rows[k]} of {n} items"
    return cases, item_case, item_slice, prompts, dropped


def _pad_staged(staged: list[pathlib.Path], tmp: pathlib.Path) -> None:
    """seg3d: pads the foreground-cropped cases to the largest box, written as one array."""
    shapes = []
    for p in staged:
        with np.load(p) as z:
            shapes.append(z["seg"].shape)
    box = tuple(int(s) for s in np.max(shapes, axis=0))
    img_w, seg_w = _NpyWriter(tmp / "image.npy"), _NpyWriter(tmp / "seg.npy")
    for p in staged:
        with np.load(p) as z:
            img_w.append(transforms.pad_to_shape(z["image"], box), str(p))
            seg_w.append(transforms.pad_to_shape(z["seg"], box), str(p))
        p.unlink()
    img_w.close()
    seg_w.close()


def prepare_dataset(
    kind: str,
    root: str | os.PathLike,
    out: str | os.PathLike,
    task: str,
    *,
    image_size: int = 64,
    volume_size: int = 128,
    value_range: Sequence[float] = (-1.0, 1.0),
    min_brain_fraction: float = 0.05,
    splits: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    prompt_max_len: int = 80,
    overwrite: bool = False,
    progress: bool = True,
    workers: int = 0,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> dict[str, Any]:
    """Prepares ``kind`` at ``root`` for ``task`` into ``out``; returns the meta dict.

    ``workers`` > 0 preprocesses cases in that many spawned processes (real BraTS takes a few
    seconds per case); callers then need an ``if __name__ == "__main__":`` guard.
    """
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    root, out = pathlib.Path(root), pathlib.Path(out)
    source = sources.open_source(kind, root)
    kind = getattr(source, "layout", kind)  # 'brats' -> the detected layout
    if task not in TASKS_FOR[kind]:
        raise DataError(f"task {task!r} does not apply to dataset {kind!r}; use {TASKS_FOR[kind]}")
    kw = dict(
        image_size=image_size,
        volume_size=volume_size,
        value_range=tuple(value_range),
        min_brain_fraction=min_brain_fraction,
        splits=splits,
        seed=seed,
        prompt_max_len=prompt_max_len,
    )
    params = _params(kind, task, root, **kw)
    params["cases_sha1"] = hashlib.sha1("\n".join(source.case_ids).encode()).hexdigest()
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()  # an empty directory (e.g. made by the caller) is as good as none
    if out.exists():
        if not (out / "meta.json").is_file():
            # Never replace a directory jaxcf did not write, even with --overwrite.
            raise DataError(f"{out} exists and is not a prepared dataset (no meta.json)")
        old = _reusable(out, params)
        if old is not None:
            log(f"reusing prepared shards in {out}")
            return old
        if not overwrite:
            raise DataError(
                f"{out} holds shards prepared with other parameters ({_diff(out, params)}); "
                "pass --overwrite to rebuild it"
            )
    split_of = split_cases(source.case_ids, splits, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        cases, item_case, item_slice, prompts, dropped = _write(
            source, task, kw, split_of, tmp, progress, workers
        )
        meta: dict[str, Any] = {"format_version": FORMAT_VERSION, "params": params}
        if prompts:
            vocab = _vocab(kind, prompts, [cases[c]["split"] for c in item_case])
            tok = Tokenizer(vocab, prompt_max_len)
            ids, mask = tok.encode_batch(prompts)
            np.save(tmp / "prompt_ids.npy", ids)
            np.save(tmp / "prompt_mask.npy", mask)
            meta["tokenizer"] = tok.to_json()
        labels = np.load(tmp / "label.npy")
        item_split = np.array([cases[c]["split"] for c in item_case])
        counts = {}
        for s in SPLITS:
            values, n = np.unique(labels[item_split == s], return_counts=True)
            counts[s] = {str(v): int(c) for v, c in zip(values, n, strict=True)}
        shapes = {p.stem: list(np.load(p, mmap_mode="r").shape[1:]) for p in tmp.glob("*.npy")}
        meta.update(
            dataset=kind,
            task=task,
            source_root=params["root"],
            n_items=len(item_case),
            fields=sorted(p.stem for p in tmp.glob("*.npy")),
            dropped_fields=dropped,
            item_shapes=shapes,
            label_counts=counts,
            cases=cases,
            item_case_index=item_case,
            item_slice_index=item_slice,
        )
        if task == "seg3d":
            meta["et_label"] = getattr(source, "et_label", None)
        (tmp / "meta.json").write_text(json.dumps(meta))
        if out.exists():  # overwrite: swap in the new directory, then drop the old one
            trash = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, trash)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            try:
                os.replace(tmp, out)
            except OSError as e:  # another process (host) finished the same shards first
                if _reusable(out, params) is None:
                    raise DataError(f"cannot move the shards into {out}: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"prepared {meta['n_items']} items from {len(cases)} cases into {out}")
    return meta


def _reusable(out: pathlib.Path, params: dict) -> dict | None:
    """The meta of ``out`` if it was prepared with exactly ``params``, else None."""
    try:
        meta = prepared_info(out)
    except DataError:
        return None
    return meta if meta["params"] == params else None


def _diff(out: pathlib.Path, params: dict) -> str:
    try:
        old = prepared_info(out)["params"]
    except DataError as e:
        return str(e)
    names = {"cases_sha1": "the cases under root"}
    keys = sorted(k for k in params if old.get(k) != params[k])
    return "differs in: " + ", ".join(names.get(k, k) for k in keys)


def _vocab(kind: str, prompts: list[str], item_split: list[str]) -> list[str]:
    # MS / ADNI prompts are a fixed set (paper 004), so the vocabulary is too; CXR reports are
    # free text and the vocabulary comes from the training split only (no test-set words).
    if kind == "ms":
        return build_vocab(sources.MS_PROMPTS)
    if kind == "adni":
        return build_vocab(sources.ADNI_PROMPTS)
    return build_vocab(p for p, s in zip(prompts, item_split, strict=True) if s == "train")


def prepared_info(path: str | os.PathLike) -> dict[str, Any]:
    """The meta.json of a prepared directory (DataError if absent / unreadable / too new)."""
    f = pathlib.Path(path) / "meta.json"
    if not f.is_file():
        raise DataError(f"{path} is not a prepared dataset: missing {f} (run jaxcf.data.prepare)")
    try:
        meta = json.loads(f.read_text())
    except ValueError as e:
        raise DataError(f"cannot read {f}: {e}") from e
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{f}: format version {meta.get('format_version')} != {FORMAT_VERSION}")
    return meta


# Keyword arguments of prepare_dataset that come straight from the data config / CLI flags.
_OPTIONS = (
    "image_size",
    "volume_size",
    "value_range",
    "min_brain_fraction",
    "splits",
    "seed",
    "prompt_max_len",
)


def prepare_from_config(
    cfg: Any, *, overwrite: bool = False, progress: bool = True, workers: int = 0
) -> dict:
    """prepare_dataset with the fields of a ``data`` config (root and prepared must be set)."""
    for field in ("root", "prepared"):
        if not cfg.get(field):
            raise DataError(f"data.{field} must be set to prepare a dataset")
    opts = {k: tuple(cfg[k]) if k in ("value_range", "splits") else cfg[k] for k in _OPTIONS}
    return prepare_dataset(
        cfg.dataset,
        cfg.root,
        cfg.prepared,
        cfg.task,
        overwrite=overwrite,
        progress=progress,
        workers=workers,
        **opts,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI; bad arguments or input (DataError) -> one line `jaxcf.prepare: ...` on stderr
    and exit code 2."""
    from jaxcf.cli import ArgumentParser, debugging, fail, one_line, parse_args

    ap = ArgumentParser(prog="python -m jaxcf.data.prepare", description=__doc__)
    ap.add_argument("--dataset", required=True, help=", ".join(sources.KNOWN_KINDS))
    ap.add_argument("--root", required=True, help="dataset directory (contract layout)")
    ap.add_argument("--out", required=True, help="output directory of the shards")
    ap.add_argument("--task", required=True, choices=TASKS)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--volume-size", type=int, default=128)
    ap.add_argument("--value-range", type=float, nargs=2, default=(-1.0, 1.0))
    ap.add_argument("--min-brain-fraction", type=float, default=0.05)
    ap.add_argument("--splits", type=float, nargs=3, default=(0.7, 0.15, 0.15))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt-max-len", type=int, default=80)
    ap.add_argument("--workers", type=int, default=0, help="processes (0: in-process)")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    parsed = parse_args(PROG, ap, None if argv is None else list(argv))
    if isinstance(parsed, int):
        return parsed
    a = vars(parsed)
    try:
        prepare_dataset(
            a["dataset"],
            a["root"],
            a["out"],
            a["task"],
            overwrite=a["overwrite"],
            progress=not a["no_progress"],
            workers=a["workers"],
            **{k: a[k] for k in _OPTIONS},
        )
    except InputError as e:  # DataError included
        if debugging():
            raise
        return fail(PROG, one_line(e), 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
