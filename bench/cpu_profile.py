"""Where the engine's CPU step goes: bench/offline_throughput.py's CPU workload (SmolLM2,
32 x 64 -> 32) through the engine, timed per phase and under torch.profiler.

  python bench/cpu_profile.py                      # bfloat16 (the fast CPU path)
  python bench/cpu_profile.py --dtype float32 --rows 30

Prints: the wall time of the run without the profiler, split into the prefill step and the
decode steps; then the profiler's ops by self CPU time (the rows of one whole run), with the
count per layer per step, so that matmuls, norms, casts, the KV gather, sampling and the
Python host time between ops can be told apart.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--num-requests", type=int, default=32)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--rows", type=int, default=25, help="profiler table rows")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--prefill", action="store_true", help="profile the prefill step only")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from torch.profiler import ProfilerActivity, profile

    from llmserve.testing.smollm2 import hf_dir
    from runtime_service.engine.llm import LLM
    from runtime_service.engine.params import SamplingParams

    model = hf_dir(REPO / ".cache" / "models")
    llm = LLM(
        str(model),
        cpu_threads=torch.get_num_threads(),
        dtype=args.dtype,
        device="cpu",
        max_num_seqs=256,
        max_num_batched_tokens=8192,
        max_model_len=args.input_len + args.output_len + 16,
        enable_prefix_caching=False,
    )
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(100, 49052, (args.num_requests, args.input_len), generator=g).tolist()

    def params(n: int) -> SamplingParams:
        return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, detokenize=False)

    llm.generate(prompts[:4], params(8))  # warm-up
    # Phases: the prefill step alone (max_tokens=1), then the whole run.
    start = time.perf_counter()
    llm.generate(prompts, params(1))
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    llm.generate(prompts, params(args.output_len))
    total = time.perf_counter() - start
    decodes = args.output_len - 1
    print(
        f"{args.dtype}, {torch.get_num_threads()} threads: run {total:.2f} s "
        f"({args.num_requests * args.output_len / total:.0f} tok/s); prefill step "
        f"{prefill:.2f} s; decode {total - prefill:.2f} s = "
        f"{1000 * (total - prefill) / decodes:.1f} ms/step x {decodes}"
    )
    if args.no_profile:
        return
    steps = 1 if args.prefill else args.output_len
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        llm.generate(prompts, params(steps))
    events = prof.key_averages()
    whole = sum(e.self_cpu_time_total for e in events)
    layers = llm.engine.core.runner.model.config.num_layers
    print(f"profiled run: {whole / 1e6:.2f} s of self CPU time in ops")
    print(f"{'op':40} {'count':>7} {'/layer/step':>11} {'self s':>8} {'share':>6}")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.rows]:
        per = e.count / layers / steps
        print(
            f"{e.key[:40]:40} {e.count:7d} {per:11.2f} {e.self_cpu_time_total / 1e6:8.3f} "
            f"{e.self_cpu_time_total / whole:6.1%}"
        )


if __name__ == "__main__":
    main()
