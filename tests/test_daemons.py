"""The three daemons as real processes: start-up, health, reflection, --help, SIGTERM drain."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmserve.processes import REPO_ROOT, DaemonProcess
from llmserve.testing import tiny_models

DAEMONS = {
    "builder_service": "llmserve.v1.Builder",
    "runtime_service": "llmserve.v1.Runtime",
    "gateway": "llmserve.v1.Gateway",
}
GRACE_S = 3.0
MODEL_CACHE = REPO_ROOT / ".cache" / "models"


def daemon_args(module: str, tmp: Path) -> list[str]:
    args = ["--grace-period-s", str(GRACE_S), "--log-format", "text"]
    if module == "builder_service":
        args += ["--store", str(tmp / "store")]
    if module == "runtime_service":
        model = tiny_models.tiny_model("qwen2", MODEL_CACHE)
        args += ["--model-path", str(model), "--num-kv-blocks", "64"]
    return args


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, DaemonProcess]]:
    tmp = tmp_path_factory.mktemp("daemons")
    procs = {
        m: DaemonProcess(m, daemon_args(m, tmp), log_path=tmp / f"{m}.log").start() for m in DAEMONS
    }
    try:
        for proc in procs.values():
            proc.wait_serving()
        yield procs
    finally:
        for proc in procs.values():
            proc.terminate()


def test_each_daemon_serves_health(running: dict[str, DaemonProcess]) -> None:
    for module, service in DAEMONS.items():
        with grpc.insecure_channel(running[module].address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for name in ("", service):
                reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_client_generated_from_protos_alone(
    running: dict[str, DaemonProcess], tmp_path: Path
) -> None:
    """In an empty directory, protoc on protos/ makes a client that checks health, lists
    services by reflection, and streams a generation from the runtime."""
    protos = REPO_ROOT / "protos"
    # In Python, grpc/health/v1 would collide with the grpc package itself: generate gRPC's
    # own protos from protos/grpc so that they import as health.v1 and reflection.v1.
    for root in (protos, protos / "grpc"):
        files = [
            str(p.relative_to(root))
            for p in root.rglob("*.proto")
            if root != protos or "grpc" not in p.relative_to(root).parts
        ]
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{root}",
                "--python_out=.",
                "--grpc_python_out=.",
                *files,
            ],
            cwd=tmp_path,
            check=True,
        )
    for package in ("llmserve", "llmserve/v1"):  # so this copy, not the repo's, is imported
        (tmp_path / package / "__init__.py").touch()
    client = tmp_path / "client.py"
    client.write_text(CLIENT)
    addresses = [running[m].address for m in DAEMONS]
    out = subprocess.run(
        [sys.executable, str(client), *addresses],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for address, service in zip(addresses, DAEMONS.values(), strict=True):
        assert f"{address} health SERVING" in lines
        assert any(line.startswith(f"{address} services ") and service in line for line in lines)
    # NOTE: how many chunks carry the 5 tokens depends on timing (a runtime merges the deltas a
    # slow reader has not taken yet into one chunk), so only the stream's content is checked.
    assert "runtime finished FINISH_REASON_LENGTH after 5 tokens" in lines


CLIENT = """
import sys
import grpc
import llmserve
assert llmserve.__file__ is None or llmserve.__file__.startswith(sys.path[0]), llmserve.__file__
from health.v1 import health_pb2, health_pb2_grpc
from reflection.v1 import reflection_pb2, reflection_pb2_grpc
from llmserve.v1 import runtime_pb2, runtime_pb2_grpc

for address in sys.argv[1:]:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        print(address, "health", health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(stub.ServerReflectionInfo(iter([request])))
        names = sorted(s.name for s in reply.list_services_response.service)
        print(address, "services", " ".join(names))
from llmserve.v1 import common_pb2
with grpc.insecure_channel(sys.argv[2]) as channel:
    request = runtime_pb2.GenerateRequest(
        prompt=common_pb2.Prompt(text="The harbor town"),
        sampling=common_pb2.SamplingParams(temperature=0, max_tokens=5, ignore_eos=True),
    )
    chunks = list(runtime_pb2_grpc.RuntimeStub(channel).Generate(request))
    tokens = sum(len(c.token_ids) for c in chunks)
    reason = common_pb2.FinishReason.Name(chunks[-1].finish_reason)
    print("runtime finished", reason, "after", tokens, "tokens")
"""


def test_sigusr1_dumps_every_threads_stack_and_serving_goes_on(
    running: dict[str, DaemonProcess],
) -> None:
    """`kill -USR1` on a daemon, and on the runtime's engine process, writes their threads'
    stacks to the log (how to see where a process that answers nothing waits)."""
    for module, proc in running.items():
        assert proc.proc is not None and proc.log_path is not None
        pids = [proc.proc.pid]
        if module == "runtime_service":  # the engine core runs in a child process
            tasks = Path(f"/proc/{proc.proc.pid}/task").glob("*/children")
            children = [int(p) for task in tasks for p in task.read_text().split()]
            pids += [
                p for p in children if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()
            ]
            assert len(pids) > 1
        for pid in pids:
            before = proc.log_path.read_text(errors="replace").count("most recent call first")
            os.kill(pid, signal.SIGUSR1)
            deadline = time.monotonic() + 30  # guards a hang only
            while (
                proc.log_path.read_text(errors="replace").count("most recent call first") <= before
            ):
                assert time.monotonic() < deadline, f"{module} pid {pid}: no stack dump"
                time.sleep(0.05)
    test_each_daemon_serves_health(running)


@pytest.mark.parametrize("module", list(DAEMONS))
def test_sigterm_goes_not_serving_and_exits_within_grace(module: str, tmp_path: Path) -> None:
    proc = DaemonProcess(module, daemon_args(module, tmp_path), log_path=tmp_path / "log")
    proc.start().wait_serving()
    statuses: list[int] = []
    watching = threading.Event()

    def watch() -> None:
        with grpc.insecure_channel(proc.address) as channel:
            stream = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=DAEMONS[module])
            )
            try:
                for reply in stream:
                    statuses.append(reply.status)
                    watching.set()
            except grpc.RpcError:
                pass  # the server went away

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert watching.wait(10)
    assert proc.proc is not None
    started = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    status = proc.proc.wait(timeout=GRACE_S + 10)
    elapsed = time.monotonic() - started
    watcher.join(5)
    proc.terminate()
    assert status == 0, (tmp_path / "log").read_text()
    assert elapsed < GRACE_S + 2
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    assert statuses[0] == serving
    assert not_serving in statuses[1:]


@pytest.mark.parametrize("command", ["builder", "runtime", "gateway", "up"])
def test_help(command: str) -> None:
    llmserve = Path(sys.executable).parent / "llmserve"
    for argv in (
        [str(llmserve), command, "--help"],
        [sys.executable, "-m", "llmserve", command, "--help"],
    ):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"usage: llmserve {command}")
    module = {"builder": "builder_service", "runtime": "runtime_service"}.get(command, command)
    if module in DAEMONS:
        out = subprocess.run(
            [sys.executable, "-m", module, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO_ROOT,
        )
        assert out.returncode == 0
        assert "--grace-period-s" in out.stdout
        assert "LLMSERVE_PORT" in out.stdout
