"""The shipped demo model: a trained workdir's EMA weights as safetensors + a JSON manifest.

    export_model("runs/demo-model", "jaxcf/assets/quickstart", command="make demo-model")
    install_model("jaxcf/assets/quickstart", "runs/quickstart")   # then load_trained() it

The folder holds `model.safetensors` (the EMA weights of one checkpoint, float32, one
tensor per parameter, keyed by its path in the weights pytree, e.g. "model.conv_in.kernel")
and `manifest.json` (the resolved config the network was trained with, the step, the
seeds, the training wall time, the command, whether `make demo-model` reproduces it, the
weights' sha256, the jaxcf version and the git commit at export). Installing writes
config.json and an Orbax checkpoint holding {"step", "ema"} into a workdir, so
`jaxcf.inference.load_trained` reads a shipped model exactly as it reads one trained in
place: one code path. float32 round-trips exactly (4 bytes a parameter: 4 MB per million).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcf.errors import InputError

REPO = pathlib.Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.py"
# Where `make demo-model` writes and `make demo` looks (package data, see pyproject.toml).
SHIPPED = pathlib.Path(__file__).resolve().parent / "assets" / "quickstart"
ENV_VAR = "JAXCF_DEMO_MODEL"  # another folder holding a shipped model
WEIGHTS, MANIFEST = "model.safetensors", "manifest.json"
FORMAT = "jaxcf-demo-model/1"
MARKER = "shipped_model.json"  # in a workdir: its checkpoint is an installed shipped model


def quickstart_config(steps: int | None, toy: bool) -> ml_collections.ConfigDict:
    """configs/quickstart.py, optionally shortened (steps) or at its test size (toy: the
    config's own toy variant, get_config("toy"))."""
    import importlib.util

    if not QUICKSTART.is_file():
        raise FileNotFoundError(f"{QUICKSTART} is missing (run the demo from a jaxcf checkout)")
    spec = importlib.util.spec_from_file_location("quickstart_config", QUICKSTART)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("toy" if toy else None)
    if steps is not None:
        config.train.num_steps = steps
        config.train.checkpoint_every = min(config.train.checkpoint_every, steps)
    return config


# ---------------------------------------------------------------- files


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
    """Write to a temporary file beside path, then rename it over path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would make shipped files private
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: pathlib.Path, obj: Any) -> None:
    _atomic_write(path, (json.dumps(obj, indent=2, default=float) + "\n").encode())


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _git_commit() -> dict:
    """{"commit", "dirty"} of the checkout jaxcf runs from (None outside a git checkout)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


# ---------------------------------------------------------------- weights <-> flat dict


def _key_name(entry: Any) -> str | None:
    """One pytree path entry as a name ("value" of an nnx.Param is dropped)."""
    if isinstance(entry, jax.tree_util.DictKey):
        return str(entry.key)
    if isinstance(entry, jax.tree_util.SequenceKey):
        return str(entry.idx)
    if isinstance(entry, jax.tree_util.GetAttrKey):
        return None if entry.name == "value" else entry.name
    return str(entry)


def flat_names(tree: Any) -> list[tuple[str, Any]]:
    """[(dotted parameter path, leaf)] in the pytree's flattening order."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    named = [(".".join(n for n in map(_key_name, path) if n is not None), x) for path, x in leaves]
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        raise ValueError("two parameters flatten to the same name")  # a bug, not bad input
    return named


def flatten_weights(params: Any) -> dict[str, np.ndarray]:
    """{dotted path: float32 array} of a weights pytree."""
    return {name: np.asarray(x, np.float32) for name, x in flat_names(params)}


def unflatten_like(flat: dict[str, np.ndarray], like: Any, source: pathlib.Path) -> Any:
    """The pytree of `like` (arrays or ShapeDtypeStructs) with flat's arrays as leaves.
    InputError naming source and the first parameter that is missing, extra or of
    another shape."""
    named = flat_names(like)
    for name, leaf in named:
        if name not in flat:
            raise InputError(f"{source}: has no parameter {name!r} that the network needs")
        if tuple(flat[name].shape) != tuple(leaf.shape):
            raise InputError(
                f"{source}: parameter {name!r} has shape {tuple(flat[name].shape)}, "
                f"the network expects {tuple(leaf.shape)}"
            )
    extra = sorted(set(flat) - {name for name, _ in named})
    if extra:
        raise InputError(f"{source}: parameter {extra[0]!r} is not in the network")
    treedef = jax.tree_util.tree_structure(like)
    leaves = [jnp.asarray(flat[name], dtype=leaf.dtype) for name, leaf in named]
    return jax.tree_util.tree_unflatten(treedef, leaves)


# ---------------------------------------------------------------- export


def _metrics_span(workdir: pathlib.Path) -> dict:
    """{"metrics_span_seconds", "logged_steps"}: first to last line of metrics.jsonl (pauses
    between resumed runs included; the steps before the first line excluded)."""
    path = workdir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    rows = [row for row in rows if "time" in row and "step" in row]
    if not rows:
        return {}
    return {
        "metrics_span_seconds": rows[-1]["time"] - rows[0]["time"],
        "logged_steps": [rows[0]["step"], rows[-1]["step"]],
    }


def _training_time(workdir: pathlib.Path, step: int) -> dict:
    """What the workdir records about training time: summary.json's seconds when its run
    trained from step 0 to `step` in one invocation; else None, with what is known."""
    path = workdir / "summary.json"
    if not path.is_file():
        return {
            "seconds": None,
            "source": "not recorded (no summary.json)",
            **_metrics_span(workdir),
        }
    summary = json.loads(path.read_text())
    if int(summary.get("step", -1)) != step:
        source = f"not recorded (summary.json is of step {summary.get('step')})"
        return {"seconds": None, "source": source, **_metrics_span(workdir)}
    start = summary.get("start_step")
    if start == 0:
        return {"seconds": float(summary["seconds"]), "source": "summary.json: steps 0 to the end"}
    known = "not recorded" if start is None else f"from step {start}"
    return {
        "seconds": None,
        "source": f"not recorded: summary.json times only the last invocation ({known})",
        "last_invocation_seconds": float(summary["seconds"]),
        **_metrics_span(workdir),
    }


# Training bookkeeping that does not change the weights.
_BOOKKEEPING = {
    "checkpoint_every",
    "log_every",
    "sample_every",
    "keep_checkpoints",
    "preview_count",
}


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON trees differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            d
            for key in sorted(set(a) | set(b))
            for d in _differences(a.get(key), b.get(key), f"{prefix}{key}.")
        ]
    return [] if a == b else [prefix.rstrip(".")]


def reproduction(config: dict, step: int) -> dict:
    """Whether `make demo-model DEMO_MODEL_STEPS=step` trains this config (the fields that
    differ from configs/quickstart.py at that length, bookkeeping aside)."""
    expected = json.loads(quickstart_config(step, toy=False).to_json_best_effort())
    differ = [
        d
        for d in _differences(config, expected)
        if not (d.startswith("train.") and d.split(".", 1)[1] in _BOOKKEEPING)
    ]
    return {
        "command": f"make demo-model DEMO_MODEL_STEPS={step}",
        "config_matches": not differ,
        "differences": differ[:20],
    }


def export_model(
    workdir: str | pathlib.Path,
    out: str | pathlib.Path,
    *,
    command: str | None = None,
    train_time: dict | None = None,
    step: int | None = None,
) -> dict:
    """Write out/model.safetensors (the EMA weights of the workdir's latest, or given,
    checkpoint, float32) and out/manifest.json; return the manifest.

    train_time: {"seconds", "source", ...} measured by the caller (default: what the
    workdir's summary.json records)."""
    from safetensors.numpy import save as save_safetensors

    from jaxcf import __version__
    from jaxcf.inference import load_trained

    workdir, out = pathlib.Path(workdir), pathlib.Path(out)
    config = json.loads((workdir / "config.json").read_text())  # as training resolved it
    for field in ("root", "prepared"):
        if config["data"].get(field):
            # The demo regenerates the phantoms from data.seed wherever it runs.
            raise InputError(
                f"{workdir / 'config.json'}: data.{field} is {config['data'][field]!r}; a shipped "
                f"demo model is trained on phantoms generated from data.seed (data.{field} unset)"
            )
    trained = load_trained(workdir, step=step)
    flat = flatten_weights(trained.params)
    # One metadata entry: safetensors writes its metadata map in no fixed order, and the
    # same weights must give the same bytes (and sha256) on every export.
    blob = save_safetensors(flat, metadata={"format": FORMAT})
    manifest = {
        "format": FORMAT,
        "weights": WEIGHTS,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "bytes": len(blob),
        "dtype": "float32",
        "num_params": int(sum(x.size for x in flat.values())),
        "step": trained.step,
        "seed": {"train": config["train"]["seed"], "data": config["data"]["seed"]},
        "train_time": train_time or _training_time(workdir, trained.step),
        "command": command,
        "reproduce": reproduction(config, trained.step),
        "source_workdir": str(workdir.absolute()),
        "jaxcf_version": __version__,
        "git_at_export": _git_commit(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": config,
    }
    tokenizer = workdir / "tokenizer.json"  # prompt models: the vocabulary they were trained on
    if tokenizer.is_file():
        manifest["tokenizer"] = json.loads(tokenizer.read_text())
    # Weights first: a crash between the two renames leaves a manifest whose sha256 does
    # not match, which install_model refuses.
    _atomic_write(out / WEIGHTS, blob)
    _write_json(out / MANIFEST, manifest)
    return manifest


# ---------------------------------------------------------------- install


def read_manifest(model_dir: str | pathlib.Path) -> dict:
    """model_dir/manifest.json, checked for its format and required fields."""
    path = pathlib.Path(model_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (not a shipped jaxcf model folder)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    if manifest.get("format") != FORMAT:
        raise InputError(f"{path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    for field in ("sha256", "step", "config"):
        if field not in manifest:
            raise InputError(f"{path}: has no {field!r}")
    return manifest


def read_weights(model_dir: str | pathlib.Path, manifest: dict) -> dict[str, np.ndarray]:
    """The flat weights of model_dir/model.safetensors, after checking their sha256."""
    from safetensors import SafetensorError
    from safetensors.numpy import load as load_safetensors

    path = pathlib.Path(model_dir) / manifest.get("weights", WEIGHTS)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (named by {MANIFEST})")
    blob = path.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != manifest["sha256"]:
        raise InputError(
            f"{path}: sha256 {digest[:12]}... does not match {MANIFEST}'s "
            f"{str(manifest['sha256'])[:12]}... (a corrupted or replaced file)"
        )
    try:
        return load_safetensors(blob)
    except SafetensorError as err:
        raise InputError(f"{path}: not a safetensors file ({err})") from None


def _installed(workdir: pathlib.Path) -> dict | None:
    marker = workdir / MARKER
    return json.loads(marker.read_text()) if marker.is_file() else None


def remove_installed(workdir: str | pathlib.Path) -> bool:
    """Remove an installed shipped model (its checkpoint, config.json and marker) from a
    workdir, e.g. before training there from scratch; data is kept. False if none."""
    workdir = pathlib.Path(workdir)
    if _installed(workdir) is None:
        return False
    shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
    (workdir / "config.json").unlink(missing_ok=True)
    (workdir / "tokenizer.json").unlink(missing_ok=True)
    (workdir / MARKER).unlink()
    return True


def _check_workdir(workdir: pathlib.Path, manifest: dict) -> bool:
    """True when workdir already holds this shipped model. A checkpoint that is not an
    installed shipped model is never overwritten (InputError); another shipped model's
    installed copy is removed."""
    from jaxcf.checkpoint import Checkpoints

    installed = _installed(workdir)
    if installed is not None and installed.get("sha256") == manifest["sha256"]:
        checkpoints = Checkpoints(workdir)
        try:
            return checkpoints.latest_step == int(manifest["step"])
        finally:
            checkpoints.close()
    if installed is not None:
        remove_installed(workdir)
        return False
    if (workdir / "checkpoints").is_dir() and any((workdir / "checkpoints").iterdir()):
        raise InputError(
            f"{workdir}: holds checkpoints of a model trained there; evaluate it with "
            f"`make demo TRAIN=1` (python -m jaxcf.demo --train), or use another --workdir "
            f"for the shipped model"
        )
    return False


def install_model(model_dir: str | pathlib.Path, workdir: str | pathlib.Path) -> dict:
    """Make workdir a workdir of the shipped model in model_dir: config.json and an Orbax
    checkpoint of {"step", "ema"} (what load_trained reads). Checks the sha256 and that
    the weights fit the network the manifest's config builds. Returns the manifest."""
    from jaxcf.checkpoint import Checkpoints
    from jaxcf.training.tasks import make_task

    model_dir, workdir = pathlib.Path(model_dir), pathlib.Path(workdir)
    manifest = read_manifest(model_dir)
    flat = read_weights(model_dir, manifest)
    config = ml_collections.ConfigDict(manifest["config"])
    task = make_task(config, jax.random.key(int(config.train.seed)), restoring=True)
    weights = model_dir / manifest.get("weights", WEIGHTS)
    ema = unflatten_like(flat, task.params, weights)
    if _check_workdir(workdir, manifest):
        return manifest
    step = int(manifest["step"])
    # The marker first: a crash after it leaves a workdir that the next install redoes.
    marker = {k: v for k, v in manifest.items() if k not in ("config", "tokenizer")}
    _write_json(workdir / MARKER, {**marker, "installed_from": str(model_dir.absolute())})
    _write_json(workdir / "config.json", manifest["config"])
    if manifest.get("tokenizer"):
        _write_json(workdir / "tokenizer.json", manifest["tokenizer"])
    checkpoints = Checkpoints(workdir, keep=1)
    try:
        state = {"step": jnp.asarray(step, jnp.int32), "ema": ema}
        checkpoints.save(step, state, {}, {"step": step, "shipped": manifest["sha256"]})
    finally:
        checkpoints.close()
    return manifest


def shipped_model_dir(explicit: str | pathlib.Path | None, *, toy: bool) -> pathlib.Path | None:
    """The folder of the shipped model to use: `explicit`, else $JAXCF_DEMO_MODEL, else
    the package's (not with toy: the toy demo trains unless told which model to use).
    None when the package's is absent; an explicit folder must hold a manifest."""
    chosen = explicit or os.environ.get(ENV_VAR)
    if chosen:
        path = pathlib.Path(chosen)
        if not (path / MANIFEST).is_file():
            raise FileNotFoundError(f"{path / MANIFEST}: no such file (the shipped model)")
        return path
    if toy or not (SHIPPED / MANIFEST).is_file():
        return None
    return SHIPPED


def describe(manifest: dict) -> str:
    """A manifest in words: step N, trained by `command` in X min."""
    seconds = (manifest.get("train_time") or {}).get("seconds")
    if seconds is None:
        took = "(wall time not recorded)"
    else:
        took = f"in {seconds / 60:.0f} min" if seconds >= 120 else f"in {seconds:.0f} s"
    command = manifest.get("command") or "an unrecorded command"
    return f"step {manifest['step']}, trained by `{command}` {took}"
