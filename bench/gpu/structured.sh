#!/usr/bin/env bash
# One device call: structured output under async scheduling on CUDA (issue 17's speed target).
# 1. Tests without SmolLM2 (not on the device machine): async on vs off give the same tokens
#    for a mixed constrained/free batch on CPU and on CUDA (test_structured_async.py), grammars
#    end at the tokenizer's EOS and the request's stop tokens, constraints on LoRA adapters.
# 2. bench/structured_speed.py --shape llama3-8b: 256 requests, 128 in / 128 out, each under a
#    JSON Schema, against the same requests unconstrained, async scheduling on (the CUDA
#    default). Success: "JSON Schema throughput" >= 90% and 256/256 outputs accepted whole.
# Both parts together stay under 4 minutes (pytest 130 s, bench 110 s at most).
set -u
source bench/gpu/carried.sh
timeout 130 python3 -m pytest tests/runtime_service/test_structured_async.py \
  tests/runtime_service/test_structured_output.py -k "async or stop_tokens or lora or shape_errors" \
  -q -p no:cacheprovider > "$OUT/pytest.txt" 2>&1
echo "pytest rc=$?"; grep -E "passed|failed|error|FAILED|Error" "$OUT/pytest.txt" | tail -8
timeout 110 python3 bench/structured_speed.py --shape llama3-8b --report "$OUT/structured.md" \
  > "$OUT/structured.txt" 2>&1
echo "bench rc=$?"; grep -E "^\| |ended early|JSON Schema throughput|Error" "$OUT/structured.txt" | tail -8
