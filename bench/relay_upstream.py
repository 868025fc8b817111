"""A bench-only upstream for bench/gateway_relay.py: llmserve.v1.Runtime without an engine.

Generate streams `sampling.max_tokens` tokens in chunks of --tokens-per-chunk (1) tokens each,
one chunk per stream per step, steps every --step-ms (as an engine's steps would), the last
chunk with a finish reason, usage and timings. GetStatus and health answer as a serving
runtime of model --model does, so a real gateway routes to it. Nothing here is meant for
production: it exists so that the gateway's own cost per relayed chunk can be measured
without an engine's.

  python bench/relay_upstream.py --port 50070 --step-ms 20
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmserve.v1 import common_pb2, engine_pb2, runtime_pb2, runtime_pb2_grpc

TEXT = " word"  # the text of every streamed token


class Ticker:
    """Wakes every waiting stream once per step."""

    def __init__(self, step_s: float) -> None:
        self.step_s = step_s
        self._step: asyncio.Future[None] | None = None

    async def next_step(self) -> None:
        if self._step is None or self._step.done():
            self._step = asyncio.get_running_loop().create_future()
        await self._step

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.step_s)
            if self._step is not None and not self._step.done():
                self._step.set_result(None)


class BenchRuntime(runtime_pb2_grpc.RuntimeServicer):
    def __init__(self, model: str, ticker: Ticker, tokens_per_chunk: int = 1) -> None:
        self.model = model
        self.tokens_per_chunk = tokens_per_chunk
        self.ticker = ticker
        self.num_running = 0

    async def Generate(self, request: Any, context: Any) -> Any:
        n = max(1, request.sampling.max_tokens or 16)
        k = self.tokens_per_chunk
        chunk = runtime_pb2.GenerateResponse(
            request_id=request.request_id, token_ids=[42] * k, text=TEXT * k
        ).SerializeToString()
        self.num_running += 1
        try:
            sent = 0
            while n - sent > k:
                await self.ticker.next_step()
                await context.write(chunk)
                sent += k
            await self.ticker.next_step()
            await context.write(
                runtime_pb2.GenerateResponse(
                    request_id=request.request_id,
                    token_ids=[42] * (n - sent),
                    text=TEXT * (n - sent),
                    finish_reason=common_pb2.FINISH_REASON_LENGTH,
                    usage=common_pb2.Usage(prompt_tokens=8, completion_tokens=n),
                    timings=common_pb2.Timings(queue_ns=1, prefill_ns=1, decode_ns=1, total_ns=3),
                ).SerializeToString()
            )
        finally:
            self.num_running -= 1

    async def GetStatus(self, request: Any, context: Any) -> Any:
        return runtime_pb2.GetStatusResponse(
            engine=engine_pb2.Engine(
                model_name=self.model, engine_id="bench-upstream", max_model_len=4096
            ),
            kv_cache=runtime_pb2.KvCacheStatus(block_size=16, num_blocks=1, num_free_blocks=1),
            num_running=self.num_running,
            device="none",
        )


def _identity(b: bytes) -> bytes:
    return b


async def serve(port: int, model: str, step_ms: float, tokens_per_chunk: int = 1) -> None:
    server = grpc.aio.server(options=[("grpc.http2.max_ping_strikes", 0)])
    ticker = Ticker(step_ms / 1000)
    servicer = BenchRuntime(model, ticker, tokens_per_chunk)
    # Generate writes pre-serialized bytes: the upstream's own cost stays small.
    handlers = {
        "Generate": grpc.unary_stream_rpc_method_handler(
            servicer.Generate,
            request_deserializer=runtime_pb2.GenerateRequest.FromString,
            response_serializer=_identity,
        ),
        "GetStatus": grpc.unary_unary_rpc_method_handler(
            servicer.GetStatus,
            request_deserializer=runtime_pb2.GetStatusRequest.FromString,
            response_serializer=runtime_pb2.GetStatusResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("llmserve.v1.Runtime", handlers),)
    )
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    for name in ("", "llmserve.v1.Runtime"):
        await checker.set(name, health_pb2.HealthCheckResponse.SERVING)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    ticking = asyncio.create_task(ticker.run())
    try:
        await server.wait_for_termination()
    finally:
        ticking.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="bench")
    parser.add_argument("--step-ms", type=float, default=20.0, help="time between chunks")
    parser.add_argument(
        "--tokens-per-chunk",
        type=int,
        default=1,
        help="tokens in each chunk (an engine that streams several tokens a step)",
    )
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.model, args.step_ms, args.tokens_per_chunk))


if __name__ == "__main__":
    main()
