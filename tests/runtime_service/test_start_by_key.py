"""Start by key: a runtime asked for *model X, quantization Q* serves the engine built for its
own device: found in the store, built by a real builder daemon, or waited for."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from builder_service.build import Builder
from builder_service.spec import BuildSpec
from llmserve.config import parse_config
from llmserve.device import cpu_info, device_info
from llmserve.errors import FailedPrecondition, NotFound
from llmserve.processes import DaemonProcess
from llmserve.store import open_store
from llmserve.store.engines import list_engines
from runtime_service.config import RuntimeConfig
from runtime_service.engine_key import EngineKey, default_model_name, resolve_engine_id
from tests.builder_service.conftest import start_builder
from tests.runtime_service.daemon_harness import status

TARGET = device_info().target  # the runtime's own device, as the daemon sees it
RUNTIME_ARGS = ["--log-format", "text", "--num-kv-blocks", "64", "--grace-period-s", "2"]


def build_into(store: Path, source: Path, quantization: str = "none") -> str:
    """Builds `source` for the runtime's device into `store` (in process); the engine id."""
    builder = Builder(open_store(str(store)), store.parent / "work", device=cpu_info())
    final = builder.build(BuildSpec(source=str(source), target=TARGET, quantization=quantization))
    assert final.engine is not None
    return final.engine.engine_id


def start_runtime(store: Path, log: Path, *args: str) -> DaemonProcess:
    return DaemonProcess(
        "runtime_service", [*RUNTIME_ARGS, "--store", str(store), *args], log_path=log
    ).start()


def wait_for_log(proc: DaemonProcess, text: str, timeout: float = 120.0) -> None:
    """Until the daemon's log holds `text` (the bound only guards against a hang)."""
    assert proc.log_path is not None and proc.proc is not None
    deadline = time.monotonic() + timeout
    while text not in proc.log_path.read_text(errors="replace"):
        assert proc.proc.poll() is None, proc.log_path.read_text(errors="replace")
        assert time.monotonic() < deadline, f"no {text!r} in {proc.log_path}"
        time.sleep(0.1)


@pytest.fixture
def source(tiny_model_dir: Callable[[str], Path]) -> Path:
    return tiny_model_dir("llama")


@pytest.mark.parametrize(
    ("uri", "name"),
    [
        ("s3://bucket/models/qwen3-0.6b/", "qwen3-0.6b"),
        ("/models/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct.Q4_1"),
        ("/data/llama", "llama"),
    ],
)
def test_the_model_name_defaults_to_the_builders(uri: str, name: str) -> None:
    assert default_model_name(uri) == name


def test_resolves_the_newest_engine_of_the_key(source: Path, tmp_path: Path) -> None:
    store_path = tmp_path / "store"
    plain = build_into(store_path, source)
    int8 = build_into(store_path, source, "int8")
    store = open_store(str(store_path))
    name = default_model_name(str(source))
    assert resolve_engine_id(store, EngineKey(name, "none", TARGET)) == plain
    assert resolve_engine_id(store, EngineKey(name, "int8", TARGET)) == int8
    with pytest.raises(NotFound, match=f"no engine of model '{name}', quantization int4, target"):
        resolve_engine_id(store, EngineKey(name, "int4", TARGET))
    other = "sm_90" if TARGET == "cpu" else "cpu"
    with pytest.raises(NotFound, match=f"target {other}.*--builder.*--wait-for-engine"):
        resolve_engine_id(store, EngineKey(name, "none", other))
    assert resolve_engine_id(store, EngineKey(name, "int8", TARGET), pinned=int8) == int8
    with pytest.raises(FailedPrecondition, match=f"engine {plain} is model '{name}' with"):
        resolve_engine_id(store, EngineKey(name, "int8", TARGET), pinned=plain)


@pytest.fixture
def builder_daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    proc = start_builder(tmp_path / "store", tmp_path / "work", tmp_path / "builder.log")
    try:
        proc.wait_serving()
        yield proc
    finally:
        proc.terminate()


def test_a_runtime_asks_the_builder_and_a_second_one_finds_the_engine(
    builder_daemon: DaemonProcess, source: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    first = start_runtime(
        store,
        tmp_path / "r1.log",
        "--model-source",
        str(source),
        "--builder",
        builder_daemon.address,
        "--quantization",
        "int8",
    )
    try:
        first.wait_serving(timeout=600)
        engine = status(first.address).engine
        assert (engine.model_name, engine.target) == (source.name, TARGET)
        built = list_engines(open_store(str(store)))
        assert [(e.engine_id, e.quantization) for e in built] == [(engine.engine_id, "int8")]
    finally:
        assert first.terminate() == 0
    second = start_runtime(
        store, tmp_path / "r2.log", "--model-name", source.name, "--quantization", "int8"
    )
    try:
        second.wait_serving(timeout=300)
        assert status(second.address).engine.engine_id == engine.engine_id
        assert len(list_engines(open_store(str(store)))) == 1  # nothing built again
    finally:
        assert second.terminate() == 0


def test_a_runtime_waits_for_its_engine_and_stops_while_waiting(
    source: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    waiting = start_runtime(
        store,
        tmp_path / "wait.log",
        "--model-name",
        source.name,
        "--wait-for-engine",
        "--engine-poll-s",
        "0.2",
    )
    stopped = start_runtime(
        store,
        tmp_path / "stop.log",
        "--model-name",
        "other",
        "--wait-for-engine",
        "--engine-poll-s",
        "0.2",
    )
    try:
        wait_for_log(waiting, "waiting for one")
        wait_for_log(stopped, "waiting for one")
        assert stopped.terminate(timeout=60) == 1  # SIGTERM ends the wait: start-up failed
        assert (
            "stopped while waiting for an engine of model 'other'"
            in (tmp_path / "stop.log").read_text()
        )
        engine_id = build_into(store, source)
        waiting.wait_serving(timeout=300)
        assert status(waiting.address).engine.engine_id == engine_id
    finally:
        waiting.terminate()
        stopped.kill()


def test_a_runtime_without_builder_or_wait_names_what_is_missing(tmp_path: Path) -> None:
    proc = start_runtime(tmp_path / "store", tmp_path / "missing.log", "--model-name", "llama")
    assert proc.proc is not None
    assert proc.proc.wait(timeout=300) == 1
    log = (tmp_path / "missing.log").read_text()
    assert f"no engine of model 'llama', quantization none, target {TARGET}" in log


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model-name", "x", "--builder", "b:1"], "--builder needs --model-source"),
        (["--model-name", "x", "--quantization", "q3"], "quantization must be one of"),
        (["--model-name", "x", "--model-path", "/m"], "not --model-path with the others"),
    ],
)
def test_bad_start_settings_are_refused(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_config(RuntimeConfig, argv)
    assert message in capsys.readouterr().err
