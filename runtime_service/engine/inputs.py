"""Prompts -> token ids: text, token ids, or chat messages rendered with the chat template.

All input validation that needs the tokenizer or the model's limits lives here, and raises
InvalidArgument naming the field and the limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmserve.errors import InvalidArgument


@dataclass(slots=True)
class TextPrompt:
    text: str
    add_special_tokens: bool = True


@dataclass(slots=True)
class TokensPrompt:
    token_ids: list[int]


@dataclass(slots=True)
class ChatPrompt:
    """Messages as {"role": ..., "content": ...} dicts, oldest first."""

    messages: list[dict[str, str]] = field(default_factory=list)
    add_generation_prompt: bool = True
    # Drop the oldest turns after a leading system message until the prompt fits.
    truncate_history: bool = False


PromptInput = str | list[int] | TextPrompt | TokensPrompt | ChatPrompt


class InputProcessor:
    """Tokenizes and validates prompts for one model."""

    def __init__(self, tokenizer: Any, vocab_size: int, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len

    def __call__(self, prompt: PromptInput, max_tokens: int | None = None) -> list[int]:
        if isinstance(prompt, str):
            prompt = TextPrompt(prompt)
        elif isinstance(prompt, list):
            prompt = TokensPrompt(prompt)
        if isinstance(prompt, TextPrompt):
            if not prompt.text:
                raise InvalidArgument("prompt.text must not be empty")
            ids = self.tokenizer.encode(prompt.text, add_special_tokens=prompt.add_special_tokens)
        elif isinstance(prompt, TokensPrompt):
            ids = list(prompt.token_ids)
            for i, t in enumerate(ids):
                if not 0 <= t < self.vocab_size:
                    raise InvalidArgument(
                        f"prompt.token_ids[{i}] = {t} is outside the vocabulary [0, "
                        f"{self.vocab_size})"
                    )
        elif isinstance(prompt, ChatPrompt):
            ids = self._chat(prompt, max_tokens)
        else:
            raise InvalidArgument(f"unsupported prompt type {type(prompt).__name__}")
        if not ids:
            raise InvalidArgument("prompt must not be empty")
        self.check_length(len(ids))
        if max_tokens is not None and len(ids) + max_tokens > self.max_model_len:
            raise InvalidArgument(
                f"prompt ({len(ids)} tokens) plus max_tokens ({max_tokens}) exceed "
                f"max_model_len ({self.max_model_len}); lower max_tokens to at most "
                f"{self.max_model_len - len(ids)} or leave it unset to fill the context"
            )
        return ids

    def check_length(self, num_tokens: int, field_name: str = "prompt") -> None:
        limit = self.max_model_len - 1
        if num_tokens > limit:
            raise InvalidArgument(
                f"{field_name} has {num_tokens} tokens; at most {limit} fit "
                f"(max_model_len {self.max_model_len} minus at least one output token)"
            )

    def render_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise InvalidArgument("prompt.chat: this model has no chat template")
        for i, m in enumerate(messages):
            if not m.get("role"):
                raise InvalidArgument(f"prompt.chat.messages[{i}].role must not be empty")
        try:
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tokenize=False
            )
        except Exception as e:
            message = f"prompt.chat: the chat template refused the messages: {e}"
            raise InvalidArgument(message) from e
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _chat(self, prompt: ChatPrompt, max_tokens: int | None) -> list[int]:
        messages = list(prompt.messages)
        if not messages:
            raise InvalidArgument("prompt.chat.messages must not be empty")
        ids = self.render_chat(messages, prompt.add_generation_prompt)
        if not prompt.truncate_history:
            return ids
        if max_tokens is not None and max_tokens >= self.max_model_len:
            raise InvalidArgument(
                f"max_tokens ({max_tokens}) must be below max_model_len ({self.max_model_len}) "
                "to leave room for the conversation"
            )
        budget = self.max_model_len - (max_tokens or 1)
        keep_system = messages[0].get("role") == "system"
        first = 1 if keep_system else 0
        while len(ids) > budget and len(messages) - first > 1:
            del messages[first]
            # Start the kept history on a user turn, as chat templates expect.
            while len(messages) - first > 1 and messages[first].get("role") != "user":
                del messages[first]
            ids = self.render_chat(messages, prompt.add_generation_prompt)
        if len(ids) > budget:
            raise InvalidArgument(
                f"prompt.chat: the last message alone renders to {len(ids)} tokens; with "
                f"max_tokens {max_tokens or 1} at most {budget} fit in max_model_len "
                f"{self.max_model_len}"
            )
        return ids
