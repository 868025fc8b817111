#!/usr/bin/env bash
# The last device call of the third 2026-12-01 session, by priority: GPU checks of the
# sampling draw and of structured output under async scheduling; structured speed (issue
# 17); served vs offline with the gateway at concurrency 1,024 (issue 13); cold start of an
# 8B engine from a local store (issue 11); a short int4 tile search. Each part has its own
# timeout and writes to $OUT as it goes.
set -u
source bench/gpu/carried.sh
timeout 70 python3 -m pytest -q -p no:cacheprovider --tb=short \
  tests/runtime_service/test_sample_kernel.py::test_full_vocabulary_batch_on_cuda \
  tests/runtime_service/test_structured_async.py > "$OUT/tests.txt" 2>&1
echo "tests rc $?"; grep -E "^E |passed|failed|error" "$OUT/tests.txt" | tail -6
timeout 100 python3 bench/structured_speed.py --shape llama3-8b --report "$OUT/structured.md" \
  > "$OUT/structured.txt" 2>&1
echo "structured rc $?"; grep -E "^\| |ended early|throughput|Error" "$OUT/structured.txt" | tail -6
SEQS=1024 RATE=60 LOW="" OUT=$OUT/serve timeout 170 bash bench/serve_vs_offline.sh 1024 128 128 \
  > "$OUT/serve.txt" 2>&1
echo "serve rc $?"; grep -v "^|\|^$\|Writing" "$OUT/serve.txt" | tail -3
for f in serve gateway offline; do
  echo "-- $f"; grep -E "^\| [0-9]|^\| llmserve" "$OUT/serve/$f.md" 2>/dev/null
done
rm -f "$OUT"/serve/*.log.1
timeout 180 python3 bench/cold_start.py --shape llama3-8b --device cuda --dtype bfloat16 \
  --work /tmp/cold-start --logs "$OUT/cold" --report "$OUT/cold.md" > "$OUT/cold.txt" 2> "$OUT/cold.stderr"
echo "cold rc $?"; grep -E "^\|" "$OUT/cold.md" 2>/dev/null | head -30 || tail -20 "$OUT/cold.stderr"
grep -E "built and published|already in|SERVING after" "$OUT/cold.stderr" | tail -4
timeout 45 python3 bench/lowbit_gemv.py --sweep --kinds int4 --budget-s 25 > "$OUT/int4.txt" 2>&1
echo "int4 rc $?"; grep -E "^\|" "$OUT/int4.txt" | tail -6
