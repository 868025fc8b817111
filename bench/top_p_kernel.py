"""Times the sort-free top-p kernel (kernels/top_p_triton.py) on 256 rows x 128,256 logits for
a few tile shapes, against `torch.topk` of 1,024 candidates (what it replaced). CUDA only.

  python bench/top_p_kernel.py
"""

from __future__ import annotations

import torch

from runtime_service.kernels.top_p_triton import top_p_mask_


def time_ms(fn, iters: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


def main() -> None:
    logits = torch.randn(256, 128256, device="cuda") * 3
    top_p = torch.full((256,), 0.9, device="cuda")
    print(f"topk(1024): {time_ms(lambda: logits.topk(1024, dim=-1)):.2f} ms")
    for block in (128, 256, 512, 1024):
        for warps in (4, 8):
            ms = time_ms(lambda b=block, w=warps: top_p_mask_(logits.clone(), top_p, b, w))
            print(f"top_p_mask_ block {block} warps {warps}: {ms:.2f} ms (with a clone)")


if __name__ == "__main__":
    main()
