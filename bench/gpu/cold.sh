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
timeout 240 python3 bench/cold_start.py --shape llama3-8b --device cuda --dtype bfloat16 \
  --work "$WORK" --logs "$OUT" --report "$OUT/cold.md" 2> "$OUT/cold.stderr" || tail -40 "$OUT/cold.stderr"
grep -E "built and published|already in|SERVING after" "$OUT/cold.stderr"
# The weights reader against safetensors' own, same files, page cache warm, alternated twice.
timeout 60 python3 - "$WORK" <<'PY'
import glob, sys, time
from pathlib import Path
import torch
from safetensors.torch import load_file
from runtime_service.models.safetensors_stream import load_files_streamed
paths = sorted(Path(p) for p in glob.glob(f"{sys.argv[1]}/engine-cache/*/weights-*.safetensors"))
size = sum(p.stat().st_size for p in paths)
readers = {
    "safetensors load_file(device=cuda)": lambda: [load_file(p, device="cuda") for p in paths],
    "safetensors_stream (pinned, 4 files at once)": lambda: load_files_streamed(paths, torch.device("cuda")),
}
print("| reader | GB | s | GB/s |\n| --- | ---: | ---: | ---: |")
for name, read in [*readers.items(), *readers.items()]:
    torch.cuda.synchronize(); start = time.perf_counter()
    weights = read(); torch.cuda.synchronize(); s = time.perf_counter() - start
    print(f"| {name} | {size / 1e9:.2f} | {s:.2f} | {size / s / 1e9:.2f} |")
    del weights; torch.cuda.empty_cache()
PY
rm -rf "$WORK"
