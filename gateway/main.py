"""Entry point of the gateway daemon: `python -m gateway` or `llmserve gateway`."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.config import GatewayConfig
from llmserve.config import parse_config
from llmserve.server import Daemon, Service, run_daemon
from llmserve.server.unimplemented import fill_unimplemented
from llmserve.v1 import gateway_pb2, gateway_pb2_grpc

DESCRIPTION = "The llmserve gateway: sessions, auth and rate limits, routing to runtimes."


def setup(daemon: Daemon) -> None:
    servicer = fill_unimplemented(
        gateway_pb2_grpc.GatewayServicer,
        gateway_pb2.DESCRIPTOR.services_by_name["Gateway"],
        "pending: gateway issue",
    )()
    daemon.add_service(
        Service("llmserve.v1.Gateway", servicer, gateway_pb2_grpc.add_GatewayServicer_to_server)
    )


def main(argv: Sequence[str] | None = None, prog: str = "python -m gateway") -> int:
    config = parse_config(GatewayConfig, argv, prog=prog, description=DESCRIPTION)
    return run_daemon("gateway", config, setup)
