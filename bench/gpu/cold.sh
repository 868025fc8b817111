#!/usr/bin/env bash
# One device call: cold start of a Llama-3-8B-shaped bf16 engine (random weights built through
# the builder into a local store) to health SERVING, three starts (bench/cold_start.py):
# first-cold (empty runtime cache, engine files out of the page cache, empty Triton cache),
# restart-cold (cached copy re-verified, files out of the page cache), restart-warm.
# Success: SERVING <= 20 s on first-cold (that is the issue's cold figure); the load's GB/s.
# Disk: 16 GB in the store + 16 GB in the runtime's cache copy = 32 GB under $WORK (removed at
# the end). Wall: build ~30-60 s, each start 10-40 s; under 5 minutes.
set -u
export PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}
WORK=${WORK:-/tmp/cold-start}
mkdir -p "$OUT"
df -h "$(dirname "$WORK")" | tail -1
timeout 60 python3 -m pytest tests/runtime_service/test_safetensors_stream.py -q \
  -p no:cacheprovider --tb=short 2>&1 | grep -E "^E |passed|failed" | head -12
timeout 270 python3 bench/cold_start.py --shape llama3-8b --device cuda --dtype bfloat16 \
  --work "$WORK" --logs "$OUT" --report "$OUT/cold.md" 2> "$OUT/cold.stderr" || tail -40 "$OUT/cold.stderr"
grep -E "built and published|already in|SERVING after" "$OUT/cold.stderr"
rm -rf "$WORK"
