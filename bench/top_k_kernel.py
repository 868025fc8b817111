"""Times the top-k floor (each row's k-th largest logit) of R rows x 128,256 logits, kernels
only: torch.topk's k-th value, the grouped search that the sampler used before
(engine/top_k.py: group maxima, then two small topk), and the kernel (kernels/top_k_triton.py:
group maxima, candidates at or above their k-th, radix select of those in registers) at a
few block sizes and warp counts; checks every variant gives
torch.topk's value. CUDA only (--device cpu: a smoke run in Triton's interpreter).

  python bench/top_k_kernel.py [--rows 1,16,256] [--vocab 128256]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.top_p_kernel import time_ms
from runtime_service.engine.top_k import kth_largest
from runtime_service.kernels.top_k_triton import kth_largest_triton

VARIANTS = [(2048, 4), (4096, 8), (8192, 8), (8192, 16), (16384, 16)]  # (block, warps)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", default="1,16,256")
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = args.device
    print("| rows | k | torch.topk | grouped (top_k.py) | " + " | ".join(
        f"radix b{b} w{w}" for b, w in VARIANTS) + " |")  # fmt: skip
    print("| ---: | --- |" + " ---: |" * (2 + len(VARIANTS)))
    for rows in (int(r) for r in args.rows.split(",")):
        g = torch.Generator(device=device).manual_seed(rows)
        logits = torch.randn(rows, args.vocab, device=device, generator=g) * 2
        for label, ks in (("50", [50]), ("mixed 0-1000", [0, 1, 20, 50, 1000])):
            k = torch.tensor(ks, device=device)[torch.arange(rows, device=device) % len(ks)]
            print(f"| {rows} | {label} | " + " | ".join(row_times(logits, k, device)) + " |")


def row_times(logits: torch.Tensor, k: torch.Tensor, device: str) -> list[str]:
    """ms of torch.topk, the grouped search and each radix variant; all checked equal."""
    max_k = max(int(k.max()), 1)
    kk = k.clamp(min=1)
    want = logits.topk(max_k, dim=-1).values.gather(1, kk[:, None] - 1)[:, 0]
    want = torch.where(k > 0, want, float("-inf"))
    kf = k[:, None].float()
    assert torch.equal(kth_largest(logits, kf, max_k)[:, 0], want)
    times = [
        time_ms(
            lambda: logits.topk(max_k, dim=-1).values.gather(1, kk[:, None] - 1), device=device
        ),
        time_ms(lambda: kth_largest(logits, kf, max_k), device=device),
    ]
    for block, warps in VARIANTS:
        assert torch.equal(kth_largest_triton(logits, k, block, warps), want), (block, warps)
        times.append(time_ms(lambda: kth_largest_triton(logits, k, block, warps), device=device))  # noqa: B023
    return [f"{t:.3f}" for t in times]


if __name__ == "__main__":
    main()
