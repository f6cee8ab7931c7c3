"""One process of the 2-process CPU run of tests/test_multiprocess.py (not a test module:
pytest collects test_*.py only).

    XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu \\
    python tests/multiprocess_worker.py train|method WORKDIR STEPS \\
        --process-id I --num-processes 2 --port PORT

Joins the job with jax.distributed.initialize (coordinator: process 0 on localhost:PORT),
trains configs/quickstart.py:toy to STEPS in WORKDIR (shared by all processes; resumed when
it holds a checkpoint) on a mesh.data x mesh.fsdp = 4 x 2 mesh over the 8 global devices;
`method` then loads the trained model and runs Diff-SCM on the first METHOD_ROWS prepared
slices, writing WORKDIR/method_<I>.npz (every process writes what it gathered).

The same functions run the single-process reference inside the test: `HostsInOneProcess`
gives one process the global batches that the hosts of a multi-process run assemble.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_PROCESSES = 2
METHOD_ROWS = 8


def toy_config(num_steps: int):
    """configs/quickstart.py:toy on 4 phantom cases, global batch 8, mesh 4 (data) x 2 (fsdp),
    no preview samples, Diff-SCM chunks of 8 slices (one per device). The UNet keeps one
    resolution level (channel_mult (1,), still with Diff-SCM's label attention): XLA:CPU
    compiles its train step in under half the time (19 s instead of 43 s on a busy 2-core
    machine), which keeps the two processes, each compiling on a shared core, well within
    Gloo's 30 s of each other."""
    spec = importlib.util.spec_from_file_location(
        "config_quickstart", REPO / "configs/quickstart.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("toy")
    c.data.phantom.cases = 4
    c.model.channel_mult = (1,)
    c.mesh.update(data=4, fsdp=2)
    c.train.update(num_steps=num_steps, log_every=1, checkpoint_every=2, sample_every=0)
    c.counterfactual.batch_size = METHOD_ROWS
    return c


class HostsInOneProcess:
    """The training iterator of an n-host run, in one process: host i's iterator
    (make_dataset(shard_index=i, shard_count=n)) for every i, batches concatenated in host
    order, which is where jax.make_array_from_process_local_data puts each host's rows on
    a mesh of jax.devices() (process 0's devices first). get_state / set_state cover every
    host, so a checkpoint resumes all of them."""

    def __init__(self, data_config, *, seed: int, count: int = NUM_PROCESSES):
        from jaxcf.data.pipeline import make_dataset

        self.hosts = [
            iter(make_dataset(data_config, "train", seed=seed, shard_index=i, shard_count=count))
            for i in range(count)
        ]

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        parts = [next(host) for host in self.hosts]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def get_state(self) -> dict:
        return {"hosts": [host.get_state() for host in self.hosts]}

    def set_state(self, state: dict) -> None:
        for host, s in zip(self.hosts, state["hosts"], strict=True):
            host.set_state(s)


def method_images(workdir: pathlib.Path, config) -> np.ndarray:
    """The first METHOD_ROWS prepared slices (every process reads the same rows)."""
    prepared = workdir / "prepared" / f"{config.data.dataset}_{config.data.task}"
    return np.load(prepared / "image.npy")[:METHOD_ROWS]


def run(phase: str, workdir: pathlib.Path, steps: int) -> dict | None:
    """Train to `steps`; phase "method": then Diff-SCM's outputs (numpy) on method_images."""
    from jaxcf.experiments.segmentation import method_runner
    from jaxcf.inference import load_trained
    from jaxcf.training.loop import train_and_evaluate

    config = toy_config(steps)
    train_and_evaluate(config, workdir)
    if phase != "method":
        return None
    runner = method_runner(load_trained(workdir), "diffscm", progress=False)
    return runner({"image": method_images(workdir, config)})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("phase", choices=("train", "method"))
    parser.add_argument("workdir", type=pathlib.Path)
    parser.add_argument("steps", type=int)
    parser.add_argument("--process-id", type=int, required=True)
    parser.add_argument("--num-processes", type=int, default=NUM_PROCESSES)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()

    import jax

    jax.distributed.initialize(
        coordinator_address=f"localhost:{args.port}",
        num_processes=args.num_processes,
        process_id=args.process_id,
    )
    assert jax.process_count() == args.num_processes and jax.device_count() == 8
    out = run(args.phase, args.workdir, args.steps)
    if out is not None:
        np.savez(args.workdir / f"method_{args.process_id}.npz", **out)
    jax.distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
