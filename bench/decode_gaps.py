"""Where the GPU idles during single-stream decode: one request through the offline engine
under torch.profiler, the device's kernels and copies laid on a time line, and every gap
between them summed by the pair of operations around it.

  python bench/decode_gaps.py --shape llama3-8b [--tokens 64]

A step's wall time is its GPU work plus the gaps; with async scheduling and CUDA graphs the
gaps are what the host does not hide (prepare, launches, the token's copy back).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.offline_throughput import shaped_model_dir  # noqa: E402


def device_events(trace: Path) -> list[tuple[float, float, str]]:
    """(start µs, end µs, name) of every kernel, copy and set on the device, by start."""
    events = json.loads(trace.read_text())["traceEvents"]
    out = [
        (e["ts"], e["ts"] + e.get("dur", 0), e["name"])
        for e in events
        if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")
    ]
    return sorted(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", default="llama3-8b")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--min-gap-us", type=float, default=3.0)
    args = parser.parse_args()

    from torch.profiler import ProfilerActivity, profile

    from runtime_service.engine.llm import LLM
    from runtime_service.engine.params import SamplingParams

    llm = LLM(
        str(shaped_model_dir(args.shape)),
        dtype="bfloat16",
        load_format="dummy",
        max_model_len=4096,
        enable_prefix_caching=False,
    )
    prompt = list(range(1000, 1128))
    params = SamplingParams(
        temperature=0, max_tokens=args.tokens, ignore_eos=True, detokenize=False
    )
    for _ in range(2):
        llm.generate([prompt], [params])  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    llm.generate([prompt], [params])
    torch.cuda.synchronize()
    plain = time.perf_counter() - start
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        llm.generate([prompt], [params])
        torch.cuda.synchronize()
    trace = Path(tempfile.mkdtemp()) / "trace.json"
    prof.export_chrome_trace(str(trace))
    events = device_events(trace)
    busy = sum(end - start for start, end, _ in events)  # kernels of one stream do not overlap
    span = events[-1][1] - events[0][0]
    gaps: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    end_prev, name_prev = events[0][1], events[0][2]
    for start, end, name in events[1:]:
        gap = start - end_prev
        if gap >= args.min_gap_us:
            key = (name_prev[:60], name[:60])
            gaps[key] += gap
            count[key] += 1
        if end > end_prev:
            end_prev, name_prev = end, name
    per = args.tokens
    print(
        f"one request, 128 -> {args.tokens} tokens: {plain * 1e3 / per:.3f} ms a token "
        f"unprofiled; device span {span / 1e3 / per:.3f} ms a token, busy "
        f"{busy / 1e3 / per:.3f}, gaps >= {args.min_gap_us} us "
        f"{sum(gaps.values()) / 1e3 / per:.3f} ({len(events)} device events)"
    )
    print("| gap after | gap before | count | us a token |")
    print("| --- | --- | ---: | ---: |")
    for (a, b), total in gaps.most_common(15):
        print(f"| {a} | {b} | {count[(a, b)]} | {total / per:.1f} |")


if __name__ == "__main__":
    main()
