#!/usr/bin/env bash
# One device call: low-bit GEMV correctness, kernel timings, then single-stream per quantization.
set -u
export PYTHONPATH=$PWD
python3 -m pytest tests/runtime_service/test_lowbit_gemv.py -q -p no:cacheprovider --tb=short 2>&1 | grep -E "^E |passed|failed" | head -12
python3 bench/lowbit_gemv.py --rows 1,16
for q in none int8 int4 fp8; do
  python3 bench/engine_speed.py --rows single --quantization $q 2>&1 | grep -E "^\| single" | tail -1
done
