"""The per-key rate limit through a gateway process: refused with RetryInfo, recovered."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from llmserve.processes import RedisServer
from tests.error_details import decode
from tests.gateway.gateway_harness import Client, start_gateway


def test_rate_limit_refuses_then_recovers(tmp_path: Path, redis_server: RedisServer) -> None:
    gateway, keys = start_gateway(
        tmp_path, redis_server, [], "--rate-limit-rps", "5", "--rate-limit-burst", "2"
    )
    try:
        bob, carol = Client(gateway.address, keys["bob"]), Client(gateway.address, keys["carol"])
        bob.list()
        bob.list()
        with pytest.raises(grpc.RpcError) as err:
            bob.list()
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "rate limit exceeded" in err.value.details()
        assert "rate_limit_rps" in err.value.details()
        decoded = decode(err.value)
        assert (decoded.reason, decoded.domain) == ("RATE_LIMITED", "llmserve.dev")
        assert decoded.retry_delay_s is not None and 0 < decoded.retry_delay_s <= 0.2
        carol.list()  # another key has its own bucket
        time.sleep(decoded.retry_delay_s + 0.05)
        bob.list()  # recovered
    finally:
        gateway.terminate()
