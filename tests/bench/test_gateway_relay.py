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
