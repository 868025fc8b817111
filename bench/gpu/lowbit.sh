#!/usr/bin/env bash
# Low-bit GEMV, split-K for int8/fp8 (issue 11): GPU correctness, old vs new kernel per layer,
# then single stream per quantization with the ratio to bf16. About 5 minutes on one H200.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD
echo "== tests (gpu: bf16 int4 magic, fp8 tiles, split-K, Linear small vs large batch)"
timeout 240 python3 -m pytest tests/runtime_service/test_lowbit_gemv.py -q -p no:cacheprovider \
  --tb=short 2>&1 | grep -E "^E |passed|failed|error" | head -15
echo "== per layer, one token, graph-replayed: old kernel, new with CONFIGS, best of the search"
timeout 180 python3 bench/lowbit_gemv.py --sweep --budget-s 60 2>&1 | tee "$OUT/sweep.txt" \
  | grep -E "^\||[Ee]rror" | tail -30
echo "== per layer at 1 and 16 tokens (new kernel, CONFIGS)"
timeout 90 python3 bench/lowbit_gemv.py --rows 1,16 2>&1 | tee "$OUT/layers.txt" | grep -E "^\||Error"
echo "== single stream (128 in -> 512 out), tok/s and ratio to bf16"
base=""
for q in none fp8 int8 int4; do
  line=$(timeout 150 python3 bench/engine_speed.py --rows single --quantization $q \
    --max-num-seqs 16 2>&1 | tee "$OUT/single_$q.txt" | grep -E "^\| single" | tail -1)
  rate=$(echo "$line" | awk -F'|' '{gsub(/[ ,]/, "", $7); print $7}')
  if [ -z "$rate" ]; then echo "$q: no result (see $OUT/single_$q.txt)"; tail -3 "$OUT/single_$q.txt"; continue; fi
  [ "$q" = none ] && base=$rate
  ratio=$([ -n "$base" ] && python3 -c "print(f'{$rate / $base:.2f}x bf16')")
  echo "$q: $rate tok/s  $ratio"
done
