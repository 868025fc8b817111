"""The benchmark script runs end to end (its figures are not checked: timing is for bench/)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from llmserve.processes import REPO_ROOT


def test_offline_throughput_runs(tiny_model_dir: Callable[[str], Path], tmp_path: Path) -> None:
    report = tmp_path / "report.md"
    out = subprocess.run(
        [
            sys.executable,
            "bench/offline_throughput.py",
            "--model",
            str(tiny_model_dir("llama")),
            "--num-requests",
            "4",
            "--input-len",
            "8",
            "--output-len",
            "4",
            "--peers",
            "hf-static",
            "--static-batch",
            "2",
            "--device",
            "cpu",
            "--dtypes",
            "float32,bfloat16",
            "--report",
            str(report),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    text = report.read_text()
    for dtype in ("float32", "bfloat16"):
        assert f"| llmserve | {dtype} | 16 |" in text
        assert f"| transformers generate (static, batch 2) | {dtype} | 16 |" in text
    assert "- llmserve bfloat16 / transformers generate (static, batch 2) float32: " in text
    assert "Workload: 4 requests x 8 prompt tokens" in text
