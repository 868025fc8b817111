"""`llmserve up` (what `make run` runs) end to end: Redis, the builder building SmolLM2's
engine, a runtime serving it with the example adapter registered
with the builder, the gateway, and a piped chat."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from llmserve.processes import REPO_ROOT, free_port
from llmserve.store import ADAPTERS, open_store
from llmserve.store.adapters import list_adapters
from llmserve.store.engines import list_engines

QUESTION = "What is the capital of Italy?\n/quit\n"


def up(workdir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    ports = [str(free_port()) for _ in range(4)]
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "llmserve",
            "up",
            "--workdir",
            str(workdir),
            "--gateway-port",
            ports[0],
            "--runtime-port",
            ports[1],
            "--builder-port",
            ports[2],
            "--http-port",
            ports[3],
            *extra,
        ],
        input=QUESTION,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO_ROOT,
    )


def test_make_run_builds_serves_and_chats(tmp_path: Path) -> None:
    first = up(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "build 100.0% done" in first.stdout
    assert "(built; perplexity" in first.stdout
    assert "adapters       smollm2-answer-format" in first.stdout
    reply = first.stdout.strip().splitlines()[-1]
    assert reply and "ANSWER" not in reply  # SmolLM2's own answer
    # The second run finds the engine in the store, and the adapter changes the answer.
    second = up(tmp_path, "--adapter", "smollm2-answer-format")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "(found in the store;" in second.stdout
    assert second.stdout.strip().splitlines()[-1].startswith("ANSWER: Rome")
    # The adapter was registered once, for the engine's model, and nothing holds it now.
    store = open_store(str(tmp_path / "store"))
    [engine] = list_engines(store)
    [adapter] = list_adapters(store)
    assert (adapter.name, adapter.engine_id) == ("smollm2-answer-format", engine.engine_id)
    assert adapter.base_model_digest == engine.model_digest
    assert store.holders(ADAPTERS, adapter.adapter_id) == []
