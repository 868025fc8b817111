"""Reading safetensors files onto a GPU at the disk's (or the page cache's) speed.

`safetensors.torch.load_file(device="cuda")` maps the file and copies tensor by tensor from
pageable memory: each copy is synchronous and staged by the driver, and page faults of the
mapping read the disk in small pieces. Here each file is read sequentially in large chunks
(`readinto`, which releases the GIL) into two pinned host buffers used in turn; each chunk
is copied to the device without blocking, straight into the byte ranges of the tensors it
holds (a tensor may span chunks), so the disk read of chunk k+1 overlaps the copy of chunk k.
Files are read by a few threads at once, each with its own CUDA stream and buffers. Every
tensor is allocated once, on the device, in the file's dtype: no host copy, no conversion.

Given a hash object (`hashlib.sha256()`), the reader also feeds it every byte of the file,
header included, from the same buffers: each chunk is hashed on a worker thread of the file's
own (hashlib releases the GIL) while the next chunk is read, and a buffer is refilled only
once both its copy and its hash are over. One read of the file serves the load and its
checksum (the caller compares the digest with the manifest's).

`iter_file_tensors` reads the same way onto the host and hands out one tensor at a time
(tensor-parallel ranks cut each into their share, parallel/load.py), hashing as above.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import torch

CHUNK_BYTES = 64 << 20
MAX_THREADS = 4
# Files read at once when each is also hashed: one thread hashes SHA-256 at ~2 GB/s, so four
# files would cap the load near 8 GB/s, below the ~11.7 GB/s measured unhashed on the H200.
MAX_THREADS_HASHED = 8
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


class Hash(Protocol):
    """What the reader needs of a hashlib object."""

    def update(self, data: Any, /) -> None: ...


def read_header(path: Path) -> tuple[int, dict[str, dict]]:
    """(offset of the data in the file, {name: {dtype, shape, data_offsets}})."""
    with path.open("rb") as f:
        start, header, _ = _read_header_from(f)
    return start, header


def _read_header_from(f: BinaryIO) -> tuple[int, dict[str, dict], bytes]:
    """(data offset, header, the header's raw bytes) of the file open at its start."""
    raw = f.read(8)
    if len(raw) < 8:
        raise EOFError("safetensors file ends before its header")
    (size,) = struct.unpack("<Q", raw)
    text = f.read(size)
    if len(text) < size:
        raise EOFError("safetensors file ends before its header says")
    header = json.loads(text)
    header.pop("__metadata__", None)
    return 8 + size, header, raw + text


def _read_exactly(f, view: memoryview) -> None:  # type: ignore[no-untyped-def]
    done = 0
    while done < len(view):
        got = f.readinto(view[done:])
        if not got:
            raise EOFError("safetensors file ends before its header says")
        done += got


def load_file_streamed(
    path: Path,
    device: torch.device,
    chunk_bytes: int = CHUNK_BYTES,
    digest: Hash | None = None,
) -> dict[str, torch.Tensor]:
    """The tensors of one safetensors file, on `device`; `digest`, if given, is updated
    with every byte of the file (see the module docstring)."""
    with path.open("rb", buffering=0) as f:
        if digest is None:
            return _stream(f, device, chunk_bytes, None, None)
        with ThreadPoolExecutor(1, thread_name_prefix="sha256") as hasher:
            return _stream(f, device, chunk_bytes, digest, hasher)


def _chunks(
    f: BinaryIO,
    total: int,
    chunk_bytes: int,
    digest: Hash | None,
    hasher: ThreadPoolExecutor | None,
    stream: torch.cuda.Stream | None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """(offset in the data, buffer of the next bytes) up to `total`, then what follows the
    data is hashed. Two buffers (pinned when `stream` is given) serve in turn: one is hashed
    (on `hasher`) while the next is read, and refilled only once its hash, and the caller's
    copies out of it (recorded on `stream` when the caller resumes the generator), are over."""
    chunk = min(chunk_bytes, max(total, 1))
    buffers = [
        torch.empty(chunk, dtype=torch.uint8, pin_memory=stream is not None) for _ in range(2)
    ]
    done: list[torch.cuda.Event | None] = [None, None]
    hashed: list[Future[None] | None] = [None, None]
    for k, pos in enumerate(range(0, total, chunk)):
        i = k % 2
        if done[i] is not None:
            done[i].synchronize()  # the copy out of this buffer (chunk k-2) is over
        if hashed[i] is not None:
            hashed[i].result()  # and so is its hash
        n = min(chunk, total - pos)
        view = memoryview(buffers[i].numpy()).cast("B")[:n]
        _read_exactly(f, view)
        if digest is not None and hasher is not None:
            hashed[i] = hasher.submit(digest.update, view)
        yield pos, buffers[i][:n]
        if stream is not None:
            event = torch.cuda.Event()
            event.record(stream)
            done[i] = event
    for future in hashed:
        if future is not None:
            future.result()
    if digest is not None:
        while rest := f.read(chunk_bytes):  # anything after the last tensor's bytes
            digest.update(rest)


def _copy_part(dest: torch.Tensor, begin: int, end: int, buf: torch.Tensor, pos: int) -> None:
    """Copies the bytes of file range [begin, end) that `buf` (from offset pos) holds into
    `dest` (that range's bytes, as uint8)."""
    lo, hi = max(begin, pos), min(end, pos + len(buf))
    if hi > lo:
        dest[lo - begin : hi - begin].copy_(buf[lo - pos : hi - pos], non_blocking=True)


def _stream(
    f: BinaryIO,
    device: torch.device,
    chunk_bytes: int,
    digest: Hash | None,
    hasher: ThreadPoolExecutor | None,
) -> dict[str, torch.Tensor]:
    _, header, raw_header = _read_header_from(f)  # the file is now at the data
    if digest is not None:
        digest.update(raw_header)
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
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None
    first = 0  # pieces before it are copied whole
    with torch.cuda.stream(stream) if stream is not None else nullcontext():
        for pos, buf in _chunks(f, total, chunk_bytes, digest, hasher, stream):
            j = first
            while j < len(pieces) and pieces[j][0] < pos + len(buf):
                begin, end, dest = pieces[j]
                _copy_part(dest, begin, end, buf, pos)
                if end <= pos + len(buf) and j == first:
                    first += 1
                j += 1
    if stream is not None:
        stream.synchronize()
    return tensors


def iter_file_tensors(
    path: Path, chunk_bytes: int = CHUNK_BYTES, digest: Hash | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of one safetensors file on the host, one at a time in the order of their
    bytes: each is allocated when the read reaches it and yielded once its bytes are in, so
    the caller holds one whole tensor (and two chunk buffers), never the file. `digest`, if
    given, is updated with every byte of the file from the buffers the tensors are copied
    out of, and is complete once the iterator is exhausted."""
    with path.open("rb", buffering=0) as f, ThreadPoolExecutor(1, "sha256") as hasher:
        _, header, raw_header = _read_header_from(f)
        if digest is not None:
            digest.update(raw_header)
        entries = sorted(header.items(), key=lambda e: e[1]["data_offsets"][0])
        total = max((e[1]["data_offsets"][1] for e in entries), default=0)
        j = 0
        current: torch.Tensor | None = None  # the tensor being filled, entries[j]'s
        for pos, buf in _chunks(f, total, chunk_bytes, digest, hasher, None):
            while j < len(entries):
                name, info = entries[j]
                begin, end = info["data_offsets"]
                if begin >= pos + len(buf) and end > begin:
                    break  # in a later chunk
                if current is None:
                    current = torch.empty(info["shape"], dtype=DTYPES[info["dtype"]])
                if end > begin:
                    _copy_part(current.view(-1).view(torch.uint8), begin, end, buf, pos)
                if end > pos + len(buf):
                    break  # continued in the next chunk
                yield name, current
                current, j = None, j + 1
        for name, info in entries[j:]:  # tensors of no bytes after the last that has some
            yield name, torch.empty(info["shape"], dtype=DTYPES[info["dtype"]])


def load_files_streamed(
    paths: list[Path],
    device: torch.device,
    chunk_bytes: int = CHUNK_BYTES,
    digests: Mapping[Path, Hash] | None = None,
) -> dict[str, torch.Tensor]:
    """The tensors of several files, read by up to MAX_THREADS threads at once (up to
    MAX_THREADS_HASHED when `digests` gives each file a hash object to update)."""
    out: dict[str, torch.Tensor] = {}
    threads = MAX_THREADS_HASHED if digests else MAX_THREADS

    def one(path: Path) -> dict[str, torch.Tensor]:
        return load_file_streamed(path, device, chunk_bytes, (digests or {}).get(path))

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(paths)))) as pool:
        for tensors in pool.map(one, paths):
            out.update(tensors)
    return out
