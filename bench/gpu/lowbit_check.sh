#!/usr/bin/env bash
# One device call: low-bit GEMV correctness, kernel timings, then single-stream per quantization.
set -u
export PYTHONPATH=$PWD
python3 -m pytest tests/runtime_service/test_lowbit_gemv.py tests/runtime_service/test_models.py -q -x -p no:cacheprovider -k "not smollm2 and not trained" 2>&1 | tail -3
python3 bench/lowbit_gemv.py --rows 1,16
for q in int8 int4 fp8; do
  python3 bench/engine_speed.py --rows single --quantization $q 2>&1 | grep -E "^\| single|ready" | tail -2
done
python3 bench/engine_speed.py --rows throughput --quantization fp8 2>&1 | grep -E "^\| throughput" | tail -1
