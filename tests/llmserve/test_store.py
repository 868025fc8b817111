"""The artifact store: one suite, run against the local directory and against moto's S3 server.

Concurrency is tested with real processes (llmserve.testing.store_worker), which share the
store as separate builders and runtimes would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmserve.errors import Aborted, DataLoss, FailedPrecondition, InvalidArgument, NotFound
from llmserve.processes import REPO_ROOT
from llmserve.store import (
    ENGINES,
    ArtifactStore,
    EngineManifest,
    StoreOptions,
    Validation,
    open_store,
)
from llmserve.store.engines import engine_to_serve, fetch_engine
from llmserve.store.manifest import MANIFEST_NAME
from llmserve.testing.s3_server import MotoS3Server

WORKER = (sys.executable, "-m", "llmserve.testing.store_worker")
FAST = StoreOptions(poll_s=0.05, lock_lease_s=2.0, hold_ttl_s=3.0)


@dataclasses.dataclass
class StoreCase:
    """A store plus how to reach its bytes behind its back (to corrupt or plant files)."""

    store: ArtifactStore
    uri: str
    options: StoreOptions
    s3: MotoS3Server | None = None
    bucket: str = ""

    def reopen(self, **changes: object) -> ArtifactStore:
        return open_store(self.uri, dataclasses.replace(self.options, **changes))

    def overwrite_file(self, artifact_id: str, name: str, data: bytes) -> None:
        if self.s3 is None:
            (Path(self.uri) / ENGINES / artifact_id / name).write_bytes(data)
        else:
            key = f"store/{ENGINES}/{artifact_id}/files/{name}"
            self.s3.client().put_object(Bucket=self.bucket, Key=key, Body=data)

    def visible_keys(self) -> list[str]:
        """Every file or object of the store except bookkeeping ('.'-prefixed) ones."""
        if self.s3 is None:
            root = Path(self.uri)
            return sorted(
                p.relative_to(root).as_posix()
                for p in root.rglob("*")
                if p.is_file() and not p.relative_to(root).as_posix().startswith(".")
            )
        reply = self.s3.client().list_objects_v2(Bucket=self.bucket, Prefix="store/engines/")
        return sorted(o["Key"] for o in reply.get("Contents", []))


@pytest.fixture(params=["local", "s3"])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreCase]:
    if request.param == "local":
        uri = str(tmp_path / "store")
        yield StoreCase(open_store(uri, FAST), uri, FAST)
        return
    server: MotoS3Server = request.getfixturevalue("s3_server")
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    server.client().create_bucket(Bucket=bucket)
    options = dataclasses.replace(FAST, s3_endpoint_url=server.endpoint_url)
    uri = f"s3://{bucket}/store"
    yield StoreCase(open_store(uri, options), uri, options, server, bucket)


def writer(content: bytes, note: str = "test") -> object:
    def build(staging: Path) -> dict[str, object]:
        (staging / "weights.bin").write_bytes(content)
        (staging / "sub").mkdir()
        (staging / "sub" / "config.json").write_text('{"a": 1}')
        return {"note": note}

    return build


def worker(case: StoreCase, action: str, artifact_id: str, *args: str) -> subprocess.Popen[str]:
    options = json.dumps(dataclasses.asdict(case.options))
    return subprocess.Popen(
        [*WORKER, action, case.uri, artifact_id, options, *args],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )


def test_publish_read_list_fetch(case: StoreCase, tmp_path: Path) -> None:
    content = os.urandom(100_000)
    manifest, built = case.store.publish_once(ENGINES, "e1", writer(content))
    assert built
    assert manifest["files"]["weights.bin"] == {
        "size": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
    }
    assert set(manifest["files"]) == {"weights.bin", "sub/config.json"}
    assert manifest["size_bytes"] == len(content) + len('{"a": 1}')
    assert case.store.read(ENGINES, "e1") == manifest
    assert [m["id"] for m in case.store.list(ENGINES)] == ["e1"]
    again, built_again = case.store.publish_once(ENGINES, "e1", writer(b"other"))
    assert (again, built_again) == (manifest, False)
    local = case.store.fetch(ENGINES, "e1", tmp_path / "cache")
    assert (local / "weights.bin").read_bytes() == content
    assert (local / "sub" / "config.json").read_text() == '{"a": 1}'
    assert json.loads((local / "manifest.json").read_text()) == manifest


def test_unknown_and_malformed_ids(case: StoreCase) -> None:
    with pytest.raises(NotFound, match="engine nope is not in the store"):
        case.store.read(ENGINES, "nope")
    with pytest.raises(InvalidArgument, match="engine_id must be"):
        case.store.read(ENGINES, "../etc")


def test_nothing_is_visible_until_published(case: StoreCase) -> None:
    seen: dict[str, object] = {}

    def build(staging: Path) -> dict[str, object]:
        (staging / "weights.bin").write_bytes(b"x" * 1000)
        seen["during"] = (case.store.find(ENGINES, "e1"), case.store.list(ENGINES))
        return {}

    case.store.publish_once(ENGINES, "e1", build)
    assert seen["during"] == (None, [])

    def failing(staging: Path) -> dict[str, object]:
        (staging / "weights.bin").write_bytes(b"y" * 1000)
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError, match="conversion failed"):
        case.store.publish_once(ENGINES, "e2", failing)
    assert case.store.find(ENGINES, "e2") is None
    assert not any("e2" in key for key in case.visible_keys())
    manifest, built = case.store.publish_once(ENGINES, "e2", writer(b"ok"))
    assert built and manifest["files"]["weights.bin"]["size"] == 2


def test_readers_never_see_a_partial_publish(case: StoreCase, tmp_path: Path) -> None:
    """A reader polling during a publish sees nothing, then the whole artifact, never part."""
    observed: list[str] = []
    stop = threading.Event()

    def poll() -> None:
        reader = case.reopen()
        while not stop.is_set():
            manifest = reader.find(ENGINES, "big")
            if manifest is not None:
                present = case.visible_keys()
                missing = [n for n in manifest["files"] if not any(k.endswith(n) for k in present)]
                observed.append(f"missing {missing}" if missing else "complete")
                return

    thread = threading.Thread(target=poll)
    thread.start()
    try:

        def build(staging: Path) -> dict[str, object]:
            for i in range(4):
                (staging / f"shard-{i}.bin").write_bytes(os.urandom(4 * 1024 * 1024))
            return {}

        case.store.publish_once(ENGINES, "big", build)
    finally:
        thread.join(timeout=60)
        stop.set()
    assert observed == ["complete"]


def test_concurrent_builders_in_separate_processes_build_once(
    case: StoreCase, tmp_path: Path
) -> None:
    counter = tmp_path / "builds.txt"
    procs = [worker(case, "build", "shared", str(counter)) for _ in range(4)]
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert counter.read_text().splitlines() == ["built"]
    assert sorted(r["built"] for r in results) == [False, False, False, True]
    assert len({r["create_time"] for r in results}) == 1


def test_killed_builder_leaves_nothing_and_the_next_build_succeeds(
    case: StoreCase, caplog: pytest.LogCaptureFixture
) -> None:
    proc = worker(case, "build-forever", "e1")
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "building"
    proc.kill()
    proc.wait()
    assert case.store.find(ENGINES, "e1") is None
    assert case.store.list(ENGINES) == []
    if case.s3 is not None:
        # A dead builder's half-uploaded files: invisible, and cleared by the next builder.
        case.overwrite_file("e1", "junk.bin", b"half an upload")
        assert case.store.find(ENGINES, "e1") is None
    with caplog.at_level(logging.WARNING, logger="llmserve.store.s3_lease"):
        manifest, built = case.store.publish_once(ENGINES, "e1", writer(b"complete"))
    assert built
    assert set(manifest["files"]) == {"weights.bin", "sub/config.json"}
    assert not any("junk" in key for key in case.visible_keys())
    if case.s3 is not None:
        # The dead builder's lock was still there: the next builder took it over once its
        # lease had expired (however long that took on this machine).
        assert "took over the expired build lock" in caplog.text


def test_delete_is_refused_while_held_and_holds_expire(case: StoreCase) -> None:
    case.store.publish_once(ENGINES, "e1", writer(b"z" * 5000))
    with case.store.hold(ENGINES, "e1", holder="runtime-a"):
        assert case.store.holders(ENGINES, "e1") == ["runtime-a"]
        with pytest.raises(FailedPrecondition, match=r"held by 1 runtime.*runtime-a"):
            case.store.delete(ENGINES, "e1")
    assert case.store.delete(ENGINES, "e1") == 5000 + len('{"a": 1}')
    assert case.store.find(ENGINES, "e1") is None
    assert case.visible_keys() == []
    with pytest.raises(NotFound):
        case.store.delete(ENGINES, "e1")

    # A runtime that dies stops its heartbeat; its hold expires after hold_ttl_s.
    case.store.publish_once(ENGINES, "e2", writer(b"w"))
    proc = worker(case, "hold", "e2")
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    assert len(case.store.holders(ENGINES, "e2")) == 1
    proc.kill()
    proc.wait()
    with pytest.raises(FailedPrecondition):
        case.store.delete(ENGINES, "e2")
    deadline = time.monotonic() + 10
    while case.store.holders(ENGINES, "e2") and time.monotonic() < deadline:
        time.sleep(0.25)
    assert case.store.holders(ENGINES, "e2") == []
    assert case.store.delete(ENGINES, "e2") > 0


def test_size_cap_collects_least_recently_used_unheld(case: StoreCase) -> None:
    size = 10_000 + len('{"a": 1}')
    store = case.reopen(max_bytes=int(2.5 * size))
    for name in ("a", "b"):
        store.publish_once(ENGINES, name, writer(bytes([ord(name)]) * 10_000))
        time.sleep(1.1)  # S3 times have one-second resolution
    store.touch(ENGINES, "a")  # a is now more recent than b
    time.sleep(1.1)
    store.publish_once(ENGINES, "c", writer(b"c" * 10_000))
    assert sorted(m["id"] for m in store.list(ENGINES)) == ["a", "c"]
    # A held engine survives even as the least recently used.
    with store.hold(ENGINES, "a"):
        time.sleep(1.1)
        store.publish_once(ENGINES, "d", writer(b"d" * 10_000))
        assert sorted(m["id"] for m in store.list(ENGINES)) == ["a", "d"]
    assert store.total_bytes(ENGINES) == 2 * size


def test_corrupt_file_is_named_at_fetch(case: StoreCase, tmp_path: Path) -> None:
    case.store.publish_once(ENGINES, "e1", writer(b"good" * 1000))
    case.overwrite_file("e1", "weights.bin", b"evil" * 1000)
    with pytest.raises(DataLoss, match=r"engine e1 .*file weights\.bin is corrupt: sha256"):
        case.store.fetch(ENGINES, "e1", tmp_path / "cache")
    assert not (tmp_path / "cache" / "e1").exists()


def test_one_file_is_fetched_and_checked(case: StoreCase, tmp_path: Path) -> None:
    case.store.publish_once(ENGINES, "e1", writer(b"good" * 1000))
    dest = tmp_path / "one" / "config.json"
    assert case.store.fetch_file(ENGINES, "e1", "sub/config.json", dest) == dest
    assert dest.read_text() == '{"a": 1}'
    with pytest.raises(NotFound, match=r"engine e1 .* has no file nope\.json"):
        case.store.fetch_file(ENGINES, "e1", "nope.json", dest)
    case.overwrite_file("e1", "sub/config.json", b'{"a": 2}')
    with pytest.raises(DataLoss, match=r"engine e1 .*file sub/config\.json is corrupt: sha256"):
        case.store.fetch_file(ENGINES, "e1", "sub/config.json", dest)


def test_corrupt_cached_copy_is_replaced(case: StoreCase, tmp_path: Path) -> None:
    case.store.publish_once(ENGINES, "e1", writer(b"good" * 1000))
    local = case.store.fetch(ENGINES, "e1", tmp_path / "cache")
    (local / "weights.bin").write_bytes(b"rot!" * 1000)
    again = case.store.fetch(ENGINES, "e1", tmp_path / "cache")
    assert (again / "weights.bin").read_bytes() == b"good" * 1000


def test_fetch_engine_refuses_another_target(case: StoreCase, tmp_path: Path) -> None:
    manifest = EngineManifest(
        engine_id="e1",
        model_name="m",
        model_digest="d",
        architecture="LlamaForCausalLM",
        source="/m",
        target="sm_90",
        quantization="none",
        dtype="bfloat16",
        max_model_len=16,
        num_parameters=1,
        build_options={},
        toolchain={},
        tokenizer={},
        validation=Validation(1.0, 1.0, 0.01, 10),
    )

    def build(staging: Path) -> dict[str, object]:
        (staging / "weights.bin").write_bytes(b"w")
        return manifest.to_json()

    case.store.publish_once(ENGINES, "e1", build)
    with pytest.raises(FailedPrecondition, match=r"e1 was built for target sm_90.*device is cpu"):
        fetch_engine(case.store, "e1", tmp_path / "cache", device_target="cpu")
    assert not (tmp_path / "cache" / "e1").exists()
    assert fetch_engine(case.store, "e1", tmp_path / "cache", device_target="sm_90").is_dir()


def test_s3_build_that_loses_its_lease_is_not_published(case: StoreCase) -> None:
    if case.s3 is None:
        pytest.skip("local locks are kernel file locks: they cannot be taken over")

    def build(staging: Path) -> dict[str, object]:
        (staging / "weights.bin").write_bytes(b"w")
        # Another builder takes the lock over (as after an expiry): our renewals now fail.
        assert case.s3 is not None
        case.s3.client().put_object(
            Bucket=case.bucket, Key=f"store/.locks/{ENGINES}/e1", Body=b"someone else"
        )
        time.sleep(FAST.lock_lease_s)
        return {}

    with pytest.raises(Aborted, match="taken over by another builder"):
        case.store.publish_once(ENGINES, "e1", build)
    assert case.store.find(ENGINES, "e1") is None


def engine_writer(weights: bytes) -> object:
    def build(staging: Path) -> dict[str, object]:
        (staging / "weights-00001-of-00001.safetensors").write_bytes(weights)
        (staging / "tokenizer.json").write_text('{"t": 1}')
        return {"note": "engine-like"}

    return build


def test_engine_to_serve_reads_a_local_store_in_place(case: StoreCase, tmp_path: Path) -> None:
    case.store.publish_once(ENGINES, "e1", engine_writer(b"good" * 1000))
    served = engine_to_serve(case.store, "e1", tmp_path / "cache")
    path = served.path
    if case.s3 is None:  # served where the store keeps it: nothing copied
        assert (path, served.verified) == (Path(case.uri) / ENGINES / "e1", False)
        assert not (tmp_path / "cache" / "e1").exists()
        # What was trusted travels with it: the manifest file's digest (every later read
        # must match it) and its entries.
        raw = (path / MANIFEST_NAME).read_bytes()
        assert served.manifest_sha256 == hashlib.sha256(raw).hexdigest()
        assert served.files is not None and "tokenizer.json" in served.files
    else:  # fetched into the cache, every file checked on the way
        assert (path, served.verified) == (tmp_path / "cache" / "e1", True)
        assert (served.manifest_sha256, served.files) == (None, None)
    assert (path / "weights-00001-of-00001.safetensors").read_bytes() == b"good" * 1000
    # In place, a weight file is left to the loader (hashed as it loads); a small file is
    # checked here, with the file and both digests named.
    case.overwrite_file("e1", "weights-00001-of-00001.safetensors", b"evil" * 1000)
    if case.s3 is None:
        assert engine_to_serve(case.store, "e1", tmp_path / "cache")[:2] == (path, False)
    case.overwrite_file("e1", "tokenizer.json", b'{"t": 2}')
    want = hashlib.sha256(b'{"t": 1}').hexdigest()
    got = hashlib.sha256(b'{"t": 2}').hexdigest()
    with pytest.raises(DataLoss, match=rf"tokenizer\.json is corrupt: sha256 {got}, .* {want}"):
        engine_to_serve(case.store, "e1", tmp_path / "cache2")
