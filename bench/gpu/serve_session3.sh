#!/usr/bin/env bash
# Served vs offline on one GPU (issue 13): the runtime daemon and the gateway under
# bench/serve_load.py at concurrency 256 (max 256 running) and 1,024 (max 1,024 running),
# each with a Poisson load near half its saturating rate, then the offline engine on the same
# requests. redis-server travels in .device-wheels/redis (with its libraries).
set -u
source bench/gpu/carried.sh
python3 -c "import opentelemetry.sdk, grpc_health, uvloop, redis; print('imports ok')"
for spec in "256 40" "1024 60"; do
  set -- $spec
  SEQS=$1 RATE=$2 LOW="" OUT=$OUT/serve$1 timeout ${SERVE_TIMEOUT:-200} \
    bash bench/serve_vs_offline.sh $1 128 128 > "$OUT/serve$1.txt" 2>&1
  echo "== concurrency $1, Poisson $2 req/s (rc $?)"
  grep -v "^|\|^$\|Writing" "$OUT/serve$1.txt" | tail -4
  for f in serve gateway offline; do
    echo "-- $f"; grep -E "^\| [0-9]|^\| llmserve" "$OUT/serve$1/$f.md" 2>/dev/null
  done
  rm -f "$OUT/serve$1/runtime.log.1"
done
