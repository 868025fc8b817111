"""Times top-p sampling of 256 rows x 128,256 logits three ways, kernels only (no sampler
host code): a sort reference (torch.sort, softmax, cumsum, mask, then the Gumbel draw), the
threshold-search mask (kernels/top_p_triton.py) then the plain fused draw, and the fused draw
with top-p by rejection (kernels/sample_triton.py), which it checks gives the same tokens.
Also the plain draw (seeds, no top-p) and top-k 50 as a floor. CUDA only.

  python bench/top_p_kernel.py [--sweep]
"""

from __future__ import annotations

import argparse

import torch

from runtime_service.engine.top_k import largest
from runtime_service.kernels.sample_triton import checks_for, sample_triton
from runtime_service.kernels.top_p_triton import top_p_mask_

DEVICE = "cuda"


def time_ms(fn, iters: int = 20, device: str | None = None) -> float:
    """Mean milliseconds of fn() on the GPU (CUDA events, after one untimed call); on the CPU
    (Triton's interpreter) a smoke run: once, untimed, NaN. The other kernel benches use it."""
    if (device or DEVICE) == "cpu":
        fn()
        return float("nan")
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


def sort_top_p(logits: torch.Tensor, top_p: torch.Tensor, info: torch.Tensor) -> torch.Tensor:
    values, order = logits.sort(dim=-1, descending=True)
    probs = values.softmax(dim=-1)
    drop = (probs.cumsum(dim=-1) - probs) >= top_p[:, None]
    drop[:, 0] = False
    masked = torch.empty_like(logits).scatter_(1, order, values.masked_fill(drop, float("-inf")))
    return sample_triton(masked, info)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sweep", action="store_true", help="also chunk lengths of the fused draw")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run (TRITON_INTERPRET=1)")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    rows, vocab = args.rows, args.vocab
    g = torch.Generator(device=DEVICE).manual_seed(0)
    seeds = torch.arange(rows, device=DEVICE) * 7 + 1
    steps = torch.full((rows,), 5, device=DEVICE)
    info = torch.stack([seeds, steps, torch.ones_like(seeds)], dim=1)
    top_p = torch.full((rows,), 0.9, device=DEVICE)
    checks = checks_for(0.9)
    # engine_speed's sampler row: randn / temperature 0.8 (flat: the nucleus is ~half the
    # vocabulary); and peaked rows (randn * 3).
    for name, scale in (("flat (randn / 0.8)", 1.25), ("peaked (randn * 3)", 3.0)):
        logits = torch.randn(rows, vocab, device=DEVICE, generator=g) * scale
        clone = time_ms(lambda x=logits: x.clone())
        print(f"## {name}, {rows} x {vocab}, top_p 0.9 (a clone of the logits: {clone:.3f} ms)")
        print("| path | ms | same tokens as the mask + draw |")
        print("| --- | ---: | --- |")
        old = sample_triton(top_p_mask_(logits.clone(), top_p), info)
        new = sample_triton(logits.clone(), info, top_p, checks=checks)
        ref = sort_top_p(logits, top_p, info)
        same = f"{int((new == old).sum())}/{rows}"
        ref_same = f"{int((ref == old).sum())}/{rows}"
        ms = time_ms(lambda x=logits: sort_top_p(x, top_p, info))
        print(f"| sort + cumsum + draw (torch) | {ms:.3f} | {ref_same} (sort) |")
        ms = time_ms(lambda x=logits: sample_triton(top_p_mask_(x.clone(), top_p), info))
        print(f"| threshold search + draw, with a clone | {ms:.3f} | - |")
        ms = time_ms(lambda x=logits: top_p_mask_(x.clone(), top_p))
        print(f"|   threshold search alone, with a clone | {ms:.3f} | - |")
        ms = time_ms(lambda x=logits: sample_triton(x, info, top_p, checks=checks))
        print(f"| fused draw, top-p by rejection ({checks} checks) | {ms:.3f} | {same} |")
        ms = time_ms(lambda x=logits: sample_triton(x, info))
        print(f"| fused draw, no top-p (seeds) | {ms:.3f} | - |")
        kth = logits.topk(50, dim=-1).values[:, -1].contiguous()
        ms = time_ms(lambda x=logits: x.topk(50, dim=-1).values[:, -1].contiguous())
        print(f"| topk(50) for the floor | {ms:.3f} | - |")
        grouped = largest(logits, 50)
        same_k = bool(torch.equal(grouped, logits.topk(50, dim=-1).values))
        ms = time_ms(lambda x=logits: largest(x, 50)[:, -1].contiguous())
        print(
            f"| the 50 largest from 64-logit group maxima (engine/top_k.py) | {ms:.3f} | {same_k} |"
        )
        ms = time_ms(lambda x=logits, k=kth: sample_triton(x, info, top_p, k, checks=checks))
        print(f"| fused draw, top-k 50 floor + top-p | {ms:.3f} | - |")
        if args.sweep:
            for chunk in (1024, 2048, 4096, 8192, 16384):
                ms = time_ms(
                    lambda x=logits, c=chunk: sample_triton(x, info, top_p, checks=checks, chunk=c)
                )
                ms_plain = time_ms(lambda x=logits, c=chunk: sample_triton(x, info, chunk=c))
                print(f"| chunk {chunk}: top-p {ms:.3f}, plain {ms_plain:.3f} | | |")
        print()


if __name__ == "__main__":
    main()
