#!/usr/bin/env bash
# Fourth 2026-12-01 session, last device call (~6 minutes of budget left): the sampler tests
# that ran CPU tensors into kernels on the GPU (now on the device), structured output in three
# interleaved rounds with SmolLM2's tokenizer (issue 17), served vs offline with the gateway
# at concurrency 1,024 in one run without the Poisson rows (issue 13), then the sampler's
# shares with the grouped top-k search back on CUDA (issue 11).
set -u
source bench/gpu/carried.sh
timeout 60 python3 -m pytest -q -p no:cacheprovider --tb=short \
  tests/runtime_service/test_sampling_batch.py tests/runtime_service/test_top_k_kernel.py \
  > "$OUT/tests.txt" 2>&1
echo "tests rc $?"; grep -E "^E |passed|failed|error" "$OUT/tests.txt" | tail -6
timeout 130 python3 bench/structured_speed.py --shape llama3-8b --rounds 3 \
  --tokenizer .device-wheels/tokenizers/smollm2 --report "$OUT/structured.md" \
  > "$OUT/structured.txt" 2>&1
echo "structured rc $?"; grep -E "^\| [0-9]|ended early|throughput|Error" "$OUT/structured.txt"
SEQS=1024 RATE="" LOW="" OUT=$OUT/serve timeout 200 bash bench/serve_vs_offline.sh 1024 128 128 \
  > "$OUT/serve.txt" 2>&1
rc=$?; echo "serve rc $rc"; grep -v "^|\|^$\|Writing" "$OUT/serve.txt" | tail -3
for f in serve gateway offline; do
  echo "-- $f"; grep -E "^\| [0-9]|^\| llmserve|^\| c" "$OUT/serve/$f.md" 2>/dev/null
done
rm -f "$OUT"/serve/api-keys
timeout 90 python3 bench/engine_speed.py --rows sampler > "$OUT/sampler.txt" 2>&1
echo "sampler rc $?"; grep -E "^\| [a-z]|Greedy" "$OUT/sampler.txt" | tail -10
