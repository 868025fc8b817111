#!/usr/bin/env bash
# Seventh session (2026-12-02), second device call: every gpu-marked test on the trees no GPU
# has run (the sixth session's shared engine preamble, the engine process's inbox thread,
# calls that cannot be cancelled, CPU-only weight packing that a CUDA engine skips); then the
# int8 and int4 single streams and the top-k kernel alone.
# Run: run(command="bash bench/gpu/session7_check.sh", carry=[".device-wheels"]).
set -u
source bench/gpu/carried.sh
timeout 220 python3 -m pytest -q -p no:cacheprovider --tb=short -m gpu tests/runtime_service \
  > "$OUT/tests.txt" 2>&1
echo "tests rc $?"; grep -E "^E |passed|failed|error" "$OUT/tests.txt" | tail -12
for q in int8 int4; do
  timeout 90 python3 bench/engine_speed.py --shape llama3-8b --quantization $q --rows single \
    > "$OUT/$q.txt" 2>&1
  echo "$q rc $?"; grep -E "^\| single|Error" "$OUT/$q.txt" | tail -2
done
timeout 60 python3 bench/top_k_kernel.py --rows 256 > "$OUT/top_k.txt" 2>&1
echo "top_k rc $?"; grep -E "^\||Error" "$OUT/top_k.txt" | tail -6
