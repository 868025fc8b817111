#!/usr/bin/env bash
# One device call (issue 11, multi-LoRA target): decode steps with adapter tokens replayed as
# CUDA graphs. 1) graph == eager (test_lora_graphs.py, gpu-marked) and the grouped kernels
# over the graphs' fixed tables; 2) if PEFT is importable, test_lora_parity.py, which on a
# GPU run with the LoRA graphs on; 3) bench/lora_throughput.py, base and 32 adapters in one
# run. Success: tests pass, the LoRA engine's line shows replays "with LoRA" > 0, and
# "Multi-LoRA runs at >= 80%". Under ~4 minutes.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD
PYTEST="python3 -m pytest -q -p no:cacheprovider --tb=short"
echo "== graph == eager, kernels over fixed tables"
timeout 90 $PYTEST tests/runtime_service/test_lora_graphs.py \
  tests/runtime_service/test_lora_graph_tables.py tests/runtime_service/test_lora_slots.py \
  > "$OUT/lora_graph_tests.txt" 2>&1
echo "rc $?"; grep -E "^E |passed|failed|error" "$OUT/lora_graph_tests.txt" | tail -8
if python3 -c "import peft" 2>/dev/null; then
  echo "== PEFT parity on the GPU (LoRA graphs on)"
  timeout 90 $PYTEST tests/runtime_service/test_lora_parity.py \
    -k "not smollm2" > "$OUT/lora_peft_tests.txt" 2>&1
  echo "rc $?"; grep -E "^E |passed|failed|error" "$OUT/lora_peft_tests.txt" | tail -8
else
  echo "== PEFT not installed here: PEFT parity tests skipped (they run on the CPU in CI)"
fi
echo "== throughput (Llama-3-8B shape, 256 x 128/128, 32 rank-16 adapters)"
timeout 200 python3 bench/lora_throughput.py --shape llama3-8b --num-adapters 32 --rank 16 \
  --num-requests 256 --input-len 128 --output-len 128 --peer-requests 0 \
  > "$OUT/lora_bench.txt" 2> "$OUT/lora_bench.err"
echo "rc $?"
grep -E "engine\] decode graphs|tok/s" "$OUT/lora_bench.err" | tail -6
grep -E "^\||Multi-LoRA" "$OUT/lora_bench.txt" | grep -v "^| ---"
tail -3 "$OUT/lora_bench.err"
