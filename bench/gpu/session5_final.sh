#!/usr/bin/env bash
# Fifth 2026-12-01 session, third device call. Issue 13: served vs offline in one run at
# concurrency 1,024 and 256 with the daemon warmed up by one unreported load and the offline
# peers best of 2 rounds, every load with its own prompts (a repeated load hits the prefix
# cache); Poisson 60 req/s through the daemon and the gateway. Issue 17: the
# structured-output rounds with the accepts on worker threads while the core resolves rows.
set -u
source bench/gpu/carried.sh
SEQS=1024 RATE=60 LOW=256 OUT=$OUT/serve timeout 330 bash bench/serve_vs_offline.sh 1024 128 128 \
  > "$OUT/serve.txt" 2>&1
rc=$?; echo "serve rc $rc"
[ $rc -ne 0 ] && tail -25 "$OUT/serve/runtime.log" "$OUT/serve/gateway.log" 2>/dev/null
grep -E "^Served|^\| [0-9]|^\| llmserve|^warm" "$OUT/serve.txt"
rm -f "$OUT"/serve/api-keys "$OUT"/serve/*.md
timeout 150 python3 bench/structured_speed.py --shape llama3-8b --rounds 3 \
  --tokenizer .device-wheels/tokenizers/smollm2 > "$OUT/structured.txt" 2>&1
echo "structured rc $?"; grep -E "^\| [0-9]|host|valid|Error" "$OUT/structured.txt" | tail -14
