"""bench/cold_start.py runs end to end on a CPU: a tiny random-weight engine built through
the builder, the runtime daemon started on it, the phases read from its log."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_cold_start_runs(tmp_path: Path) -> None:
    report = tmp_path / "cold.md"
    out = subprocess.run(
        [sys.executable, "bench/cold_start.py", "--shape", "tiny", "--device", "cpu",
         "--dtype", "float32", "--work", str(tmp_path / "work"), "--starts", "first-cold",
         "--port", "0", "--report", str(report), "--", "--num-kv-blocks", "64"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {
        cells[0]: cells[1:]
        for line in report.read_text().splitlines()
        if line.startswith("| ") and len(cells := [c.strip() for c in line.split("|")[1:-1]]) > 2
    }
    located = "engine located: in place, small files hashed (S3: copied, every file hashed)"
    assert rows[located][0] != "-"
    assert "GB/s" in rows["weights read onto the device and hashed, model built"][1]
    assert rows["Triton kernels seeded from the engine"][0] == "-"  # a CPU seeds none
    assert not list((tmp_path / "work" / "engine-cache").glob("*"))  # served in place
    assert rows["**health SERVING**"][0].startswith("**")
    assert (tmp_path / "work" / "runtime-first-cold.log").exists()
