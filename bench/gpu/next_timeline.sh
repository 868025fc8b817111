#!/usr/bin/env bash
# Written in the seventh session (2026-12-02), which spent its device time: the next device
# call for issue 11's throughput rows. The throughput row measured 7.9 s against a 6.3 s
# floor (docs/engine_speed.md, "Where each target stands"): 0.8 s of it is not yet
# attributed. The device's time line of the whole row (kernels by kind, gaps between them)
# says which of the eager prefill steps, decode attention or gaps it is; the mixed row too.
# Run: run(command="bash bench/gpu/next_timeline.sh", carry=[".device-wheels"]).
set -u
source bench/gpu/carried.sh
for row in throughput mixed; do
  timeout 250 python3 bench/device_timeline.py --shape llama3-8b --row $row > "$OUT/$row.txt" 2>&1
  echo "$row rc $?"; grep -E "^[a-z]+:|^\||Error" "$OUT/$row.txt" | head -30
done
