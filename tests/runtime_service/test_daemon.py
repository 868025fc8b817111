"""The runtime daemon as a real process: streaming under load, cancellation, admission, bad
input, metrics and traces (drain is in test_daemon_drain.py)."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from llmserve.processes import REPO_ROOT, DaemonProcess, free_port
from llmserve.testing.metrics import has, scrape, value
from llmserve.v1 import common_pb2, runtime_pb2, runtime_pb2_grpc
from runtime_service.engine.llm import LLM
from runtime_service.engine.params import SamplingParams
from tests.runtime_service.daemon_harness import (
    collect,
    generate_request,
    start_runtime,
    status,
    tokens,
    wait_all_blocks_free,
)

CORPUS = (REPO_ROOT / "llmserve" / "data" / "calibration.txt").read_text().split()


def prompt(i: int) -> str:
    rng = random.Random(i)
    start = rng.randrange(len(CORPUS) - 80)
    return " ".join(CORPUS[start : start + rng.randint(1, 60)])


@pytest.fixture(scope="module")
def model(tiny_model_dir: Callable[[str], Path]) -> Path:
    return tiny_model_dir("qwen2")


@pytest.fixture(scope="module")
def runtime(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    tmp = tmp_path_factory.mktemp("runtime")
    metrics_port = free_port()
    proc = start_runtime(
        model,
        tmp,
        "--dtype",
        "float32",
        "--max-num-seqs",
        "32",
        "--metrics-port",
        str(metrics_port),
        "--trace-file",
        str(tmp / "spans.jsonl"),
    )
    proc.metrics_port = metrics_port  # type: ignore[attr-defined]
    proc.trace_file = tmp / "spans.jsonl"  # type: ignore[attr-defined]
    yield proc
    proc.terminate()


def offline(model: Path, prompts: list[str], max_tokens: int) -> list[list[int]]:
    llm = LLM(str(model), dtype="float32", device="cpu", num_kv_blocks=256, max_model_len=256)
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return [c.token_ids for c in llm.generate(prompts, params)]


def test_64_concurrent_streams_and_a_quarter_cancelled(runtime: DaemonProcess, model: Path) -> None:
    prompts = [prompt(i) for i in range(64)]
    cancelled = set(range(0, 64, 4))

    async def client(i: int, stub: runtime_pb2_grpc.RuntimeStub) -> list[int] | None:
        if i not in cancelled:
            return tokens(await collect(stub, generate_request(prompts[i], 16)))
        call = stub.Generate(generate_request(prompts[i], 150))
        await call.read()  # the request is running
        call.cancel()
        return None

    async def main() -> list[list[int] | None]:
        async with grpc.aio.insecure_channel(runtime.address) as channel:
            stub = runtime_pb2_grpc.RuntimeStub(channel)
            return await asyncio.gather(*(client(i, stub) for i in range(64)))

    results = asyncio.run(main())
    expected = offline(model, prompts, 16)
    for i, result in enumerate(results):
        if i not in cancelled:
            assert result == expected[i], f"client {i}"
    wait_all_blocks_free(runtime.address)


def test_deadline_and_disconnect_abort_the_request(smollm2_dir: Path, tmp_path: Path) -> None:
    # SmolLM2's 8k context lets a request outlive its deadline and its client.
    runtime = start_runtime(smollm2_dir, tmp_path, "--num-kv-blocks", "512")
    try:
        check_deadline_and_disconnect(runtime)
    finally:
        runtime.terminate()


def check_deadline_and_disconnect(runtime: DaemonProcess) -> None:
    with grpc.insecure_channel(runtime.address) as channel:
        stub = runtime_pb2_grpc.RuntimeStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Generate(generate_request(prompt(1), 5000), timeout=1.5))
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_all_blocks_free(runtime.address)
    # A client process that dies mid-stream (no cancel, the connection just drops).
    script = (
        "import grpc, sys\n"
        "from llmserve.v1 import runtime_pb2_grpc\n"
        "from tests.runtime_service.daemon_harness import generate_request\n"
        "stub = runtime_pb2_grpc.RuntimeStub(grpc.insecure_channel(sys.argv[1]))\n"
        "for chunk in stub.Generate(generate_request('a b c', 5000)):\n"
        "    print('chunk', flush=True)\n"
    )
    client = subprocess.Popen(
        [sys.executable, "-c", script, runtime.address],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdout is not None and client.stdout.readline().strip() == "chunk"
    assert status(runtime.address).num_running == 1
    client.send_signal(signal.SIGKILL)
    client.wait()
    wait_all_blocks_free(runtime.address)


BAD_INPUTS = [
    (runtime_pb2.GenerateRequest(), grpc.StatusCode.INVALID_ARGUMENT, "prompt must be set"),
    (generate_request(""), grpc.StatusCode.INVALID_ARGUMENT, "prompt.text must not be empty"),
    (generate_request([]), grpc.StatusCode.INVALID_ARGUMENT, "prompt must not be empty"),
    (
        generate_request([5] * 300),
        grpc.StatusCode.INVALID_ARGUMENT,
        "prompt has 300 tokens; at most 255 fit",
    ),
    (
        generate_request([5, 4096]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "prompt.token_ids[1] = 4096 is outside the vocabulary [0, 1024)",
    ),
    (
        generate_request("hi", max_tokens=0),
        grpc.StatusCode.INVALID_ARGUMENT,
        "sampling.max_tokens must be >= 1, got 0",
    ),
    (
        generate_request("hi", top_p=1.5),
        grpc.StatusCode.INVALID_ARGUMENT,
        "sampling.top_p must be in (0, 1], got 1.5",
    ),
    (
        generate_request("hi", logprobs=50),
        grpc.StatusCode.INVALID_ARGUMENT,
        "sampling.logprobs must be in [0, 20], got 50",
    ),
    (
        runtime_pb2.GenerateRequest(
            prompt=common_pb2.Prompt(text="hi"), sampling=common_pb2.SamplingParams(temperature=-1)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "sampling.temperature must be a finite number >= 0, got -1.0",
    ),
    (
        runtime_pb2.GenerateRequest(
            prompt=common_pb2.Prompt(text="hi"),
            sampling=common_pb2.SamplingParams(json_schema='{"type": "objet"}'),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        'sampling.json_schema: invalid JSON Schema: Unsupported type "objet"',
    ),
    (
        runtime_pb2.GenerateRequest(
            prompt=common_pb2.Prompt(text="hi"), sampling=common_pb2.SamplingParams(regex="a(b")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "sampling.regex: invalid regex: Regex parsing error at position 4: The parenthesis",
    ),
    (
        runtime_pb2.GenerateRequest(
            prompt=common_pb2.Prompt(text="hi"),
            sampling=common_pb2.SamplingParams(choice=common_pb2.Choices()),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "sampling.choice must hold at least one string",
    ),
    (
        runtime_pb2.GenerateRequest(prompt=common_pb2.Prompt(text="hi"), request_id="x" * 257),
        grpc.StatusCode.INVALID_ARGUMENT,
        "request_id must be at most 256 characters, got 257",
    ),
    (
        runtime_pb2.GenerateRequest(prompt=common_pb2.Prompt(text="hi"), adapter="nope"),
        grpc.StatusCode.NOT_FOUND,
        "adapter 'nope': this engine serves no adapters",
    ),
]


@pytest.mark.parametrize(("request_pb", "code", "message"), BAD_INPUTS)
def test_bad_input_gets_the_right_code(runtime: DaemonProcess, request_pb, code, message) -> None:
    with grpc.insecure_channel(runtime.address) as channel:
        stub = runtime_pb2_grpc.RuntimeStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Generate(request_pb, timeout=30))
        assert err.value.code() == code
        assert message in err.value.details()
        # The runtime keeps serving.
        chunks = list(stub.Generate(generate_request("still serving", 3), timeout=30))
        assert len(tokens(chunks)) == 3


def test_duplicate_request_id_in_flight(runtime: DaemonProcess) -> None:
    async def main() -> None:
        async with grpc.aio.insecure_channel(runtime.address) as channel:
            stub = runtime_pb2_grpc.RuntimeStub(channel)
            request = generate_request(prompt(3), 150)
            request.request_id = "same-id"
            first = stub.Generate(request)
            await first.read()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await collect(stub, request)
            assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
            first.cancel()

    asyncio.run(main())
    wait_all_blocks_free(runtime.address)


def test_final_only_and_logprobs(runtime: DaemonProcess, model: Path) -> None:
    request = generate_request(prompt(5), 12, logprobs=3)
    request.final_only = True
    with grpc.insecure_channel(runtime.address) as channel:
        chunks = list(runtime_pb2_grpc.RuntimeStub(channel).Generate(request))
    assert len(chunks) == 1
    (final,) = chunks
    assert list(final.token_ids) == offline(model, [prompt(5)], 12)[0]
    assert final.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert final.usage.completion_tokens == 12 and final.usage.prompt_tokens > 0
    assert final.timings.total_ns >= final.timings.decode_ns > 0
    assert len(final.logprobs) == 12 and all(len(lp.top) == 3 for lp in final.logprobs)
    assert all(lp.sampled.token_id == lp.top[0].token_id for lp in final.logprobs)


def test_constrained_generation_through_the_daemon(runtime: DaemonProcess) -> None:
    """The constraint crosses into the engine core's process, is compiled there and masks
    the tiny model's random choices: the output is one of the choices, then EOS."""
    choices = ["alpha beta", "gamma", "delta 42"]
    for i in range(4):
        request = generate_request(prompt(i), 40)
        request.sampling.choice.values.extend(choices)
        request.sampling.temperature = 1.0
        request.sampling.seed = i
        with grpc.insecure_channel(runtime.address) as channel:
            chunks = list(runtime_pb2_grpc.RuntimeStub(channel).Generate(request, timeout=60))
        assert "".join(c.text for c in chunks) in choices
        assert chunks[-1].finish_reason == common_pb2.FINISH_REASON_STOP
    wait_all_blocks_free(runtime.address)


def test_metrics_move(runtime: DaemonProcess) -> None:
    port = runtime.metrics_port  # type: ignore[attr-defined]
    model = status(runtime.address).engine.model_name
    before = scrape(port)
    with grpc.insecure_channel(runtime.address) as channel:
        for i in range(3):
            list(runtime_pb2_grpc.RuntimeStub(channel).Generate(generate_request(prompt(i), 7)))
    after = scrape(port)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, model_name=model, **labels) - value(
            before, name, model_name=model, **labels
        )

    assert moved("llmserve_requests_total", finish_reason="length", adapter="") == 3
    assert moved("llmserve_generation_tokens_total", adapter="") == 21
    assert moved("llmserve_time_to_first_token_seconds_count") == 3
    assert moved("llmserve_inter_token_latency_seconds_count") == 18
    assert moved("llmserve_e2e_request_latency_seconds_count") == 3
    for phase in ("queue", "prefill", "decode"):
        assert moved(f"llmserve_request_{phase}_time_seconds_count") == 3
    assert moved("llmserve_request_generation_tokens_sum") == 21
    assert moved("llmserve_request_generation_tokens_count") == 3
    assert moved("llmserve_request_prompt_tokens_count") == 3
    assert moved("llmserve_prefix_cache_queries_total") > 0
    rpc = {"method": "llmserve.v1.Runtime/Generate", "code": "OK"}
    assert (
        value(after, "llmserve_rpc_requests_total", **rpc)
        - value(before, "llmserve_rpc_requests_total", **rpc)
        == 3
    )
    for gauge in (
        "llmserve_queue_length",
        "llmserve_running_requests",
        "llmserve_kv_cache_usage_ratio",
        "llmserve_prefix_cache_hit_rate",
        "llmserve_preemptions_total",
        "llmserve_lora_adapters_loaded",
        "llmserve_lora_slot_loads_total",
    ):
        assert has(after, gauge, model_name=model), gauge
    assert has(after, "llmserve_kv_cache_blocks", model_name=model, state="free")


def test_spans_join_the_callers_trace(runtime: DaemonProcess) -> None:
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    metadata = [("traceparent", f"00-{trace_id}-{parent}-01")]
    with grpc.insecure_channel(runtime.address) as channel:
        list(
            runtime_pb2_grpc.RuntimeStub(channel).Generate(
                generate_request(prompt(9), 4), metadata=metadata
            )
        )
    spans = [json.loads(line) for line in runtime.trace_file.read_text().splitlines()]  # type: ignore[attr-defined]
    ours = [s for s in spans if s["context"]["trace_id"] == f"0x{trace_id}"]
    by_name = {s["name"]: s for s in ours}
    server = by_name["llmserve.v1.Runtime/Generate"]
    assert server["parent_id"] == f"0x{parent}" and server["kind"] == "SpanKind.SERVER"
    for phase in ("queue", "prefill", "decode"):
        span = by_name[f"llmserve.runtime.{phase}"]
        assert span["parent_id"] == server["context"]["span_id"]
        assert span["attributes"]["llmserve.completion_tokens"] == 4


def test_queue_overflow_is_refused_with_the_limit(model: Path, tmp_path: Path) -> None:
    proc = start_runtime(model, tmp_path, "--max-num-seqs", "1", "--max-waiting", "2")
    try:

        async def main() -> list[object]:
            async with grpc.aio.insecure_channel(proc.address) as channel:
                stub = runtime_pb2_grpc.RuntimeStub(channel)
                calls = [collect(stub, generate_request(prompt(i), 100)) for i in range(8)]
                return await asyncio.gather(*calls, return_exceptions=True)

        results = asyncio.run(main())
        refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        served = [r for r in results if isinstance(r, list)]
        # Admitted: at least the 2 that may wait, at most those plus the 1 that may run.
        assert len(refused) + len(served) == 8 and 2 <= len(served) <= 3
        for err in refused:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limit max_waiting=2" in err.details()
        assert all(len(tokens(r)) == 100 for r in served)
        wait_all_blocks_free(proc.address)
    finally:
        proc.terminate()
