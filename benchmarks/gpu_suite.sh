#!/usr/bin/env bash
# The GPU benchmark suite: every number the README's GPU goals need, in one run of < 8 min
# on one GPU (make bench-gpu).
#
#   bash benchmarks/gpu_suite.sh            # on a machine with an NVIDIA GPU
#   bash benchmarks/gpu_suite.sh --smoke    # toy sizes on any machine (CPU: ~1 min); tests
#
# Stages, each under its own `timeout` (a stage that runs out keeps the rows it wrote; the
# suite goes on and exits 1 at the end if any stage failed):
#   setup           make .venv/.stamp-gpu (pip install -e ".[gpu]" with constraints.txt),
#                   nvidia-smi (a GPU must be visible, unless --smoke), jax.devices()
#   denoisers       benchmarks/denoisers.py --size real --dtype bfloat16: forwards/s and
#                   model-FLOPs utilisation (MFU) of each paper's network
#   wdm_sampling    benchmarks/workloads.py sample: 1000-step DDIM and DDPM of one WDM
#                   128^3 volume (one lax.scan each, batch 1), bf16 and fp32
#   counterfactual  benchmarks/workloads.py counterfactual: Diff-SCM and promptable
#                   seconds per slice at 64 / 128 px, random-init weights, via the runner
#   train_step      benchmarks/workloads.py train: one training step per model (steps/s, MFU)
#   memory3d        benchmarks/memory3d.py --sizes 128: XLA:GPU's compiled peak memory of
#                   the WDM 128^3 training and sampling steps, remat off / on
# JSON goes to $JAXCF_BENCH_OUT (default benchmarks/results) as <date>_<device>_<stage>.json,
# and a log of every stage to <out>/<date>_<device>_gpu_suite.log.
#
# Attention: jaxcf.models.layers.attention already asks jax.nn.dot_product_attention for
# implementation="cudnn" (fused flash attention) with bf16 / fp16 inputs on a GPU and falls
# back to XLA's where cuDNN refuses the shapes; nothing to switch here.
set -uo pipefail

SMOKE=0
for arg in "$@"; do
    case "$arg" in
        --smoke) SMOKE=1 ;;
        -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_suite.sh: unknown argument $arg (use --smoke or --help)" >&2; exit 2 ;;
    esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${JAXCF_BENCH_OUT:-benchmarks/results}"
export JAXCF_BENCH_OUT="$OUT"
PY="${JAXCF_PYTHON:-.venv/bin/python}"
# Preallocating 75% of GPU memory would make the suite's memory look full; allocate on demand
# so nvidia-smi and the OOM errors tell the truth.
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
mkdir -p "$OUT"
LOG="$OUT/$(date +%F)_gpu_suite.log"  # renamed with the device once jax has named it
FAILED=()
START=$SECONDS
# The whole suite stays under 8 minutes: stage limits are cut to what is left of this.
BUDGET=${JAXCF_SUITE_BUDGET:-465}

say() { echo "[gpu_suite $((SECONDS - START))s] $*" | tee -a "$LOG"; }

# stage NAME SECONDS CMD...: run CMD under `timeout` (its own limit, cut to what is left of
# the suite's budget), log it, note failures, never abort.
stage() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - (SECONDS - START)))
    ((limit > left)) && limit=$left
    if ((limit < 10)); then
        say "stage $name SKIPPED: the suite's ${BUDGET}s budget is spent"
        FAILED+=("$name")
        return
    fi
    say "stage $name (timeout ${limit}s): $*"
    local t0=$SECONDS rc
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    if [[ $rc -eq 0 ]]; then
        say "stage $name done in $((SECONDS - t0))s"
    else
        [[ $rc -eq 124 || $rc -eq 137 ]] && say "stage $name TIMED OUT after ${limit}s" \
            || say "stage $name FAILED (exit $rc) after $((SECONDS - t0))s"
        FAILED+=("$name")
    fi
}

if [[ $SMOKE -eq 1 ]]; then
    say "smoke run: toy sizes, results in $OUT"
    # LLVM at -O0: XLA:CPU compiles the toy steps ~1.5x faster; their run time is irrelevant.
    export XLA_FLAGS="${XLA_FLAGS:-} --xla_backend_optimization_level=0"
    [[ -x $PY ]] || { say "no $PY: run make test first"; exit 2; }
    DENOISERS=(--size toy --only "unet tiny2d" --batch 2 --dtype float32 --repeats 1)
    SAMPLE=(--smoke --samplers ddim)
    COUNTERFACTUAL=(--smoke --methods diffscm)
    TRAIN=(--smoke)
    MEMORY=(--sizes 16 --batches 1 2 --remat off --steps sample)
    LIMIT_DENOISERS=60 LIMIT_SAMPLE=60 LIMIT_CF=60 LIMIT_TRAIN=90 LIMIT_MEMORY=60
else
    say "GPU run, results in $OUT"
    stage setup 100 make --no-print-directory .venv/.stamp-gpu
    if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi | tee -a "$LOG"; then
        say "nvidia-smi failed: no NVIDIA GPU visible (use --smoke on a CPU machine)"
        exit 2
    fi
    DENOISERS=(--size real --dtype bfloat16 --repeats 5 --only DiT-B/2 "WDM 128" Diff-SCM PCF)
    SAMPLE=(--dtype bfloat16 float32)
    COUNTERFACTUAL=(--dtype bfloat16)
    TRAIN=(--dtype bfloat16)
    MEMORY=(--sizes 128 --batches 1 2 --remat off on)
    LIMIT_DENOISERS=90 LIMIT_SAMPLE=70 LIMIT_CF=60 LIMIT_TRAIN=80 LIMIT_MEMORY=60
fi

# The device every later number is for (a CUDA install that fell back to the CPU is caught
# here: the GPU run insists on a GPU backend).
DEVICE=$("$PY" -c 'import sys; sys.path.insert(0, "benchmarks"); import jax, common
d = jax.devices()[0]; print(d.platform, d.device_kind, jax.device_count(), common.device_slug(), sep="|")' 2>>"$LOG")
say "jax device: ${DEVICE:-none}"
if [[ -n $DEVICE ]]; then  # the log is named like the JSON: <date>_<device>_gpu_suite.log
    NAMED="$OUT/$(date +%F)_${DEVICE##*|}_gpu_suite.log"
    mv "$LOG" "$NAMED" && LOG=$NAMED
fi
if [[ $SMOKE -eq 0 && ${DEVICE%%|*} != gpu ]]; then
    say "jax sees no GPU (platform ${DEVICE%%|*}): check the .[gpu] install and CUDA driver"
    exit 2
fi

stage denoisers "$LIMIT_DENOISERS" "$PY" benchmarks/denoisers.py "${DENOISERS[@]}"
stage wdm_sampling "$LIMIT_SAMPLE" "$PY" benchmarks/workloads.py sample "${SAMPLE[@]}"
stage counterfactual "$LIMIT_CF" "$PY" benchmarks/workloads.py counterfactual "${COUNTERFACTUAL[@]}"
stage train_step "$LIMIT_TRAIN" "$PY" benchmarks/workloads.py train "${TRAIN[@]}"
stage memory3d "$LIMIT_MEMORY" "$PY" benchmarks/memory3d.py "${MEMORY[@]}"

say "finished in $((SECONDS - START))s; JSON in $OUT"
if [[ ${#FAILED[@]} -gt 0 ]]; then
    say "failed or timed out: ${FAILED[*]}"
    exit 1
fi
