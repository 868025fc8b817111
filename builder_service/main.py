"""Entry point of the builder daemon: `python -m builder_service` or `llmserve builder`."""

from __future__ import annotations

from collections.abc import Sequence

from builder_service.config import BuilderConfig
from llmserve.config import parse_config
from llmserve.server import Daemon, Service, run_daemon
from llmserve.server.unimplemented import fill_unimplemented
from llmserve.v1 import builder_pb2, builder_pb2_grpc

DESCRIPTION = "The llmserve builder: compiles checkpoints into engines in the artifact store."


def setup(daemon: Daemon) -> None:
    servicer = fill_unimplemented(
        builder_pb2_grpc.BuilderServicer,
        builder_pb2.DESCRIPTOR.services_by_name["Builder"],
        "pending: builder issue",
    )()
    daemon.add_service(
        Service("llmserve.v1.Builder", servicer, builder_pb2_grpc.add_BuilderServicer_to_server)
    )


def main(argv: Sequence[str] | None = None, prog: str = "python -m builder_service") -> int:
    config = parse_config(BuilderConfig, argv, prog=prog, description=DESCRIPTION)
    return run_daemon("builder", config, setup)
