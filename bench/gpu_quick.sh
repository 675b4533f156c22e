#!/usr/bin/env bash
# Short GPU check of the Triton backend (under 400 s wall time in all, without network):
#   install the checkout, benchmark what the targets need on 50,000 real
#   CIFAR-10 images (fused distort: default + candidate configs, kornia, pytorch-msssim, torch backend,
#   SSIM only; loss: eager vs Triton, Python-dispatched and CUDA-graphed, B = 100 .. 65536), run the
#   CUDA Triton tests.
#
#   bash bench/gpu_quick.sh            # from the repository root; carry .data and .whl
#   DEVICE=cpu bash bench/gpu_quick.sh # dry run on a CPU (Triton interpreter, tiny sizes)
#
# Outputs in $OUT (or bench/results/quick): gpu_quick.log (every step's output, with a summary of
# exit codes and seconds at the end) and the benchmark's JSON. Each step has its own timeout, capped by
# what is left of BUDGET_S (default 360 s); a failing step is logged and the next one still runs.
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUTDIR="${OUT:-bench/results/quick}"
mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu_quick.log"
: > "$LOG"
export IQALS_CIFAR_JPEG="${IQALS_CIFAR_JPEG:-$PWD/.data/cifar10-jpeg.tar.gz}"
export TRITON_DEFAULT_FP_FUSION="${TRITON_DEFAULT_FP_FUSION:-1}"  # triton >= 3.9 warns if unset
BUDGET_S="${BUDGET_S:-360}"
DEVICE="${DEVICE:-cuda}"
if [[ "$DEVICE" == cpu ]]; then  # dry run: the Triton kernels in the interpreter, tiny sizes
  export TRITON_INTERPRET=1
  N=16 BENCH_ARGS=(--tiny)
else
  N=50000 BENCH_ARGS=()
fi
T0=$(date +%s)
SUMMARY=""

step() {  # step NAME TIMEOUT_S CMD...: run CMD with a timeout capped by the remaining budget
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET_S - ($(date +%s) - T0) ))
  if (( left < 10 )); then echo "=== $name SKIPPED (budget spent)" | tee -a "$LOG"; SUMMARY+="$name skipped 0"$'\n'; return 1; fi
  (( limit > left )) && limit=$left
  echo "=== $name (timeout ${limit}s, t=$(( $(date +%s) - T0 ))s)" | tee -a "$LOG"
  local s=$(date +%s)
  timeout "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  echo "=== $name rc=$rc in $(( $(date +%s) - s ))s" | tee -a "$LOG"
  SUMMARY+="$name $rc $(( $(date +%s) - s ))"$'\n'
  return $rc
}

[[ "$DEVICE" == cpu ]] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$LOG" 2>&1 || true

if ls .whl/*.whl > /dev/null 2>&1; then
  step wheels 30 "$PY" -m pip install -q --no-index --no-deps .whl/*.whl
fi
if ! step install 60 "$PY" -m pip install -q --no-build-isolation --no-deps -e .; then
  echo "install failed: using the source tree (PYTHONPATH=$PWD; no C++ extension)" | tee -a "$LOG"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

# the benchmark first (one JSON into $OUTDIR, its table into the log; it also checks every candidate's
# bytes and scores against the default's on all 50,000 images), then the CUDA parity tests
step bench 200 "$PY" bench/gpu_bench.py --device "$DEVICE" --n "$N" --quick "${BENCH_ARGS[@]}" --out "$OUTDIR"

# CUDA parity tests of the Triton kernels (every compile counts: the CUDA cases are sized for < 60 s warm)
step tests_triton 150 "$PY" -m pytest tests/ops tests/kernels -k "triton or kernels" --device "$DEVICE" -q \
  -p no:cacheprovider -rs --durations=10

echo "=== done in $(( $(date +%s) - T0 ))s; steps (name rc seconds):" | tee -a "$LOG"
printf "%s" "$SUMMARY" | tee -a "$LOG"
grep -E "^(default config|triton|kornia|pytorch_msssim|torch_backend|SSIM only|parity| +[0-9]+ )" "$LOG" | head -40
