"""Timings are measured where they happen: queued -> first scheduled (when the step starts) ->
first token -> last token. A long prompt on an idle engine waits for nothing, so its queue
time is below its prefill time (before the fix the step's whole duration counted as queueing
and prefill read ~0). Structural checks only: no absolute wall-clock bounds."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from llmserve.processes import free_port
from llmserve.testing.metrics import scrape, value
from llmserve.v1 import runtime_pb2_grpc
from runtime_service.engine.llm import LLM
from runtime_service.engine.outputs import Timings
from runtime_service.engine.params import SamplingParams
from tests.runtime_service.daemon_harness import generate_request, start_runtime, status

PROMPT_TOKENS = 1500  # one prefill step of SmolLM2 on a CPU: far longer than admission


def long_prompt() -> list[int]:
    """Token ids of a long prompt (ordinary vocabulary ids, no specials)."""
    return [1000 + (i * 37) % 20000 for i in range(PROMPT_TOKENS)]


def check_honest(t: Timings) -> None:
    assert t.prefill_ns > 0
    assert t.queue_ns < t.prefill_ns, t
    assert t.decode_ns > 0
    # The phases tile the request (each is rounded to whole nanoseconds on its own).
    assert abs(t.queue_ns + t.prefill_ns + t.decode_ns - t.total_ns) <= 3


@pytest.fixture(scope="module")
def llm(smollm2_dir: Path) -> LLM:
    return LLM(
        str(smollm2_dir),
        device="cpu",
        max_model_len=2048,
        num_kv_blocks=160,
        max_num_batched_tokens=2048,  # the whole prompt in one step: nothing to blur
    )


def test_offline_long_prompt_on_idle_engine(llm: LLM) -> None:
    params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    (completion,) = llm.generate([long_prompt()], params)
    assert completion.timings is not None
    check_honest(completion.timings)


def test_daemon_long_prompt_timings_histograms_and_access_log(
    smollm2_dir: Path, tmp_path: Path
) -> None:
    """The same over the wire (Timings), in the phase histograms, and in the access log."""
    metrics_port = free_port()
    proc = start_runtime(
        smollm2_dir,
        tmp_path,
        *("--log-format", "json", "--metrics-port", str(metrics_port)),
        *("--max-model-len", "2048", "--num-kv-blocks", "160"),
        *("--max-num-batched-tokens", "2048"),
    )
    try:
        model = status(proc.address).engine.model_name
        before = scrape(metrics_port)
        request = generate_request(long_prompt(), 3)
        request.request_id = "long-1"
        request.final_only = True
        with grpc.insecure_channel(proc.address) as channel:
            (final,) = runtime_pb2_grpc.RuntimeStub(channel).Generate(request, timeout=300)
        t = final.timings
        check_honest(Timings(t.queue_ns, t.prefill_ns, t.decode_ns, t.total_ns))
        after = scrape(metrics_port)

        def moved(name: str) -> float:
            return value(after, name, model_name=model) - value(before, name, model_name=model)

        assert moved("llmserve_request_queue_time_seconds_count") == 1
        # The histograms hold the wire's figures (seconds), the queue below the prefill.
        queue_s = moved("llmserve_request_queue_time_seconds_sum")
        prefill_s = moved("llmserve_request_prefill_time_seconds_sum")
        assert queue_s == pytest.approx(t.queue_ns / 1e9, abs=1e-6)
        assert prefill_s == pytest.approx(t.prefill_ns / 1e9, abs=1e-6)
        assert moved("llmserve_request_prompt_tokens_sum") == PROMPT_TOKENS
    finally:
        proc.terminate()
    assert proc.log_path is not None
    entries = [
        json.loads(line) for line in proc.log_path.read_text().splitlines() if line.startswith("{")
    ]
    (line,) = [
        e
        for e in entries
        if e["logger"] == "llmserve.access" and e["method"] == "llmserve.v1.Runtime/Generate"
    ]
    assert line["code"] == "OK" and line["request_id"] == "long-1"
    assert line["tokens_in"] == PROMPT_TOKENS and line["tokens_out"] == 3
    assert line["model"] == model and len(line["trace_id"]) == 32
