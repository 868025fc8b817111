#!/usr/bin/env bash
# Fifth 2026-12-01 session, first device call: every gpu-marked test on the tree that the
# fourth session's later changes left unchecked on the GPU (block tables as id lists, the
# allocate_slots fast path, the sampler branch, the structured accept early return, the
# in-place manifest digest check); whether threaded grammar accepts pay on the 16-core GPU
# host (bench/grammar_host.py); the structured-output rounds as the baseline for issue 17.
set -u
source bench/gpu/carried.sh
timeout 270 python3 -m pytest -q -p no:cacheprovider --tb=short -m gpu tests/runtime_service \
  > "$OUT/tests.txt" 2>&1
echo "tests rc $?"; grep -E "^E |passed|failed|error" "$OUT/tests.txt" | tail -12
timeout 80 python3 bench/grammar_host.py --tokenizer .device-wheels/tokenizers/smollm2 \
  --steps 20 --threads 1,2,4,8,1 > "$OUT/grammar_host.txt" 2>&1
echo "grammar_host rc $?"; grep -v Warn "$OUT/grammar_host.txt" | tail -12
timeout 170 python3 bench/structured_speed.py --shape llama3-8b --rounds 3 \
  --tokenizer .device-wheels/tokenizers/smollm2 --report "$OUT/structured.md" \
  > "$OUT/structured.txt" 2>&1
echo "structured rc $?"; grep -E "^\| |host|valid|Error" "$OUT/structured.txt" | tail -14
