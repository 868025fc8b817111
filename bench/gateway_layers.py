"""The gateway's own Python per relayed chunk, layer by layer, without gRPC's cost.

The real servicer (GatewayServicer.Generate behind the real ServerInterceptor) relays calls
from an in-process stand-in for the runtime call: `read()` awaits a future that the event loop
resolves on its next turn, as grpc.aio's completion does, and returns one runtime chunk's
bytes. Each variant relays --chunks chunks in one call; the figure is CPU µs per chunk
(time.process_time, one process, uvloop), the fastest of --repeat runs:

- floor: `async for chunk in call: yield chunk` (what bench/bare_relay.py does around grpc);
- Generate: the servicer's Generate (coalescing as configured), iterated directly;
- interceptor + Generate: what a gRPC call runs;

and the CPU µs of a whole one-chunk call (authorization with a stand-in for the Redis lookup,
routing, the runtime request, spans, the access-log line written to /dev/null).

What gRPC itself costs per message (receive, send, HTTP/2, its threads) is not here: the
end-to-end figure is bench/gateway_relay.py's. The difference between these rows is what the
gateway's Python adds per chunk.

  python bench/gateway_layers.py --chunks 200000
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.auth import Caller
from gateway.config import GatewayConfig
from gateway.routing import RuntimeState, models_of
from gateway.service import GatewayServicer
from llmserve.server.interceptor import ServerInterceptor
from llmserve.v1 import common_pb2, gateway_pb2, runtime_pb2

MODEL = "bench"
CHUNK = runtime_pb2.GenerateResponse(
    request_id="owner/id", token_ids=[42], text=" word"
).SerializeToString()
LAST = runtime_pb2.GenerateResponse(
    request_id="owner/id",
    token_ids=[42],
    text=" word",
    finish_reason=common_pb2.FINISH_REASON_LENGTH,
    usage=common_pb2.Usage(prompt_tokens=8, completion_tokens=1),
).SerializeToString()


class FakeCall:
    """A runtime call streaming `n` chunks, each read completing on the loop's next turn."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.loop = asyncio.get_running_loop()

    async def read(self) -> Any:
        if self.left == 0:
            return grpc.aio.EOF
        self.left -= 1
        future = self.loop.create_future()
        self.loop.call_soon(future.set_result, CHUNK if self.left else LAST)
        return await future

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[bytes]:
        while (chunk := await self.read()) is not grpc.aio.EOF:
            yield chunk

    def cancel(self) -> bool:
        return False


class FakeRuntime:
    def __init__(self, n: int) -> None:
        self.state = RuntimeState("fake:1", healthy=True, model=MODEL)
        self.n = n

    def generate_raw(self, request: Any, **kwargs: Any) -> FakeCall:
        return FakeCall(self.n)


class FakePool:
    def __init__(self, n: int) -> None:
        self.runtime = FakeRuntime(n)

    def models(self) -> Any:
        return models_of([self.runtime.state])

    def choose(self, model: str, **kwargs: Any) -> FakeRuntime:
        return self.runtime

    def auth(self) -> tuple[()]:
        return ()


class FakeKeys:
    async def authenticate(self, metadata: Any) -> Caller:
        return Caller("bench", "hash")


class FakeLimiter:
    async def check(self, key_hash: str) -> None:
        return None


class FakeContext:
    def invocation_metadata(self) -> tuple[()]:
        return ()

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def time_remaining(self) -> None:
        return None


REQUEST = gateway_pb2.GatewayGenerateRequest(
    model=MODEL,
    prompt=common_pb2.Prompt(text="hi"),
    sampling=common_pb2.SamplingParams(max_tokens=1),
)


def servicer(n: int, coalesce: bool) -> GatewayServicer:
    config = GatewayConfig(relay_coalesce=coalesce)
    return GatewayServicer(config, FakeKeys(), FakeLimiter(), None, FakePool(n))  # type: ignore[arg-type]


async def floor(n: int) -> AsyncIterator[bytes]:
    async for chunk in FakeCall(n):
        yield chunk


def variants(n: int) -> dict[str, Callable[[], AsyncIterator[Any]]]:
    interceptor = ServerInterceptor()
    decode = gateway_pb2.GatewayGenerateRequest.FromString
    raw = REQUEST.SerializeToString()
    out: dict[str, Callable[[], AsyncIterator[Any]]] = {
        "floor (bare relay's loop)": lambda: floor(n)
    }
    for coalesce in (False, True):
        label = "coalescing" if coalesce else "no coalescing"
        out[f"Generate, {label}"] = lambda c=coalesce: servicer(n, c).Generate(
            REQUEST, FakeContext()
        )
        out[f"interceptor + Generate, {label}"] = lambda c=coalesce: interceptor._wrap_stream(
            "/llmserve.v1.Gateway/Generate", servicer(n, c).Generate, decode
        )(raw, FakeContext())
    return out


async def cpu_per_chunk(make: Callable[[], AsyncIterator[Any]], n: int) -> float:
    count = 0
    start = time.process_time()
    async for _ in make():
        count += 1
    used = time.process_time() - start
    assert count >= 1
    return used / n * 1e6


async def cpu_per_call(calls: int) -> float:
    """CPU µs of one one-chunk call through the interceptor and Generate (fake key lookup:
    no Redis; the access-log line and spans as configured, logging to /dev/null)."""
    make = variants(1)["interceptor + Generate, coalescing"]
    start = time.process_time()
    for _ in range(calls):
        async for _ in make():
            pass
    return (time.process_time() - start) / calls * 1e6


async def main_async(args: argparse.Namespace) -> None:
    rows: dict[str, list[float]] = {}
    for _ in range(args.repeat):
        for name, make in variants(args.chunks).items():
            rows.setdefault(name, []).append(await cpu_per_chunk(make, args.chunks))
    base = min(rows["floor (bare relay's loop)"])
    print("| path | CPU µs per chunk | above the floor |\n| --- | ---: | ---: |")
    for name, values in rows.items():
        print(f"| {name} | {min(values):.2f} | {min(values) - base:+.2f} |")
    per_call = min([await cpu_per_call(args.calls) for _ in range(args.repeat)])
    print(f"\nper call (one chunk, interceptor + Generate, no Redis): {per_call:.0f} CPU µs")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--chunks", type=int, default=200_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--calls", type=int, default=5000, help="one-chunk calls for the per-call row")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=open(os.devnull, "w"))  # noqa: SIM115
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main_async(args))


if __name__ == "__main__":
    main()
