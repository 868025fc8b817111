"""Reading an engine's weight files and checking them against its manifest in the same pass.

A runtime serves a local store's engine in place (llmserve/store/engines.py): nothing copies
or hashes its files before the load. The loader's one read of each weight file feeds the
device and the file's SHA-256 at once (safetensors_stream.py hashes each chunk on a worker
thread), and the digests are compared with the manifest's before the model is built, so a
corrupted file fails the start with DataLoss naming it and both digests; nothing serves.
A tensor-parallel rank reads the same way, one tensor at a time (`iter_checked`): each rank
checks the bytes it loads itself, none trusts another's check.

The files on disk must be the manifest's weight files, no more and no fewer: a missing one,
or one the manifest does not list (which would be loaded unchecked), is refused by name.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from llmserve.errors import DataLoss
from llmserve.reasons import Reason
from llmserve.store.manifest import (
    FileEntry,
    check_digest,
    check_size,
    is_weight_file,
    verify_file,
)
from runtime_service.models.safetensors_stream import iter_file_tensors, load_files_streamed

# Weight files a tensor-parallel rank reads and hashes at once (iter_checked): one SHA-256
# thread runs ~2 GB/s, so one file at a time would take a 70B engine's 140 GB 70 s per rank.
FILES_AT_ONCE = 4
_FILE_READ = object()  # a reader's last word: its file is read and checked


def split_files(
    files: Mapping[str, FileEntry],
) -> tuple[dict[str, FileEntry], dict[str, FileEntry]]:
    """(weight files, the others: config, tokenizer, ...) of a manifest's files."""
    weights = {n: e for n, e in files.items() if is_weight_file(n)}
    others = {n: e for n, e in files.items() if n not in weights}
    return weights, others


def check_weight_names(paths: list[Path], expected: Mapping[str, FileEntry], what: str) -> None:
    """DataLoss naming a weight file the manifest lists but the directory lacks, or one the
    directory holds but the manifest does not list."""
    on_disk = {p.name for p in paths}
    for name in sorted(set(expected) - on_disk):
        raise DataLoss(f"{what}: file {name} is missing", reason=Reason.ARTIFACT_CORRUPT)
    for name in sorted(on_disk - set(expected)):
        raise DataLoss(
            f"{what}: file {name} is not in the manifest", reason=Reason.ARTIFACT_CORRUPT
        )


def check_listed(paths: list[Path], expected: Mapping[str, FileEntry], what: str) -> None:
    """DataLoss naming a weight file missing, unlisted, or of another size than the
    manifest's: what can be refused before a byte is read."""
    check_weight_names(paths, expected, what)
    for path in paths:
        check_size(path.stat().st_size, path.name, expected[path.name], what)


def name_the_bad_file(paths: list[Path], expected: Mapping[str, FileEntry], what: str) -> None:
    """After a read failed (a corrupted header can stop it before its digest is complete):
    the files hashed whole, DataLoss naming the first that is not the manifest's; if every
    file is intact, returns (the error was another)."""
    for path in paths:
        verify_file(path, path.name, expected[path.name], what)


def read_checked(
    paths: list[Path], device: torch.device, expected: Mapping[str, FileEntry], what: str
) -> dict[str, torch.Tensor]:
    """The tensors of the weight files on `device`, each file read once and its SHA-256
    computed on the same bytes; DataLoss names the first file (in path order) whose size or
    digest is not the manifest's, with both digests."""
    check_listed(paths, expected, what)
    digests = {path: hashlib.sha256() for path in paths}
    try:
        weights = load_files_streamed(paths, device, digests=digests)
    except torch.OutOfMemoryError:
        raise
    except Exception:
        name_the_bad_file(paths, expected, what)
        raise
    for path in paths:
        check_digest(digests[path].hexdigest(), path.name, expected[path.name], what)
    return weights


def iter_checked(
    paths: list[Path],
    expected: Mapping[str, FileEntry],
    what: str,
    files_at_once: int = FILES_AT_ONCE,
) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of the weight files on the host, one at a time as they are read (a
    tensor-parallel rank cuts each into its share), up to `files_at_once` files read at
    once (one SHA-256 thread hashes ~2 GB/s), in no fixed order. Each file's SHA-256 is
    computed on the bytes its tensors are copied out of: once a file is read, DataLoss names
    it and both digests if they differ, so a consumer that builds its model after the last
    tensor never builds it from bytes other than the manifest's. Host memory: a whole tensor
    per file being read, and one handed out."""
    check_listed(paths, expected, what)
    handed: queue.Queue[object] = queue.Queue(maxsize=1)
    stop = threading.Event()  # the consumer is gone: readers give up

    def hand(item: object) -> bool:
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                handed.put(item, timeout=0.1)
                return True
        return False

    def read(path: Path) -> None:
        digest = hashlib.sha256()
        try:
            for item in iter_file_tensors(path, digest=digest):
                if not hand(item):
                    return
        except BaseException as error:
            failure: BaseException = error
            try:  # a read stopped early (a corrupted header): name the file if it is bad
                name_the_bad_file([path], expected, what)
            except DataLoss as named:
                failure = named
            hand(failure)
            return
        try:
            check_digest(digest.hexdigest(), path.name, expected[path.name], what)
        except DataLoss as mismatch:
            hand(mismatch)
            return
        hand(_FILE_READ)

    with ThreadPoolExecutor(max(1, min(files_at_once, len(paths))), "checked-read") as pool:
        futures = [pool.submit(read, path) for path in paths]
        try:
            left = len(paths)
            while left:
                item = handed.get()
                if item is _FILE_READ:
                    left -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item  # type: ignore[misc]
        finally:
            stop.set()
            for future in futures:
                future.cancel()
