#!/usr/bin/env bash
# The GPU run of issue 16: one run of at most 9 minutes on one H100/H200, without network. In priority
# order, so that a run cut short still returns the most important figures:
#   1. training throughput at batch 100 per run on 50,000 real CIFAR-10 images, fp32 (cuDNN's TF32
#      convolutions) and bf16: one model (whole-step CUDA graph, eager) and fleets of K = 1, 9, 18
#      (train_model); the full strategy-9 data path, one run and a fleet of 18 (pipeline); the compiled
#      steps (compiled): `iqals-fast bench` (iqals_fast/throughput.py)
#   2. the fused distort+SSIM kernel's candidate configurations (the one to adopt: faster with the
#      default's bytes and scores) and the soft-label loss with many steps per CUDA graph (kernels:
#      bench/gpu_bench.py)
#   3. the `medium` reproduction protocol (config.PROTOCOLS["medium"]: 50,000 images, 60 epochs, lr
#      steps every 20) as one fleet of strategies 1-9, seed 0, as far as the time left allows, resumed
#      where MEDIUM_DIR holds it (medium), then its evaluation if it finished (medium_eval)
# Correctness first where it is cheap: the whole-step graph's CUDA test (graph_test) before (1).
#
#   bash bench/gpu_check.sh                 # on the GPU machine (carry .data/: the archive)
#   bash bench/gpu_check.sh --device cpu    # dry run of every step on a CPU (or DEVICE=cpu): synthetic data,
#                                           # tiny sizes, the Triton interpreter, ~3-5 minutes
#
# Inputs:  .data/cifar10-jpeg.tar.gz (or $IQALS_CIFAR_JPEG; without it the GPU run times synthetic data and
#          says so); optional .whl/*.whl (installed offline). MEDIUM_DIR (default $WORK/medium): a medium
#          fleet there is resumed; MEDIUM_IN: a folder with a previous run's results.tar.gz and
#          medium-*.tar.gz, unpacked into MEDIUM_DIR first. SKIP="step ...": steps not to run.
# Outputs: $OUT (default bench/results/gpu-check): gpu_check.log (every step's output as it runs, then the
#          summary), results.tar.gz (everything measured, repacked after every step: steps.txt, env.txt,
#          one log and JSON/Markdown per step, the medium runs' configs, metrics, curves and evaluations),
#          medium-N.tar.gz (the medium runs' checkpoints, at most 15 MiB each, after the medium step): at most
#          8 files, which a lent GPU machine returns whole. $WORK (default /tmp/gpu_check) holds the same
#          files unpacked.
# Each step runs under its own timeout, capped by what is left of BUDGET_S (default 540 s); a failing or
# timed-out step is recorded (steps.txt: name, exit code, seconds) and the next one still runs.
set -u
cd "$(dirname "$0")/.."
[[ "${1:-}" == --device ]] && DEVICE=$2
DEVICE="${DEVICE:-cuda}"
PY="${PYTHON:-python3}"
OUTDIR="${OUT:-bench/results/gpu-check}"
WORK="${WORK:-/tmp/gpu_check}"
MEDIUM_DIR="${MEDIUM_DIR:-$WORK/medium}"
BUDGET_S="${BUDGET_S:-540}"
SKIP=" ${SKIP:-} "
mkdir -p "$OUTDIR" "$WORK"
OUTDIR="$(cd "$OUTDIR" && pwd)" WORK="$(cd "$WORK" && pwd)"
LOG="$OUTDIR/gpu_check.log"
: > "$LOG"
: > "$WORK/steps.txt"
export IQALS_CIFAR_JPEG="${IQALS_CIFAR_JPEG:-$PWD/.data/cifar10-jpeg.tar.gz}"
export IQALS_CACHE="${IQALS_CACHE:-/tmp/iqals-cache}"  # decoded images: outside $WORK, not packed
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION="${TRITON_DEFAULT_FP_FUSION:-1}"
MEDIUM_FLAGS=$("$PY" -c "import sys; sys.path.insert(0, '.'); from iqals_fast.config import PROTOCOLS as P; p = P['medium']
print(f'--epochs {p.epochs} --lr-step-epochs {p.lr_step_epochs} --curve-every {p.curve_every}'
      + (f' --train-subset {p.train_subset}' if p.train_subset else ''))" 2>> "$LOG")
[[ -n "$MEDIUM_FLAGS" ]] || MEDIUM_FLAGS="--epochs 60 --lr-step-epochs 20 --curve-every 2"  # config.py's, in case
if [[ "$DEVICE" == cpu ]]; then  # dry run: every step, tiny
  DATA=synthetic TRAIN_N=100 FLEETS=(2) PIPE_FLEETS=(2) TIMING=(--steps 1 --rounds 1 --warmup 1)
  COMPILED=(--fleet --rows "compiled, dispatched LRN, channels_last, bf16")
  KERNELS=(--n 4 --tiny --max-candidates 1) STRATEGIES=(1 9) GRAPH_TESTS="bit_for_bit and nchw"
  MEDIUM_FLAGS="--epochs 2 --lr-step-epochs 1 --curve-every 1 --train-subset 100" EVAL=(--test-subset 100 --suite table2)
else
  DATA="$IQALS_CIFAR_JPEG" TRAIN_N=50000 FLEETS=(1 9 18) PIPE_FLEETS=(18) TIMING=(--steps 50 --rounds 5)
  COMPILED=(--fleet 18) KERNELS=(--n 50000 --quick --graph-steps 50) STRATEGIES=(1 2 3 4 5 6 7 8 9)
  GRAPH_TESTS="captured_replay and eager_forward" EVAL=()
  [[ -f "$DATA" ]] || { echo "no archive at $DATA: timing synthetic images" | tee -a "$LOG"; DATA=synthetic; }
fi
T0=$(date +%s)

pack() {  # everything small in $WORK into $OUT/results.tar.gz, replaced whole (a reader never sees half)
  tar czf "$OUTDIR/.results.tar.gz.tmp" -C "$WORK" --exclude='*.pt' --exclude='.lock' . 2>> "$LOG" \
    && mv -f "$OUTDIR/.results.tar.gz.tmp" "$OUTDIR/results.tar.gz"
}

step() {  # step NAME TIMEOUT_S CMD...: CMD under a timeout capped by the budget left; its output to the logs
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET_S - ($(date +%s) - T0) ))
  if [[ "$SKIP" == *" $name "* ]]; then echo "$name skipped 0" >> "$WORK/steps.txt"; return 1; fi
  if (( left < 15 )); then
    echo "=== $name SKIPPED (budget spent)" | tee -a "$LOG"; echo "$name skipped 0" >> "$WORK/steps.txt"; return 1
  fi
  (( limit > left - 10 )) && limit=$(( left - 10 ))
  if (( limit < 5 )); then echo "=== $name SKIPPED (no time left)" | tee -a "$LOG"; echo "$name skipped 0" >> "$WORK/steps.txt"; return 1; fi
  echo "=== $name (timeout ${limit}s, t=$(( $(date +%s) - T0 ))s)" | tee -a "$LOG"
  local s=$(date +%s)
  # SIGINT first: train saves nothing half-done and releases its lock (KeyboardInterrupt); SIGKILL 15 s later
  timeout -s INT -k 15 "$limit" "$@" 2>&1 | tee "$WORK/$name.log" >> "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "=== $name rc=$rc in $(( $(date +%s) - s ))s" | tee -a "$LOG"
  echo "$name $rc $(( $(date +%s) - s ))" >> "$WORK/steps.txt"
  pack
  return "$rc"
}

bench() {  # bench NAME TIMEOUT_S ARGS...: `iqals-fast bench` on the data, JSON + table into $WORK/NAME.{json,md}
  local name=$1 limit=$2; shift 2
  step "$name" "$limit" "$PY" -m iqals_fast bench --device "$DEVICE" --data "$DATA" "${TIMING[@]}" "$@" \
    --out "$WORK/$name.json"
}

{
  echo "device $DEVICE, budget ${BUDGET_S}s, data $DATA, started $(date -u +%FT%TZ)"
  [[ "$DEVICE" == cpu ]] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  nproc; "$PY" -c "import torch, platform; print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda)"
  "$PY" -c "import triton; print('triton', triton.__version__)" 2>&1
} > "$WORK/env.txt" 2>&1
cat "$WORK/env.txt" >> "$LOG"

# 0. the project (the C++ extension built by CMake); on a CPU dry run only with INSTALL=1 (it rebuilds the venv's)
if ls .whl/*.whl > /dev/null 2>&1; then
  step wheels 60 "$PY" -m pip install -q --no-index --no-deps .whl/*.whl
fi
if [[ "$DEVICE" != cpu || "${INSTALL:-0}" == 1 ]]; then
  if ! step install 120 "$PY" -m pip install -q --no-build-isolation --no-deps -e .; then
    echo "install failed: using the source tree (PYTHONPATH=$PWD; no C++ extension)" | tee -a "$LOG"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  fi
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

# the whole-step graph replayed = the same function eagerly, no host sync per step (tests/test_step_graph.py)
step graph_test 60 "$PY" -m pytest tests/test_step_graph.py -k "$GRAPH_TESTS" --device "$DEVICE" -q -p no:cacheprovider -rs

# 1. training throughput: one model and fleets without compilation (the graph rows: the targets), then the
#    full strategy-9 data path (one run, a fleet), then the compiled rows (a minute of compilation each)
bench train_model 150 --groups single fleet --fleet "${FLEETS[@]}" --no-pipeline
bench pipeline 150 --groups -n "$TRAIN_N" --epochs 3 --pipeline-fleet "${PIPE_FLEETS[@]}"
bench compiled 120 --groups compiled --no-pipeline "${COMPILED[@]}"

# 2. the fused kernel's candidates (bytes and scores vs the default: "adopt") and the loss, 50 steps per graph
if [[ "$DEVICE" == cpu ]]; then export TRITON_INTERPRET=1; fi
step kernels 110 "$PY" bench/gpu_bench.py --device "$DEVICE" --steps env,images,distort,loss "${KERNELS[@]}" --out "$WORK"
unset TRITON_INTERPRET

# 3. the medium protocol as one fleet, resumable: SIGINT at the timeout leaves every finished epoch saved
if [[ -n "${MEDIUM_IN:-}" ]]; then
  mkdir -p "$MEDIUM_DIR" "$WORK/.prev"
  tar xzf "$MEDIUM_IN/results.tar.gz" -C "$WORK/.prev" ./medium 2>> "$LOG" && cp -rn "$WORK/.prev/medium/." "$MEDIUM_DIR/"
  for f in "$MEDIUM_IN"/medium-*.tar.gz; do [[ -f "$f" ]] && tar xzf "$f" -C "$MEDIUM_DIR"; done
  rm -rf "$WORK/.prev"
fi
RUNS=() RESUME=() finished=1
for s in "${STRATEGIES[@]}"; do RUNS+=("$MEDIUM_DIR/strategy$s-seed0"); done
[[ -f "${RUNS[0]}/checkpoint.pt" ]] && RESUME=(--resume)
left=$(( BUDGET_S - ($(date +%s) - T0) ))
if [[ "$DATA" == synthetic && "$DEVICE" != cpu ]]; then
  echo "=== medium SKIPPED: no archive (the protocol is for real images)" | tee -a "$LOG"
else
  # shellcheck disable=SC2086  # MEDIUM_FLAGS: several flags
  step medium $(( left - 40 )) "$PY" -m iqals_fast train --strategy "${STRATEGIES[@]}" --seed 0 $MEDIUM_FLAGS \
    --data "$DATA" --device "$DEVICE" --out "$MEDIUM_DIR" --no-progress "${RESUME[@]}"
fi
epochs=$(sed -E 's/.*--epochs ([0-9]+).*/\1/' <<< "$MEDIUM_FLAGS")
for r in "${RUNS[@]}"; do
  (( $(cat "$r/metrics.jsonl" 2>/dev/null | wc -l) >= epochs )) || finished=0
done
if (( finished )); then
  step medium_eval 200 "$PY" -m iqals_fast eval "${RUNS[@]}" --device "$DEVICE" --no-progress "${EVAL[@]}"
else
  echo "medium: not every run has its $epochs epochs yet: no evaluation (resume: MEDIUM_DIR or MEDIUM_IN)" | tee -a "$LOG"
fi

# the medium runs' checkpoints, at most 15 MiB a file and 5 files (a lent machine returns 8 files, 64 MiB in all)
part=0 size=0 files=()
flush() {
  (( ${#files[@]} )) || return 0
  if (( part >= 5 )); then echo "medium: ${files[*]} not packed (5 files already)" | tee -a "$LOG"; files=(); return 0; fi
  tar czf "$OUTDIR/medium-$part.tar.gz" -C "$MEDIUM_DIR" "${files[@]}" && part=$(( part + 1 ))
  files=() size=0
}
if [[ -d "$MEDIUM_DIR" ]]; then
  for f in $(cd "$MEDIUM_DIR" && ls ./*/checkpoint.pt 2>/dev/null); do
    s=$(stat -c %s "$MEDIUM_DIR/$f")
    (( size + s > 15 * 1024 * 1024 )) && flush
    files+=("$f") size=$(( size + s ))
  done
  flush
  ls "$MEDIUM_DIR"/*/stage1.pt > /dev/null 2>&1 && echo "medium: the stage1.pt files stay in $MEDIUM_DIR (not packed)" | tee -a "$LOG"
fi

echo "=== done in $(( $(date +%s) - T0 ))s; steps (name rc seconds):" | tee -a "$LOG"
tee -a "$LOG" < "$WORK/steps.txt"
for f in "$WORK"/*.md; do [[ -f "$f" ]] && { echo "--- $(basename "$f")"; cat "$f"; }; done | tee -a "$LOG"
grep -hE "^(adopt|adopt_ssim_only):" "$WORK/kernels.log" 2>/dev/null | tee -a "$LOG"
pack
