#!/usr/bin/env bash
# One short GPU run (one CUDA GPU, no network), bounded to ~10 min on an H100/H200 incl. model construction:
#   1. loading memory: a 0.55B bf16 checkpoint on disk, load_hooked / load_pair old vs lean, offload, and the
#      bridge in bf16 vs NF4 (peak RSS and CUDA peak memory)       -> benchmarks/results-gpu-memory.json
#   2. the study's setup: a Llama-2-7B-shaped random pair in 4-bit NF4 (bitsandbytes, double quantization,
#      bf16 compute) beside the same pair in bf16: load, detection, phase (with BOS-MLP ablation),
#      disruption, each with its time and peak device memory      -> benchmarks/results-gpu-nf4.json
#   3. a Llama-2-7B-shaped random bf16 pair built in memory: detection, phase, sinks, disruption with
#      10 seeds, long inputs (4k, 8k tokens), each against bare HF forwards
#                                                                  -> benchmarks/results-gpu.json + README rows
# Each step has its own time budget and the whole run a deadline (DROPE_GPU_BUDGET, default 570 s): a step that
# runs out of time is stopped, reported, and the next one still runs; the script then exits non-zero.
# DROPE_GPU_TINY=1: the same script on the CPU with tiny shapes (what the tests run).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${DROPE_GPU_OUT:-benchmarks}
SCALE=1  # the CPU rehearsal gets 3x every budget (a shared CPU, and the step's imports dominate)
[[ "${DROPE_GPU_TINY:-0}" == "1" ]] && SCALE=3
BUDGET=${DROPE_GPU_BUDGET:-$((570 * SCALE))}
DEADLINE=$((SECONDS + BUDGET))
if [[ "${DROPE_GPU_TINY:-0}" == "1" ]]; then
  # the GPU run's own commands and code path (random tokenizer-less Llama-2-shaped bf16 pair), tiny shapes
  echo "== tiny CPU rehearsal of benchmarks/gpu.sh =="
  MEM_ARGS=(--tiny --device cpu)
  NF4_ARGS=(--model llama2-shaped-tiny --device cpu --threads 1)
  RUN_ARGS=(--model llama2-shaped-tiny --device cpu --n-texts 2 --seq-len 64 --scaling-lengths 128,256
            --threads 1 --no-readme)
else
  $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'benchmarks/gpu.sh needs a CUDA GPU (DROPE_GPU_TINY=1 for a CPU rehearsal)')" || exit 1
  $PY -c "import bitsandbytes, accelerate" || { echo "benchmarks/gpu.sh needs bitsandbytes and accelerate (the 'quant' extra)"; exit 1; }
  MEM_ARGS=(--device cuda)
  NF4_ARGS=(--model llama2-7b-shaped --device cuda --n-texts 2 --seq-len 512 --seeds 3)
  RUN_ARGS=(--model llama2-7b-shaped --device cuda --n-texts 4 --seq-len 1024 --scaling-lengths 4096,8192)
fi
FAILED=()

step() {  # step LABEL BUDGET_SECONDS COMMAND...: run with the smaller of its budget and what is left
  local label=$1 budget=$(($2 * SCALE))
  shift 2
  local left=$((DEADLINE - SECONDS))
  local limit=$((budget < left ? budget : left))
  if ((limit < 20)); then
    echo "!! $label skipped: ${left} s left of the ${BUDGET} s budget"
    FAILED+=("$label (skipped)")
    return
  fi
  echo "== $label (at most ${limit} s) =="
  timeout "$limit" "$@"
  local rc=$?
  if ((rc == 124)); then
    echo "!! $label stopped after ${limit} s"
    FAILED+=("$label (timed out)")
  elif ((rc != 0)); then
    echo "!! $label failed (exit $rc)"
    FAILED+=("$label (exit $rc)")
  fi
}

step "[1/3] loading memory: 0.55B bf16 checkpoint, old vs lean loader, offload, bridge bf16 vs NF4" 150 \
  $PY benchmarks/memory.py "${MEM_ARGS[@]}" --out "$OUT/results-gpu-memory.json"
step "[2/3] the study's setup: Llama-2-7B-shaped pair in NF4 beside bf16 (load, detection, phase, disruption)" 170 \
  $PY benchmarks/quantized.py "${NF4_ARGS[@]}" --out "$OUT/results-gpu-nf4.json"
step "[3/3] Llama-2-shaped random bf16 pair: detection, phase, sinks, disruption (10 seeds), long inputs" 420 \
  $PY -m benchmarks.run "${RUN_ARGS[@]}" --cases detection,phase,sinks,disruption,scaling --seeds 10 \
    --scaling-texts 1 --repeat 1 --out "$OUT/results-gpu.json"
echo "wrote $OUT/results-gpu-memory.json, $OUT/results-gpu-nf4.json, $OUT/results-gpu.json (and, on the GPU, the README rows) in ${SECONDS} s"
if ((${#FAILED[@]})); then
  printf 'not complete: %s\n' "${FAILED[@]}"
  exit 1
fi
