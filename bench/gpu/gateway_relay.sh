#!/usr/bin/env bash
# The gateway's relay on an idle many-core host (issue 13; no GPU used): chunks per gateway
# CPU-second against the bare grpc.aio relay, coalescing off/on, one vs two gateway processes,
# and the bare relay and the gateway at 4 tokens per upstream chunk, with enough upstreams and
# client processes that the load side is not the limit. About 100 s of wall time.
# redis-server travels in .device-wheels/redis (with its libraries), as for serve_session3.sh.
set -u
source bench/gpu/carried.sh
echo "cores $(nproc), load $(cut -d' ' -f1-3 /proc/loadavg)"
timeout 60 python3 -m pytest -q tests/gateway/test_relay.py tests/gateway/test_coalesce.py \
  tests/gateway/test_idle.py 2>&1 | tail -2
# 1,024 streams, one chunk each every 20 ms: 51,200 chunks/s offered, more than one gateway
# process relays; 4 upstreams and 4 client processes so that they are not the limit. Six
# measurements of ~15 s each (2 s warm-up, 6 s windows).
PY=python3 CLIENTS=4 UPSTREAMS=4 DURATION=6 WARMUP=2 MULTI=4 OUT=$OUT \
  timeout 150 bash bench/gateway_relay_compare.sh 1 1024 20 >"$OUT/compare.txt" 2>&1
echo "compare rc $?"
grep -E "^\|" "$OUT/gateway_relay.md"
