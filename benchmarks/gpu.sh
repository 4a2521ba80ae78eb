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
#
# `bash benchmarks/gpu.sh recalibrate` is a second, separate run (~9 min; one command each, to fit a device call):
#   the embedded SmolLM2-135M recalibrated on one GPU (bf16, sdpa) through the HF Trainer, exactly the user's
#   command line, with the training callback measuring held-out PPL, passkey and massive Q/K/V counts every
#   100 steps                                     -> benchmarks/results-gpu-recalibration.json (+ .png, + table)
#   It needs the embedded model converted and the built-in corpus under $DROPE_LENS_CACHE (`make setup`,
#   `make corpus`; carry them to an offline GPU machine). DROPE_GPU_RECAL_TOKENS sets the budget (default 24M
#   tokens ~ 733 steps of 32,768), DROPE_GPU_RUN the scratch run folder (checkpoints stay there, not in $OUT).
#   DROPE_GPU_TINY=1 rehearses it on the CPU: 3 steps of 2 x 128 tokens, tracked at step 0 and 3.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${DROPE_GPU_OUT:-benchmarks}
if [[ "${1:-}" == "recalibrate" ]]; then
  RUN=${DROPE_GPU_RUN:-${TMPDIR:-/tmp}/drope-gpu-recalibration}
  COMMON=(--dtype bfloat16 --attention sdpa --track-metrics ppl,massive,passkey --out "$RUN" --force)
  if [[ "${DROPE_GPU_TINY:-0}" == "1" ]]; then
    echo "== tiny CPU rehearsal of benchmarks/gpu.sh recalibrate =="
    RECAL=(--device cpu --seq-len 128 --batch-size 2 --max-steps 3 --warmup-steps 1 --save-every 3
           --heldout-blocks 8 --track-every 3)
    LIMIT=1500  # the embedded model on 2 CPU cores: three measurements take minutes
  else
    $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'benchmarks/gpu.sh recalibrate needs a CUDA GPU (DROPE_GPU_TINY=1 for a CPU rehearsal)')"
    RECAL=(--device cuda --seq-len 1024 --batch-size 16 --grad-accum 2 --lr 3e-4 --warmup-steps 50
           --max-tokens "${DROPE_GPU_RECAL_TOKENS:-24000000}" --save-every 200 --heldout-blocks 64 --track-every 100)
    LIMIT=540
  fi
  echo "== recalibration: embedded SmolLM2-135M, one device, bf16, sdpa, tracked during training =="
  set +e  # a timeout still leaves the checkpoints and the rows measured so far: summarise them
  timeout "$LIMIT" $PY -m drope_lens recalibrate "${RECAL[@]}" "${COMMON[@]}"
  echo "recalibrate exit code $?"
  set -e
  $PY - "$RUN" "$OUT/results-gpu-recalibration.json" "${RECAL[@]}" "${COMMON[@]}" <<'PYEOF'
import json, shutil, sys
from pathlib import Path

run, out = Path(sys.argv[1]), Path(sys.argv[2])
log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines() if line.strip()]
record = json.loads((run / "recalibrate.json").read_text())
live = json.loads((run / "track" / "during_training.json").read_text())
keep = ("ppl_heldout", "passkey_acc", "massive_q_total", "massive_k_total", "massive_v_total")
curve = [{k: r[k] for k in ("checkpoint", "step", "tokens", "metric", "value")} for r in live["rows"] if r["metric"] in keep]
result = {
    "command": "python -m drope_lens recalibrate " + " ".join(sys.argv[3:]),
    "launch": record["launch"],
    "recipe": record["recipe"],
    "steps": log[-1]["step"] if log else 0,
    "tokens": log[-1]["tokens"] if log else 0,
    "tokens_per_s": log[-1]["tokens_per_s"] if log else None,  # training only: tracking time left out
    "wall_s": log[-1]["wall_s"] if log else None,
    "loss_first_last": [log[0]["loss"], log[-1]["loss"]] if log else None,
    "curve": curve,
}
out.write_text(json.dumps(result, indent=2))
png = run / "track" / "during_training.png"
if png.exists():
    shutil.copy(png, out.with_suffix(".png"))
names = [p["name"] for p in live["checkpoints"]]
table = {(r["checkpoint"], r["metric"]): r["value"] for r in curve}
tokens = {p["name"]: p["tokens"] for p in live["checkpoints"]}
print(f"{result['steps']} steps, {result['tokens']:,} tokens, {result['tokens_per_s']} tokens/s ({record['launch']['device']})")
print("| metric | " + " | ".join("RoPE" if n == "rope" else f"{tokens[n]:,}" for n in names) + " |")
print("|---|" + "---|" * len(names))
for m in keep:
    cells = [table.get((n, m)) for n in names]
    print(f"| {m} | " + " | ".join("" if v is None else f"{v:.4g}" for v in cells) + " |")
print(f"wrote {out}")
PYEOF
  exit 0
fi
set +e  # each step below is bounded and reported on its own; the script exits non-zero if one fails
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
