"""The HTTP API's request models, their protobuf edge and error mapping (no network)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.openai import convert
from gateway.openai.errors import http_error
from gateway.openai.requests import ChatCompletionRequest, CompletionRequest
from gateway.routing import ModelInfo
from llmserve.errors import NotFound, ResourceExhausted, Unauthenticated, Unavailable

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def refusal(cls: type, body: dict[str, Any]) -> tuple[int, str | None, str]:
    with pytest.raises(Exception) as err:
        cls.model_validate_json(json.dumps(body))  # type: ignore[attr-defined]
    error = http_error(err.value)
    return error.status, error.body.error.param, error.body.error.message


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"temperature": 2.5}, "temperature", "temperature: Input should be less than or equal"),
        ({"temperature": "hot"}, "temperature", "temperature: Input should be a number"),
        ({"n": 3}, "n", "n must be 1, got 3"),
        ({"stop": 7}, "stop", "stop: Input should be a string or a list"),
        ({"stop": ["x"] * 17}, "stop", "stop: List should have at most 16 items"),
        ({"seed": -1}, "seed", "seed: Input should be greater than or equal to 0"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs", "less than or equal to 20"),
        ({"tools": [{"type": "function"}]}, "tools", "tool calling"),
        ({"response_format": {"type": "xml"}}, "response_format", "'xml' is not supported"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format",
            "needs json_schema.schema",
        ),
        (
            {"response_format": {"type": "json_object"}, "guided_regex": "a+"},
            "guided_regex",
            "at most one output constraint may be set, got response_format, guided_regex",
        ),
        ({"guided_choice": []}, "guided_choice", "non-empty list of strings"),
        ({"guided_json": 5}, "guided_json", "must be a JSON Schema"),
        ({"logit_bias": {"1": 5}}, "logit_bias", "not supported"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "only allowed when"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages", "messages.0.role"),
        ({"messages": []}, "messages", "at least 1 item"),
        ({"model": ""}, "model", "at least 1 character"),
    ],
)
def test_chat_refusals_name_the_parameter(body: dict[str, Any], param: str, message: str) -> None:
    status, got_param, got_message = refusal(ChatCompletionRequest, {**CHAT, **body})
    assert (status, got_param) == (400, param)
    assert message in got_message


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"prompt": ["a", "b"]}, "prompt", "holds 2 prompts"),
        ({"prompt": []}, "prompt", "must not be empty"),
        ({"prompt": "x", "echo": True}, "echo", "echo is not supported"),
        ({"prompt": "x", "best_of": 2}, "best_of", "best_of must be 1"),
        ({"prompt": [1, -2]}, "prompt", "prompt.1: Input should be greater than or equal to 0"),
    ],
)
def test_completion_refusals_name_the_parameter(
    body: dict[str, Any], param: str, message: str
) -> None:
    status, got_param, got_message = refusal(CompletionRequest, {"model": "m", **body})
    assert (status, got_param) == (400, param)
    assert message in got_message


def test_one_prompt_as_text_or_token_ids() -> None:
    def prompt(value: object) -> object:
        request = CompletionRequest.model_validate({"model": "m", "prompt": value})
        return convert.completion_generate_request(request, "m", "", "r").prompt

    assert prompt("hi").text == prompt(["hi"]).text == "hi"
    assert list(prompt([1, 2]).token_ids.ids) == list(prompt([[1, 2]]).token_ids.ids) == [1, 2]


def test_sampling_fields_reach_llmserves_sampling_params() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            **CHAT,
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": t} for t in "ab"]},
            ],
            "temperature": 0.5, "top_p": 0.9, "seed": 7, "stop": "END", "max_tokens": 9,
            "max_completion_tokens": 5, "presence_penalty": 1, "frequency_penalty": -1,
            "logprobs": True, "top_logprobs": 3, "top_k": -1, "ignore_eos": True,
            "stream": True, "user": "u1", "store": False,  # unknown fields are ignored
        }
    )  # fmt: skip
    call = convert.chat_generate_request(request, "m", "lora", "rid")
    s = call.sampling
    assert (call.model, call.adapter, call.request_id, call.final_only) == (
        "m",
        "lora",
        "rid",
        False,
    )
    assert [(m.role, m.content) for m in call.prompt.chat.messages] == [
        ("system", "Be brief."),
        ("user", "ab"),
    ]
    assert s.temperature == pytest.approx(0.5) and s.top_p == pytest.approx(0.9)
    assert (s.seed, list(s.stop), s.max_tokens, s.logprobs) == (7, ["END"], 5, 3)
    assert (s.presence_penalty, s.frequency_penalty, s.top_k, s.ignore_eos) == (1, -1, 0, True)
    # Unset fields stay unset: the runtime applies its (OpenAI's) defaults.
    plain = convert.chat_generate_request(ChatCompletionRequest.model_validate(CHAT), "m", "", "r")
    assert not plain.sampling.HasField("temperature") and not plain.sampling.HasField("logprobs")
    assert plain.final_only


def test_output_constraints_reach_the_oneof() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}

    def sampling(extra: dict[str, Any], cls: type = ChatCompletionRequest) -> Any:
        body = {**CHAT, **extra} if cls is ChatCompletionRequest else {"model": "m", **extra}
        request = cls.model_validate(body)  # type: ignore[attr-defined]
        if cls is ChatCompletionRequest:
            return convert.chat_generate_request(request, "m", "", "r").sampling
        return convert.completion_generate_request(request, "m", "", "r").sampling

    s = sampling({"response_format": {"type": "json_schema", "json_schema": {"schema": schema}}})
    assert s.WhichOneof("constraint") == "json_schema" and json.loads(s.json_schema) == schema
    s = sampling({"response_format": {"type": "json_object"}})
    assert s.WhichOneof("constraint") == "json_object" and s.json_object
    assert sampling({"response_format": {"type": "text"}}).WhichOneof("constraint") is None
    assert sampling({"guided_json": json.dumps(schema)}).json_schema == json.dumps(schema)
    assert sampling({"guided_regex": "[0-9]+"}).regex == "[0-9]+"
    assert sampling({"guided_grammar": 'root ::= "a"'}).grammar == 'root ::= "a"'
    s = sampling({"prompt": "x", "guided_choice": ["yes", "no"]}, CompletionRequest)
    assert list(s.choice.values) == ["yes", "no"]


def test_model_names_select_a_model_or_an_adapter() -> None:
    models = [ModelInfo("m", adapters=["a"]), ModelInfo("org:m")]
    assert convert.resolve_model(models, "m") == ("m", "")
    assert convert.resolve_model(models, "m:a") == ("m", "a")
    assert convert.resolve_model(models, "org:m") == ("org:m", "")  # a whole name first
    with pytest.raises(NotFound, match="adapter 'b' is not loaded"):
        convert.resolve_model(models, "m:b")
    with pytest.raises(NotFound, match="'x' is not served"):
        convert.resolve_model(models, "x")


@pytest.mark.parametrize(
    ("exc", "status", "headers"),
    [
        (Unauthenticated("unknown API key"), 401, {}),
        (NotFound("no such model"), 404, {}),
        (ResourceExhausted("slow down", retry_after_s=1.5), 429,
         {"retry-after-ms": "1500", "retry-after": "2"}),
        (Unavailable("server is draining"), 503, {}),
        (RuntimeError("boom"), 500, {}),
    ],
)  # fmt: skip
def test_errors_map_to_http_statuses(exc: Exception, status: int, headers: dict[str, str]) -> None:
    error = http_error(exc)
    assert (error.status, error.headers) == (status, headers)
    body = json.loads(error.json())["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["message"]
