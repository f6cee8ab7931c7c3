#!/usr/bin/env bash
# jaxcf on every host of a Cloud TPU VM pod slice (e.g. v4-32: 4 hosts x 4 chips), run
# from your own machine with gcloud. One JAX process per host drives that host's chips;
# `gcloud compute tpus tpu-vm ssh --worker=all` starts the same command on every host at
# once, and JAXCF_DISTRIBUTED=1 makes jaxcf call jax.distributed.initialize(), which finds
# the other hosts from the TPU VM's metadata. See launch/README.md.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh install
#   TPU_NAME=my-v4-32 ZONE=us-central2-b WORKDIR=/mnt/nfs/runs/quick launch/tpu_pod.sh train
#   ... CONFIG=configs/diffscm_brats.py launch/tpu_pod.sh train --config.mesh.fsdp=4
#   ... launch/tpu_pod.sh stop        # SIGTERM on every host: all save at one step, exit 130
# Arguments after the step go to the jaxcf command.
#
# Parameters (environment variables, with their defaults):
#   TPU_NAME (required)      the TPU VM (pod slice) name
#   ZONE (required)          its zone
#   PROJECT=                 the Google Cloud project (default: gcloud's configured one)
#   CONFIG=configs/quickstart.py   experiment config, relative to the checkout
#   WORKDIR=runs/<config name>     relative to REMOTE_DIR or absolute; for more than one
#                            host it must be a filesystem that every host mounts (NFS /
#                            Filestore): process 0 writes the phantoms and shards there,
#                            every process writes its part of each checkpoint
#   REMOTE_DIR=jaxcf         where `install` puts the checkout on each host (under ~)
#   REMOTE_PYTHON=python3.11 the interpreter `install` builds the venv with (jaxcf needs
#                            >= 3.11; installed with apt when missing)
#   DETACH=0                 1: `train` runs under nohup (log: ~/jaxcf.log on each host)
#   SSH_FLAGS=               extra gcloud ssh / scp flags, e.g. "--tunnel-through-iap"
set -euo pipefail

STEP=${1:-}
[[ $# -gt 0 ]] && shift
TPU_NAME=${TPU_NAME:?set TPU_NAME to the TPU VM name}
ZONE=${ZONE:?set ZONE to the TPU VM zone}
PROJECT=${PROJECT:-}
CONFIG=${CONFIG:-configs/quickstart.py}
name=$(basename "${CONFIG%%:*}" .py)
WORKDIR=${WORKDIR:-runs/$name}
REMOTE_DIR=${REMOTE_DIR:-jaxcf}
REMOTE_PYTHON=${REMOTE_PYTHON:-python3.11}
read -r -a ssh_flags <<<"${SSH_FLAGS:-}"

gcloud_flags=(--zone="$ZONE" "${ssh_flags[@]}")
[[ -n $PROJECT ]] && gcloud_flags+=(--project="$PROJECT")

# on WORKERS COMMAND: run a shell command on the given hosts ("all", or "0").
on() {
    gcloud compute tpus tpu-vm ssh "$TPU_NAME" --worker="$1" "${gcloud_flags[@]}" --command="$2"
}

# The remote shell command that runs `python ARGS...` in the checkout (each word quoted).
# exec: the process is python itself (what `stop` signals), not a shell around it.
# DETACH=1: in the background with nohup, output in ~/jaxcf.log on each host, so the run
# survives the end of the ssh sessions.
python_command() {
    local quoted
    printf -v quoted '%q ' "$@"
    local run="exec env JAXCF_DISTRIBUTED=1 PYTHONUNBUFFERED=1 .venv/bin/python $quoted"
    if [[ ${DETACH:-0} == 1 ]]; then
        echo "cd ~/$REMOTE_DIR && (nohup bash -c $(printf '%q' "$run") >~/jaxcf.log 2>&1 &)"
    else
        echo "cd ~/$REMOTE_DIR && $run"
    fi
}

case $STEP in
install)
    # The tracked files of this checkout as they are now (uncommitted edits included).
    repo=$(git -C "$(dirname "${BASH_SOURCE[0]}")/.." rev-parse --show-toplevel)
    archive=$(mktemp --suffix=.tar.gz)
    trap 'rm -f "$archive"' EXIT
    git -C "$repo" ls-files -z | tar -C "$repo" --null -T - -czf "$archive"
    gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME":jaxcf.tar.gz --worker=all \
        "${gcloud_flags[@]}"
    # jax pinned by constraints.txt; jax[tpu] adds the matching libtpu. The check joins
    # the hosts as training does and prints each host's view of the devices.
    check="from jaxcf import parallel; parallel.initialize_distributed(); import jax
print(f\"host {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()}\"
      f\" of {jax.device_count()} {jax.devices()[0].device_kind} devices\")"
    on all "set -e
        command -v $REMOTE_PYTHON >/dev/null || {
            sudo apt-get update -qq && sudo apt-get install -y -qq $REMOTE_PYTHON $REMOTE_PYTHON-venv; }
        mkdir -p ~/$REMOTE_DIR && tar -xzf ~/jaxcf.tar.gz -C ~/$REMOTE_DIR && cd ~/$REMOTE_DIR
        [ -x .venv/bin/python ] || $REMOTE_PYTHON -m venv .venv
        .venv/bin/python -m pip install -q --upgrade pip
        .venv/bin/python -m pip install -q -c constraints.txt -e . 'jax[tpu]'
        JAXCF_DISTRIBUTED=1 .venv/bin/python -c '$check'"
    ;;
train)
    # Every host at once; each process loads its own shard of every global batch.
    on all "$(python_command -m jaxcf.train --config="$CONFIG" --workdir="$WORKDIR" "$@")"
    ;;
stop)
    # SIGTERM to the training process of every host: they agree on one step, save a
    # checkpoint there and exit (130); `train` again resumes from it.
    # ([.]: the pattern does not match this command's own shell.)
    on all "pkill -TERM -f -- '-m jaxcf[.]train' || true"
    ;;
*)
    echo "usage: TPU_NAME=NAME ZONE=ZONE $0 install|train|stop [jaxcf flags...]" >&2
    exit 2
    ;;
esac
