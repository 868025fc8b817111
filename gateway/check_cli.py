"""`llmserve check`: is a gateway up and serving models? (The chart's `helm test` runs it.)

Checks, in order: grpc.health.v1 reports SERVING for the whole server; with an API key,
ListModels answers and at least `--min-models` models have a healthy runtime. Prints one line
per check and exits 0 when all pass, 1 otherwise (the line says which failed and why).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.auth import parse_keys_file
from llmserve.config import parse_config, require, setting
from llmserve.v1 import gateway_pb2, gateway_pb2_grpc

DESCRIPTION = "Checks that a gateway is healthy and serves models (used by `helm test`)."


@dataclass(kw_only=True)
class CheckConfig:
    """Which gateway, and how to call it."""

    gateway: str = setting("127.0.0.1:50051", "gateway address HOST:PORT")
    api_key: str = setting("", "API key (prefer the environment variable LLMSERVE_API_KEY)")
    api_key_file: Path | None = setting(
        None, "a gateway keys file (`name:key` lines): call with its first key"
    )
    min_models: int = setting(1, "fewest models with a healthy runtime (0: only list them)")
    gateway_tls_ca: Path | None = setting(
        None, "PEM CA of the gateway's certificate: connect with TLS"
    )
    timeout_s: float = setting(10.0, "deadline of one call")

    def __post_init__(self) -> None:
        require(self.min_models >= 0, f"min_models must be >= 0, got {self.min_models}")
        require(self.timeout_s > 0, f"timeout_s must be > 0, got {self.timeout_s}")

    def key(self) -> str:
        if self.api_key or self.api_key_file is None:
            return self.api_key
        for line in self.api_key_file.read_text(encoding="utf-8").splitlines():
            name, sep, key = line.strip().partition(":")
            if sep and not name.startswith("#"):
                return key
        return ""


def run_checks(config: CheckConfig, out: TextIO) -> bool:
    """Runs the checks, printing one line each; True when all pass."""
    if config.api_key_file is not None:
        parse_keys_file(config.api_key_file)  # a malformed file fails here, naming the line
    if config.gateway_tls_ca is None:
        channel = grpc.insecure_channel(config.gateway)
    else:
        creds = grpc.ssl_channel_credentials(root_certificates=config.gateway_tls_ca.read_bytes())
        channel = grpc.secure_channel(config.gateway, creds)
    with channel:
        try:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=config.timeout_s
            )
        except grpc.RpcError as err:
            print(f"FAIL health: {err.code().name}: {err.details()}", file=out)
            return False
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)
        print(f"{'ok' if status == 'SERVING' else 'FAIL'} health: {status}", file=out)
        if status != "SERVING":
            return False
        key = config.key()
        if not key:
            print("skip ListModels: no API key given (--api-key, --api-key-file)", file=out)
            return config.min_models == 0
        try:
            reply = gateway_pb2_grpc.GatewayStub(channel).ListModels(
                gateway_pb2.ListModelsRequest(),
                metadata=[("authorization", f"Bearer {key}")],
                timeout=config.timeout_s,
            )
        except grpc.RpcError as err:
            print(f"FAIL ListModels: {err.code().name}: {err.details()}", file=out)
            return False
    healthy = [m.name for m in reply.models if m.num_healthy_runtimes > 0]
    passed = len(healthy) >= config.min_models
    print(
        f"{'ok' if passed else 'FAIL'} ListModels: {len(healthy)} served "
        f"({', '.join(healthy) or 'none'}), at least {config.min_models} expected",
        file=out,
    )
    return passed


def main(argv: Sequence[str] | None = None, prog: str = "llmserve check") -> int:
    config = parse_config(CheckConfig, argv, prog=prog, description=DESCRIPTION)
    return 0 if run_checks(config, sys.stdout) else 1
