"""A STAND-IN for the runtime daemon, for the gateway's tests only, until issue 5 lands.

It speaks llmserve.v1.Runtime over real gRPC (health, reflection, drain: it is a
llmserve.server.Daemon) and replies deterministically, with no model:
- a "token" is a word; a chat prompt renders as "<role> content" per message;
- the reply to a chat is "turn <user messages> of <messages>: <last user message>", so a test
  can see which history reached the runtime; to a text prompt "echo: <text>";
- `truncate_history` drops the oldest messages after a leading system message until the
  prompt leaves room for max_tokens in `--max-model-len` words (else INVALID_ARGUMENT);
- a prefix cache of recent prompts: `usage.cached_prompt_tokens` is the longest prefix shared
  with an earlier prompt, and GetStatus counts queries and hits like the real one;
- the text prompt "?deadline" is answered "deadline <seconds left, rounded up>" or
  "deadline none", to show the caller's deadline reached the runtime;
- faults for tests: `--fail-first N` refuses the first N Generate calls with UNAVAILABLE before
  any token; `--die-after-chunks N` kills the process after sending N chunks;
  `--token-delay-s` paces the stream.

Run it as `python -m tests.gateway.standin_runtime --port P --model NAME`, i.e. through
llmserve.processes.DaemonProcess exactly as the real `runtime_service` will be.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from llmserve import errors
from llmserve.config import parse_config, setting
from llmserve.server import Daemon, ServerConfig, Service, run_daemon
from llmserve.v1 import common_pb2, engine_pb2, runtime_pb2, runtime_pb2_grpc


@dataclass(kw_only=True)
class StandinConfig(ServerConfig):
    model: str = setting("standin-model", "model name reported by GetStatus")
    engine_id: str = setting("standin-engine", "engine id reported by GetStatus")
    max_model_len: int = setting(512, "context window, in words")
    adapters: list[str] = setting([], "adapter names reported as loaded")
    token_delay_s: float = setting(0.0, "pause before each streamed word")
    fail_first: int = setting(0, "refuse this many first Generate calls with UNAVAILABLE")
    die_after_chunks: int = setting(0, "exit abruptly after sending this many chunks (0: never)")
    reported_waiting: int = setting(0, "added to num_waiting in GetStatus (to steer routing)")


def render(messages: Sequence[Any]) -> list[str]:
    return [w for m in messages for w in (f"<{m.role}>", *m.content.split())]


class StandinRuntime(runtime_pb2_grpc.RuntimeServicer):
    def __init__(self, config: StandinConfig) -> None:
        self.config = config
        self.num_running = 0
        self.num_calls = 0
        self.num_chunks = 0
        self.cache: list[list[str]] = []
        self.queries = 0
        self.hits = 0

    def _cached(self, prompt: list[str]) -> int:
        best = 0
        for old in self.cache:
            n = 0
            while n < min(len(old), len(prompt)) and old[n] == prompt[n]:
                n += 1
            best = max(best, n)
        self.cache = [*self.cache[-63:], prompt]
        self.queries += len(prompt)
        self.hits += best
        return best

    def _prompt_and_reply(self, request: Any, context: Any) -> tuple[list[str], list[str]]:
        sampling = request.sampling
        room = sampling.max_tokens if sampling.HasField("max_tokens") else 1
        kind = request.prompt.WhichOneof("kind")
        if request.prompt.text == "?deadline":
            left = context.time_remaining()
            return ["?deadline"], ["deadline", "none" if left is None else str(math.ceil(left))]
        if kind == "text":
            prompt = request.prompt.text.split()
            return prompt, ["echo:", *prompt]
        if kind != "chat":
            raise errors.InvalidArgument("prompt: the stand-in takes text or chat")
        messages = list(request.prompt.chat.messages)
        keep = 1 if messages and messages[0].role == "system" else 0
        while len(render(messages)) + room > self.config.max_model_len:
            if not request.prompt.chat.truncate_history or len(messages) <= keep + 1:
                raise errors.InvalidArgument(
                    f"prompt is {len(render(messages))} tokens, more than max_model_len"
                    f" {self.config.max_model_len} minus max_tokens {room}"
                )
            del messages[keep]
        users = [m for m in messages if m.role == "user"]
        head = ["turn", str(len(users)), "of", str(len(messages)), "messages:"]
        return render(messages), head + (users[-1].content.split() if users else [])

    async def Generate(self, request: Any, context: Any) -> AsyncIterator[Any]:
        self.num_calls += 1
        if self.num_calls <= self.config.fail_first:
            raise errors.Unavailable(f"stand-in refuses call {self.num_calls} (--fail-first)")
        if request.adapter and request.adapter not in self.config.adapters:
            raise errors.NotFound(f"adapter {request.adapter!r} is not loaded")
        prompt, words = self._prompt_and_reply(request, context)
        cached = self._cached(prompt)
        sampling = request.sampling
        finish = common_pb2.FINISH_REASON_STOP
        if sampling.HasField("max_tokens") and len(words) > sampling.max_tokens:
            words, finish = words[: sampling.max_tokens], common_pb2.FINISH_REASON_LENGTH
        ids = [zlib.crc32(w.encode()) % 50_000 for w in words]
        self.num_running += 1
        try:
            for i, word in enumerate(words):
                await asyncio.sleep(self.config.token_delay_s)
                last = i == len(words) - 1
                chunk = runtime_pb2.GenerateResponse(
                    request_id=request.request_id,
                    token_ids=[ids[i]],
                    text=word if i == 0 else " " + word,
                )
                if last:
                    chunk.finish_reason = finish
                    chunk.usage.CopyFrom(
                        common_pb2.Usage(
                            prompt_tokens=len(prompt),
                            completion_tokens=len(words),
                            cached_prompt_tokens=cached,
                        )
                    )
                    chunk.timings.total_ns = 1_000_000
                if not request.final_only or last:
                    yield chunk
                    self.num_chunks += 1
                if 0 < self.config.die_after_chunks == self.num_chunks:
                    await asyncio.sleep(0.3)  # let the chunk reach the client
                    os._exit(3)
        finally:
            self.num_running -= 1

    async def GetStatus(self, request: Any, context: Any) -> Any:
        c = self.config
        return runtime_pb2.GetStatusResponse(
            engine=engine_pb2.Engine(
                engine_id=c.engine_id, model_name=c.model, max_model_len=c.max_model_len
            ),
            kv_cache=runtime_pb2.KvCacheStatus(
                block_size=16,
                num_blocks=1000,
                num_free_blocks=1000 - 10 * self.num_running,
                prefix_cache_queries=self.queries,
                prefix_cache_hits=self.hits,
            ),
            num_running=self.num_running,
            num_waiting=c.reported_waiting,
            adapters=[common_pb2.Adapter(name=a) for a in c.adapters],
            device="cpu (gateway test stand-in)",
        )


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(StandinConfig, argv, prog="standin_runtime")

    def setup(daemon: Daemon) -> None:
        # Generate and GetStatus; the adapter calls answer UNIMPLEMENTED (generated base).
        daemon.add_service(
            Service(
                "llmserve.v1.Runtime",
                StandinRuntime(config),
                runtime_pb2_grpc.add_RuntimeServicer_to_server,
            )
        )

    return run_daemon("standin-runtime", config, setup)


if __name__ == "__main__":
    sys.exit(main())
