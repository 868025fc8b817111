"""The runtime daemon's frontend cost per streamed token, on the CPU with a tiny model.

Serves a tiny random Llama (llmserve/testing/tiny_models.py: 2 layers, hidden 64) so that the
engine core's steps are cheap and the frontend's work shows: the gRPC process receives each
step's outputs from the core process, detokenizes them, builds protobuf chunks and writes them
to HTTP/2 streams. Runs bench/serve_load.py against it in another process and reads, over the
load, the CPU time of the frontend process and of the core process from /proc:

  frontend µs per token = frontend CPU-seconds / output tokens streamed

With --py-spy FILE, the frontend's stacks are sampled during the load (raw/collapsed format).

  python bench/frontend_cost.py --concurrency 256 --num-requests 1024 --output-len 64
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmserve.processes import DaemonProcess
from llmserve.testing.tiny_models import tiny_model

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def core_pid(frontend_pid: int) -> int:
    """The engine core: the frontend's child started by multiprocessing's spawn (not its
    resource tracker)."""
    tasks = Path(f"/proc/{frontend_pid}/task").iterdir()  # any thread may have spawned it
    children = [c for t in tasks for c in (t / "children").read_text().split()]
    for child in children:
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"spawn_main" in cmdline:
            return int(child)
    raise RuntimeError(f"no engine core among the children {children} of {frontend_pid}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--concurrency", type=int, default=256)
    p.add_argument("--num-requests", type=int, default=1024)
    p.add_argument("--input-len", type=int, default=16)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--event-loop", default="uvloop")
    p.add_argument("--py-spy", type=Path, help="sample the frontend's stacks into this file")
    p.add_argument("--report", type=Path, help="append the markdown row to this file")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="frontend-cost-"))
    model = tiny_model("llama", Path(tempfile.gettempdir()) / "llmserve-tiny-models")
    runtime = DaemonProcess(
        "runtime_service",
        ["--model-path", str(model), "--device", "cpu", "--cpu-threads", "1",
         "--max-num-seqs", str(args.concurrency), "--max-num-batched-tokens", "8192",
         "--max-model-len", "256", "--num-kv-blocks", str(args.concurrency * 8),
         "--event-loop", args.event_loop, "--log-format", "text"],
        log_path=tmp / "runtime.log",
    )  # fmt: skip
    runtime.start().wait_serving(timeout=300)
    try:
        assert runtime.proc is not None
        frontend = runtime.proc.pid
        core = core_pid(frontend)
        f0, c0 = cpu_seconds(frontend), cpu_seconds(core)
        spy = None
        if args.py_spy:
            spy = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--nonblocking", "-p",
                 str(frontend), "-f", "raw", "-o", str(args.py_spy), "-r", "100"],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            )  # fmt: skip
        start = time.monotonic()
        load = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "serve_load.py"), "--target", runtime.address,
             "--concurrency", str(args.concurrency), "--num-requests", str(args.num_requests),
             "--input-len", str(args.input_len), "--output-len", str(args.output_len)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        seconds = time.monotonic() - start
        f1, c1 = cpu_seconds(frontend), cpu_seconds(core)
        if spy is not None:
            spy.send_signal(2)  # py-spy writes its file on SIGINT
            spy.wait()
    finally:
        runtime.terminate()
    table = [line for line in load.stdout.splitlines() if line.startswith("| ")]
    tokens = int(table[-1].split("|")[1])
    print("\n".join(table))
    row = (
        f"| {args.concurrency} | {args.event_loop} | {tokens} | {tokens / seconds:,.0f} | "
        f"{(f1 - f0) / seconds:.2f} | {(f1 - f0) / tokens * 1e6:.0f} | "
        f"{(c1 - c0) / seconds:.2f} | {(c1 - c0) / tokens * 1e6:.0f} |"
    )
    print(
        "| concurrency | loop | output tokens | tok/s (incl. load ramp) | frontend cores | "
        "frontend µs/token | core cores | core µs/token |\n"
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n" + row
    )
    if args.report:
        with args.report.open("a") as f:
            f.write(row + "\n")


if __name__ == "__main__":
    main()
