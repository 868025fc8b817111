#!/usr/bin/env bash
# Served vs offline throughput on one GPU, same workload: the runtime daemon serving a
# Llama-3-8B-shaped model (random bf16 weights) under bench/serve_load.py ($CLIENTS client
# processes, default 4), then the same load through the gateway (API key, session-less
# Generate; needs redis-server on PATH, else skipped), then the offline engine
# (bench/offline_throughput.py) on the same requests, with $SEQS and (if set) $LOW requests
# running at once. Reports go to $OUT (default ./bench-out).
# Usage: [SEQS=max running requests, default 256] [RATE=Poisson req/s, default 20; "" skips]
#   [LOW=a second, lower concurrency, default 64; empty skips it]
#   [WARMUP=1: one unreported load at full concurrency first, so the daemon's one-time costs
#    (first compiles of eager shapes) stay out of the figures; 0 skips it]
#   [ROUNDS=2: the offline engine runs this many times and keeps its fastest, as fair a
#    peer as the warmed-up daemon]
#   bash bench/serve_vs_offline.sh [num_requests] [input_len] [output_len]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-out}
N=${1:-256} IN=${2:-128} OUTLEN=${3:-128} CLIENTS=${CLIENTS:-4} SEQS=${SEQS:-256}
RATE=${RATE-20} LOW=${LOW-64}  # the Poisson rate (req/s) and the low concurrency ("" skips it)
WARMUP=${WARMUP:-1} ROUNDS=${ROUNDS:-2}
mkdir -p "$OUT"
wait_serving() {  # NAME PORT SECONDS PID: until health SERVING, else the log's tail and exit
  python3 -c "
import time, sys
from llmserve.processes import health_status
def alive():  # a process that exited stays a zombie until the script waits for it
    try:
        return open('/proc/$4/stat').read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False
deadline = time.time() + $3
while health_status('127.0.0.1:$2') != 1:
    if time.time() > deadline or not alive():
        print(open('$OUT/$1.log').read()[-3000:]); sys.exit('$1 not SERVING')
    time.sleep(1)"
}
MODEL=$(python3 -c "import sys; sys.path.insert(0, 'bench'); \
from offline_throughput import shaped_model_dir; print(shaped_model_dir('llama3-8b'))" | tail -1)
PORT=50052
python3 -m runtime_service --model-path "$MODEL" --load-format dummy --port $PORT \
  --max-num-seqs $SEQS --max-num-batched-tokens 8192 --served-model-name bench \
  --log-format text > "$OUT/runtime.log" 2>&1 &
RUNTIME=$! GATEWAY="" REDIS=""
trap 'kill $RUNTIME $GATEWAY $REDIS 2>/dev/null || true' EXIT
wait_serving runtime $PORT 300 $RUNTIME
LOAD="--num-requests $N --input-len $IN --output-len $OUTLEN --vocab 128000 --processes $CLIENTS"
COMMON="--target 127.0.0.1:$PORT $LOAD --report $OUT/serve.md"
SEED=0
load() {  # each load its own prompts: a repeated one would be served from the prefix cache
  SEED=$((SEED + 1)); python3 bench/serve_load.py --seed $SEED "$@"
}
if [ "$WARMUP" != 0 ]; then
  echo "warm-up load (not reported):"
  load --target 127.0.0.1:$PORT $LOAD --concurrency "$N"
fi
load $COMMON --concurrency "$N"
[ -n "$LOW" ] && load $COMMON --concurrency "$LOW"
[ -n "$RATE" ] && load $COMMON --rate "$RATE"
if command -v redis-server > /dev/null; then
  REDIS_PORT=6391 GW_PORT=50060 KEY=bench-key-0123456789abcdef
  redis-server --port $REDIS_PORT --save '' --appendonly no > "$OUT/redis.log" 2>&1 &
  REDIS=$!
  echo "bench:$KEY" > "$OUT/api-keys"
  python3 -m gateway --port $GW_PORT --redis redis://127.0.0.1:$REDIS_PORT \
    --runtime 127.0.0.1:$PORT --api-keys-file "$OUT/api-keys" --rate-limit-rps 0 \
    --auth-failure-rps 0 --log-format text > "$OUT/gateway.log" 2>&1 &
  GATEWAY=$!
  wait_serving gateway $GW_PORT 60 $GATEWAY
  sleep 3  # the gateway's first check of the runtime
  GW="--target 127.0.0.1:$GW_PORT --model bench --api-key $KEY $LOAD --report $OUT/gateway.md"
  load $GW --concurrency "$N"
  [ -n "$RATE" ] && load $GW --rate "$RATE"
  kill -TERM $GATEWAY; wait $GATEWAY || true
  kill $REDIS; wait $REDIS || true
  GATEWAY="" REDIS=""
else
  echo "redis-server not found: the gateway phase is skipped" | tee "$OUT/gateway.md"
fi
kill -TERM $RUNTIME; wait $RUNTIME || true
python3 bench/offline_throughput.py --shape llama3-8b --num-requests "$N" --input-len "$IN" \
  --output-len "$OUTLEN" --max-num-seqs "$SEQS" --peers none --rounds "$ROUNDS" \
  --report "$OUT/offline.md"
# the low concurrency's peer: the offline engine with as many requests running at once
if [ -n "$LOW" ]; then
  python3 bench/offline_throughput.py --shape llama3-8b --num-requests "$N" --input-len "$IN" \
    --output-len "$OUTLEN" --max-num-seqs "$LOW" --peers none --rounds "$ROUNDS" \
    --report "$OUT/offline_low.md"
fi
