#!/usr/bin/env bash
# Written in the sixth session (2026-12-02), which had no device time (61 s left): the first
# device call of the next session. Every gpu-marked test on the tree none of these ran on
# (dfe7429's shared engine preamble; the engine process's inbox thread, core_loop.ReadAhead;
# calls that cannot be cancelled; CPU-only weight packing, which a CUDA engine skips); then
# the sampler rows with the fifth session's two-pass top-k floor (issue 11: each <= 10% of a
# greedy step at 256 rows); then the top-k kernel at the larger tile (b8192 w16) once more.
# Run: run(command="bash bench/gpu/session6_next.sh", carry=[".device-wheels"]).
set -u
source bench/gpu/carried.sh
timeout 200 python3 -m pytest -q -p no:cacheprovider --tb=short -m gpu tests/runtime_service \
  > "$OUT/tests.txt" 2>&1
echo "tests rc $?"; grep -E "^E |passed|failed|error" "$OUT/tests.txt" | tail -12
timeout 200 python3 bench/engine_speed.py --shape llama3-8b --rows sampler \
  > "$OUT/sampler.txt" 2>&1
echo "sampler rc $?"; grep -E "^\||Error" "$OUT/sampler.txt" | tail -12
timeout 60 python3 bench/top_k_kernel.py --rows 256 > "$OUT/top_k.txt" 2>&1
echo "top_k rc $?"; grep -E "^\||Error" "$OUT/top_k.txt" | tail -6
