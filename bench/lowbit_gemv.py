"""Times the weight-only low-bit GEMV (kernels/lowbit_gemv.py) against bf16 F.linear on the
linear shapes of a Llama-3-8B layer, at a few decode batch sizes, and prints achieved weight
bandwidth. CUDA only.

  python bench/lowbit_gemv.py [--rows 1,8,16]
  python bench/lowbit_gemv.py --sweep [--budget-s 150]   # old kernel vs new, per layer

The sweep times, per kind and layer at one token: the kernel before split-K and the fused
fp8 quantization (bench/lowbit_gemv_v1.py, its tuned tiles), the current one with CONFIGS,
and the best of a one-parameter-at-a-time search around CONFIGS (tile rows, tile inputs,
warps, stages, programs per SM for split-K); then the four layers' sums and the config with
the most gain. int4 runs the same kernel as before (kernels/int4_gemv.py): its search is
over tiles only.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F

from runtime_service.kernels.fp8 import fp8_linear, quantize_per_token
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

    def fp8() -> torch.Tensor:  # as the engine's fp8 linear runs it (fp8.py)
        return fp8_linear(x, f8["weight"], f8["scales"], None)

    t_bf16 = time_us(lambda: F.linear(x, dense))
    t_i8 = time_us(lambda: lowbit_gemv(x, i8["weight"], i8["scales"]))
    t_i4 = time_us(lambda: lowbit_gemv(x, i4["weight"], i4["scales"], i4["zeros"]))
    t_f8 = time_us(fp8)
    return (
        f"| {name} | {m} | {t_bf16:.1f} | {t_i8:.1f} | {t_i4:.1f} | {t_f8:.1f} "
        f"| {n * k / t_i8 / 1e3:.0f} | {n * k / 2 / t_i4 / 1e3:.0f} |"
    )


OLD_CONFIGS = {"int8": (32, 256, 4, 4), "fp8": (32, 512, 4, 3)}
OLD_CONFIGS["fp8-fused"] = OLD_CONFIGS["fp8"]
KINDS = ("int4", "fp8", "fp8-fused", "int8")
AXES = [(16, 32, 64, 128), (128, 256, 512, 1024), (4, 8), (2, 3, 4), (0, 2, 3, 4, 8), (2, 4, 8)]
SEARCH_ORDER = [4, 0, 1, 3, 2, 5]  # split-K first: the narrow layers' likely gain


def sweep_fns(kind: str, n: int, k: int) -> tuple[Callable, Callable]:
    """(old, new(config)) products of one token for a random layer; fp8's include the
    per-token quantization of x (a launch of its own, or inside the kernel: fp8-fused)."""
    from bench.lowbit_gemv_v1 import lowbit_gemv as lowbit_gemv_v1

    w = torch.randn(n, k, device="cuda") * 0.02
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    old_config = OLD_CONFIGS.get(kind)
    if kind.startswith("fp8"):
        t = quantize_fp8_rowwise(w)
        w8, s8 = t["weight"], t["scales"]

        def old() -> torch.Tensor:
            q, s = quantize_per_token(x)
            return lowbit_gemv_v1(q, w8, s8, x_scales=s, out_dtype=x.dtype, config=old_config)

        def new(c: tuple | None = None) -> torch.Tensor:
            if kind == "fp8-fused":  # the kernel quantizes x (fp8.py FUSE_QUANTIZATION_ROWS)
                return lowbit_gemv(x, w8, s8, config=c)
            q, s = quantize_per_token(x)
            return lowbit_gemv(q, w8, s8, x_scales=s, out_dtype=x.dtype, config=c)

        return old, new
    if kind == "int8":
        t = quantize_int8_rowwise(w)
        return (
            lambda: lowbit_gemv_v1(x, t["weight"], t["scales"], config=old_config),
            lambda c=None: lowbit_gemv(x, t["weight"], t["scales"], config=c),
        )
    # int4: the engine runs the baseline's kernel (kernels/int4_gemv.py), so old is new.
    t = quantize_int4_grouped(w)
    args = (x, t["weight"], t["scales"], t["zeros"])
    return (lambda: lowbit_gemv(*args)), (lambda c=None: lowbit_gemv(*args, config=c))


def try_time(fn, show: bool = False) -> float:
    try:
        return time_us(fn, 20)
    except Exception as e:  # out of resources, or a tile the kernel refuses
        if show:
            print(f"error: {e!r}"[:400], flush=True)
        return float("inf")


def sweep(budget_s: float, kinds: tuple[str, ...] = KINDS) -> None:
    """Old vs new per layer (M = 1), and a coordinate search around CONFIGS (`budget_s`
    shared equally by each kind and layer)."""
    import time

    from runtime_service.kernels.int4_gemv import CONFIG as INT4_CONFIG
    from runtime_service.kernels.lowbit_gemv import CONFIGS

    starts = {**CONFIGS, "int4": INT4_CONFIG}  # int4: (BLOCK_N, BLOCK_K, warps, stages)

    print("| kind | layer | old us | new us | best us | best config |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for kind in kinds:
        sums = [0.0, 0.0, 0.0]
        votes: dict[tuple, float] = {}
        for name, (n, k) in SHAPES.items():
            deadline = time.monotonic() + budget_s / (len(kinds) * len(SHAPES))
            old_fn, new_fn = sweep_fns(kind, n, k)
            old = try_time(old_fn, show=True)
            new = try_time(new_fn, show=True)
            best, best_c = new, starts[kind.split("-")[0]]
            for axis in [a for a in SEARCH_ORDER if a < len(best_c)]:  # one at a time
                for v in AXES[axis]:
                    if time.monotonic() > deadline or v == best_c[axis]:
                        continue
                    c = (*best_c[:axis], v, *best_c[axis + 1 :])
                    t = try_time(lambda f=new_fn, c=c: f(c))
                    if t < best:
                        best, best_c = t, c
            votes[best_c] = votes.get(best_c, 0.0) + new - best
            sums = [sums[0] + old, sums[1] + new, sums[2] + best]
            print(f"| {kind} | {name} | {old:.1f} | {new:.1f} | {best:.1f} | {best_c} |")
        pick = max(votes, key=votes.get)
        print(
            f"| {kind} | sum | {sums[0]:.1f} | {sums[1]:.1f} | {sums[2]:.1f} "
            f"| (per-layer bests; most gain: {pick}) |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", default="1,8,16")
    parser.add_argument("--sweep", action="store_true", help="old vs new, tile search")
    parser.add_argument("--budget-s", type=float, default=150.0, help="the search's time")
    parser.add_argument("--kinds", default=",".join(KINDS), help="the sweep's weight kinds")
    parser.add_argument(
        "--dot-at-one-row", action="store_true", help="one token in a 16-row MMA tile, as before"
    )
    args = parser.parse_args()
    if args.dot_at_one_row:
        import runtime_service.kernels.lowbit_gemv as kernel

        kernel.ONE_ROW_FMA = False
    if args.sweep:
        sweep(args.budget_s, tuple(args.kinds.split(",")))
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
