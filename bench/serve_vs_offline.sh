#!/usr/bin/env bash
# Served vs offline throughput on one GPU, same workload: the runtime daemon serving a
# Llama-3-8B-shaped model (random bf16 weights) under bench/serve_load.py, then the offline
# engine (bench/offline_throughput.py) on the same requests. Reports go to $OUT (default
# ./bench-out). Usage: bash bench/serve_vs_offline.sh [num_requests] [input_len] [output_len]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-out}
N=${1:-256} IN=${2:-128} OUTLEN=${3:-128}
mkdir -p "$OUT"
MODEL=$(python3 -c "import sys; sys.path.insert(0, 'bench'); \
from offline_throughput import shaped_model_dir; print(shaped_model_dir('llama3-8b'))")
PORT=50052
python3 -m runtime_service --model-path "$MODEL" --load-format dummy --port $PORT \
  --max-num-seqs 256 --max-num-batched-tokens 8192 --log-format text > "$OUT/runtime.log" 2>&1 &
RUNTIME=$!
trap 'kill $RUNTIME 2>/dev/null || true' EXIT
python3 -c "
import time, sys
from llmserve.processes import health_status
deadline = time.time() + 300
while health_status('127.0.0.1:$PORT') != 1:
    if time.time() > deadline: sys.exit('runtime not SERVING')
    time.sleep(1)"
COMMON="--target 127.0.0.1:$PORT --num-requests $N --input-len $IN --output-len $OUTLEN --vocab 128000 --report $OUT/serve.md"
python3 bench/serve_load.py $COMMON --concurrency "$N"
python3 bench/serve_load.py $COMMON --concurrency 64
python3 bench/serve_load.py $COMMON --rate 20
kill -TERM $RUNTIME; wait $RUNTIME || true
python3 bench/offline_throughput.py --shape llama3-8b --num-requests "$N" --input-len "$IN" \
  --output-len "$OUTLEN" --peers none --report "$OUT/offline.md"
