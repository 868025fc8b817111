"""Compiles the low-bit GEMV kernels for an H200 (sm_90) on a machine without a GPU, with the
ptxas that ships in Triton's wheel, and prints each variant's registers and the length of
its longest loop (instructions per thread and step, from the SASS): a check that the GPU
compiler accepts a kernel (Triton's interpreter, which the CPU tests use, accepts programs
that the compiler refuses), and a relative estimate of a tile's cost before GPU time is
spent (relative only: the loop's length is not the count executed per step).

  python bench/lowbit_compile.py            # the engine's CONFIGS
  python bench/lowbit_compile.py --bn 64    # int4 with 64-row tiles
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile

os.environ.pop("TRITON_INTERPRET", None)

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from runtime_service.kernels.int4_gemv import CONFIG as INT4_CONFIG
from runtime_service.kernels.int4_gemv import int4_gemv_kernel
from runtime_service.kernels.lowbit_gemv import CONFIGS, _gemv_kernel

POINTERS = {"x_ptr": "*bf16", "y_ptr": "*bf16", "b_ptr": "*bf16", "cnt_ptr": "*i32"}


def compile_sm90(fn: triton.JITFunction, consts: dict, warps: int, stages: int) -> str:
    """The variant's registers and main-loop length, as one line."""
    sig = {
        a: "constexpr" if a in consts else POINTERS.get(a, "*fp32" if a.endswith("ptr") else "i32")
        for a in fn.arg_names
    }
    sig.update(consts.pop("_types", {}))
    src = ASTSource(fn=fn, signature=sig, constexprs=consts)
    kernel = triton.compile(
        src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages}
    )
    tool = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True).stdout
        usage = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True)
    regs = re.search(r"REG:(\d+)", usage.stdout)
    loops = [  # backward branches: (start, end) byte offsets; the longest is the K loop
        (int(m.group(2), 16), int(m.group(1), 16))
        for m in re.finditer(r"/\*([0-9a-f]+)\*/\s+@!?P\d BRA 0x([0-9a-f]+)", sass)
        if int(m.group(2), 16) < int(m.group(1), 16)
    ]
    longest = max((end - start) // 16 for start, end in loops) if loops else 0
    return f"registers {regs.group(1) if regs else '?'}, loop {longest} instructions"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bn", type=int, help="int4 tile rows (default its CONFIG)")
    parser.add_argument("--splits", type=int, default=1)
    args = parser.parse_args()
    k, group = 4096, 128
    bn, bk, warps, stages = INT4_CONFIG
    bn = args.bn or bn
    consts = dict(
        K=k, HAS_BIAS=False, COMPUTE=tl.bfloat16, GROUP=group, BLOCK_M=16, BLOCK_N=bn,
        BLOCK_K=bk, _types={"w_ptr": "*u8"},
    )  # fmt: skip
    print(f"int4 {bn}x{bk}:", compile_sm90(int4_gemv_kernel, consts, warps, stages))
    for kind, w_type, x_type, quant in (
        ("int8", "*i8", "*bf16", False),
        ("fp8", "*fp8e4nv", "*fp8e4nv", False),
        ("fp8-fused", "*fp8e4nv", "*bf16", True),
    ):
        bn, bk, warps, stages, *_ = CONFIGS[kind.split("-")[0]]
        consts = dict(
            K=k, STEPS=k // bk // args.splits, SPLITS=args.splits, X_SCALED=not quant and
            kind == "fp8", QUANT_X=quant, X_ROWS=1, HAS_BIAS=False,
            COMPUTE=tl.float16 if kind.startswith("fp8") else tl.bfloat16, BLOCK_M=16,
            BLOCK_N=bn, BLOCK_K=bk, _types={"w_ptr": w_type, "x_ptr": x_type},
        )  # fmt: skip
        print(f"{kind} {bn}x{bk}:", compile_sm90(_gemv_kernel, consts, warps, stages))


if __name__ == "__main__":
    main()
