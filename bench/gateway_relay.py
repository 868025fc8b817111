"""The gateway's relay cost: streamed chunks relayed per CPU-second of the gateway process.

Starts redis-server, --upstreams bench upstreams (bench/relay_upstream.py: Runtime.Generate
streaming one chunk per stream every --step-ms, no engine) and the real gateway (API key,
session-less Generate), then --clients load-generator processes holding --streams concurrent
Generate calls in all, each asking for --max-tokens chunks and starting the next when it ends.
Over a --duration window after --warmup, it reads the gateway's CPU time from /proc (user +
system, all threads) and counts the chunks the clients received:

  chunks/s per gateway core = chunks received / gateway CPU-seconds

With --direct, the clients call the upstreams themselves (no gateway): what they receive then
is the client side's capacity, to show it exceeds what the gateway delivers.

  python bench/gateway_relay.py --streams 512 --clients 2 --duration 10 --report out.md
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmserve.processes import DaemonProcess, RedisServer, free_port, health_status
from llmserve.v1 import common_pb2, gateway_pb2, runtime_pb2

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
MODEL = "bench"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid`, all its threads, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _identity(b: bytes) -> bytes:
    return b


def _listening(address: str) -> bool:
    import socket

    host, port = address.rsplit(":", 1)
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) == 0


def _child_pid(shell_pid: int) -> int:
    """The relay's pid under `sh -c` (the shell may exec it: then its own)."""
    children = Path(f"/proc/{shell_pid}/task/{shell_pid}/children")
    text = children.read_text().split() if children.exists() else []
    return int(text[0]) if text else shell_pid


async def _client(
    targets: list[str], key: str, direct: bool, streams: int, max_tokens: int,
    start: float, end: float, out: multiprocessing.Queue,
) -> None:  # fmt: skip
    """Holds `streams` Generate calls open until `end`; reports the chunks received and this
    process's CPU time within [start, end] (time.time() instants)."""
    if direct:
        method = "/llmserve.v1.Runtime/Generate"
        request = runtime_pb2.GenerateRequest(
            request_id="bench",
            prompt=common_pb2.Prompt(text="hi"),
            sampling=common_pb2.SamplingParams(max_tokens=max_tokens),
        ).SerializeToString()
    else:
        method = "/llmserve.v1.Gateway/Generate"
        request = gateway_pb2.GatewayGenerateRequest(
            model=MODEL,
            prompt=common_pb2.Prompt(text="hi"),
            sampling=common_pb2.SamplingParams(max_tokens=max_tokens),
        ).SerializeToString()
    metadata = (("authorization", f"Bearer {key}"),)
    channels = [grpc.aio.insecure_channel(t) for t in targets]
    # Responses stay bytes: the load generator counts them and parses none.
    calls = [c.unary_stream(method, _identity, _identity) for c in channels]
    count = [0]
    errors: dict[str, int] = {}

    async def stream(i: int) -> None:
        call = calls[i % len(calls)]
        while time.time() < end:
            try:
                async for _ in call(request, metadata=metadata, timeout=120):
                    count[0] += 1
            except grpc.aio.AioRpcError as e:
                errors[e.code().name] = errors.get(e.code().name, 0) + 1
                await asyncio.sleep(0.1)

    tasks = [asyncio.create_task(stream(i)) for i in range(streams)]
    await asyncio.sleep(max(0.0, start - time.time()))
    first = (count[0], time.process_time())
    await asyncio.sleep(max(0.0, end - time.time()))
    last = (count[0], time.process_time())
    await asyncio.sleep(1.0)  # calls cancelled only after the gateway's CPU time was read
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in channels:
        await c.close()
    out.put((last[0] - first[0], last[1] - first[1], errors))


def _client_main(*args: object) -> None:
    asyncio.run(_client(*args))  # type: ignore[arg-type]


def start_upstreams(count: int, step_ms: float, logs: Path) -> tuple[list, list[str]]:
    procs, addresses = [], []
    for i in range(count):
        port = free_port()
        log = (logs / f"upstream{i}.log").open("wb")
        procs.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "relay_upstream.py"), "--port", str(port),
                 "--model", MODEL, "--step-ms", str(step_ms)],
                stdout=log, stderr=subprocess.STDOUT,
            )
        )  # fmt: skip
        addresses.append(f"127.0.0.1:{port}")
    deadline = time.monotonic() + 60
    for address in addresses:
        while health_status(address) != 1:
            assert time.monotonic() < deadline, f"upstream {address} not serving"
            time.sleep(0.1)
    return procs, addresses


def measure(args: argparse.Namespace, targets: list[str], key: str, gateway_pid: int | None):
    """Runs the clients; returns (chunks, window seconds, gateway CPU s, client CPU s, errors)."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start = time.time() + args.warmup + 2.0  # spawned clients need a moment to start
    end = start + args.duration
    per_client = [args.streams // args.clients] * args.clients
    per_client[0] += args.streams - sum(per_client)
    procs = [
        ctx.Process(
            target=_client_main,
            args=(targets, key, args.direct, n, args.max_tokens, start, end, out),
        )
        for n in per_client
    ]
    for p in procs:
        p.start()
    time.sleep(max(0.0, start - time.time()))
    g0 = cpu_seconds(gateway_pid) if gateway_pid else 0.0
    spy = None
    if args.py_spy and gateway_pid:  # sampled without pausing it (--nonblocking)
        spy = subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "--nonblocking", "-p",
             str(gateway_pid), "-d", str(int(args.duration)), "-f", "raw", "-o", str(args.py_spy),
             "-r", "100", *(["--native"] if os.environ.get("SPY_NATIVE") else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
    time.sleep(max(0.0, end - time.time()))
    g1 = cpu_seconds(gateway_pid) if gateway_pid else 0.0
    if spy is not None:
        spy.wait()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    errors: dict[str, int] = {}
    for _, _, e in results:
        for k, v in e.items():
            errors[k] = errors.get(k, 0) + v
    chunks = sum(r[0] for r in results)
    return chunks, args.duration, g1 - g0, sum(r[1] for r in results), errors


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--streams", type=int, default=512, help="concurrent Generate calls, in all")
    p.add_argument("--clients", type=int, default=2, help="load-generator processes")
    p.add_argument("--upstreams", type=int, default=1)
    p.add_argument("--step-ms", type=float, default=20.0, help="upstream: time between chunks")
    p.add_argument("--max-tokens", type=int, default=128, help="chunks per call")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--direct", action="store_true", help="clients call the upstreams directly")
    p.add_argument("--relay-cmd", help="run this relay instead of the gateway ({port}, {upstream})")
    p.add_argument("--py-spy", type=Path, help="record the gateway's stacks here (raw format)")
    p.add_argument("--report", type=Path, help="append the markdown row to this file")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gateway-relay-"))
    redis = gateway = relay = None
    upstreams, addresses = start_upstreams(args.upstreams, args.step_ms, tmp)
    try:
        if args.direct:
            targets, key, pid = addresses, "", None
        elif args.relay_cmd:  # another relay to compare with, e.g. a bare bytes relay
            port = free_port()
            cmd = args.relay_cmd.format(port=port, upstream=addresses[0], python=sys.executable)
            relay = subprocess.Popen(cmd, shell=True)
            address = f"127.0.0.1:{port}"
            while subprocess.run(["true"]) and not _listening(address):
                time.sleep(0.2)
            targets, key, pid = [address], "", _child_pid(relay.pid)
        else:
            redis = RedisServer(tmp / "redis").start()
            key = "bench-key-0123456789abcdef"
            (tmp / "keys").write_text(f"bench:{key}\n")
            gateway = DaemonProcess(
                "gateway",
                ["--redis", redis.url, "--runtime", ",".join(addresses),
                 "--api-keys-file", str(tmp / "keys"), "--rate-limit-rps", "0",
                 "--auth-failure-rps", "0", "--log-format", "text"],
                log_path=tmp / "gateway.log",
            ).start()  # fmt: skip
            gateway.wait_serving()
            time.sleep(2.0)  # the gateway's first status check of its runtimes
            targets, pid = [gateway.address], gateway.proc.pid  # type: ignore[union-attr]
        chunks, seconds, gateway_cpu, client_cpu, errors = measure(args, targets, key, pid)
    finally:
        if gateway is not None:
            gateway.terminate()
        if relay is not None:
            relay.kill()
        if redis is not None:
            redis.stop()
        for u in upstreams:
            u.terminate()
            u.wait()
    rate = chunks / seconds
    offered = args.streams / (args.step_ms / 1000)
    path = "clients → upstream (direct)" if args.direct else "clients → gateway → upstream"
    if args.relay_cmd:
        path = f"clients → {args.relay_cmd.split()[-3]} → upstream"
    gw = f"{gateway_cpu / seconds:.2f} | {chunks / gateway_cpu:,.0f}" if gateway_cpu else "- | -"
    row = (
        f"| {path} | {args.streams} | {args.clients} | {args.upstreams} | {offered:,.0f} | "
        f"{rate:,.0f} | {gw} | {client_cpu / seconds:.2f} | {chunks / max(client_cpu, 1e-9):,.0f}"
        f" | {', '.join(f'{k} x{v}' for k, v in errors.items()) or 'none'} |"
    )
    header = (
        "| path | streams | client procs | upstreams | offered chunks/s | delivered chunks/s | "
        "gateway cores used | chunks/s per gateway core | client cores used | "
        "chunks/s per client core | errors |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    )
    print(header + "\n" + row)
    if args.report:
        with args.report.open("a") as f:
            f.write(row + "\n")


if __name__ == "__main__":
    main()
