#!/usr/bin/env bash
set -u
export PYTHONPATH=$PWD
python3 -m pytest tests/runtime_service/test_lowbit_gemv.py -q -p no:cacheprovider 2>&1 | tail -1
python3 bench/engine_speed.py --rows single,throughput,long,mixed,sampler 2>&1 | grep -E "^\||^Device" | grep -v "^| ---\|^| row"
python3 bench/engine_speed.py --rows single,throughput,long --quantization fp8 2>&1 | grep -E "^\| (single|throughput|long)"
for q in int8 int4; do python3 bench/engine_speed.py --rows single --quantization $q 2>&1 | grep -E "^\| single"; done
