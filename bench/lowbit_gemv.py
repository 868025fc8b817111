"""Times the weight-only low-bit GEMV (kernels/lowbit_gemv.py) against bf16 F.linear on the
linear shapes of a Llama-3-8B layer, at a few decode batch sizes, and prints achieved weight
bandwidth. CUDA only.

  python bench/lowbit_gemv.py [--rows 1,8,16]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from runtime_service.kernels.fp8 import quantize_per_token
from runtime_service.kernels.lowbit_gemv import lowbit_gemv
from runtime_service.models.linear import (
    quantize_fp8_rowwise,
    quantize_int4_grouped,
    quantize_int8_rowwise,
)

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}


def time_us(fn, iters: int = 100) -> float:
    """Per call, replayed from a CUDA graph of `iters` calls (as the engine's decode graphs
    run them: no launch cost)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(iters):
            fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1000 / (5 * iters)


def row(name: str, m: int, dense: torch.Tensor, i8: dict, i4: dict, f8: dict) -> str:
    n, k = dense.shape
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)

    def fp8() -> torch.Tensor:
        q, s = quantize_per_token(x)
        return lowbit_gemv(q, f8["weight"], f8["scales"], x_scales=s, out_dtype=x.dtype)

    t_bf16 = time_us(lambda: F.linear(x, dense))
    t_i8 = time_us(lambda: lowbit_gemv(x, i8["weight"], i8["scales"]))
    t_i4 = time_us(lambda: lowbit_gemv(x, i4["weight"], i4["scales"], i4["zeros"]))
    t_f8 = time_us(fp8)
    return (
        f"| {name} | {m} | {t_bf16:.1f} | {t_i8:.1f} | {t_i4:.1f} | {t_f8:.1f} "
        f"| {n * k / t_i8 / 1e3:.0f} | {n * k / 2 / t_i4 / 1e3:.0f} |"
    )


def sweep() -> None:
    """The fastest (BLOCK_N, BLOCK_K, warps, stages) per kind over the layer shapes, M = 1."""
    import itertools

    configs = list(itertools.product([16, 32], [256, 512, 1024], [4, 8], [3, 4]))
    for kind in ("int8", "int4", "fp8"):
        totals = dict.fromkeys(configs, 0.0)
        for n, k in SHAPES.values():
            w = torch.randn(n, k, device="cuda") * 0.02
            x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
            if kind == "int8":
                t = quantize_int8_rowwise(w)
                args = (x, t["weight"], t["scales"])
            elif kind == "int4":
                t = quantize_int4_grouped(w)
                args = (x, t["weight"], t["scales"], t["zeros"])
            else:
                t = quantize_fp8_rowwise(w)
                q, s = quantize_per_token(x)
                args = (q, t["weight"], t["scales"], None, None, s)
            for c in configs:
                try:
                    totals[c] += time_us(lambda c=c, args=args: lowbit_gemv(*args, config=c), 20)
                except Exception:  # out of resources
                    totals[c] += 1e9
        best = sorted(totals.items(), key=lambda kv: kv[1])[:3]
        print(kind, "per layer set (qkv+o+gate_up+down) us:", [(c, round(v, 1)) for c, v in best])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", default="1,8,16")
    parser.add_argument("--sweep", action="store_true", help="time tile configurations")
    args = parser.parse_args()
    if args.sweep:
        sweep()
        return
    print(f"Device: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    print("| layer | rows | bf16 us | int8 us | int4 us | fp8 us | int8 GB/s | int4 GB/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, (n, k) in SHAPES.items():
        w = torch.randn(n, k, device="cuda") * 0.02
        dense = w.to(torch.bfloat16)
        i8 = quantize_int8_rowwise(w)
        i4 = quantize_int4_grouped(w)
        f8 = quantize_fp8_rowwise(w)
        for m in (int(r) for r in args.rows.split(",")):
            print(row(f"{name} {n}x{k}", m, dense, i8, i4, f8))


if __name__ == "__main__":
    main()
