"""A tensor-parallel rank's read of an engine's weight files, checked against the manifest.

    python bench/tp_checked_read.py [--files 8] [--mb 512] [--repeats 3] [--at-once 1,4,8]

Writes --files safetensors files of --mb MB (bf16 tensors of 64 MB) under a temporary
directory (page cache warm after the first repetition, for every row alike) and times, in
this process, the best of --repeats:

  verify+mmap   what rank 0 did before: verify_files (8 threads hash whole files), then
                safetensors' memory-mapped read, each tensor copied (as a share is cut)
  checked xN    runtime_service/models/checked_read.iter_checked with N files at once: one
                read, hashed from the buffers the tensors are copied out of

Each rank runs its read alone; with N ranks on a host each hashes the whole engine. Ratios
are against verify+mmap of the same run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from llmserve.store.manifest import describe_files, verify_files  # noqa: E402
from runtime_service.models.checked_read import iter_checked  # noqa: E402

TENSOR_MB = 64


def write_files(root: Path, files: int, mb: int) -> list[Path]:
    paths = []
    elements = TENSOR_MB * 2**20 // 2
    for i in range(files):
        tensors = {
            f"f{i}.t{j}": torch.randn(elements).to(torch.bfloat16)
            for j in range(max(1, mb // TENSOR_MB))
        }
        paths.append(root / f"weights-{i + 1:05d}-of-{files:05d}.safetensors")
        save_file(tensors, paths[-1])
    return paths


def verify_then_mmap(root: Path, paths: list[Path]) -> Callable[[], int]:
    files = describe_files(root)

    def run() -> int:
        verify_files(root, files, "bench")
        n = 0
        for path in paths:
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118
                    n += handle.get_tensor(name).clone().numel()
        return n

    return run


def checked(root: Path, paths: list[Path], at_once: int) -> Callable[[], int]:
    files = describe_files(root)
    return lambda: sum(t.numel() for _, t in iter_checked(paths, files, "bench", at_once))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--mb", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--at-once", default="1,4,8")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tp-checked-") as tmp:
        root = Path(tmp)
        paths = write_files(root, args.files, args.mb)
        gb = sum(p.stat().st_size for p in paths) / 1e9
        rows = {"verify+mmap": verify_then_mmap(root, paths)}
        for n in map(int, args.at_once.split(",")):
            rows[f"checked x{n}"] = checked(root, paths, n)
        best: dict[str, float] = {}
        for _ in range(args.repeats):
            for name, run in rows.items():  # interleaved: each row sees the same machine
                start = time.perf_counter()
                run()
                seconds = time.perf_counter() - start
                best[name] = min(best.get(name, seconds), seconds)
    print(
        f"{args.files} files, {gb:.2f} GB, best of {args.repeats}, torch threads "
        f"{torch.get_num_threads()}"
    )
    print("| read | s | GB/s | vs verify+mmap |")
    print("| --- | --- | --- | --- |")
    base = best["verify+mmap"]
    for name, seconds in best.items():
        print(f"| {name} | {seconds:.3f} | {gb / seconds:.2f} | {base / seconds:.2f}x |")


if __name__ == "__main__":
    main()
