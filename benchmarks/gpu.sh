#!/usr/bin/env bash
# One short GPU run (one CUDA GPU, no network; ~10 min on an H100/H200 incl. model construction):
#   1. loading memory: a 0.55B bf16 checkpoint on disk, load_hooked / load_pair old vs lean, offload
#      (peak RSS and CUDA peak memory)            -> benchmarks/results-gpu-memory.json
#   2. a Llama-2-7B-shaped random bf16 pair built in memory: detection, phase, sinks, disruption with
#      10 seeds, long inputs (4k, 8k tokens), each against bare HF forwards
#                                                 -> benchmarks/results-gpu.json + README rows
# DROPE_GPU_TINY=1: the same script on the CPU with tiny shapes (what the tests run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${DROPE_GPU_OUT:-benchmarks}
if [[ "${DROPE_GPU_TINY:-0}" == "1" ]]; then
  # the GPU run's own commands and code path (random tokenizer-less Llama-2-shaped bf16 pair), tiny shapes
  echo "== tiny CPU rehearsal of benchmarks/gpu.sh =="
  MEM_ARGS=(--tiny --device cpu)
  RUN_ARGS=(--model llama2-shaped-tiny --device cpu --n-texts 2 --seq-len 64 --scaling-lengths 128,256
            --threads 1 --no-readme)
else
  $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'benchmarks/gpu.sh needs a CUDA GPU (DROPE_GPU_TINY=1 for a CPU rehearsal)')"
  MEM_ARGS=(--device cuda)
  RUN_ARGS=(--model llama2-7b-shaped --device cuda --n-texts 4 --seq-len 1024 --scaling-lengths 4096,8192)
fi
echo "== [1/2] loading memory: Llama-shaped bf16 checkpoint on disk, old vs lean loader, offload =="
timeout 240 $PY benchmarks/memory.py "${MEM_ARGS[@]}" --out "$OUT/results-gpu-memory.json"
echo "== [2/2] Llama-2-shaped random bf16 pair: detection, phase, sinks, disruption (10 seeds), long inputs =="
timeout 420 $PY -m benchmarks.run "${RUN_ARGS[@]}" --cases detection,phase,sinks,disruption,scaling --seeds 10 \
    --scaling-texts 1 --repeat 1 --out "$OUT/results-gpu.json"
echo "wrote $OUT/results-gpu.json, $OUT/results-gpu-memory.json (and, on the GPU, the README rows)"
