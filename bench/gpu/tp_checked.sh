#!/usr/bin/env bash
# Checked tensor-parallel loads (branch tp-checked): the streamed safetensors reader, whose
# chunk loop the GPU load path now shares with the ranks' host reader, still loads and hashes
# onto the GPU (gpu-marked test), and the checked read's tests pass; then, on the 16-core host,
# a rank's checked read (iter_checked, 1/4/8 files at once) against what rank 0 did before
# (verify_files, then safetensors' mmap read): 8 files x 512 MB in the page cache.
set -u
source bench/gpu/carried.sh
timeout 120 python3 -m pytest -q -p no:cacheprovider --tb=short \
  tests/runtime_service/test_safetensors_stream.py tests/runtime_service/test_checked_read.py \
  > "$OUT/tests.txt" 2>&1
echo "tests rc $?"; grep -E "^E |passed|failed|error" "$OUT/tests.txt" | tail -8
timeout 150 python3 bench/tp_checked_read.py --files 8 --mb 512 --repeats 3 --at-once 1,4,8 \
  > "$OUT/tp_checked_read.txt" 2>&1
echo "tp_checked_read rc $?"; tail -8 "$OUT/tp_checked_read.txt"
