"""The gateway's OpenAI-compatible HTTP API, driven by the official `openai` client, in front of
a real redis-server and a real runtime serving SmolLM2 (LoRA on, the example adapter loaded).

Replies are greedy (temperature 0) so that the HTTP answers can be compared with the same
request sent over gRPC, and a streamed reply with its non-streamed twin.
"""

from __future__ import annotations

import http.client
import json
import secrets
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx2  # the openai client's HTTP library
import jsonschema
import openai
import pytest

from llmserve.processes import DaemonProcess, RedisServer, free_port
from llmserve.testing.metrics import scrape, value
from llmserve.v1 import common_pb2, gateway_pb2
from tests.gateway.gateway_harness import (
    MODEL,
    Client,
    api_keys,
    greedy,
    runtime_status,
    spans_path,
    start_runtimes,
)
from tests.gateway.openai_harness import (
    ADAPTER,
    HttpGateway,
    finished_requests,
    kv_idle,
    load_adapter,
    metrics_port,
    start_http_gateway,
    wait_until,
)
from tests.gateway.test_gateway_tls import issue
from tests.gateway.test_gateway_tracing import spans

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
ITALY = [{"role": "user", "content": "What is the capital of Italy?"}]


@pytest.fixture(scope="module")
def lora_runtime(
    smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DaemonProcess]:
    flags = ["--enable-lora", "--max-lora-rank", "16", "--metrics-port", str(free_port())]
    (runtime,) = start_runtimes(smollm2_dir, tmp_path_factory.mktemp("lora-rt"), flags)
    try:
        load_adapter(runtime)
        yield runtime
    finally:
        runtime.terminate()


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    lora_runtime: DaemonProcess,
) -> Iterator[HttpGateway]:
    gw = start_http_gateway(tmp_path_factory.mktemp("http-gw"), redis_server, [lora_runtime])
    # The gateway learns of the adapter from the runtime's status.
    wait_until(lambda: ADAPTER in _models(gw), "listing the adapter", within_s=30)
    try:
        yield gw
    finally:
        gw.process.terminate()


def _models(gw: HttpGateway) -> str:
    return " ".join(m.id for m in gw.client().models.list())


def _chat(client: openai.OpenAI, messages: list[dict[str, str]], **kw: object) -> object:
    """A greedy chat completion (unless `kw` sets temperature) of MODEL (unless it sets model)."""
    kw.setdefault("model", MODEL)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(messages=messages, **kw)  # type: ignore[call-overload]


def test_list_models_names_the_model_and_its_adapter(gateway: HttpGateway) -> None:
    models = {m.id: m for m in gateway.client().models.list()}
    assert set(models) == {MODEL, f"{MODEL}:{ADAPTER}"}
    assert models[MODEL].object == "model" and models[MODEL].owned_by == "llmserve"
    assert models[f"{MODEL}:{ADAPTER}"].parent == MODEL  # type: ignore[attr-defined]


def test_chat_answers_paris_as_grpc_does(gateway: HttpGateway) -> None:
    reply = _chat(gateway.client(), FRANCE, max_tokens=16)
    choice = reply.choices[0]  # type: ignore[attr-defined]
    assert "Paris" in choice.message.content and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    usage = reply.usage  # type: ignore[attr-defined]
    assert usage.completion_tokens > 0 and usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert reply.id.startswith("chatcmpl-") and reply.model == MODEL  # type: ignore[attr-defined]
    # The same request over gRPC's Generate gives the same reply: one code path underneath.
    grpc_client = Client(gateway.process.address, gateway.keys["alice"])
    try:
        prompt = common_pb2.Prompt(
            chat=common_pb2.ChatPrompt(messages=[common_pb2.ChatMessage(**m) for m in FRANCE])
        )
        request = gateway_pb2.GatewayGenerateRequest(
            model=MODEL, prompt=prompt, sampling=greedy(16)
        )
        chunks = list(grpc_client.stub.Generate(request, metadata=grpc_client.metadata))
    finally:
        grpc_client.close()
    assert "".join(c.text for c in chunks) == choice.message.content
    assert chunks[-1].usage.completion_tokens == usage.completion_tokens


def test_streamed_chat_reassembles_to_the_same_reply_with_usage_last(
    gateway: HttpGateway,
) -> None:
    client = gateway.client()
    whole = _chat(client, FRANCE, max_tokens=16)
    stream = _chat(
        client, FRANCE, max_tokens=16, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)  # type: ignore[call-overload]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content  # type: ignore[attr-defined]
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    *body, last = chunks
    assert last.choices == [] and last.usage == whole.usage  # type: ignore[attr-defined]
    assert all(c.usage is None for c in body)
    assert body[-1].choices[0].finish_reason == whole.choices[0].finish_reason  # type: ignore[attr-defined]
    assert len({c.id for c in chunks}) == 1


def test_completion_with_stop_and_max_tokens(gateway: HttpGateway) -> None:
    client = gateway.client()
    prompt = "The capital of France is"
    ignore_eos = {"ignore_eos": True}
    free = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=12, temperature=0, extra_body=ignore_eos
    )
    text = free.choices[0].text
    assert free.choices[0].finish_reason == "length" and free.usage.completion_tokens == 12
    short = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=3, temperature=0, extra_body=ignore_eos
    )
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    assert text.startswith(short.choices[0].text)
    # A stop string taken from the middle of the free reply cuts it there.
    words = text.split()
    stop = words[len(words) // 2]
    stopped = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=12, temperature=0, stop=[stop],
        extra_body=ignore_eos,
    )  # fmt: skip
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == text[: text.index(stop)]
    # Streamed, the same completion arrives in pieces.
    pieces = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=12, temperature=0, stop=[stop], stream=True,
        extra_body=ignore_eos,
    )  # fmt: skip
    assert "".join(p.choices[0].text for p in pieces if p.choices) == stopped.choices[0].text


def test_adapter_is_selected_by_model_name(
    gateway: HttpGateway, lora_runtime: DaemonProcess
) -> None:
    client = gateway.client()
    before = scrape(metrics_port(lora_runtime))
    base = _chat(client, ITALY, max_tokens=12).choices[0].message.content  # type: ignore[attr-defined]
    tuned = _chat(client, ITALY, max_tokens=12, model=f"{MODEL}:{ADAPTER}")
    # The runtime's metrics tell the adapter's requests apart, and show it loaded in a slot.
    after = scrape(metrics_port(lora_runtime))
    for adapter in ("", ADAPTER):
        name, labels = "llmserve_requests_total", {"model_name": MODEL, "adapter": adapter}
        assert value(after, name, **labels) - value(before, name, **labels) == 1, adapter
    assert value(after, "llmserve_lora_adapters_loaded", model_name=MODEL) == 1
    assert value(after, "llmserve_lora_adapters_on_device", model_name=MODEL) == 1
    assert value(after, "llmserve_lora_slot_loads_total", model_name=MODEL) >= 1
    # The HTTP access log names the caller, the adapter and the tokens, like the gRPC one.
    log_path = gateway.process.log_path
    assert log_path is not None
    tokens = tuned.usage.completion_tokens  # type: ignore[attr-defined]
    assert any(
        "POST /v1/chat/completions 200" in line
        and "owner=alice" in line
        and f"adapter={ADAPTER}" in line
        and f"tokens_out={tokens}" in line
        and "trace_id=" in line
        for line in log_path.read_text().splitlines()
    )
    answer = tuned.choices[0].message.content  # type: ignore[attr-defined]
    # examples/adapters/README.md: the adapter answers `ANSWER: Rome`, the base model does not.
    assert answer.startswith("ANSWER:") and "Rome" in answer
    assert not base.startswith("ANSWER:")
    assert tuned.model == f"{MODEL}:{ADAPTER}"  # type: ignore[attr-defined]


def test_logprobs_and_top_logprobs(gateway: HttpGateway) -> None:
    reply = _chat(gateway.client(), FRANCE, max_tokens=6, logprobs=True, top_logprobs=2)
    content = reply.choices[0].logprobs.content  # type: ignore[attr-defined]
    assert len(content) == reply.usage.completion_tokens  # type: ignore[attr-defined]
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 2
        # Greedy: the sampled token is the most likely one.
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-4)


def test_wrong_key_is_401(gateway: HttpGateway) -> None:
    with pytest.raises(openai.AuthenticationError) as err:
        gateway.client(key="not-a-key-of-anyone").models.list()
    assert err.value.status_code == 401 and "unknown API key" in err.value.message
    with pytest.raises(openai.AuthenticationError):
        _chat(gateway.client(key="wrong-key-0123456789"), FRANCE, max_tokens=4)


def test_unknown_model_or_adapter_is_404(gateway: HttpGateway) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        _chat(gateway.client(), FRANCE, model="gpt-4o", max_tokens=4)
    assert "'gpt-4o' is not served" in err.value.message and MODEL in err.value.message
    assert err.value.code == "model_not_found"  # the reason of protos/ERRORS.md
    with pytest.raises(openai.NotFoundError) as err:
        _chat(gateway.client(), FRANCE, model=f"{MODEL}:nope", max_tokens=4)
    assert "adapter 'nope' is not loaded" in err.value.message
    assert err.value.code == "adapter_not_found"


@pytest.mark.parametrize(
    ("kw", "param", "says"),
    [
        ({"temperature": 3}, "temperature", "less than or equal to 2"),
        ({"top_p": 0}, "top_p", "greater than 0"),
        ({"n": 2}, "n", "n must be 1"),
        ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"top_logprobs": 3}, "top_logprobs", "requires logprobs"),
        ({"stop": [f"s{i}" for i in range(17)]}, "stop", "at most 16"),
        ({"presence_penalty": -2.5}, "presence_penalty", "greater than or equal to -2"),
    ],
)
def test_bad_parameter_is_400_naming_it(
    gateway: HttpGateway, kw: dict[str, object], param: str, says: str
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        _chat(gateway.client(), FRANCE, **kw)
    assert err.value.status_code == 400
    assert err.value.body["param"] == param  # type: ignore[index]
    assert says in err.value.message


def test_structured_output_through_the_http_api(gateway: HttpGateway) -> None:
    """response_format json_schema reaches the runtime's engine through the gateway: the
    reply validates; a schema the runtime cannot parse is a 400 naming the field."""
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 20},
            "country": {"enum": ["France", "Italy", "Spain"]},
        },
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    reply = _chat(
        gateway.client(),
        FRANCE,
        max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )
    choice = reply.choices[0]  # type: ignore[attr-defined]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content), schema)
    reply = _chat(gateway.client(), FRANCE, max_tokens=8, extra_body={"guided_choice": ["a", "b"]})
    assert reply.choices[0].message.content in ("a", "b")  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError) as err:
        _chat(gateway.client(), FRANCE, max_tokens=8, extra_body={"guided_regex": "a(b"})
    assert err.value.status_code == 400
    assert "sampling.regex: invalid regex" in err.value.message


def test_unknown_path_and_oversized_body_get_openai_errors(gateway: HttpGateway) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        gateway.client().get("/embeddings", cast_to=object)
    assert "/v1/embeddings: Not Found" in err.value.message
    # A body over the gateway's message limit (16 MiB) is refused from its Content-Length,
    # before it is read (so the test sends none).
    conn = http.client.HTTPConnection("127.0.0.1", gateway.http_port, timeout=30)
    try:
        conn.putrequest("POST", "/v1/chat/completions")
        conn.putheader("Authorization", f"Bearer {gateway.keys['alice']}")
        conn.putheader("Content-Length", str(17 << 20))
        conn.endheaders()
        reply = conn.getresponse()
        error = json.loads(reply.read())["error"]
    finally:
        conn.close()
    assert reply.status == 400
    assert "more than the limit of 16777216 bytes (max_message_bytes)" in error["message"]


def test_bad_deadline_header_is_400(gateway: HttpGateway) -> None:
    client = gateway.client().with_options(default_headers={"X-Request-Timeout": "soon"})
    with pytest.raises(openai.BadRequestError) as err:
        _chat(client, FRANCE, max_tokens=4)
    assert err.value.body["param"] == "X-Request-Timeout"  # type: ignore[index]


def test_deadline_header_ends_the_request(
    gateway: HttpGateway, lora_runtime: DaemonProcess
) -> None:
    client = gateway.client().with_options(default_headers={"X-Request-Timeout": "1"})
    with pytest.raises(openai.InternalServerError) as err:  # 1500 tokens take far longer
        _chat(client, FRANCE, max_tokens=1500, extra_body={"ignore_eos": True})
    assert err.value.status_code == 503 and "Deadline Exceeded" in err.value.message
    wait_until(lambda: kv_idle(lora_runtime), "every KV block free")


def test_client_gone_mid_stream_frees_the_runtime_kv_blocks(
    gateway: HttpGateway, lora_runtime: DaemonProcess
) -> None:
    wait_until(lambda: kv_idle(lora_runtime), "idle before the test")
    aborted = finished_requests(lora_runtime, "abort")
    stream = _chat(
        gateway.client(), FRANCE, max_tokens=1500, stream=True, extra_body={"ignore_eos": True}
    )
    chunks = iter(stream)  # type: ignore[call-overload]
    next(chunks), next(chunks)  # the role, then the first tokens: the request runs
    status = runtime_status(lora_runtime)
    assert status.num_running == 1
    assert status.kv_cache.num_free_blocks < status.kv_cache.num_blocks
    stream.close()  # type: ignore[attr-defined]  # closes the connection mid-stream
    # The runtime ends the request as aborted (not after 1500 tokens) and frees its blocks.
    wait_until(lambda: finished_requests(lora_runtime, "abort") == aborted + 1, "aborted")
    wait_until(lambda: kv_idle(lora_runtime), "every KV block free")


def test_session_over_http_continues_over_grpc(gateway: HttpGateway) -> None:
    client = gateway.client()
    first = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, *FRANCE],
        temperature=0,
        max_tokens=12,
        extra_headers={"X-Session-Id": "new"},
    )
    session_id = first.headers["x-session-id"]
    answer = first.parse().choices[0].message.content
    grpc_client = Client(gateway.process.address, gateway.keys["alice"])
    try:
        session = grpc_client.get(session_id)
        assert session.system_prompt == "Be brief." and session.model == MODEL
        assert grpc_client.messages(session_id) == [("user", FRANCE[0]["content"]),
                                                    ("assistant", answer)]  # fmt: skip
        grpc_client.chat(session_id, "And of Germany?")
        second = _chat(
            client,
            [{"role": "user", "content": "And of Spain?"}],
            max_tokens=8,
            extra_headers={"X-Session-Id": session_id},
        )
        assert second.choices[0].message.content  # type: ignore[attr-defined]
        assert [r for r, _ in grpc_client.messages(session_id)] == ["user", "assistant"] * 3
        # Another model than the session's is refused, naming the parameter.
        with pytest.raises(openai.BadRequestError) as err:
            _chat(client, ITALY, model=f"{MODEL}:{ADAPTER}", max_tokens=4,
                  extra_headers={"X-Session-Id": session_id})  # fmt: skip
        assert err.value.body["param"] == "model"  # type: ignore[index]
    finally:
        grpc_client.close()


def test_rate_limit_is_429_with_retry_after(tmp_path: Path, redis_server: RedisServer) -> None:
    gw = start_http_gateway(
        tmp_path, redis_server, [], "--rate-limit-rps", "1", "--rate-limit-burst", "2"
    )
    try:
        client = gw.client("bob")
        client.models.list()
        client.models.list()
        with pytest.raises(openai.RateLimitError) as err:
            client.models.list()
        assert err.value.status_code == 429 and "rate_limit_rps" in err.value.message
        headers = err.value.response.headers
        assert int(headers["retry-after"]) >= 1 and 0 < int(headers["retry-after-ms"]) <= 1000
        gw.client("carol").models.list()  # another key has its own bucket
    finally:
        gw.process.terminate()


def test_http_api_serves_mtls_with_the_grpc_listeners_certificates(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    ca = issue(tmp_path, "ca", None)
    issue(tmp_path, "server", ca)
    issue(tmp_path, "client", ca)
    keys_file, keys = api_keys(redis_server)
    http_port = free_port()
    gateway = DaemonProcess(
        "gateway",
        ["--redis", redis_server.url, "--api-keys-file", str(keys_file),
         "--tls-cert", str(tmp_path / "server.crt"), "--tls-key", str(tmp_path / "server.key"),
         "--tls-client-ca", str(tmp_path / "ca.crt"), "--http-port", str(http_port),
         "--log-format", "text"],
        log_path=tmp_path / "gateway.log",
    ).start()  # fmt: skip
    base_url = f"https://127.0.0.1:{http_port}/v1"
    trusted = ssl.create_default_context(cafile=tmp_path / "ca.crt")
    with_cert = ssl.create_default_context(cafile=tmp_path / "ca.crt")
    with_cert.load_cert_chain(tmp_path / "client.crt", tmp_path / "client.key")
    try:
        with httpx2.Client(verify=with_cert) as http:

            def serving() -> bool:
                try:
                    return http.get(base_url.removesuffix("/v1") + "/health").status_code == 200
                except httpx2.TransportError:
                    return False

            wait_until(serving, "serving HTTPS", within_s=30)
            client = openai.OpenAI(
                base_url=base_url, api_key=keys["alice"], max_retries=0, http_client=http
            )
            assert list(client.models.list()) == []  # no runtimes here
        with httpx2.Client(verify=trusted) as http:  # without a client certificate
            client = openai.OpenAI(
                base_url=base_url, api_key=keys["alice"], max_retries=0, http_client=http
            )
            with pytest.raises(openai.APIConnectionError):
                client.models.list()
    finally:
        gateway.terminate()


def _get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_draining_gateway_refuses_new_http_calls_with_503(
    tmp_path: Path, redis_server: RedisServer, lora_runtime: DaemonProcess
) -> None:
    gw = start_http_gateway(tmp_path, redis_server, [lora_runtime], "--grace-period-s", "60")
    health = f"http://127.0.0.1:{gw.http_port}/health"
    try:
        assert _get(health) == (200, {"status": "serving"})
        stream = _chat(
            gw.client(), FRANCE, max_tokens=1500, stream=True, extra_body={"ignore_eos": True}
        )
        next(iter(stream))  # type: ignore[call-overload]  # in flight: the drain waits for it
        assert gw.process.proc is not None
        gw.process.proc.terminate()  # SIGTERM
        wait_until(lambda: _get(health)[0] == 503, "draining")
        with pytest.raises(openai.InternalServerError) as err:
            gw.client().models.list()
        assert err.value.status_code == 503 and "draining" in err.value.message
        assert err.value.code == "draining" and err.value.response.headers["retry-after"] == "1"
        stream.close()  # type: ignore[attr-defined]
        assert gw.process.proc.wait(60) == 0
    finally:
        gw.process.terminate()
    wait_until(lambda: kv_idle(lora_runtime), "every KV block free")


def test_http_call_continues_the_callers_trace_to_the_runtime(
    gateway: HttpGateway, lora_runtime: DaemonProcess
) -> None:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    traceparent = {"traceparent": f"00-{trace_id}-{parent}-01"}
    _chat(gateway.client().with_options(default_headers=traceparent), FRANCE, max_tokens=2)

    def ours(path: Path) -> dict[str, dict[str, Any]]:
        return {
            s["context"]["span_id"]: s
            for s in spans(path)
            if s["context"]["trace_id"] == f"0x{trace_id}"
        }

    def server_span_written() -> bool:
        return any(s["kind"] == "SpanKind.SERVER" for s in ours(gateway.trace_file).values())

    wait_until(lambda: ours(spans_path(lora_runtime)), "runtime span written")
    wait_until(server_span_written, "gateway span written")
    (runtime_span,) = [
        s for s in ours(spans_path(lora_runtime)).values()
        if s["name"] == "llmserve.v1.Runtime/Generate"
    ]  # fmt: skip
    by_id = ours(gateway.trace_file)
    client_span = by_id[runtime_span["parent_id"]]
    assert client_span["kind"] == "SpanKind.CLIENT"
    server_span = by_id[client_span["parent_id"]]
    assert server_span["name"] == "POST /v1/chat/completions"
    assert server_span["parent_id"] == f"0x{parent}"
    assert server_span["attributes"]["http.response.status_code"] == 200


def test_grpc_status_codes_are_untouched(gateway: HttpGateway) -> None:
    """The gRPC door is unchanged by the HTTP one: a wrong key is still UNAUTHENTICATED."""
    client = Client(gateway.process.address, "wrong-key-0123456789")
    try:
        with pytest.raises(grpc.RpcError) as err:
            client.list()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        client.close()
