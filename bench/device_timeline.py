"""Where the GPU's time goes in one row of bench/engine_speed.py: the row run once through the
offline engine under torch.profiler, the device's kernels and copies laid on a time line;
prints how busy the device was, the gaps between its operations (summed by the pair of
operations around each), and the kernels' time by kind.

  python bench/device_timeline.py --shape llama3-8b                      # single, 64 tokens
  python bench/device_timeline.py --shape llama3-8b --row throughput     # 1,024 x 128/128

With async scheduling and CUDA graphs a row's wall time is the device's work plus the gaps
the host does not hide (prepare, launches, token copies); what the device works on, by kind,
is what a row's floor is computed from (docs/engine_speed.md).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.engine_speed import add_engine_args, row_engine, run_row, workloads  # noqa: E402
from bench.offline_throughput import SHAPES, shaped_model_dir  # noqa: E402

KINDS = (  # (kind, pattern of kernel names), first match wins
    ("GEMM", r"nvjet|gemm|gemv|cutlass|xmma|_scaled_mm|splitk"),
    ("attention", r"attention|attn|combine"),
    ("norm, rotary, SiLU", r"rms|norm|rotary|rope|silu|act_and_mul"),
    ("sampling", r"sample|argmax|top_k|top_p|_kth|draw|reduce_kernel|penalt"),
    ("copies", r"^Memcpy|^Memset"),
)


def device_events(trace: Path) -> list[tuple[float, float, str]]:
    """(start us, end us, name) of every kernel, copy and set on the device, by start."""
    events = json.loads(trace.read_text())["traceEvents"]
    out = [
        (e["ts"], e["ts"] + e.get("dur", 0), e["name"])
        for e in events
        if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")
    ]
    return sorted(out)


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if re.search(pattern, name, re.IGNORECASE):
            return kind
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_engine_args(parser)
    parser.add_argument("--row", default="single", help="single, throughput, long or mixed")
    parser.add_argument("--tokens", type=int, default=64, help="the single row's output tokens")
    parser.add_argument("--min-gap-us", type=float, default=3.0)
    args = parser.parse_args()

    from torch.profiler import ProfilerActivity, profile

    prompts, outs = workloads(SHAPES[args.shape]["vocab_size"])[args.row]
    if args.row == "single":
        outs = [args.tokens]
    llm = row_engine(shaped_model_dir(args.shape), args)
    run_row(llm, prompts[:4], [8] * min(4, len(prompts)))  # warm-up
    _, _, plain = run_row(llm, prompts, outs)  # the compiles of the row's shapes happen here
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run_row(llm, prompts, outs)
    trace = Path(tempfile.mkdtemp()) / "trace.json"
    prof.export_chrome_trace(str(trace))
    events = device_events(trace)
    by_kind: collections.Counter = collections.Counter()
    for start, end, name in events:
        by_kind[kind_of(name)] += end - start
    busy = sum(by_kind.values())  # one stream: its operations do not overlap
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
    per, unit = (args.tokens, "a token") if args.row == "single" else (1, "in the row")
    ms = 1e3 / per
    print(
        f"{args.row}: {plain * ms:.3f} ms {unit} unprofiled; device span {span / 1e3 / per:.3f} "
        f"ms, busy {busy / 1e3 / per:.3f} ms, gaps >= {args.min_gap_us:g} us "
        f"{sum(gaps.values()) / 1e3 / per:.3f} ms ({len(events)} device events)"
    )
    print("\n| kernels | ms | share of busy |\n| --- | ---: | ---: |")
    for kind, total in by_kind.most_common():
        print(f"| {kind} | {total / 1e3 / per:.3f} | {total / busy:.1%} |")
    print("\n| gap after | gap before | count | ms |\n| --- | --- | ---: | ---: |")
    for (a, b), total in gaps.most_common(15):
        print(f"| {a} | {b} | {count[(a, b)]} | {total / 1e3 / per:.3f} |")


if __name__ == "__main__":
    main()
