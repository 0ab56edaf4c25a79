#!/usr/bin/env bash
# `make bench-gpu`: on one NVIDIA GPU, the ranking model alone (onnxruntime fp32 with and without IO
# binding, fp16, int8; 1k-16k rows per call) and the job's batched ranking (`streamrec bench` phase
# `batching`: batching off and on side by side, in-job model pairs/s), in under 8 minutes.
#
#   scripts/bench_gpu.sh [--provider cuda|cpu] [--out DIR]
#
# --provider cuda (the default) needs nvidia-smi and a CUDA onnxruntime; ranking.provider=cuda makes the
# job fail rather than rank on CPU, so every figure it writes is a GPU figure. Results: DIR (default
# docs/bench/gpu): job/results.json, model/model_bench.json, summary.md.
# --provider cpu is a smoke run of the same steps at toy sizes (default DIR bench-results/gpu-smoke): it
# checks the script on a machine without a GPU and claims nothing about GPUs (summary.md says so).
# Sizes can be overridden: BENCH_GPU_EVENTS, BENCH_GPU_PARALLELISM, BENCH_GPU_BATCH_SIZES, BENCH_GPU_WINDOW_S,
# BENCH_GPU_BATCH_ROWS, BENCH_GPU_BATCH_TIMEOUT_MS.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
PROVIDER=cuda
OUT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --provider) PROVIDER="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    *) echo "usage: $0 [--provider cuda|cpu] [--out DIR]" >&2; exit 2 ;;
  esac
done
START=$SECONDS
if [[ "$PROVIDER" == cuda ]]; then
  if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "bench-gpu: no NVIDIA GPU here (nvidia-smi). For a CPU smoke run of the script: $0 --provider cpu" >&2
    exit 2
  fi
  nvidia-smi -L
  OUT="${OUT:-docs/bench/gpu}"
  EVENTS="${BENCH_GPU_EVENTS:-200000}"; PAR="${BENCH_GPU_PARALLELISM:-8}"
  SIZES="${BENCH_GPU_BATCH_SIZES:-1000,2000,4000,8000,16000}"; WINDOW="${BENCH_GPU_WINDOW_S:-40}"; WARMUP=15
  ROWS="${BENCH_GPU_BATCH_ROWS:-16384}"; TIMEOUT="${BENCH_GPU_BATCH_TIMEOUT_MS:-50}"; TRAIN=30000
elif [[ "$PROVIDER" == cpu ]]; then
  OUT="${OUT:-bench-results/gpu-smoke}"
  EVENTS="${BENCH_GPU_EVENTS:-20000}"; PAR="${BENCH_GPU_PARALLELISM:-2}"
  SIZES="${BENCH_GPU_BATCH_SIZES:-1000,4000}"; WINDOW="${BENCH_GPU_WINDOW_S:-10}"; WARMUP=5
  ROWS="${BENCH_GPU_BATCH_ROWS:-2048}"; TIMEOUT="${BENCH_GPU_BATCH_TIMEOUT_MS:-20}"; TRAIN=6000
else
  echo "--provider must be cuda or cpu" >&2; exit 2
fi
mkdir -p "$OUT"
echo "bench-gpu: provider $PROVIDER, $EVENTS events, parallelism $PAR, batch_rows $ROWS, timeout ${TIMEOUT} ms -> $OUT"

# 1. The job, batching off and on (no paced tail: throughput and in-job model pairs/s), and the
#    per-event model ceiling; trains the bench model into $OUT/job/artifact first.
STREAMREC_RANKING_BATCH_ROWS="$ROWS" STREAMREC_RANKING_BATCH_TIMEOUT_MS="$TIMEOUT" \
  "$PY" -m streamrec.cli bench --phases model,batching --provider "$PROVIDER" --out "$OUT/job" \
  --events "$EVENTS" --users "$((EVENTS / 10))" --parallelisms "$PAR" --warmup-s "$WARMUP" --window-s "$WINDOW" \
  --batching-paced off --train-events "$TRAIN"
echo "bench-gpu: job done at $((SECONDS - START)) s"

# 2. The model alone on the same artifact: fp32 (IO binding off/on), fp16, int8 at 1k-16k rows per call.
"$PY" -m streamrec.cli bench-model --artifact "$OUT/job/artifact" --out "$OUT/model" --provider "$PROVIDER" \
  --batch-sizes "$SIZES" --repeats 50
echo "bench-gpu: model alone done at $((SECONDS - START)) s"

# 3. Side by side, with the provider each ran on.
"$PY" -m streamrec.lab.benchmark.gpu --job "$OUT/job/results.json" --model "$OUT/model/model_bench.json" --out "$OUT"
echo "bench-gpu: $((SECONDS - START)) s in all; $OUT/summary.md"
