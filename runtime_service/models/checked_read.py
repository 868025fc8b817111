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

import hashlib
from collections.abc import Iterator, Mapping
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
    paths: list[Path], expected: Mapping[str, FileEntry], what: str
) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of the weight files on the host, one at a time (a tensor-parallel rank
    cuts each into its share), each file's SHA-256 computed on the bytes the tensors are
    copied out of: once a file is read, DataLoss names it and both digests if they differ,
    so a consumer that builds its model after the last tensor never builds it from bytes
    other than the manifest's."""
    check_listed(paths, expected, what)
    for path in paths:
        digest = hashlib.sha256()
        try:
            yield from iter_file_tensors(path, digest=digest)
        except Exception:
            name_the_bad_file([path], expected, what)
            raise
        check_digest(digest.hexdigest(), path.name, expected[path.name], what)
