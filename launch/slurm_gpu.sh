#!/usr/bin/env bash
# Multi-node GPU training (and evaluation) of jaxcf under SLURM, with JAX's multi-controller
# runtime: one process per GPU, every process runs the same program, and
# jaxcf.parallel.initialize_distributed() calls jax.distributed.initialize(), which reads
# its peers from SLURM (SLURM_NTASKS > 1 inside the srun step). See launch/README.md.
#
# Submit from the repository root (the job runs there; it must be on a filesystem that
# every node mounts, and so must WORKDIR):
#   sbatch --nodes=2 launch/slurm_gpu.sh
#   CONFIG=configs/diffscm_brats.py WORKDIR=/shared/runs/diffscm \
#     sbatch --nodes=4 launch/slurm_gpu.sh --config.mesh.fsdp=8 --config.data.root=/data/brats
#   MODE=evaluate CONFIG=configs/diffscm_brats.py WORKDIR=/shared/runs/diffscm \
#     sbatch --nodes=1 launch/slurm_gpu.sh
# Arguments after the script name go to the jaxcf command. sbatch passes the submitting
# shell's environment to the job, so the variables below can be set on the sbatch line.
#
# Parameters (environment variables, with their defaults):
#   CONFIG=configs/quickstart.py   experiment config file (relative to REPO or absolute)
#   WORKDIR=runs/<config name>     checkpoints, logs, phantoms: on a shared filesystem
#   MODE=train                     train | evaluate | all (train, then evaluate)
#   SPLIT=test                     the split MODE=evaluate evaluates
#   REPO=$SLURM_SUBMIT_DIR         the jaxcf checkout
#   PYTHON=$REPO/.venv/bin/python  an environment with jaxcf and jax[cuda12] (make .venv/.stamp-gpu)
#   GPUS_PER_NODE=$SLURM_GPUS_ON_NODE   GPUs of one node (MODE=evaluate uses them all)
# JAX reads JAX_COORDINATOR_PORT (default: derived from the job id) and jaxcf reads
# JAXCF_CACHE_DIR (the compilation cache, default ~/.cache/jaxcf/jax) when set.
#
# GPU binding, the pitfall. JAX's SLURM auto-detection gives process SLURM_LOCALID=r the
# r-th GPU *that it can see* (local_device_ids=[r]). That assumes every task sees all the
# node's GPUs, as with --gpus-per-node below. With --gpus-per-task=1 SLURM binds each task
# to its own GPU, which the task then sees as its only one, device 0: local rank 3 asks for
# a fourth GPU that it cannot see, and start-up fails with "invalid device ordinal". This
# script handles both layouts: each task narrows CUDA_VISIBLE_DEVICES to its own GPU (the
# r-th one it sees, or the only one) and sets JAX_LOCAL_DEVICE_IDS=0, so the process
# drives exactly one GPU however SLURM bound them. Keep SLURM's default block task
# distribution (ranks 0-7 on the first node, ...): the mesh relies on it (README).
#
#SBATCH --job-name=jaxcf
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@180
#SBATCH --output=%x-%j.out
# --ntasks-per-node = GPUs per node (one process per GPU); --signal: SIGTERM to every task
# 3 min before the time limit, so training saves a checkpoint at the same step on all
# processes and exits 130 (resubmit the same command to resume).

set -euo pipefail

# One task of the srun step: bind it to one GPU, then run the jaxcf command.
run_task() {
    local rank=${SLURM_LOCALID:?run_task runs inside srun}
    local -a gpus
    if [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
        IFS=, read -r -a gpus <<<"$CUDA_VISIBLE_DEVICES"
    else
        mapfile -t gpus < <(nvidia-smi --query-gpu=index --format=csv,noheader)
    fi
    local mine
    if ((${#gpus[@]} == 1)); then
        mine=${gpus[0]} # bound per task (--gpus-per-task=1): the only GPU it sees is its own
    elif ((rank < ${#gpus[@]})); then
        mine=${gpus[rank]} # bound per node: local rank r takes the r-th GPU
    else
        echo "slurm_gpu.sh: task $rank on $(hostname) sees ${#gpus[@]} GPUs (${gpus[*]:-none});" \
            "use --ntasks-per-node = GPUs per node" >&2
        exit 2
    fi
    export CUDA_VISIBLE_DEVICES=$mine JAX_LOCAL_DEVICE_IDS=0
    exec "${PYTHON:?}" "$@"
}

if [[ ${1:-} == --task ]]; then
    shift
    run_task "$@"
fi

REPO=${REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
cd "$REPO"
CONFIG=${CONFIG:-configs/quickstart.py}
name=$(basename "${CONFIG%%:*}" .py)
WORKDIR=${WORKDIR:-runs/$name}
MODE=${MODE:-train}
SPLIT=${SPLIT:-test}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-${SLURM_NTASKS_PER_NODE:-1}}}
export PYTHON PYTHONUNBUFFERED=1

if [[ ! -x $PYTHON ]]; then
    echo "slurm_gpu.sh: no Python at $PYTHON; create it with: make .venv/.stamp-gpu" >&2
    exit 2
fi
case $MODE in train | evaluate | all) ;; *)
    echo "slurm_gpu.sh: MODE must be train, evaluate or all, got '$MODE'" >&2
    exit 2
    ;;
esac

echo "jaxcf on ${SLURM_JOB_NUM_NODES:-1} node(s) ${SLURM_JOB_NODELIST:-$(hostname)}:" \
    "${SLURM_NTASKS:-1} processes, config $CONFIG, workdir $WORKDIR, mode $MODE"

if [[ $MODE == train || $MODE == all ]]; then
    # Every task, on every node: one JAX process per GPU. A task that fails stops the step
    # (--kill-on-bad-exit), instead of leaving the others waiting in a collective.
    srun --kill-on-bad-exit=1 bash "$REPO/launch/slurm_gpu.sh" --task \
        -m jaxcf.train --config="$CONFIG" --workdir="$WORKDIR" "$@"
fi

if [[ $MODE == evaluate || $MODE == all ]]; then
    # jaxcf.evaluate is a single-controller program: one process drives all the GPUs of the
    # first node, and each chunk of slices is sharded over them (counterfactual.batch_size
    # rows, rounded up to a multiple of the GPUs).
    srun --nodes=1 --ntasks=1 --gpus-per-task="$GPUS_PER_NODE" --kill-on-bad-exit=1 \
        "$PYTHON" -m jaxcf.evaluate --config="$CONFIG" --checkpoint="$WORKDIR" \
        --split="$SPLIT" "$@"
fi
