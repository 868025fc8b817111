"""bench/gateway_relay.py runs end to end (real gateway, redis-server, bench upstream) and
reports chunks relayed without errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_gateway_relay_runs(tmp_path: Path) -> None:
    report = tmp_path / "relay.md"
    out = subprocess.run(
        [sys.executable, "bench/gateway_relay.py", "--streams", "8", "--clients", "2",
         "--max-tokens", "8", "--step-ms", "5", "--warmup", "0.5", "--duration", "1",
         "--report", str(report)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    cells = [c.strip() for c in report.read_text().strip().split("|")[1:-1]]
    assert cells[0] == "clients → gateway → upstream" and cells[-1] == "none", cells
    assert int(cells[5].replace(",", "")) > 0  # chunks/s delivered


def test_several_tokens_per_upstream_chunk_arrive_whole(tmp_path: Path) -> None:
    """--tokens-per-chunk 3 with 8 tokens a call: chunks of 3, 3 and 2 tokens; the clients
    check that every call got its 8 (errors "none")."""
    report = tmp_path / "relay.md"
    out = subprocess.run(
        [sys.executable, "bench/gateway_relay.py", "--streams", "4", "--clients", "1",
         "--max-tokens", "8", "--tokens-per-chunk", "3", "--step-ms", "5", "--warmup", "0.5",
         "--duration", "1", "--report", str(report)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    cells = [c.strip() for c in report.read_text().strip().split("|")[1:-1]]
    assert cells[0].endswith("3 tokens per upstream chunk") and cells[-1] == "none", cells
    assert float(cells[7]) > 2.0  # tokens per message: 8 tokens in 3 messages


def test_gateway_layers_runs() -> None:
    out = subprocess.run(
        [sys.executable, "bench/gateway_layers.py", "--chunks", "2000", "--repeat", "1",
         "--calls", "20"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| interceptor + Generate, coalescing |" in out.stdout
    assert "per call (one chunk" in out.stdout
