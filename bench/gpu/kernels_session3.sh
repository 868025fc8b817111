#!/usr/bin/env bash
# Third 2026-12-01 session, one device call for the new kernels (trimmed from topp.sh,
# lowbit.sh and lora.sh to fit the session's device time): GPU tests of the fused sampling
# draw, the low-bit GEMVs and the LoRA graphs; the sampler's shares of a greedy step; the
# low-bit layers; single stream per quantization; multi-LoRA against base.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD
timeout 170 python3 -m pytest -q -p no:cacheprovider --tb=short \
  tests/runtime_service/test_sample_kernel.py tests/runtime_service/test_top_p_kernel.py \
  tests/runtime_service/test_sampler.py tests/runtime_service/test_lowbit_gemv.py \
  tests/runtime_service/test_lora_graphs.py > "$OUT/tests.txt" 2>&1
echo "tests rc $?"; grep -E "^E |passed|failed|error" "$OUT/tests.txt" | tail -12
timeout 60 python3 bench/top_p_kernel.py > "$OUT/top_p_kernel.txt" 2>&1; tail -12 "$OUT/top_p_kernel.txt"
timeout 60 python3 bench/lowbit_gemv.py --rows 1,16 > "$OUT/layers.txt" 2>&1
grep -E "^\||Error" "$OUT/layers.txt" | tail -16
timeout 100 python3 bench/engine_speed.py --rows single,sampler > "$OUT/bf16.txt" 2>&1
grep -E "^\||ready" "$OUT/bf16.txt" | grep -v "^| ---" | tail -16
for q in fp8 int8 int4; do
  timeout 80 python3 bench/engine_speed.py --rows single --quantization $q --max-num-seqs 16 \
    > "$OUT/single_$q.txt" 2>&1
  echo "$q: $(grep -E '^\| single' "$OUT/single_$q.txt" | tail -1)"; grep -E "Error" "$OUT/single_$q.txt" | tail -2
done
timeout 170 python3 bench/lora_throughput.py --shape llama3-8b --num-adapters 32 --rank 16 \
  --num-requests 256 --input-len 128 --output-len 128 --peer-requests 0 \
  > "$OUT/lora_bench.txt" 2> "$OUT/lora_bench.err"
echo "lora rc $?"; grep -E "engine\] decode graphs" "$OUT/lora_bench.err" | tail -2
grep -E "^\||Multi-LoRA" "$OUT/lora_bench.txt" | grep -v "^| ---"; tail -2 "$OUT/lora_bench.err"
