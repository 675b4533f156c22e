#!/usr/bin/env bash
# GPU check of the Triton backend, in one run of well under 10 minutes, without network:
#   install the checkout, run the GPU parity tests, benchmark on 50,000 real CIFAR-10 images.
#
#   bash bench/gpu_check.sh            # from the repository root on the GPU machine
#   DEVICE=cpu bash bench/gpu_check.sh # dry run of every step on a CPU (Triton interpreter, tiny sizes)
#
# Inputs:  .data/cifar10-jpeg.tar.gz (or $IQALS_CIFAR_JPEG); optional .whl/*.whl (kornia, pytorch-msssim,
#          ... installed offline if present). Outputs: $OUT (or bench/results/): one log per step,
#          steps.txt (name, exit code, seconds) and the benchmark JSON.
# Each step runs under its own timeout, bounded by a total budget (BUDGET_S, default 540 s), in
# priority order; a failing step is recorded and the next one still runs. Append steps at the end.
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUTDIR="${OUT:-bench/results}"
mkdir -p "$OUTDIR"
export IQALS_CIFAR_JPEG="${IQALS_CIFAR_JPEG:-$PWD/.data/cifar10-jpeg.tar.gz}"
BUDGET_S="${BUDGET_S:-540}"
DEVICE="${DEVICE:-cuda}"
if [[ "$DEVICE" == cpu ]]; then  # dry run: the Triton kernels in the interpreter, every size tiny
  export TRITON_INTERPRET=1
  N=16 BENCH_ARGS=(--tiny --quick) TRAIN_N=200 EPOCHS=1 SUBSET=200
else
  N=50000 BENCH_ARGS=() TRAIN_N=50000 EPOCHS=2 SUBSET=20000
fi
T0=$(date +%s)

step() {  # step NAME TIMEOUT_S CMD...: run CMD with a timeout capped by the remaining budget
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET_S - ($(date +%s) - T0) ))
  if (( left < 20 )); then echo "=== $name SKIPPED (budget spent)"; echo "$name skipped 0" >> "$OUTDIR/steps.txt"; return; fi
  (( limit > left )) && limit=$left
  echo "=== $name (timeout ${limit}s)"
  local s=$(date +%s)
  timeout "$limit" "$@" > "$OUTDIR/$name.log" 2>&1
  local rc=$?
  echo "=== $name rc=$rc in $(( $(date +%s) - s ))s"
  tail -n 60 "$OUTDIR/$name.log"
  echo "$name $rc $(( $(date +%s) - s ))" >> "$OUTDIR/steps.txt"
  return $rc
}

[[ "$DEVICE" == cpu ]] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

# 1. optional offline wheels (benchmark peers); 2. the project itself (C++ extension built by CMake)
if ls .whl/*.whl > /dev/null 2>&1; then
  step wheels 60 "$PY" -m pip install --no-index --no-deps .whl/*.whl
fi
if ! step install 200 "$PY" -m pip install --no-build-isolation --no-deps -e .; then
  echo "install failed: using the source tree (PYTHONPATH=$PWD; no C++ extension)"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c "import iqals_fast, iqals_fast.ops.triton as t, iqals_fast.kernels as k; print('iqals_fast', iqals_fast.__file__, 'kernels', k.__file__, 'triton available:', t.available(), 'backends:', iqals_fast.backends('distort_and_score'))"

# 3. the benchmark (writes the JSON into $OUTDIR; it checks the fused kernel's parity on all 50,000
#    images too). Measurements first: the Triton test file's JIT compiles took 180+ s on an H200.
step bench 240 "$PY" bench/gpu_bench.py --device "$DEVICE" --n "$N" "${BENCH_ARGS[@]}" --out "$OUTDIR"

# 4. parity tests of the Triton kernels on the GPU (the operation tests' Triton cases, every dot mode and
#    candidate configuration), before the slower steps: a candidate that wins the benchmark needs them
#    to become the default
step tests_triton 150 "$PY" -m pytest tests/ops tests/kernels -k "triton or kernels" --device "$DEVICE" -q \
  -p no:cacheprovider -rs

# 4b. the fused kernel's machine code under this machine's Triton (registers, spills, MMAs per
#     configuration), to read beside the timings above (the committed profile is another Triton's)
step sass 60 "$PY" research/sass_stats.py --preset fused --preset score_only --config default --config w2 \
  --config iso_w4_r168 --config stack_iso_w4_r168 --config stack_iso_w8_r128

# 5. training throughput (issue 5): eager vs compiled (CUDA graphs) model-only steps at batch 100, and
#    the full strategy-9 pipeline (real train(): data, distortions, SSIM, steps, checkpoints)
step train_bench 200 "$PY" -m iqals_fast bench --device "$DEVICE" --data "$IQALS_CIFAR_JPEG" -n "$TRAIN_N" \
  --epochs "$(( EPOCHS + 1 ))" --steps 50 --rounds 5 --out "$OUTDIR/train-bench.json"

# 5b. the CLI end to end on the GPU: train (compiled), then evaluation through the GPU backends
step train_gpu 100 bash -c "'$PY' -m iqals_fast train --strategy 9 --data '$IQALS_CIFAR_JPEG' --epochs $EPOCHS \
  --train-subset $SUBSET --device $DEVICE --out /tmp/gpu_run --no-progress && cat /tmp/gpu_run/metrics.jsonl && \
  '$PY' -m iqals_fast eval /tmp/gpu_run --device $DEVICE --no-progress && tail -c 600 /tmp/gpu_run/eval.json"

# 6. the rest of the suite on the GPU, fast tests only
step tests_other 120 "$PY" -m pytest tests --device "$DEVICE" -q -p no:cacheprovider -m "not slow" \
  -k "not triton and not kernels" -x

echo "=== done in $(( $(date +%s) - T0 ))s; steps (name rc seconds):"
cat "$OUTDIR/steps.txt"
