"""The load generator runs against a real runtime process (figures are for bench/)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from llmserve.processes import REPO_ROOT
from tests.runtime_service.daemon_harness import start_runtime


def test_serve_load_runs(tiny_model_dir: Callable[[str], Path], tmp_path: Path) -> None:
    runtime = start_runtime(tiny_model_dir("qwen3"), tmp_path)
    try:
        processes = ["--concurrency", "4", "--processes", "2"]
        modes = (["--concurrency", "4"], ["--rate", "50"], processes)
        for mode in modes:
            report = tmp_path / "report.md"
            out = subprocess.run(
                [
                    sys.executable,
                    "bench/serve_load.py",
                    "--target",
                    runtime.address,
                    "--num-requests",
                    "12",
                    "--input-len",
                    "10",
                    "--output-len",
                    "6",
                    "--report",
                    str(report),
                    *mode,
                ],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert out.returncode == 0, out.stderr[-2000:]
            row = report.read_text().strip().splitlines()[-1]
            assert row.startswith("| 72 |") and row.endswith("| none |"), row
            report.unlink()
    finally:
        runtime.terminate()
