"""`llmserve build` as a real process: progress on stderr, the engine id on stdout."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from llmserve.processes import REPO_ROOT
from llmserve.store import open_store
from llmserve.store.engines import get_engine


def llmserve_build(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llmserve", "build", *args],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_build_prints_the_engine_id(tiny_model_dir: Callable[[str], Path], tmp_path: Path) -> None:
    store = tmp_path / "store"
    source = str(tiny_model_dir("qwen2"))
    args = ["--quantization", "int8", "--work-dir", str(tmp_path / "w")]
    # The store comes from the environment, as the daemons' settings do.
    out = llmserve_build(source, *args, env={"LLMSERVE_STORE": str(store)})
    assert out.returncode == 0, out.stderr
    engine_id = out.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", engine_id)
    engine = get_engine(open_store(str(store)), engine_id)
    assert (engine.quantization, engine.target, engine.source) == ("int8", "cpu", source)
    phases = re.findall(r"%\s+(\w+):", out.stderr)
    assert phases == ["loading", "converting", "validating", "publishing", "done"]
    assert f"engine {engine_id} (int8, float32, cpu) published to" in out.stderr

    again = llmserve_build(source, *args, "--store", str(store))
    assert again.returncode == 0 and again.stdout.strip() == engine_id
    assert "already in" in again.stderr


def test_build_refusal_exits_1_naming_the_reason(tmp_path: Path) -> None:
    out = llmserve_build("/no/model", "--quantization", "fp8", "--store", str(tmp_path / "s"))
    assert out.returncode == 1 and out.stdout == ""
    assert "FAILED_PRECONDITION: quantization fp8 needs compute capability >= 8.9" in out.stderr
    usage = llmserve_build("--store", str(tmp_path / "s"))
    assert usage.returncode == 2 and "source is required" in usage.stderr
