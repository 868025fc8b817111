#!/usr/bin/env bash
# Seventh session: the low-bit GEMV at one token with multiply-adds in registers (no 16-row
# MMA tile) against the MMA tile, per layer, then the fp8 and int8 single streams with it.
# Run: run(command="bash bench/gpu/session7_gemv.sh", carry=[".device-wheels"]).
set -u
source bench/gpu/carried.sh
timeout 60 python3 -m pytest -q -p no:cacheprovider --tb=short -m gpu \
  tests/runtime_service/test_lowbit_gemv.py > "$OUT/tests.txt" 2>&1
echo "tests rc $?"; grep -E "^E |passed|failed" "$OUT/tests.txt" | tail -5
timeout 50 python3 bench/lowbit_gemv.py --sweep --kinds fp8-fused,int8 --budget-s 1 \
  --dot-at-one-row > "$OUT/dot.txt" 2>&1
echo "dot rc $?"; grep -E "^\|" "$OUT/dot.txt"
timeout 100 python3 bench/lowbit_gemv.py --sweep --kinds fp8-fused,int8 --budget-s 40 \
  > "$OUT/fma.txt" 2>&1
echo "fma rc $?"; grep -E "^\||error" "$OUT/fma.txt"
for q in fp8 int8; do
  timeout 70 python3 bench/engine_speed.py --shape llama3-8b --quantization $q --rows single \
    > "$OUT/$q.txt" 2>&1
  echo "$q rc $?"; grep -E "^\| single|Error" "$OUT/$q.txt" | tail -1
done
