#!/usr/bin/env bash
# Fourth 2026-12-01 session, third device call, on the tree with the sampler and cold-start
# branches merged: the sampler's GPU tests and shares (bench/gpu/sampler.sh), the host phases
# of the throughput workload (bench/host_phases.py), then the cold start
# (bench/gpu/coldstart.sh). Each writes under its own $OUT subdirectory.
set -u
OUT=${OUT:-/tmp/out}
echo "== sampler"; OUT=$OUT/sampler bash bench/gpu/sampler.sh
echo "== host phases"
source bench/gpu/carried.sh
timeout 110 python3 bench/host_phases.py --shape llama3-8b > "$OUT/host_phases.txt" 2>&1
echo "host phases rc $?"; grep -E "^run|^\| [a-z]|^NVIDIA" "$OUT/host_phases.txt"
echo "== cold start"; OUT=$OUT/cold bash bench/gpu/coldstart.sh
