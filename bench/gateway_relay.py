"""The gateway's relay cost: streamed chunks relayed per CPU-second of the gateway process.

Starts redis-server, --upstreams bench upstreams (bench/relay_upstream.py: Runtime.Generate
streaming one chunk per stream every --step-ms, no engine) and the real gateway (API key,
session-less Generate), then --clients load-generator processes holding --streams concurrent
Generate calls in all, each asking for --max-tokens chunks and starting the next when it ends.
Over a --duration window after --warmup, it reads the gateway's CPU time from /proc (user +
system, all threads) and counts the messages the clients received and the tokens in them:

  messages/s per gateway core = messages received / gateway CPU-seconds
  tokens/s per gateway core   = tokens received / gateway CPU-seconds

Each upstream chunk holds one token, so without coalescing the two are equal; a gateway that
coalesces (--relay-coalesce, its default) sends fewer messages holding several tokens each when
a stream's next chunks arrive while its previous one is still being written (a slow caller).
Every call that ends is checked to have received exactly --max-tokens tokens ("short calls"
counts those that did not). --gateways N starts N gateway processes (each on its own port, the
streams split evenly between them) and sums their CPU time: the scale-out check.

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


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of `pid`, by thread name (the main thread as "main";
    other threads of one name summed)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = "main" if task.name == str(pid) else (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICKS
    return out


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
        parse = runtime_pb2.GenerateResponse.FromString
        request = runtime_pb2.GenerateRequest(
            request_id="bench",
            prompt=common_pb2.Prompt(text="hi"),
            sampling=common_pb2.SamplingParams(max_tokens=max_tokens),
        ).SerializeToString()
    else:
        method = "/llmserve.v1.Gateway/Generate"
        parse = gateway_pb2.GatewayGenerateResponse.FromString
        request = gateway_pb2.GatewayGenerateRequest(
            model=MODEL,
            prompt=common_pb2.Prompt(text="hi"),
            sampling=common_pb2.SamplingParams(max_tokens=max_tokens),
        ).SerializeToString()
    metadata = (("authorization", f"Bearer {key}"),)
    channels = [grpc.aio.insecure_channel(t) for t in targets]
    # Responses are parsed only to count their tokens.
    calls = [c.unary_stream(method, _identity, _identity) for c in channels]
    count = [0, 0]  # messages, tokens
    errors: dict[str, int] = {}

    async def stream(i: int) -> None:
        call = calls[i % len(calls)]
        while time.time() < end:
            tokens = 0
            try:
                async for raw in call(request, metadata=metadata, timeout=120):
                    n = len(parse(raw).token_ids)
                    tokens += n
                    count[0] += 1
                    count[1] += n
                if tokens != max_tokens:
                    errors["short calls"] = errors.get("short calls", 0) + 1
            except grpc.aio.AioRpcError as e:
                errors[e.code().name] = errors.get(e.code().name, 0) + 1
                await asyncio.sleep(0.1)

    tasks = [asyncio.create_task(stream(i)) for i in range(streams)]
    await asyncio.sleep(max(0.0, start - time.time()))
    first = (*count, time.process_time())
    await asyncio.sleep(max(0.0, end - time.time()))
    last = (*count, time.process_time())
    await asyncio.sleep(1.0)  # calls cancelled only after the gateway's CPU time was read
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in channels:
        await c.close()
    out.put((last[0] - first[0], last[1] - first[1], last[2] - first[2], errors))


def _client_main(*args: object) -> None:
    asyncio.run(_client(*args))  # type: ignore[arg-type]


def start_upstreams(
    count: int, step_ms: float, logs: Path, tokens_per_chunk: int = 1
) -> tuple[list, list[str]]:
    procs, addresses = [], []
    for i in range(count):
        port = free_port()
        log = (logs / f"upstream{i}.log").open("wb")
        procs.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "relay_upstream.py"), "--port", str(port),
                 "--model", MODEL, "--step-ms", str(step_ms),
                 "--tokens-per-chunk", str(tokens_per_chunk)],
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


def measure(args: argparse.Namespace, targets: list[str], key: str, gateway_pids: list[int]):
    """Runs the clients; returns (messages, tokens, window seconds, gateway CPU s, client CPU s,
    errors)."""
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
    g0 = sum(cpu_seconds(pid) for pid in gateway_pids)
    t0 = thread_cpu(gateway_pids[0]) if args.threads and gateway_pids else {}
    spy = None
    if args.py_spy and gateway_pids:  # sampled without pausing it (--nonblocking)
        spy = subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "--nonblocking", "-p",
             str(gateway_pids[0]), "-d", str(int(args.duration)), "-f", "raw", "-o",
             str(args.py_spy),
             "-r", "100", *(["--native"] if os.environ.get("SPY_NATIVE") else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
    time.sleep(max(0.0, end - time.time()))
    g1 = sum(cpu_seconds(pid) for pid in gateway_pids)
    if t0:
        t1 = thread_cpu(gateway_pids[0])
        used = {k: v - t0.get(k, 0.0) for k, v in t1.items()}
        print("relay threads, CPU s in the window:", ", ".join(
            f"{k} {v:.2f}" for k, v in sorted(used.items(), key=lambda kv: -kv[1]) if v > 0
        ))  # fmt: skip
    if spy is not None:
        spy.wait()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    errors: dict[str, int] = {}
    for *_, e in results:
        for k, v in e.items():
            errors[k] = errors.get(k, 0) + v
    messages, tokens = sum(r[0] for r in results), sum(r[1] for r in results)
    return messages, tokens, args.duration, g1 - g0, sum(r[2] for r in results), errors


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--streams", type=int, default=512, help="concurrent Generate calls, in all")
    p.add_argument("--clients", type=int, default=2, help="load-generator processes")
    p.add_argument("--upstreams", type=int, default=1)
    p.add_argument("--step-ms", type=float, default=20.0, help="upstream: time between chunks")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens per call")
    p.add_argument(
        "--tokens-per-chunk", type=int, default=1, help="upstream: tokens in each chunk it streams"
    )
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--direct", action="store_true", help="clients call the upstreams directly")
    p.add_argument("--gateways", type=int, default=1, help="gateway processes (scale-out)")
    p.add_argument(
        "--gateway-args", default="", help="extra gateway flags, e.g. --no-relay-coalesce"
    )
    p.add_argument("--relay-cmd", help="run this relay instead of the gateway ({port}, {upstream})")
    p.add_argument("--py-spy", type=Path, help="record the gateway's stacks here (raw format)")
    p.add_argument("--threads", action="store_true", help="print the relay's CPU per thread")
    p.add_argument("--report", type=Path, help="append the markdown row to this file")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gateway-relay-"))
    redis = relay = None
    gateways: list[DaemonProcess] = []
    upstreams, addresses = start_upstreams(args.upstreams, args.step_ms, tmp, args.tokens_per_chunk)
    try:
        if args.direct:
            targets, key, pids = addresses, "", []
        elif args.relay_cmd:  # another relay to compare with, e.g. a bare bytes relay
            port = free_port()
            cmd = args.relay_cmd.format(port=port, upstream=addresses[0], python=sys.executable)
            relay = subprocess.Popen(cmd, shell=True)
            address = f"127.0.0.1:{port}"
            while subprocess.run(["true"]) and not _listening(address):
                time.sleep(0.2)
            targets, key, pids = [address], "", [_child_pid(relay.pid)]
        else:
            redis = RedisServer(tmp / "redis").start()
            key = "bench-key-0123456789abcdef"
            (tmp / "keys").write_text(f"bench:{key}\n")
            for i in range(args.gateways):
                gateways.append(DaemonProcess(
                    "gateway",
                    ["--redis", redis.url, "--runtime", ",".join(addresses),
                     "--api-keys-file", str(tmp / "keys"), "--rate-limit-rps", "0",
                     "--auth-failure-rps", "0", "--log-format", "text",
                     # The upstream is overloaded by design: its health answers may be late.
                     "--runtime-timeout-s", "30",
                     *args.gateway_args.split()],
                    log_path=tmp / f"gateway{i}.log",
                ).start())  # fmt: skip
            for gateway in gateways:
                gateway.wait_serving()
            time.sleep(2.0)  # the gateways' first status check of their runtimes
            targets = [g.address for g in gateways]
            pids = [g.proc.pid for g in gateways]  # type: ignore[union-attr]
        messages, tokens, seconds, gateway_cpu, client_cpu, errors = measure(
            args, targets, key, pids
        )
    finally:
        for gateway in gateways:
            gateway.terminate()
        if relay is not None:
            relay.kill()
        if redis is not None:
            redis.stop()
        for u in upstreams:
            u.terminate()
            u.wait()
    offered = args.streams / (args.step_ms / 1000)
    path = "clients → upstream (direct)" if args.direct else "clients → gateway → upstream"
    if args.gateways > 1 and not args.direct and not args.relay_cmd:
        path = f"clients → {args.gateways} gateways → upstream"
    if args.gateway_args and not args.direct and not args.relay_cmd:
        path += f" ({args.gateway_args})"
    if args.relay_cmd:
        path = f"clients → {args.relay_cmd.split()[-3]} → upstream"
    if args.tokens_per_chunk > 1:
        path += f", {args.tokens_per_chunk} tokens per upstream chunk"
    gw = "- | - | -"
    if gateway_cpu:
        gw = f"{gateway_cpu / seconds:.2f} | {messages / gateway_cpu:,.0f} | "
        gw += f"{tokens / gateway_cpu:,.0f}"
    row = (
        f"| {path} | {args.streams} | {args.clients} | {args.upstreams} | {offered:,.0f} | "
        f"{messages / seconds:,.0f} | {tokens / seconds:,.0f} | "
        f"{tokens / max(messages, 1):.2f} | {gw} | {client_cpu / seconds:.2f} | "
        f"{', '.join(f'{k} x{v}' for k, v in errors.items()) or 'none'} |"
    )
    header = (
        "| path | streams | client procs | upstreams | offered tokens/s | delivered messages/s |"
        " delivered tokens/s | tokens/message | relay cores used | messages/s per relay core"
        " | tokens/s per relay core | client cores used | errors |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        " --- |"
    )
    print(header + "\n" + row)
    if args.report:
        with args.report.open("a") as f:
            f.write(row + "\n")


if __name__ == "__main__":
    main()
