#!/usr/bin/env bash
# One device call: async scheduling correctness on CUDA, then speed with it on and off.
set -u
export PYTHONPATH=$PWD
python3 -m pytest tests/runtime_service/test_async_scheduling.py tests/runtime_service/test_engine_parity.py tests/runtime_service/test_gpu_precision.py -q -x -p no:cacheprovider -k "not smollm2 and not trained" 2>&1 | tail -5
python3 bench/engine_speed.py --rows single,throughput,mixed 2>&1 | grep -E "^\||ready" | tail -12
python3 bench/engine_speed.py --rows single,throughput --no-async-scheduling 2>&1 | grep -E "^\||ready" | tail -6
