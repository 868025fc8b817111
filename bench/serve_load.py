"""Load generator for a runtime (or anything serving llmserve.v1.Runtime) over gRPC.

Arrivals are Poisson at --rate requests/s, or a fixed --concurrency of clients each sending
its next request when the last finishes. Every request asks for exactly --output-len tokens
(ignore_eos) after --input-len random prompt tokens. Reports throughput, time to first token,
inter-token latency and end-to-end latency percentiles, and errors by status code.

With --api-key and --model, the target is a gateway (Gateway.Generate, session-less) instead of
a runtime. With --processes N, N client processes share the load (each 1/N of the concurrency
or rate and of the requests), and the report gives the CPU the clients used: a client side
far from a core per process is not what limits the figures.

  python bench/serve_load.py --target 127.0.0.1:50052 --concurrency 64 --num-requests 256
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import multiprocessing
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmserve.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, runtime_pb2, runtime_pb2_grpc


@dataclass
class Sample:
    ttft: float = 0.0
    itls: list[float] = field(default_factory=list)
    e2e: float = 0.0
    tokens: int = 0
    error: str = ""


async def one_request(call: Any, model: str, prompt: list[int], output_len: int) -> Sample:
    fields = dict(
        prompt=common_pb2.Prompt(token_ids=common_pb2.TokenIds(ids=prompt)),
        sampling=common_pb2.SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True),
    )
    request = (
        gateway_pb2.GatewayGenerateRequest(model=model, **fields)
        if model
        else runtime_pb2.GenerateRequest(**fields)
    )
    sample = Sample()
    start = last = time.perf_counter()
    try:
        async for chunk in call(request):
            now = time.perf_counter()
            n = len(chunk.token_ids)
            if n:
                if sample.tokens == 0:
                    sample.ttft = now - start
                else:
                    sample.itls.extend([(now - last) / n] * n)
                sample.tokens += n
                last = now
    except grpc.aio.AioRpcError as e:
        sample.error = e.code().name
    sample.e2e = time.perf_counter() - start
    return sample


def percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    q = (
        statistics.quantiles(values, n=100, method="inclusive")
        if len(values) > 1
        else (values * 99)
    )
    return f"{q[49] * 1e3:.1f} / {q[89] * 1e3:.1f} / {q[98] * 1e3:.1f}"


async def run(
    args: argparse.Namespace, index: int = 0, start_at: float = 0.0
) -> tuple[list[Sample], float, float]:
    """Client process `index` of args.processes: its share of the requests, sent from
    `start_at` (time.time()); returns its samples, seconds and CPU seconds."""
    rng = random.Random(args.seed)
    prompts = [
        [rng.randrange(100, args.vocab - 100) for _ in range(args.input_len)]
        for _ in range(args.num_requests)
    ][index :: args.processes]
    rng = random.Random(args.seed + index)
    options = [("grpc.max_receive_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(args.target, options=options) as channel:
        if args.model:
            metadata = (("authorization", f"Bearer {args.api_key}"),)
            stub = gateway_pb2_grpc.GatewayStub(channel)
            call = functools.partial(stub.Generate, metadata=metadata)
        else:
            call = runtime_pb2_grpc.RuntimeStub(channel).Generate
        await one_request(call, args.model, prompts[0][:8], 2)  # connect and warm up
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu = time.process_time()
        start = time.perf_counter()
        if args.rate:
            tasks = []
            for prompt in prompts:
                tasks.append(
                    asyncio.create_task(one_request(call, args.model, prompt, args.output_len))
                )
                await asyncio.sleep(rng.expovariate(args.rate / args.processes))
            samples = await asyncio.gather(*tasks)
        else:
            queue = list(prompts)
            samples = []

            async def worker() -> None:
                while queue:
                    samples.append(
                        await one_request(call, args.model, queue.pop(), args.output_len)
                    )

            concurrency = len(range(index, args.concurrency, args.processes))
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return list(samples), time.perf_counter() - start, time.process_time() - cpu


def _client(args: argparse.Namespace, index: int, start_at: float, out: Any) -> None:
    out.put(asyncio.run(run(args, index, start_at)))


def run_all(args: argparse.Namespace) -> tuple[list[Sample], float, float]:
    """Runs the client processes; (all samples, the longest seconds, CPU seconds in all)."""
    if args.processes == 1:
        return asyncio.run(run(args))
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 5.0  # every process connected and warmed up by then
    procs = [
        ctx.Process(target=_client, args=(args, i, start_at, out)) for i in range(args.processes)
    ]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    samples = [s for r in results for s in r[0]]
    return samples, max(r[1] for r in results), sum(r[2] for r in results)


def report(args: argparse.Namespace, samples: list[Sample], seconds: float, cpu: float) -> str:
    ok = [s for s in samples if not s.error]
    errors = Counter(s.error for s in samples if s.error)
    tokens = sum(s.tokens for s in ok)
    mode = f"Poisson {args.rate} req/s" if args.rate else f"concurrency {args.concurrency}"
    mode += f", {args.processes} client process(es) using {cpu / seconds:.2f} CPU cores in all" + (
        f" (through the gateway, model {args.model!r})" if args.model else ""
    )
    return (
        "\n".join(
            [
                f"Served load against {args.target}: {args.num_requests} requests x "
                f"{args.input_len} prompt tokens -> {args.output_len} output tokens, {mode}.",
                "",
                "| output tokens | seconds | output tok/s | req/s | TTFT ms p50/p90/p99 | "
                "ITL ms p50/p90/p99 | E2E ms p50/p90/p99 | errors |",
                "| ---: | ---: | ---: | ---: | --- | --- | --- | --- |",
                f"| {tokens} | {seconds:.2f} | {tokens / seconds:,.0f} | {len(ok) / seconds:.1f} | "
                f"{percentiles([s.ttft for s in ok])} | "
                f"{percentiles([x for s in ok for x in s.itls])} | "
                f"{percentiles([s.e2e for s in ok])} | "
                f"{', '.join(f'{k} x{v}' for k, v in errors.items()) or 'none'} |",
            ]
        )
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", default="127.0.0.1:50052")
    parser.add_argument("--num-requests", type=int, default=256)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--rate", type=float, default=0.0, help="Poisson arrivals per second")
    parser.add_argument("--concurrency", type=int, default=64, help="used when --rate is 0")
    parser.add_argument("--vocab", type=int, default=1000, help="prompt ids drawn below this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--processes", type=int, default=1, help="client processes")
    parser.add_argument("--model", default="", help="with --api-key: the target is a gateway")
    parser.add_argument("--api-key", default="", help="the gateway's API key")
    parser.add_argument("--report", type=Path, help="append the markdown table to this file")
    args = parser.parse_args()
    samples, seconds, cpu = run_all(args)
    text = report(args, samples, seconds, cpu)
    print(text)
    if args.report:
        with args.report.open("a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
