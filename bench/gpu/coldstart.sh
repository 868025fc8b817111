#!/usr/bin/env bash
# One device call (issue 11, cold start): an 8B bf16 engine of random weights built through
# the builder into a fresh local store, then the runtime started on it three times
# (bench/cold_start.py): first-cold / restart-cold / restart-warm.
# What changed since the 38.3 s first-cold of the third session: the local store's engine is
# served in place (no copy into the runtime's cache; the weights hashed in the read that loads
# them), and the builder compiles the engine's Triton kernels on the GPU and packs them into the
# engine (kernels/triton), which the runtime seeds into its kernel cache before it compiles.
# Success: first-cold health SERVING <= 20 s, with "Triton kernels seeded" > 0 and the KV
# profiling and graph capture rows near their restart values (no compiles on the first start).
# Disk: 16 GB under $WORK (removed at the end). Wall: ~3-4 minutes.
set -u
source bench/gpu/carried.sh
WORK=${WORK:-/tmp/coldstart-$$}
df -h /tmp | tail -1
# GPU tests first: the streamed reader's digests from pinned buffers, and a tiny engine's
# packed kernels covering a start on a seeded cache (no new compile).
timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider --tb=short \
  tests/runtime_service/test_safetensors_stream.py tests/builder_service/test_kernel_warmup.py \
  2>&1 | grep -E "^E |passed|failed|error" | head -12
timeout 230 python3 bench/cold_start.py --shape llama3-8b --device cuda --dtype bfloat16 \
  --work "$WORK" --logs "$OUT/cold" --report "$OUT/cold.md" > "$OUT/cold.txt" 2> "$OUT/cold.stderr"
echo "cold rc $?"
grep -E "^\|" "$OUT/cold.md" 2>/dev/null | head -30
grep -E "keys packed|built and published|already in|SERVING after|Error|error" \
  "$OUT/cold.stderr" | tail -8
# Kernels the runtime compiled itself on top of the seeded ones (0: the engine had them all).
seeded=$(ls "$WORK/store/engines"/*/kernels/triton 2>/dev/null | wc -l)
now=$(find "$WORK/kernel-cache" -mindepth 1 -maxdepth 1 -type d ! -name '.*' 2>/dev/null | wc -l)
echo "kernel cache keys: $seeded in the engine, $now in the runtime's cache after the starts"
grep -hE "seeded|profiled in|captured" "$OUT"/cold/runtime-*.log 2>/dev/null | cut -c1-160
rm -rf "$WORK"
