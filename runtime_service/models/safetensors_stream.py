"""Reading safetensors files onto a GPU at the disk's (or the page cache's) speed.

`safetensors.torch.load_file(device="cuda")` maps the file and copies tensor by tensor from
pageable memory: each copy is synchronous and staged by the driver, and page faults of the
mapping read the disk in small pieces. Here each file is read sequentially in large chunks
(`readinto`, which releases the GIL) into two pinned host buffers used in turn; each chunk
is copied to the device without blocking, straight into the byte ranges of the tensors it
holds (a tensor may span chunks), so the disk read of chunk k+1 overlaps the copy of chunk k.
Files are read by a few threads at once, each with its own CUDA stream and buffers. Every
tensor is allocated once, on the device, in the file's dtype: no host copy, no conversion.
"""

from __future__ import annotations

import json
import struct
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import torch

CHUNK_BYTES = 64 << 20
MAX_THREADS = 4
DTYPES = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


def read_header(path: Path) -> tuple[int, dict[str, dict]]:
    """(offset of the data in the file, {name: {dtype, shape, data_offsets}})."""
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return 8 + size, header


def _read_exactly(f, view: memoryview) -> None:  # type: ignore[no-untyped-def]
    done = 0
    while done < len(view):
        got = f.readinto(view[done:])
        if not got:
            raise EOFError("safetensors file ends before its header says")
        done += got


def load_file_streamed(
    path: Path, device: torch.device, chunk_bytes: int = CHUNK_BYTES
) -> dict[str, torch.Tensor]:
    """The tensors of one safetensors file, on `device` (see the module docstring)."""
    start, header = read_header(path)
    tensors: dict[str, torch.Tensor] = {}
    pieces: list[tuple[int, int, torch.Tensor]] = []  # file byte range -> device bytes
    for name, info in header.items():
        t = torch.empty(info["shape"], dtype=DTYPES[info["dtype"]], device=device)
        tensors[name] = t
        begin, end = info["data_offsets"]
        if end > begin:
            pieces.append((begin, end, t.view(-1).view(torch.uint8)))
    pieces.sort(key=lambda p: p[0])
    total = max((end for _, end, _ in pieces), default=0)
    cuda = device.type == "cuda"
    stream = torch.cuda.Stream(device) if cuda else None
    chunk = min(chunk_bytes, max(total, 1))
    buffers = [torch.empty(chunk, dtype=torch.uint8, pin_memory=cuda) for _ in range(2)]
    done: list[torch.cuda.Event | None] = [None, None]
    first = 0  # pieces before it are copied whole
    with path.open("rb", buffering=0) as f, torch.cuda.stream(stream) if cuda else nullcontext():
        f.seek(start)
        for k, pos in enumerate(range(0, total, chunk)):
            i = k % 2
            if done[i] is not None:
                done[i].synchronize()  # the copy out of this buffer (chunk k-2) is over
            n = min(chunk, total - pos)
            buf = buffers[i]
            _read_exactly(f, memoryview(buf.numpy()).cast("B")[:n])
            j = first
            while j < len(pieces) and pieces[j][0] < pos + n:
                begin, end, dest = pieces[j]
                lo, hi = max(begin, pos), min(end, pos + n)
                if hi > lo:
                    dest[lo - begin : hi - begin].copy_(buf[lo - pos : hi - pos], non_blocking=True)
                if end <= pos + n and j == first:
                    first += 1
                j += 1
            if cuda:
                event = torch.cuda.Event()
                event.record(stream)
                done[i] = event
    if stream is not None:
        stream.synchronize()
    return tensors


def load_files_streamed(
    paths: list[Path], device: torch.device, chunk_bytes: int = CHUNK_BYTES
) -> dict[str, torch.Tensor]:
    """The tensors of several files, read by up to MAX_THREADS threads at once."""
    out: dict[str, torch.Tensor] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(MAX_THREADS, len(paths)))) as pool:
        for tensors in pool.map(lambda p: load_file_streamed(p, device, chunk_bytes), paths):
            out.update(tensors)
    return out
