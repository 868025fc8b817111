#!/usr/bin/env bash
# Fourth 2026-12-01 session, second device call: served vs offline with the gateway at
# concurrency 1,024 in one run (issue 13; the runtime daemon's log tail if it fails to
# start); a profile of 1,024 decode-only steps (issue 11's throughput row); structured output
# in interleaved rounds with SmolLM2's tokenizer (issue 17).
set -u
source bench/gpu/carried.sh
SEQS=1024 RATE=60 LOW="" OUT=$OUT/serve timeout 420 bash bench/serve_vs_offline.sh 1024 128 128 \
  > "$OUT/serve.txt" 2>&1
rc=$?; echo "serve rc $rc"; grep -v "^|\|^$\|Writing" "$OUT/serve.txt" | tail -3
[ $rc -ne 0 ] && tail -25 "$OUT/serve/runtime.log" "$OUT/serve/gateway.log" 2>/dev/null
for f in serve gateway offline; do
  echo "-- $f"; grep -E "^\| [0-9]|^\| llmserve" "$OUT/serve/$f.md" 2>/dev/null
done
rm -f "$OUT"/serve/api-keys
timeout 120 python3 bench/engine_speed.py --rows single --profile 1024:128 \
  > "$OUT/profile.txt" 2> "$OUT/profile.err"
echo "profile rc $?"; grep -E "^\| single|^--- profile" "$OUT/profile.txt"; tail -2 "$OUT/profile.err"
timeout 130 python3 bench/structured_speed.py --shape llama3-8b \
  --tokenizer .device-wheels/tokenizers/smollm2 --report "$OUT/structured.md" \
  > "$OUT/structured.txt" 2>&1
echo "structured rc $?"; grep -E "^\| [0-9]|ended early|throughput|Error" "$OUT/structured.txt" | tail -6
