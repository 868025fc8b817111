#!/usr/bin/env bash
# The third 2026-12-01 session's second-to-last device call, with the gateway's HTTP and the
# builder's S3 modules carried as well: served vs offline with the gateway at concurrency
# 1,024 (issue 13), then the cold start of an 8B engine from a local store (issue 11).
set -u
source bench/gpu/carried.sh
python3 -c "import uvicorn, starlette, botocore; print('imports ok')"
SEQS=1024 RATE=60 LOW="" OUT=$OUT/serve timeout 165 bash bench/serve_vs_offline.sh 1024 128 128 \
  > "$OUT/serve.txt" 2>&1
rc=$?; echo "serve rc $rc"; grep -v "^|\|^$\|Writing" "$OUT/serve.txt" | tail -3
[ $rc -ne 0 ] && tail -25 "$OUT/serve/runtime.log" "$OUT/serve/gateway.log" 2>/dev/null
for f in serve gateway offline; do
  echo "-- $f"; grep -E "^\| [0-9]|^\| llmserve" "$OUT/serve/$f.md" 2>/dev/null
done
rm -f "$OUT"/serve/*.log "$OUT"/serve/api-keys
timeout 170 python3 bench/cold_start.py --shape llama3-8b --device cuda --dtype bfloat16 \
  --work /tmp/cold-start --logs "$OUT/cold" --report "$OUT/cold.md" > "$OUT/cold.txt" 2> "$OUT/cold.stderr"
echo "cold rc $?"; grep -E "^\|" "$OUT/cold.md" 2>/dev/null | head -30 || true
grep -E "built and published|already in|SERVING after|Error|error" "$OUT/cold.stderr" | tail -6
