#!/usr/bin/env bash
# One device call (~3 min): the sampler's kernels on CUDA (tests at the engine's shape, the
# interpreter-run tests compiled for real), kernel timings (sort reference, threshold search,
# fused rejection draw), then the sampler rows of engine_speed against a greedy decode step.
set -u
export PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
timeout 300 python3 -m pytest tests/runtime_service/test_sample_kernel.py \
  tests/runtime_service/test_top_p_kernel.py tests/runtime_service/test_sampler.py \
  -q -p no:cacheprovider --tb=short 2>&1 | grep -E "^E |passed|failed|error" | head -20
# The engine on CUDA through the fused draw: seeded top-p/top-k batch invariance, async = sync.
timeout 240 python3 -m pytest tests/runtime_service/test_engine_behaviour.py \
  tests/runtime_service/test_async_scheduling.py -k "seeded or every_sampling" \
  -q -p no:cacheprovider --tb=short 2>&1 | grep -E "^E |passed|failed|error" | head -10
timeout 200 python3 bench/top_p_kernel.py --sweep 2>&1 | tee "$OUT/top_p_kernel.txt" | tail -40
timeout 300 python3 bench/engine_speed.py --rows sampler 2>&1 | tee "$OUT/sampler.txt" \
  | grep -E "^\||Greedy|ready" | tail -14
