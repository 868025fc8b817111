#!/usr/bin/env bash
# Served vs offline on one GPU (issue 13): runtime daemon and gateway under bench/serve_load.py
# at concurrency 256 (max 256 running) and 1,024 (max 1,024 running), then the offline engine
# on the same requests. redis-server travels in .device-wheels/redis (with its libraries).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
pip install -q --no-deps --target /tmp/pylib .device-wheels/*.whl > "$OUT/pip.txt" 2>&1
export PYTHONPATH=/tmp/pylib:$PWD PATH=$PWD/.device-wheels/redis:$PATH
export LD_LIBRARY_PATH=$PWD/.device-wheels/redis:${LD_LIBRARY_PATH:-}
redis-server --version || true
python3 -c "import opentelemetry.sdk, grpc_health, uvloop; print('imports ok')"
for n in 256 1024; do
  SEQS=$n OUT=$OUT/serve$n timeout 280 bash bench/serve_vs_offline.sh $n 128 128 > "$OUT/serve$n.txt" 2>&1
  echo "== concurrency $n (rc $?)"; tail -5 "$OUT/serve$n.txt"
  cat "$OUT"/serve$n/*.md 2>/dev/null | grep -E "^\|" | grep -v "^| ---"
done
