#!/usr/bin/env bash
# Fourth 2026-12-01 session, a CPU-only check on the GPU host's 16 cores (its last ~2 minutes
# of device time): does splitting the matchers' accepts over threads pay there? The engine
# measured 3.8 ms of accepts a step at 256 rows with 8 threads (structured output, issue 17).
set -u
source bench/gpu/carried.sh
timeout 80 python3 bench/grammar_host.py --tokenizer .device-wheels/tokenizers/smollm2 \
  --steps 20 --threads 1,2,4,8,1 2>&1 | grep -v Warn
