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


def test_static_peer_takes_prompts_and_outputs_of_several_lengths(
    tiny_model_dir: Callable[[str], Path],
) -> None:
    """engine_speed's mixed row hands the transformers peer ragged prompts and per-request
    output lengths: it left-pads, batches longest output first and counts each request's own
    tokens (a batch generates its longest output)."""
    import argparse

    from bench.offline_throughput import left_padded, run_hf_static

    ids, mask = left_padded([[5, 6, 7], [8]], "cpu")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    args = argparse.Namespace(device="cpu", dtype="float32", shape="", output_len=0, static_batch=2)
    prompts = [[3, 4, 5, 6], [7], [8, 9], [10, 11, 12]]
    r = run_hf_static(args, tiny_model_dir("llama"), prompts, outs=[2, 5, 3, 1])
    assert r.tokens == 11
    assert r.system == "transformers generate (static, batch 2)"
