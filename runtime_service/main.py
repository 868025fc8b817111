"""Entry point of the runtime daemon: `python -m runtime_service` or `llmserve runtime`."""

from __future__ import annotations

from collections.abc import Sequence

from llmserve.config import parse_config
from llmserve.server import Daemon, Service, run_daemon
from llmserve.server.unimplemented import fill_unimplemented
from llmserve.v1 import runtime_pb2, runtime_pb2_grpc
from runtime_service.config import RuntimeConfig

DESCRIPTION = "The llmserve runtime: serves one engine with continuous batching over gRPC."


def setup(daemon: Daemon) -> None:
    servicer = fill_unimplemented(
        runtime_pb2_grpc.RuntimeServicer,
        runtime_pb2.DESCRIPTOR.services_by_name["Runtime"],
        "pending: runtime daemon issue",
    )()
    daemon.add_service(
        Service("llmserve.v1.Runtime", servicer, runtime_pb2_grpc.add_RuntimeServicer_to_server)
    )


def main(argv: Sequence[str] | None = None, prog: str = "python -m runtime_service") -> int:
    config = parse_config(RuntimeConfig, argv, prog=prog, description=DESCRIPTION)
    return run_daemon("runtime", config, setup)
