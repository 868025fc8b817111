"""The streamed safetensors reader returns what safetensors' own reader does: every dtype an
engine stores, tensors split across chunks, empty and 0-d tensors, several files at once, and
one host tensor at a time (tensor-parallel ranks); the SHA-256 it computes in the same read is
hashlib's of the whole file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from runtime_service.models.safetensors_stream import (
    iter_file_tensors,
    load_file_streamed,
    load_files_streamed,
    read_header,
)


def engine_like_tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "a.weight": torch.randn(33, 17, generator=g).to(torch.bfloat16),
        "b.weight": torch.randn(5, 300, generator=g),  # float32, spans several chunks
        "c.qweight": torch.randint(-128, 127, (9, 31), generator=g, dtype=torch.int8),
        "d.packed": torch.randint(0, 255, (7, 3), generator=g, dtype=torch.uint8),
        "e.fp8": torch.randn(4, 8, generator=g).to(torch.float8_e4m3fn),
        "f.scales": torch.randn(9, generator=g, dtype=torch.float16),
        "g.empty": torch.empty(0, 4),
        "h.scalar": torch.tensor(3.5),
        "i.index": torch.arange(11, dtype=torch.int64),
    }


def raw(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes (torch.equal knows no float8; NaN bytes compare equal too)."""
    return t.reshape(-1).view(torch.uint8)


@pytest.mark.parametrize("chunk_bytes", [7, 64, 1000, 1 << 20])
def test_streamed_equals_safetensors(tmp_path: Path, chunk_bytes: int) -> None:
    path = tmp_path / "w.safetensors"
    save_file(engine_like_tensors(0), path)
    want = load_file(path)
    got = load_file_streamed(path, torch.device("cpu"), chunk_bytes)
    assert got.keys() == want.keys()
    for name, t in want.items():
        assert got[name].dtype == t.dtype and got[name].shape == t.shape, name
        assert torch.equal(raw(got[name]), raw(t)), name


def test_several_files_at_once(tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        tensors = {f"{k}.{i}": t for k, t in engine_like_tensors(i).items()}
        paths.append(tmp_path / f"weights-{i}.safetensors")
        save_file(tensors, paths[-1])
    want = {k: v for p in paths for k, v in load_file(p).items()}
    got = load_files_streamed(paths, torch.device("cpu"), chunk_bytes=256)
    assert got.keys() == want.keys()
    assert all(torch.equal(raw(got[k]), raw(want[k])) for k in want)


@pytest.mark.parametrize("chunk_bytes", [7, 64, 1000, 1 << 20])
def test_digest_of_the_same_read_is_the_files(tmp_path: Path, chunk_bytes: int) -> None:
    path = tmp_path / "w.safetensors"
    save_file(engine_like_tensors(0), path, metadata={"format": "pt"})
    digest = hashlib.sha256()
    got = load_file_streamed(path, torch.device("cpu"), chunk_bytes, digest)
    assert digest.hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()
    want = load_file(path)
    assert all(torch.equal(raw(got[k]), raw(want[k])) for k in want)


def test_digest_covers_bytes_after_the_last_tensor(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file(engine_like_tensors(1), path)
    path.write_bytes(path.read_bytes() + b"trailing")
    digest = hashlib.sha256()
    load_file_streamed(path, torch.device("cpu"), 64, digest)
    assert digest.hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()


def test_several_files_hashed_at_once(tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"weights-{i}.safetensors")
        save_file({f"{k}.{i}": t for k, t in engine_like_tensors(i).items()}, paths[-1])
    digests = {p: hashlib.sha256() for p in paths}
    load_files_streamed(paths, torch.device("cpu"), chunk_bytes=256, digests=digests)
    for p in paths:
        assert digests[p].hexdigest() == hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.parametrize("chunk_bytes", [7, 64, 1000, 1 << 20])
def test_one_tensor_at_a_time_in_byte_order_hashed_in_the_same_read(
    tmp_path: Path, chunk_bytes: int
) -> None:
    """Every tensor is its own allocation (compared once all are out, after the buffers
    they were copied from have been refilled), in the order of the file's bytes."""
    path = tmp_path / "w.safetensors"
    save_file(engine_like_tensors(2), path, metadata={"format": "pt"})
    want = load_file(path)
    path.write_bytes(path.read_bytes() + b"trailing")
    digest = hashlib.sha256()
    got = list(iter_file_tensors(path, chunk_bytes, digest))
    assert digest.hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sorted(name for name, _ in got) == sorted(want)
    for name, t in got:
        assert t.dtype == want[name].dtype and t.shape == want[name].shape, name
        assert torch.equal(raw(t), raw(want[name])), name
    begins = [read_header(path)[1][name]["data_offsets"][0] for name, _ in got]
    assert begins == sorted(begins)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file(engine_like_tensors(0), path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(EOFError):
        load_file_streamed(path, torch.device("cpu"), 64)


@pytest.mark.gpu
def test_streamed_onto_the_gpu(tmp_path: Path) -> None:
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"weights-{i}.safetensors")
        save_file({f"{k}.{i}": t for k, t in engine_like_tensors(i).items()}, paths[-1])
    want = {k: v for p in paths for k, v in load_file(p).items()}
    digests = {p: hashlib.sha256() for p in paths}
    got = load_files_streamed(paths, torch.device("cuda"), chunk_bytes=100, digests=digests)
    for name, t in want.items():
        assert got[name].is_cuda and got[name].dtype == t.dtype, name
        assert torch.equal(raw(got[name].cpu()), raw(t)), name
    for p in paths:  # hashed from the pinned buffers while they were copied out
        assert digests[p].hexdigest() == hashlib.sha256(p.read_bytes()).hexdigest()
