"""iter_checked, the tensor-parallel ranks' read of an engine's weight files: several files
read at once hand out every tensor once, as safetensors reads it; a file whose bytes (data or
header) are not the manifest's, or one the manifest does not list, is DataLoss naming it; a
consumer that stops early leaves no reader behind."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmserve.errors import DataLoss
from llmserve.store.manifest import FileEntry, describe_files
from runtime_service.models.checked_read import iter_checked
from tests.runtime_service.test_safetensors_stream import engine_like_tensors, raw


def weight_files(tmp_path: Path, n: int = 3) -> tuple[list[Path], dict[str, FileEntry]]:
    """n weight files and their manifest entries."""
    paths = []
    for i in range(n):
        paths.append(tmp_path / f"weights-{i + 1:05d}-of-{n:05d}.safetensors")
        save_file({f"{k}.{i}": t for k, t in engine_like_tensors(i).items()}, paths[-1])
    return paths, describe_files(tmp_path)


def flip(path: Path, at: int) -> str:
    """Flips the byte at `at` (negative: from the end); 'sha256 NOW, the manifest says WAS'."""
    data = bytearray(path.read_bytes())
    was = hashlib.sha256(data).hexdigest()
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    return f"sha256 {hashlib.sha256(data).hexdigest()}, the manifest says {was}"


@pytest.mark.parametrize("files_at_once", [1, 2, 4])
def test_every_tensor_of_every_file_once(tmp_path: Path, files_at_once: int) -> None:
    paths, expected = weight_files(tmp_path)
    want = {k: v for p in paths for k, v in load_file(p).items()}
    got = list(iter_checked(paths, expected, "engine e", files_at_once))
    assert sorted(name for name, _ in got) == sorted(want)
    for name, t in got:
        assert t.dtype == want[name].dtype and t.shape == want[name].shape, name
        assert torch.equal(raw(t), raw(want[name])), name


@pytest.mark.parametrize("at", [-20, 9], ids=["data", "header"])
def test_a_changed_file_is_named_with_both_digests(tmp_path: Path, at: int) -> None:
    paths, expected = weight_files(tmp_path)
    digests = flip(paths[1], at)
    with pytest.raises(DataLoss, match=f"engine e: file {paths[1].name} is corrupt: {digests}"):
        for _ in iter_checked(paths, expected, "engine e", 2):
            pass


def test_a_file_the_manifest_does_not_list_is_refused(tmp_path: Path) -> None:
    paths, expected = weight_files(tmp_path)
    del expected[paths[2].name]
    with pytest.raises(DataLoss, match=f"file {paths[2].name} is not in the manifest"):
        next(iter_checked(paths, expected, "engine e"))


def test_a_consumer_that_stops_early_leaves_no_reader(tmp_path: Path) -> None:
    paths, expected = weight_files(tmp_path, 4)
    read = iter_checked(paths, expected, "engine e", 2)
    next(read)
    read.close()  # readers blocked handing out their next tensor give up
    assert not [t for t in threading.enumerate() if t.name.startswith("checked-read")]
