#!/usr/bin/env bash
# Mixed-batch CUDA graphs (third 2026-12-01 session): the GPU tests of graphs against eager
# and transformers, then engine speed (bf16, every row) with the graph replays per row.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD
timeout 150 python3 -m pytest tests/runtime_service/test_step_graphs.py \
  tests/runtime_service/test_triton_attention.py tests/runtime_service/test_gpu_precision.py \
  tests/runtime_service/test_engine_parity.py -k "not smollm2" -q -p no:cacheprovider \
  > "$OUT/pytest.txt" 2>&1
tail -3 "$OUT/pytest.txt"
timeout 200 python3 bench/engine_speed.py --rows single,throughput,long,mixed \
  > "$OUT/engine.txt" 2> "$OUT/engine.err"
grep -E "^\||^Device|engine ready" "$OUT/engine.txt" | grep -v "^| ---\|^| row"
grep "graph replays\|captured" "$OUT/engine.err"
