"""Cold start: an engine in a local store to health SERVING, phase by phase.

    python bench/cold_start.py [--shape llama3-8b] [--device cuda] [--dtype bfloat16]
        [--work DIR] [--starts first-cold,restart-cold,restart-warm] [--report FILE]

Builds (or finds) an engine of random weights of the shape through the builder
(`llmserve build --random-weights`, a config-only source) into the store DIR/store (on a GPU
the builder also compiles the engine's Triton kernels into it: kernels/triton), then starts
the runtime daemon on it (`python -m runtime_service --store ... --engine ID`) once per
--starts entry and measures the wall time from process start to health SERVING:

  first-cold    the runtime's kernel cache (--kernel-cache-dir, under --work) and engine
                cache empty, the store's files dropped from the page cache: the engine is
                served in place (weights hashed as they load), its packed kernels seeded into
                the empty kernel cache; what they lack is compiled
  restart-cold  the store's files dropped from the page cache, the kernel cache kept
  restart-warm  nothing dropped: a restart a moment after the last one
The build reuses an engine already in the store (same id), which may carry no kernels if an
older builder made it: use a fresh --work for a figure.

Files leave the page cache by fsync + posix_fadvise(DONTNEED) on each engine file (no root
needed); Python's and torch's own files stay cached in every start. The phases come from the
daemon's log lines (their own durations, and the arrival time of each line here).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.offline_throughput import SHAPES, shaped_model_dir  # noqa: E402

STARTS = ("first-cold", "restart-cold", "restart-warm")
# A small shape of the same family, to run the whole path on a CPU in seconds.
TINY = dict(
    SHAPES["llama3-8b"],
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)
ALL_SHAPES = {**SHAPES, "tiny": TINY}
# (phase, regex on a daemon log line; group 1: seconds the daemon measured, if any)
PATTERNS = {
    "listening": re.compile(r"runtime listening on \S+:(\d+)"),
    "fetch": re.compile(r"fetched and verified .* in ([\d.]+) s"),
    "seeded": re.compile(r"kernel cache .*: (\d+) compiled kernels seeded"),
    "load": re.compile(r"engine weights loaded: (\d+) bytes in ([\d.]+) s"),
    "kv": re.compile(r"KV cache: .*profiled in ([\d.]+) s"),
    "graphs": re.compile(r"captured (\d+) graphs in ([\d.]+) s"),
    "core": re.compile(r"engine core ready"),
    "warmup": re.compile(r"warm-up generation in ([\d.]+) s"),
    "serving": re.compile(r"runtime serving"),
}


def build(args: argparse.Namespace, store: Path) -> tuple[str, float]:
    """The engine id (built now, or already in the store) and the build's seconds."""
    source = shaped_model_dir(
        args.shape, args.work / f"source-{args.shape}", ALL_SHAPES[args.shape]
    )
    cmd = [sys.executable, "-m", "llmserve", "build", str(source), "--random-weights"]
    cmd += ["--store", str(store), "--work-dir", str(args.work / "build-work")]
    cmd += ["--dtype", args.dtype, "--model-name", f"{args.shape}-random"]
    if args.device == "cpu":
        cmd += ["--target", "cpu"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"build failed:\n{done.stderr}")
    print(done.stderr.strip().splitlines()[-1], file=sys.stderr)
    engine = done.stdout.strip().splitlines()[-1]
    kernels = store / "engines" / engine / "kernels" / "triton"
    packed = len(list(kernels.iterdir())) if kernels.is_dir() else 0
    print(f"Triton cache keys packed in the engine: {packed}", file=sys.stderr)
    return engine, seconds


def drop_from_page_cache(root: Path) -> int:
    """Writes back and drops every file under root from the page cache; bytes dropped."""
    total = 0
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                total += os.fstat(fd).st_size
            finally:
                os.close(fd)
    return total


@dataclass
class Start:
    kind: str
    serving_s: float = float("nan")  # health SERVING, seen by polling
    lines: list[tuple[float, str]] = field(default_factory=list)

    def find(self, phase: str) -> tuple[float, re.Match[str]] | None:
        for t, line in self.lines:
            m = PATTERNS[phase].search(line)
            if m:
                return t, m
        return None


def start_daemon(args: argparse.Namespace, store: Path, engine: str, kind: str) -> Start:
    from llmserve.processes import health_status

    cmd = [sys.executable, "-m", "runtime_service", "--store", str(store), "--engine", engine]
    cmd += ["--engine-cache-dir", str(args.work / "engine-cache"), "--port", str(args.port)]
    cmd += ["--kernel-cache-dir", str(args.work / "kernel-cache")]
    cmd += ["--device", args.device, "--dtype", args.dtype, "--log-format", "text"]
    cmd += args.runtime_args
    result = Start(kind)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            result.lines.append((time.perf_counter() - t0, line.rstrip()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        while time.perf_counter() - t0 < args.timeout:
            listening = result.find("listening")
            port = args.port or (int(listening[1].group(1)) if listening else 0)
            if port and health_status(f"127.0.0.1:{port}", timeout=0.5) == 1:
                result.serving_s = time.perf_counter() - t0
                break
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
    if result.serving_s != result.serving_s:  # NaN: never SERVING
        tail = "\n".join(line for _, line in result.lines[-30:])
        sys.exit(f"{kind}: the runtime did not reach SERVING in {args.timeout} s:\n{tail}")
    return result


def phase_rows(s: Start) -> list[tuple[str, str, str]]:
    """(phase, seconds, note) rows of one start, from its log lines."""

    def at(phase: str) -> float | None:
        found = s.find(phase)
        return None if found is None else found[0]

    def took(phase: str, group: int = 1) -> float | None:
        found = s.find(phase)
        return None if found is None else float(found[1].group(group))

    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    rows = [("python imports, config, gRPC server up", fmt(at("listening")), "arrival of its line")]
    fetch = took("fetch")
    what = "engine located: in place, small files hashed (S3: copied, every file hashed)"
    rows.append((what, fmt(fetch), ""))
    seeded = s.find("seeded")
    rows.append(
        (
            "Triton kernels seeded from the engine",
            "-" if seeded is None else seeded[1].group(1),
            "cache keys copied (a count, not seconds)",
        )
    )
    load = s.find("load")
    fetched = s.find("fetch")
    if load is not None and fetched is not None:
        spawn = load[0] - float(load[1].group(2)) - fetched[0]
        what = "engine process after the fetch (imports left, device init)"
        rows.append((what, fmt(spawn), "spawned before the fetch; by arrival"))
    if load is not None:
        nbytes, seconds = int(load[1].group(1)), float(load[1].group(2))
        rate = f"{nbytes / 1e9:.2f} GB at {nbytes / max(seconds, 1e-9) / 1e9:.2f} GB/s"
        rows.append(("weights read onto the device and hashed, model built", fmt(seconds), rate))
    rows.append(("KV pool: profiled worst-case step", fmt(took("kv")), ""))
    graphs = s.find("graphs")
    rows.append(
        (
            "CUDA graph capture",
            fmt(None if graphs is None else float(graphs[1].group(2))),
            ""
            if graphs is None
            else f"{graphs[1].group(1)} graphs, "
            f"{float(graphs[1].group(2)) / max(int(graphs[1].group(1)), 1):.3f} s each",
        )
    )
    rows.append(("engine ready (log line)", fmt(at("core")), "arrival"))
    core, warmup = s.find("core"), s.find("warmup")
    if core is not None and warmup is not None:
        gap = warmup[0] - float(warmup[1].group(1)) - core[0]
        rows.append(("frontend after the engine (tokenizer wait, set-up)", fmt(gap), "by arrival"))
    rows.append(("warm-up generation (first kernels, compiles)", fmt(took("warmup")), ""))
    rows.append(("**health SERVING**", f"**{s.serving_s:.2f}**", "from process start"))
    return rows


def report(args: argparse.Namespace, engine: str, build_s: float, starts: list[Start]) -> str:
    import platform

    from bench.offline_throughput import device_name

    lines = [
        f"### Cold start, {args.shape} shape ({args.dtype}, random weights), "
        f"{device_name(args.device)}",
        "",
        f"`python bench/cold_start.py --shape {args.shape} --device {args.device} "
        f"--dtype {args.dtype}`; engine {engine} (build or store look-up: {build_s:.1f} s); "
        f"python {platform.python_version()}.",
        "",
        "| phase | " + " | ".join(s.kind for s in starts) + " | note |",
        "| --- | " + " | ".join("---:" for _ in starts) + " | --- |",
    ]
    tables = [{name: (cell, note) for name, cell, note in phase_rows(s)} for s in starts]
    names = list(dict.fromkeys(name for t in tables for name in t))
    for name in names:
        cells = [t.get(name, ("-", ""))[0] for t in tables]
        notes = dict.fromkeys(t[name][1] for t in tables if name in t and t[name][1])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'; '.join(notes)} |")
    first = starts[0]
    lines += [
        "",
        f"The cold-start figure is the first start, {first.kind}: {first.serving_s:.2f} s from "
        "process start to health SERVING (target <= 20 s). first-cold: empty kernel cache "
        "(seeded from the engine's packed kernels), engine files out of the page cache; "
        "restart-cold: files out of the page cache, kernel cache kept; restart-warm: nothing "
        "dropped.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="llama3-8b", choices=sorted(ALL_SHAPES))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "cold-start")
    parser.add_argument("--starts", default=",".join(STARTS))
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--timeout", type=float, default=240.0)
    parser.add_argument("--report", type=Path, default=None)
    parser.add_argument("--logs", type=Path, default=None, help="daemon logs; default --work")
    parser.add_argument("runtime_args", nargs="*", help="more runtime flags (after --)")
    args = parser.parse_args()
    args.work = args.work.resolve()
    store = args.work / "store"
    engine, build_s = build(args, store)
    starts = []
    for kind in args.starts.split(","):
        if kind not in STARTS:
            sys.exit(f"--starts: {kind!r} is not one of {STARTS}")
        if kind == "first-cold":
            shutil.rmtree(args.work / "engine-cache", ignore_errors=True)
            shutil.rmtree(args.work / "kernel-cache", ignore_errors=True)
        if kind.endswith("-cold"):
            drop_from_page_cache(store)
            if (args.work / "engine-cache").exists():
                drop_from_page_cache(args.work / "engine-cache")
        starts.append(start_daemon(args, store, engine, kind))
        logs = args.logs or args.work
        logs.mkdir(parents=True, exist_ok=True)
        lines = [f"{t:8.3f} {line}" for t, line in starts[-1].lines]
        (logs / f"runtime-{kind}.log").write_text("\n".join(lines) + "\n")
        print(f"{kind}: SERVING after {starts[-1].serving_s:.2f} s", file=sys.stderr)
    text = report(args, engine, build_s, starts)
    print(text)
    if args.report is not None:
        with args.report.open("a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
