#!/usr/bin/env bash
# Seventh session (2026-12-02), first device call: issue 11's scorecard in one run. Every
# bf16 row of bench/engine_speed.py with transformers' generate (static batches) on the same
# prompts in the same process (the mixed row's ragged prompts left-padded, per-request output
# lengths batched longest first), the sampler rows with the two-pass top-k floor, then the
# fp8 engine's rows on the same machine.
# Run: run(command="bash bench/gpu/session7_scorecard.sh", carry=[".device-wheels"]).
set -u
source bench/gpu/carried.sh
timeout 420 python3 bench/engine_speed.py --shape llama3-8b \
  --rows single,throughput,long,mixed,sampler --peers hf-static \
  --peer-rows single,throughput,long,mixed --static-batch 256 > "$OUT/bf16.txt" 2>&1
echo "bf16 rc $?"; grep -E "^\||^- |^Device|^Greedy|Error" "$OUT/bf16.txt" | tail -30
timeout 150 python3 bench/engine_speed.py --shape llama3-8b --quantization fp8 \
  --rows single,throughput,long > "$OUT/fp8.txt" 2>&1
echo "fp8 rc $?"; grep -E "^\| [a-z]|^Device|Error" "$OUT/fp8.txt" | tail -6
