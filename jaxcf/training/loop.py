"""train_and_evaluate(config, workdir): the training loop.

A Python loop over one jitted, buffer-donating step (XLA:CPU runs a conv backward inside a
rolled lax.scan ~20x slower). Resumes from the latest checkpoint in workdir; saves every
train.checkpoint_every steps, at the end, and on SIGINT / SIGTERM (after the current step);
stops with TrainingDiverged, naming the step, when the loss turns NaN / inf (the last good
checkpoint is never overwritten by a diverged state). Logs to workdir/metrics.jsonl and
TensorBoard (workdir/tb), shows a tqdm bar, and writes preview samples to
workdir/samples/step_XXXXXXX.png every train.sample_every steps. Frozen weights (task.frozen)
are a separate argument of the step and are never checkpointed: the task reloads them from
their own paths on every start.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import signal
import sys
import threading
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from tqdm import tqdm

from jaxcf import parallel
from jaxcf.checkpoint import Checkpoints, abstract_like
from jaxcf.data.pipeline import info as data_info
from jaxcf.data.text import Tokenizer
from jaxcf.training import data as training_data
from jaxcf.training.metrics import MetricWriter
from jaxcf.training.optim import learning_rate, make_optimizer
from jaxcf.training.previews import condition_fields, condition_names, preview_title, save_preview
from jaxcf.training.spaces import check_vae
from jaxcf.training.state import TrainState
from jaxcf.training.step import init_state, make_train_step
from jaxcf.training.tasks import make_task


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class GracefulStop:
    """First SIGINT / SIGTERM: finish the step, save, stop. A second SIGINT: stop now."""

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum
        print(
            f"\n{signal.Signals(signum).name}: finishing this step and saving a checkpoint",
            file=sys.stderr,
            flush=True,
        )

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def _finite(metrics: dict) -> bool:
    return all(math.isfinite(float(v)) for v in metrics.values())


def _preview_panel(
    config: Any,
    task: Any,
    data_config: Any,
    images: np.ndarray,
    fields: dict,
    step: int,
    workdir: pathlib.Path,
) -> pathlib.Path:
    """workdir/samples/step_XXXXXXX.png: a row per sample, labelled with the condition it
    was drawn under (fields: the batch's condition_fields, on the host)."""
    tokenizer = data_info(data_config).get("tokenizer")
    names = condition_names(
        config,
        fields,
        len(images),
        num_classes=getattr(task, "num_classes", 0),
        tokenizer=Tokenizer.from_json(tokenizer) if tokenizer else None,
    )
    path = workdir / "samples" / f"step_{step:07d}.png"
    return save_preview(images, path, names, preview_title(config, step))


def restore_latest(checkpoints: Checkpoints, abstract: TrainState) -> tuple[TrainState, dict]:
    """(state, data iterator state) of the latest checkpoint, restored into `abstract`.

    A checkpoint written before frozen weights left the training state also holds a
    `frozen` entry: its other entries are read (an Orbax partial restore) and that copy is
    ignored; the task's own frozen weights are used, and the next save drops it."""
    step = checkpoints.latest_step
    saved = ocp.StandardCheckpointHandler().metadata(checkpoints.directory / str(step) / "state")
    if "frozen" not in saved.keys():
        state, data_state, _ = checkpoints.restore(abstract, step)
        return state, data_state
    # A manager that restored with other arguments cannot save any more: use a second one.
    old = Checkpoints(checkpoints.directory.parent)
    try:
        fields = {f.name: getattr(abstract, f.name) for f in dataclasses.fields(abstract)}
        state = TrainState(**old.restore_subtrees(fields, step))
        args = ocp.args.Composite(data=ocp.args.JsonRestore())
        data_state = dict(old.manager.restore(step, args=args).data or {})
    finally:
        old.close()
    return state, data_state


def _write_tokenizer(data_config: Any, workdir: pathlib.Path) -> None:
    """workdir/tokenizer.json: the prepared data's prompt tokenizer (prompt datasets), so
    inference tokenizes prompts as training did without the prepared shards."""
    tokenizer = data_info(data_config).get("tokenizer")
    if tokenizer:
        (workdir / "tokenizer.json").write_text(json.dumps(tokenizer))


def train_and_evaluate(config: Any, workdir: str | pathlib.Path) -> dict:
    """Train config in workdir (created; resumed if it holds checkpoints). Returns a summary
    {step, loss, checkpoint_step, start_step, interrupted, seconds} (seconds: this call's
    loop, from start_step)."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    parallel.initialize_distributed()
    lead = jax.process_index() == 0
    train = config.train
    mesh = parallel.make_mesh(config.mesh)

    if config.train.task == "diffusion" and config.diffusion.space == "latent":
        check_vae(config.vae)  # before any data work
    data_config = training_data.ensure_data(config.data, workdir)
    iterator = training_data.train_iterator(data_config, seed=train.seed)
    if config.diffusion.condition == "prompt" and config.train.task == "diffusion":
        # The prompt encoder's vocabulary and length follow the prepared data.
        config.text.vocab_size = config.text.vocab_size or training_data.vocab_size(data_config)
        if config.text.encoder == "tower" and not config.text.get("data_vocab"):
            config.text.data_vocab = training_data.vocabulary(data_config)
        config.text.max_len = config.text.max_len or int(data_config.prompt_max_len)
    checkpoints = Checkpoints(workdir, keep=train.keep_checkpoints)
    # A resumed run restores its own weights: model.checkpoint (pretrained weights a fresh
    # run starts from) is not read again.
    resuming = checkpoints.latest_step is not None
    try:
        task = make_task(config, jax.random.key(train.seed), restoring=resuming)
    except BaseException:
        checkpoints.close()  # e.g. a model.checkpoint that does not fit: one clear error
        raise
    optimizer = make_optimizer(config.optim, train.num_steps)
    state = init_state(task, optimizer)
    shardings = parallel.state_shardings(state, mesh)
    state = parallel.put_replicas(state, shardings)
    # Frozen weights live outside the state and its checkpoints: the task loaded them from
    # their own paths (vae.checkpoint, text.file), on a fresh start and on resume alike.
    frozen = parallel.put_replicas(task.frozen, parallel.state_shardings(task.frozen, mesh))

    start = 0
    if resuming:
        state, data_state = restore_latest(checkpoints, abstract_like(state, shardings))
        iterator.set_state(data_state["iterator"])
        start = int(state.step)
        if lead:
            print(f"resuming from step {start} in {checkpoints.directory}", file=sys.stderr)
    if lead:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
        _write_tokenizer(data_config, workdir)

    step_fn = jax.jit(
        make_train_step(task, optimizer, config.optim, train.seed),
        donate_argnums=0,  # the state only: frozen weights are reused every step
        out_shardings=(shardings, None),
    )
    preview_fn = jax.jit(task.preview, static_argnums=4)
    lr = learning_rate(config.optim, train.num_steps)
    writer = MetricWriter(workdir, enabled=lead)
    last_saved = checkpoints.latest_step
    summary: dict[str, Any] = {"interrupted": False}
    done, host = start, {}
    started = time.perf_counter()

    def save(step: int) -> None:
        nonlocal last_saved
        meta = {"step": step, "config": config.train.task, "time": time.time()}
        checkpoints.save(step, state, {"iterator": iterator.get_state()}, meta)
        last_saved = step

    with (
        GracefulStop() as stop,
        tqdm(
            total=train.num_steps,
            initial=start,
            desc="train (compiling the step)" if start < train.num_steps else "train",
            unit="step",
            disable=not lead,
            dynamic_ncols=True,
        ) as bar,
    ):
        window_start, window_steps = time.perf_counter(), 0
        previous = None
        for step in range(start, train.num_steps):
            batch = parallel.global_batch(next(iterator), mesh)
            state, metrics = step_fn(state, frozen, batch)
            # At most one step in flight: the bar's rate is real, and a signal is served
            # after this step instead of after a queue of dispatched ones.
            jax.block_until_ready(previous)
            if step == start:  # the first step includes compiling it (tens of seconds)
                jax.block_until_ready(metrics)
                bar.set_description("train")
            previous = metrics
            done, window_steps = step + 1, window_steps + 1
            # Read the flag once: a signal arriving later in this iteration is handled after
            # the next step, never between deciding to save and deciding to stop.
            # Several processes stop together, at the same step, or one would wait forever
            # in a save or a step that the others never join (SLURM signals every task, but
            # each may see it at another step).
            stopping = parallel.any_process(stop.signal is not None)
            last = done == train.num_steps or stopping
            log_now = done % train.log_every == 0 or last
            save_now = done % train.checkpoint_every == 0 or last
            if log_now or save_now:
                host = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if not _finite(host):
                    raise TrainingDiverged(
                        f"loss became {host.get('loss')} at step {done}; the last good checkpoint "
                        f"is step {last_saved} in {checkpoints.directory}"
                    )
            if log_now:
                now = time.perf_counter()
                host["steps_per_s"] = window_steps / max(now - window_start, 1e-9)
                host["lr"] = float(lr(done - 1))
                window_start, window_steps = now, 0
                writer.write(done, host)
                bar.set_postfix(loss=f"{host['loss']:.4f}", it_s=f"{host['steps_per_s']:.2f}")
            if save_now:
                save(done)
            if train.sample_every and (done % train.sample_every == 0 or last):
                # Every process runs the sampler (it spans the whole mesh); process 0 writes.
                images = preview_fn(
                    state.ema, frozen, batch, jax.random.key(done), train.preview_count
                )
                images = parallel.to_host(images)
                fields = parallel.to_host(condition_fields(batch))
                if lead:
                    _preview_panel(config, task, data_config, images, fields, done, workdir)
            bar.update(1)
            if stopping:
                summary["interrupted"] = True
                summary["signal"] = (
                    signal.Signals(stop.signal).name if stop.signal else "another process's signal"
                )
                break
    writer.close()
    checkpoints.close()
    summary.update(
        step=done,
        loss=host.get("loss"),
        checkpoint_step=last_saved,
        start_step=start,  # > 0: resumed; seconds covers this invocation only
        seconds=time.perf_counter() - started,
        workdir=str(workdir),
    )
    if lead:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
