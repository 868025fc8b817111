#!/usr/bin/env bash
# Fifth 2026-12-01 session, last device call (~2 minutes of budget left): every gpu-marked
# test on the merged tree (accepts overlapping the core's row loop, the checked streamed
# reader shared with tensor-parallel ranks, the two-pass top-k floor, the CPU bf16 branch);
# then the top-k floor's kernel alone at 256 rows x 128,256 against torch.topk.
set -u
source bench/gpu/carried.sh
timeout 140 python3 -m pytest -q -p no:cacheprovider --tb=short -m gpu tests/runtime_service \
  > "$OUT/tests.txt" 2>&1
echo "tests rc $?"; grep -E "^E |passed|failed|error" "$OUT/tests.txt" | tail -12
timeout 40 python3 bench/top_k_kernel.py --rows 256 > "$OUT/top_k.txt" 2>&1
echo "top_k rc $?"; grep -E "^\||Error" "$OUT/top_k.txt" | tail -6
