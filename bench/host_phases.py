"""Where an engine step's host time goes: the offline engine on one workload, with the core's
phases timed (wall clock) and the time the host waits for the device's tokens counted apart.

  python bench/host_phases.py --shape llama3-8b                  # CUDA: 1,024 x 128 -> 128
  python bench/host_phases.py --model tiny --device cpu -n 256 --input-len 8 --output-len 32
  python bench/host_phases.py --shape llama3-8b --row mixed     # a row of bench/engine_speed.py

With async scheduling the host prepares step n+1 while the device runs step n, so the device
is the limit when `wait for tokens` takes a good share of each step and the host when it is
near zero. The workload runs twice (the first run also pays the process's one-time costs).
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.offline_throughput import SHAPES, device_name  # noqa: E402
from bench.structured_speed import model_dir  # noqa: E402

PHASES = (  # (label, owner path from the engine, method)
    ("schedule", "core.scheduler", "schedule"),
    ("prepare inputs", "core.runner.inputs", "prepare"),
    ("launch (prepare included)", "core.runner", "launch"),
    ("sample (queue)", "core.runner", "sample"),
    ("resolve tokens (wait included)", "core", "_resolve"),
    ("scheduler update", "core.scheduler", "update"),
    ("frontend: text and outputs", "processor", "process"),
    ("core.step", "core", "step"),
)


def instrument(engine, seconds: collections.Counter) -> None:
    """Wraps each phase's method on its instance (the class is untouched)."""
    for label, owner_path, name in PHASES:
        owner = engine
        for part in owner_path.split("."):
            owner = getattr(owner, part)
        method = getattr(owner, name)

        @functools.wraps(method)
        def timed(*args, _m=method, _label=label, **kwargs):
            start = time.perf_counter()
            try:
                return _m(*args, **kwargs)
            finally:
                seconds[_label] += time.perf_counter() - start
                seconds["calls: " + _label] += 1

        setattr(owner, name, timed)
    # The device wait alone: LaunchedStep.done.synchronize inside ModelRunner.fetch.
    runner = engine.core.runner
    fetch = runner.fetch

    def timed_fetch(step):
        if step.done is not None:
            start = time.perf_counter()
            step.done.synchronize()
            seconds["wait for tokens"] += time.perf_counter() - start
        return fetch(step)

    runner.fetch = timed_fetch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", default="llama3-8b", choices=sorted(SHAPES))
    parser.add_argument("--model", default="", help="a model directory, or 'tiny'")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("-n", "--num-requests", type=int, default=1024)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--max-num-batched-tokens", type=int, default=16384)
    parser.add_argument(
        "--row", default="", help="an engine_speed.py row (prompts and output lengths) instead"
    )
    parser.add_argument(
        "--tokenizer", type=Path, help="a directory with tokenizer.json (for a --shape)"
    )
    args = parser.parse_args()

    from runtime_service.engine.llm import LLM
    from runtime_service.engine.params import SamplingParams

    model = model_dir(args)
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    if args.row:
        from bench.engine_speed import workloads

        prompts, outs = workloads(vocab)[args.row]
    else:
        g = torch.Generator().manual_seed(0)
        prompts = torch.randint(
            100, vocab - 100, (args.num_requests, args.input_len), generator=g
        ).tolist()
        outs = [args.output_len] * len(prompts)
    llm = LLM(
        str(model),
        device=args.device,
        dtype=args.dtype,
        load_format="auto" if args.model else "dummy",
        max_num_seqs=max(args.num_requests, len(prompts)),
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=max(len(p) + n for p, n in zip(prompts, outs, strict=True)) + 16,
        enable_prefix_caching=False,
    )
    engine = llm.engine
    seconds: collections.Counter = collections.Counter()
    instrument(engine, seconds)
    params = [
        SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, detokenize=False) for n in outs
    ]
    llm.generate(prompts[:4], params[:4])  # warm-up
    print(
        f"{device_name(str(engine.core.info.device))}; torch {torch.__version__}; "
        f"{args.row or f'{args.num_requests} x {args.input_len} -> {args.output_len}'}; "
        "async scheduling "
        f"{'on' if engine.core.async_scheduling else 'off'}"
    )
    for run in (1, 2):
        seconds.clear()
        start = time.perf_counter()
        llm.generate(prompts, params)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
        n = int(seconds["calls: core.step"])
        tokens = sum(outs)
        print(f"\nrun {run}: {wall:.2f} s, {tokens / wall:,.0f} output tok/s, {n} steps "
              f"({wall / n * 1e3:.1f} ms a step)")  # fmt: skip
        print("| phase | ms per step | share of the wall time |")
        print("| --- | ---: | ---: |")
        for label, _, _ in PHASES:
            print(f"| {label} | {seconds[label] / n * 1e3:.2f} | {seconds[label] / wall:.1%} |")
        waited = seconds["wait for tokens"]
        print(f"| wait for tokens (in resolve) | {waited / n * 1e3:.2f} | {waited / wall:.1%} |")


if __name__ == "__main__":
    main()
