#!/usr/bin/env bash
# The last device call of the second 2026-12-01 session: GPU checks of the new kernels and
# structured output, then engine speed with transformers in the same run, structured output
# against unconstrained, and served vs offline. Each part writes to $OUT as it goes.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
pip install -q --no-deps --target /tmp/pylib .device-wheels/*.whl > "$OUT/pip.txt" 2>&1
export PYTHONPATH=/tmp/pylib:$PWD
timeout 90 python3 -m pytest tests/runtime_service/test_top_p_kernel.py tests/runtime_service/test_sampler.py \
  tests/runtime_service/test_async_scheduling.py tests/runtime_service/test_lowbit_gemv.py \
  tests/runtime_service/test_structured_output.py -k "not smollm2 and (not structured or bad_constraints or shape_errors)" \
  -q -p no:cacheprovider > "$OUT/pytest.txt" 2>&1
tail -4 "$OUT/pytest.txt"
timeout 140 python3 bench/engine_speed.py --rows single,throughput,sampler --peers hf-static \
  --peer-rows single,throughput --static-batch 256 > "$OUT/engine.txt" 2>&1
grep -E "^\||^Device" "$OUT/engine.txt" | grep -v "^| ---\|^| row"
timeout 100 python3 bench/structured_speed.py --shape llama3-8b > "$OUT/structured.txt" 2>&1
tail -8 "$OUT/structured.txt"
OUT=$OUT/serve timeout 170 bash bench/serve_vs_offline.sh 256 128 128 > "$OUT/serve.txt" 2>&1
tail -30 "$OUT/serve.txt"; cat "$OUT"/serve/*.md 2>/dev/null | grep -E "^\||tok/s" | head -30
