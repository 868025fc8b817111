"""The floor of a grpc.aio relay, for bench/gateway_relay.py --relay-cmd: Gateway.Generate
answered by streaming an upstream Runtime.Generate through as bytes (no parsing, no
interceptor, no auth, no routing; the caller's request parsed once for its prompt and
sampling), on uvloop as the daemons run. What the real gateway costs
per chunk above this is its own; this much is grpc.aio's.

  python bench/gateway_relay.py --relay-cmd "exec {python} bench/bare_relay.py {port} {upstream}"
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import grpc
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmserve.v1 import gateway_pb2, runtime_pb2


def _identity(b: bytes) -> bytes:
    return b


async def serve(port: int, upstream: str) -> None:
    channel = grpc.aio.insecure_channel(upstream)
    call = channel.unary_stream("/llmserve.v1.Runtime/Generate", _identity, _identity)

    async def generate(raw: bytes, context: Any) -> Any:
        # The caller's max_tokens, so that per-call costs compare (--max-tokens 1).
        asked = gateway_pb2.GatewayGenerateRequest.FromString(raw)
        request = runtime_pb2.GenerateRequest(
            request_id="bare", prompt=asked.prompt, sampling=asked.sampling
        ).SerializeToString()
        async for chunk in call(request):
            yield chunk

    server = grpc.aio.server()
    handler = grpc.unary_stream_rpc_method_handler(
        generate, request_deserializer=_identity, response_serializer=_identity
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("llmserve.v1.Gateway", {"Generate": handler}),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(int(sys.argv[1]), sys.argv[2]))
