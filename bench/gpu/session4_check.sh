#!/usr/bin/env bash
# Fourth 2026-12-01 session, first device call: every gpu-marked test on the merged tree
# (fp32 greedy = transformers with graphs, bf16 logits, the full-vocabulary draw after the
# noise fix, structured output under async scheduling, LoRA graphs, low-bit GEMVs); the
# structured-output speed with the tiny and with SmolLM2's tokenizer (issue 17); the
# throughput row with profiles of a 16,384-token prefill step and of 1,024 decodes (issue 11).
set -u
source bench/gpu/carried.sh
timeout 240 python3 -m pytest -q -p no:cacheprovider --tb=short -m gpu tests/runtime_service \
  > "$OUT/tests.txt" 2>&1
echo "tests rc $?"; grep -E "^E |passed|failed|error" "$OUT/tests.txt" | tail -12
for tok in tiny smollm2; do
  extra=""; [ $tok = smollm2 ] && extra="--tokenizer .device-wheels/tokenizers/smollm2"
  timeout 110 python3 bench/structured_speed.py --shape llama3-8b $extra \
    --report "$OUT/structured_$tok.md" > "$OUT/structured_$tok.txt" 2>&1
  echo "structured $tok rc $?"
  grep -E "^\| [uj]|ended early|throughput|Error|tokenizer" "$OUT/structured_$tok.txt" | tail -5
done
timeout 150 python3 bench/engine_speed.py --rows throughput --profile p16:1024,1024:192 \
  > "$OUT/profile.txt" 2> "$OUT/profile.err"
echo "profile rc $?"; grep -E "^\| throughput|^--- profile" "$OUT/profile.txt"; tail -3 "$OUT/profile.err"
