#!/usr/bin/env bash
# Fifth 2026-12-01 session, second device call (issue 13): one run of served vs offline at
# concurrency 1,024 and 256 (the daemon with max 1,024 running; offline peers with 1,024 and
# 256 running), Poisson at 60 req/s (under half of saturation) through the daemon and the
# gateway, with client CPU and latency percentiles.
set -u
source bench/gpu/carried.sh
SEQS=1024 RATE=60 LOW=256 OUT=$OUT/serve timeout 560 bash bench/serve_vs_offline.sh 1024 128 128 \
  > "$OUT/serve.txt" 2>&1
rc=$?; echo "serve rc $rc"; grep -v "^|\|^$\|Writing" "$OUT/serve.txt" | tail -4
[ $rc -ne 0 ] && tail -25 "$OUT/serve/runtime.log" "$OUT/serve/gateway.log" 2>/dev/null
for f in serve gateway offline offline_low; do
  echo "-- $f"; grep -E "^\| [0-9a-z]" "$OUT/serve/$f.md" 2>/dev/null | grep -v "^| load\|^| ---"
done
rm -f "$OUT"/serve/api-keys
