#!/usr/bin/env bash
# Second device call of the session's end: the top-p kernel on the GPU (tests and tile sweep),
# structured output against unconstrained, then served vs offline (what time is left).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
pip install -q --no-deps --target /tmp/pylib .device-wheels/*.whl > "$OUT/pip.txt" 2>&1
export PYTHONPATH=/tmp/pylib:$PWD
timeout 60 python3 -m pytest tests/runtime_service/test_top_p_kernel.py tests/runtime_service/test_sampler.py \
  -q -p no:cacheprovider > "$OUT/pytest.txt" 2>&1; tail -2 "$OUT/pytest.txt"
timeout 50 python3 bench/top_p_kernel.py 2>&1 | tee "$OUT/top_p.txt"
timeout 90 python3 bench/structured_speed.py --shape llama3-8b > "$OUT/structured.txt" 2>&1
grep -v "rope_parameters" "$OUT/structured.txt" | tail -12
OUT=$OUT/serve timeout 150 bash bench/serve_vs_offline.sh 256 128 128 > "$OUT/serve.txt" 2>&1
tail -5 "$OUT/serve.txt"; cat "$OUT"/serve/*.md 2>/dev/null | grep -E "^\|" | head -30
