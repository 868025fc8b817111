"""Split-K for the low-bit GEMV kernels: several programs share one output tile, each
reading a slice of the input channels, so that narrow layers keep every SM streaming.

A layer of 4,096 outputs in tiles of 32 rows is 128 programs for an H200's 132 SMs: one
program per SM cannot keep enough loads in flight to reach the memory rate. With S splits,
each program writes its float32 partial tile to a workspace and takes a ticket from a
per-tile counter; the program that takes the last ticket sums the S partials in split order
(so the result does not depend on which program finished first), applies the epilogue and
stores the output, then puts the counter back to zero for the next call. One launch, no
atomics on the output, deterministic, and CUDA-graph safe (the workspace is allocated on the
eager warm-up that precedes each capture; a call captured without one does not split).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

MAX_SPLITS = 8
_MIN_PARTIAL_FLOATS = 1 << 20  # 4 MB: covers the layers of an 8B model at 16 rows, 8 splits
_COUNTERS = 1 << 14  # tiles per launch that may split
_workspaces: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


@functools.cache
def multiprocessors(device: torch.device) -> int:
    """SMs of a CUDA device; a small fixed number elsewhere (Triton's interpreter in tests)."""
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def num_splits(device: torch.device, tiles: int, steps: int, programs_per_sm: int) -> int:
    """Splits of the K loop (`steps` iterations; a divisor of it, so that every split has
    the same work) for about `programs_per_sm` programs on each SM; 1 when the output tiles
    alone are enough (or programs_per_sm is 0)."""
    target = programs_per_sm * multiprocessors(device)
    if tiles >= target or tiles > _COUNTERS:
        return 1
    want = triton.cdiv(target, tiles)
    divisors = [d for d in range(1, MAX_SPLITS + 1) if steps % d == 0]
    return min((d for d in divisors if d >= want), default=divisors[-1])


def workspace(device: torch.device, floats: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(float32 partials, int32 zeroed counters) of at least `floats` partials, or None when
    they would have to be (re)allocated during a CUDA graph capture."""
    have = _workspaces.get(device)
    if have is not None and have[0].numel() >= floats:
        return have
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return None
    partials = torch.empty(max(floats, _MIN_PARTIAL_FLOATS), dtype=torch.float32, device=device)
    counters = have[1] if have else torch.zeros(_COUNTERS, dtype=torch.int32, device=device)
    _workspaces[device] = (partials, counters)
    return partials, counters


@triton.jit
def reduce_splits(acc, part_ptr, cnt_ptr, rows, cols, M, N, SPLITS: tl.constexpr):
    """Adds this program's partial to its tile's; returns (the sum of all SPLITS partials,
    True) for the program that completes the tile, (anything, False) for the others."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    ok = (rows[:, None] < M) & (cols[None, :] < N)
    tl.store(part_ptr + (pid_k * M + rows[:, None]) * N + cols[None, :], acc, mask=ok)
    tl.debug_barrier()  # every thread's partial is written before the ticket (release)
    ticket = tl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel")
    last = ticket == SPLITS - 1
    if last:
        acc = tl.zeros_like(acc)
        for s in tl.static_range(SPLITS):
            at = part_ptr + (s * M + rows[:, None]) * N + cols[None, :]
            acc += tl.load(at, mask=ok, other=0.0, cache_modifier=".cg")
        tl.atomic_xchg(cnt_ptr + pid_n, 0)
    return acc, last
