"""JAX's multi-controller runtime on CPU: two processes of 4 devices each, joined with
jax.distributed.initialize (tests/multiprocess_worker.py), train configs/quickstart.py:toy
on a 4 (data) x 2 (fsdp) mesh, checkpoint, resume in a second invocation and run Diff-SCM
through MethodRunner, and get what one process with the same 8 devices gets.

Same numbers, not just "it runs": the reference run in this process sees the same global
batches (multiprocess_worker.HostsInOneProcess: host i's shard of the data, batches
concatenated in host order, as make_array_from_process_local_data assembles them), the same
mesh, the same keys and the same compiled math. What may differ is the order in which a
cross-device reduction (the gradient all-reduce, the loss mean) adds its partial sums: over
Gloo between processes versus inside one process. That moves float32 results by a few
ulps, and 20 network evaluations of the sampler carry them into the counterfactuals (the
tolerances below, each beside what was measured; the differences are printed with -s).

CPU collectives go through Gloo, which gives a process 30 s to join its partner in a
collective (not configurable). The workers' UNet is kept small (multiprocess_worker's
toy_config) so that neither process compiles so long that the other gives up waiting.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from multiprocess_worker import NUM_PROCESSES, HostsInOneProcess, method_images, run, toy_config

from jaxcf.checkpoint import Checkpoints
from jaxcf.training import data as training_data

# `make test` runs this alone, after the other tests: on CPU, Gloo gives a process 30 s to
# join its partner in a collective, and with other test workers sharing 2 cores the two
# processes' compiles could drift further apart than that.
pytestmark = pytest.mark.multiprocess

REPO = pathlib.Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "multiprocess_worker.py"
CACHE = REPO / ".cache" / "jax"
# Weights after 3 steps: a few float32 ulps (measured max 1.9e-9 on weights of order 0.1).
STATE_ATOL, STATE_RTOL = 1e-7, 1e-6
# The logged losses (order 1): a few ulps (measured: 1 ulp).
LOSS_RTOL = 1e-6
# Diff-SCM's outputs (images in [-1, 1]): 20 network evaluations (10 DDIM inversion + 10
# guided decoding steps) carry the weights' ulps along (measured max 2e-6).
METHOD_ATOL = 1e-5
TIMEOUT, GRACE = 300, 10  # seconds per invocation of the two workers; after one failed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _workers(phase: str, workdir: pathlib.Path, steps: int, logs: pathlib.Path) -> list[str]:
    """Run both worker processes to completion; their logs (stdout + stderr)."""
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        JAX_PLATFORMS="cpu",
        # Reruns skip XLA compiles (process 0 writes the cache, both read it).
        JAX_COMPILATION_CACHE_DIR=str(CACHE),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        PYTHONUNBUFFERED="1",
    )
    port = _free_port()
    paths = [logs / f"{phase}_{steps}_{i}.log" for i in range(NUM_PROCESSES)]
    procs = []
    for i, path in enumerate(paths):
        with path.open("w") as log:  # files, not pipes: a full pipe would stall a barrier
            procs.append(
                subprocess.Popen(
                    [
                        *(sys.executable, str(WORKER), phase, str(workdir), str(steps)),
                        *(f"--process-id={i}", f"--port={port}"),
                    ],
                    cwd=REPO,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    # Wait for both; once one has failed, the other gets GRACE seconds (it would otherwise
    # wait in a collective for its partner until a timeout).
    deadline = time.time() + TIMEOUT
    try:
        while time.time() < deadline and any(proc.poll() is None for proc in procs):
            if any(proc.poll() not in (None, 0) for proc in procs):
                deadline = min(deadline, time.time() + GRACE)
            time.sleep(0.2)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    texts = [path.read_text() for path in paths]
    codes = [proc.returncode for proc in procs]
    assert codes == [0] * NUM_PROCESSES, (
        f"{phase} to step {steps}: exit codes {codes}\n"
        + "\n".join(f"--- process {i}:\n{text[-2500:]}" for i, text in enumerate(texts))
    )
    return texts


def _state(workdir: pathlib.Path) -> tuple[int, dict]:
    """(latest step, {"params", "ema"} as flat lists of numpy arrays) of a workdir. Read as
    numpy (no target shardings): the checkpoint of the 2-process run names devices that
    this process does not have."""
    ckpt = Checkpoints(workdir)
    try:
        step = ckpt.latest_step
        saved = ocp.StandardCheckpointHandler().metadata(ckpt.directory / str(step) / "state")
        wanted = {
            k: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), saved[k])
            for k in ("params", "ema")
        }
        state = ckpt.restore_subtrees(wanted, step)
    finally:
        ckpt.close()
    return step, {k: [np.asarray(a) for a in jax.tree.leaves(state[k])] for k in wanted}


def _losses(workdir: pathlib.Path) -> np.ndarray:
    rows = (workdir / "metrics.jsonl").read_text().splitlines()
    return np.array([json.loads(row)["loss"] for row in rows])


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


def test_two_processes_train_resume_and_run_a_method_as_one_process_does(
    tmp_path, monkeypatch, capsys
):
    assert jax.device_count() == 8 and jax.process_count() == 1  # tests/conftest.py
    multi, single, logs = tmp_path / "multi", tmp_path / "single", tmp_path / "logs"
    logs.mkdir()
    seconds, started = {}, time.perf_counter()

    # Two processes x 4 devices: train 2 steps; a second invocation resumes to step 3 and
    # runs Diff-SCM.
    first = _workers("train", multi, 2, logs)
    seconds["2 processes: train"] = time.perf_counter() - started
    second = _workers("method", multi, 3, logs)
    seconds["2 processes: resume + method"] = time.perf_counter() - started - sum(seconds.values())
    # Process 0 wrote the phantoms and shards, the other waited for them.
    assert "prepared 64 items" in first[0] and "prepared" not in first[1]
    assert "resuming from step 2" in second[0]

    # One process x 8 devices, the same global batches.
    monkeypatch.setattr(
        training_data,
        "train_iterator",
        lambda data_config, *, seed: HostsInOneProcess(data_config, seed=seed),
    )
    run("train", single, 2)
    reference = run("method", single, 3)
    seconds["1 process: all"] = time.perf_counter() - started - sum(seconds.values())

    (step_m, multi_state), (step_s, single_state) = _state(multi), _state(single)
    assert step_m == step_s == 3
    diffs = {}
    for k in ("params", "ema"):
        for a, b in zip(multi_state[k], single_state[k], strict=True):
            np.testing.assert_allclose(a, b, atol=STATE_ATOL, rtol=STATE_RTOL, err_msg=k)
        diffs[k] = _max_diff(multi_state[k], single_state[k])
    loss_m, loss_s = _losses(multi), _losses(single)
    assert len(loss_m) == len(loss_s) == 3
    np.testing.assert_allclose(loss_m, loss_s, rtol=LOSS_RTOL)
    diffs["loss"] = float(np.max(np.abs(loss_m - loss_s)))

    outputs = [dict(np.load(multi / f"method_{i}.npz")) for i in range(NUM_PROCESSES)]
    assert set(outputs[0]) == set(reference) >= {"counterfactual", "heatmap"}
    for name, value in reference.items():
        # Every process gathered the whole batch, and it is the same on all of them.
        np.testing.assert_array_equal(outputs[0][name], outputs[1][name], err_msg=name)
        assert outputs[0][name].shape == value.shape and np.isfinite(value).all()
        np.testing.assert_allclose(outputs[0][name], value, atol=METHOD_ATOL, err_msg=name)
        diffs[name] = float(np.max(np.abs(outputs[0][name] - value)))
    # Real work was compared, not copies of the input: the encoded latent is far from the
    # images (a 3-step model barely tells labels apart, so its counterfactuals stay close).
    images = method_images(single, toy_config(3))
    assert np.abs(reference["latent"] - images).max() > 1000 * METHOD_ATOL
    with capsys.disabled():
        print(f"\nmulti- vs single-process max |difference|: {diffs}\nseconds: {seconds}")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-s"]))
