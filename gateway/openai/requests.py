"""Request bodies of the OpenAI-compatible API, validated by pydantic with OpenAI's names and
ranges (a bad value is a 400 naming the parameter).

Unknown fields are ignored, as vLLM and TGI do, so that tools sending newer or vendor fields
(`store`, `metadata`, `service_tier`, ...) still work. Fields that would change the output in
ways llmserve does not do are refused when set: `n` > 1, `best_of` > 1, `echo`, `suffix`,
`logit_bias`, `tools`/`functions`, and a `response_format` other than text, json_object and
json_schema (structured output: constraints.py, with vLLM's `guided_*` extras).

Beyond OpenAI's fields, the sampling settings of llmserve.v1.SamplingParams that OpenAI lacks
are accepted under vLLM's names (the openai client sends them with `extra_body`): `top_k`,
`min_p`, `repetition_penalty`, `min_tokens`, `ignore_eos`, `stop_token_ids`,
`skip_special_tokens`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmserve.errors import InvalidArgument

MAX_STOP_STRINGS = 16  # as llmserve.v1.SamplingParams.stop
MAX_LOGPROBS = 20  # as llmserve.v1.SamplingParams.logprobs


class ParamError(InvalidArgument):
    """A 400 naming the request parameter at fault (OpenAI's `error.param`)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message, field=param)
        self.param = param


def refuse(param: str, message: str) -> None:
    raise ParamError(param, message)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class SamplingFields(BaseModel):
    """The fields /v1/chat/completions and /v1/completions share."""

    model_config = ConfigDict(extra="ignore")

    model: Annotated[str, Field(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_STRINGS)] | None = None
    seed: Annotated[int, Field(ge=0, lt=2**64)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    logit_bias: dict[str, float] | None = None
    user: Annotated[str, Field(max_length=256)] | None = None
    # vLLM's extensions (see the module docstring).
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0)] | None = None
    min_tokens: Annotated[int, Field(ge=0)] | None = None
    ignore_eos: bool = False
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = None
    skip_special_tokens: bool | None = None
    # Structured output (constraints.py): OpenAI's response_format and vLLM's guided_* extras.
    response_format: dict[str, Any] | None = None
    guided_json: Any = None
    guided_regex: str | None = None
    guided_grammar: str | None = None
    guided_choice: list[str] | None = None

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> SamplingFields:
        if self.n != 1:
            refuse(
                "n",
                f"n must be 1, got {self.n}: llmserve returns one choice per request; send"
                " several requests (with different seeds) for several choices",
            )
        if self.logit_bias:
            refuse("logit_bias", "logit_bias is not supported by llmserve")
        if self.stream_options is not None and not self.stream:
            refuse("stream_options", "stream_options is only allowed when stream is true")
        self.constraint_fields()  # refuses a malformed or second constraint now
        return self

    def constraint_fields(self) -> dict[str, Any]:
        """The oneof `constraint` of llmserve.v1.SamplingParams, as keyword arguments."""
        from gateway.openai.constraints import GUIDED_FIELDS, constraint_fields

        guided = {name: getattr(self, name) for name in GUIDED_FIELDS}
        return constraint_fields(self.response_format, guided)

    @property
    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class TextPart(BaseModel):
    """A text part of a message's content (images and audio are refused)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class ChatMessageParam(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions."""

    messages: Annotated[list[ChatMessageParam], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None

    @model_validator(mode="after")
    def _check_chat(self) -> ChatCompletionRequest:
        for name in ("tools", "functions"):
            if getattr(self, name):
                refuse(name, f"{name} (tool calling) is not supported by llmserve")
        if self.tool_choice not in (None, "none"):
            refuse("tool_choice", "tool_choice is not supported by llmserve (no tool calling)")
        if self.function_call not in (None, "none"):
            refuse("function_call", "function_call is not supported by llmserve")
        if self.top_logprobs and not self.logprobs:
            refuse("top_logprobs", "top_logprobs requires logprobs to be true")
        return self

    @property
    def output_limit(self) -> int | None:
        """max_completion_tokens, or the older max_tokens."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def num_logprobs(self) -> int | None:
        """Alternatives per token for llmserve's SamplingParams.logprobs; None: no logprobs."""
        return (self.top_logprobs or 0) if self.logprobs else None


TokenIds = list[Annotated[int, Field(ge=0)]]


class CompletionRequest(SamplingFields):
    """POST /v1/completions: one prompt, as text or token ids (a list of one is accepted)."""

    prompt: str | list[str] | TokenIds | list[TokenIds]
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @model_validator(mode="after")
    def _check_completion(self) -> CompletionRequest:
        if self._is_batch and len(self.prompt) != 1:
            refuse(
                "prompt", f"prompt holds {len(self.prompt)} prompts; llmserve takes one per request"
            )
        if isinstance(self.prompt, list) and not self.prompt:
            refuse("prompt", "prompt must not be empty")
        if self.echo:
            refuse("echo", "echo is not supported by llmserve")
        if self.suffix:
            refuse("suffix", "suffix is not supported by llmserve")
        if self.best_of not in (None, 1):
            refuse("best_of", f"best_of must be 1, got {self.best_of}")
        return self

    @property
    def _is_batch(self) -> bool:
        """Whether `prompt` is a list of prompts (texts or token id lists)."""
        return (
            isinstance(self.prompt, list)
            and bool(self.prompt)
            and not isinstance(self.prompt[0], int)
        )

    @property
    def single_prompt(self) -> str | list[int]:
        """The one prompt: text or token ids."""
        if self._is_batch:
            return self.prompt[0]  # type: ignore[return-value,index]
        return self.prompt  # type: ignore[return-value]
