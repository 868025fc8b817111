"""bench/tensor_parallel.py runs end to end on the CPU (its figures are not checked)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from llmserve.processes import REPO_ROOT


def test_tensor_parallel_bench_runs(tiny_model_dir: Callable[[str], Path], tmp_path: Path) -> None:
    report = tmp_path / "report.md"
    args = ["--model", str(tiny_model_dir("llama")), "--device", "cpu", "--sizes", "1,2"]
    args += ["--input-len", "8", "--output-len", "4", "--repeats", "1", "--report", str(report)]
    out = subprocess.run(
        [sys.executable, "bench/tensor_parallel.py", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text = report.read_text()
    assert "| 1 | off |" in text and "| 2 | off |" in text
