"""Prompts -> token ids: text, token ids, or chat messages rendered with the chat template.

All input validation that needs the tokenizer or the model's limits lives here, and raises
InvalidArgument naming the field and the limit. Limits are checked before the expensive work
they bound: a text's bytes before it is tokenized (no token is longer than the vocabulary's
longest, so more bytes than max_model_len of those cannot fit), the number of chat messages
and their bytes before the chat template runs. `truncate_history` renders only suffixes of the
conversation, growing them geometrically from the newest turn: its cost follows the context
length, not the length of the conversation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmserve.errors import InvalidArgument
from llmserve.reasons import Reason


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
        # NOTE: every vocabulary entry (in its own spelling: byte-level 'Ġ', SentencePiece '▁',
        # '<0x0A>') is at least as long in UTF-8 as the text it stands for.
        longest = max((len(t.encode("utf-8")) for t in tokenizer.get_vocab()), default=1)
        self.max_token_bytes = max(longest, 1)
        self.max_text_bytes = self.max_token_bytes * max_model_len

    def check_bytes(self, num_bytes: int, field_name: str) -> None:
        """Refuses text that cannot fit in max_model_len tokens, before tokenizing it."""
        if num_bytes > self.max_text_bytes:
            raise InvalidArgument(
                f"{field_name} is {num_bytes} bytes; more than {self.max_text_bytes} bytes"
                f" (max_model_len {self.max_model_len} x {self.max_token_bytes} bytes, the"
                " longest token) cannot fit in the context",
                reason=Reason.PROMPT_TOO_LONG,
                field=field_name.split(" ")[0],
            )

    def __call__(self, prompt: PromptInput, max_tokens: int | None = None) -> list[int]:
        if isinstance(prompt, str):
            prompt = TextPrompt(prompt)
        elif isinstance(prompt, list):
            prompt = TokensPrompt(prompt)
        if isinstance(prompt, TextPrompt):
            if not prompt.text:
                raise InvalidArgument(
                    "prompt.text must not be empty",
                    reason=Reason.FIELD_REQUIRED,
                    field="prompt.text",
                )
            self.check_bytes(len(prompt.text.encode("utf-8")), "prompt.text")
            ids = self.tokenizer.encode(prompt.text, add_special_tokens=prompt.add_special_tokens)
        elif isinstance(prompt, TokensPrompt):
            ids = list(prompt.token_ids)
            self.check_length(len(ids))  # before each id is looked at
            for i, t in enumerate(ids):
                if not 0 <= t < self.vocab_size:
                    raise InvalidArgument(
                        f"prompt.token_ids[{i}] = {t} is outside the vocabulary [0, "
                        f"{self.vocab_size})",
                        field=f"prompt.token_ids[{i}]",
                    )
        elif isinstance(prompt, ChatPrompt):
            ids = self._chat(prompt, max_tokens)
        else:
            raise InvalidArgument(
                f"unsupported prompt type {type(prompt).__name__}", field="prompt"
            )
        if not ids:
            raise InvalidArgument(
                "prompt must not be empty", reason=Reason.FIELD_REQUIRED, field="prompt"
            )
        self.check_length(len(ids))
        if max_tokens is not None and len(ids) + max_tokens > self.max_model_len:
            raise InvalidArgument(
                f"prompt ({len(ids)} tokens) plus max_tokens ({max_tokens}) exceed "
                f"max_model_len ({self.max_model_len}); lower max_tokens to at most "
                f"{self.max_model_len - len(ids)} or leave it unset to fill the context",
                reason=Reason.PROMPT_TOO_LONG,
                field="sampling.max_tokens",
            )
        return ids

    def check_length(self, num_tokens: int, field_name: str = "prompt") -> None:
        limit = self.max_model_len - 1
        if num_tokens > limit:
            raise InvalidArgument(
                f"{field_name} has {num_tokens} tokens; at most {limit} fit "
                f"(max_model_len {self.max_model_len} minus at least one output token)",
                reason=Reason.PROMPT_TOO_LONG,
                field=field_name.split(" ")[0],
            )

    def render_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise InvalidArgument(
                "prompt.chat: this model has no chat template", field="prompt.chat"
            )
        for i, m in enumerate(messages):
            if not m.get("role"):
                raise InvalidArgument(
                    f"prompt.chat.messages[{i}].role must not be empty",
                    reason=Reason.FIELD_REQUIRED,
                    field=f"prompt.chat.messages[{i}].role",
                )
        try:
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tokenize=False
            )
        except Exception as e:
            message = f"prompt.chat: the chat template refused the messages: {e}"
            raise InvalidArgument(message, field="prompt.chat") from e
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _chat(self, prompt: ChatPrompt, max_tokens: int | None) -> list[int]:
        messages = list(prompt.messages)
        if not messages:
            raise InvalidArgument(
                "prompt.chat.messages must not be empty",
                reason=Reason.FIELD_REQUIRED,
                field="prompt.chat.messages",
            )
        if not prompt.truncate_history:
            # Each message renders to at least one token, and its content to at least
            # len(content) / max_token_bytes tokens.
            self.check_length(len(messages), "prompt.chat.messages (one token per message)")
            size = sum(len(m.get("content", "").encode("utf-8")) for m in messages)
            self.check_bytes(size, "prompt.chat.messages (contents)")
            return self.render_chat(messages, prompt.add_generation_prompt)
        if max_tokens is not None and max_tokens >= self.max_model_len:
            raise InvalidArgument(
                f"max_tokens ({max_tokens}) must be below max_model_len ({self.max_model_len}) "
                "to leave room for the conversation",
                reason=Reason.PROMPT_TOO_LONG,
                field="sampling.max_tokens",
            )
        budget = self.max_model_len - (max_tokens or 1)
        return self._newest_that_fit(messages, prompt.add_generation_prompt, budget)

    def _newest_that_fit(
        self, messages: list[dict[str, str]], add_generation_prompt: bool, budget: int
    ) -> list[int]:
        """The rendering of the longest suffix of the conversation that fits in `budget`
        tokens, keeping a leading system message and starting the kept history on a user turn
        (as chat templates expect), or the last message alone if nothing longer fits.

        Suffixes of 1, 2, 4, ... user turns are rendered until one does not fit (or all are
        kept), then the longest fitting one is found by bisection: O(log n) renders, each of a
        suffix at most twice as long as the one that fits."""
        head = messages[:1] if messages[0].get("role") == "system" else []
        body = messages[len(head) :]
        # Where a kept history may start: the whole conversation, each user turn, and the last
        # message in any case; newest first, so starts[k] keeps the k + 1 newest candidates.
        users = (i for i, m in enumerate(body) if m.get("role") == "user")
        starts = sorted({0, len(body) - 1, *users}, reverse=True)
        # Bytes of content from each start on: a suffix with too many cannot fit (no render).
        sizes = [len(m.get("content", "").encode("utf-8")) for m in messages]
        after = [0] * (len(body) + 1)
        for i in range(len(body) - 1, -1, -1):
            after[i] = after[i + 1] + sizes[len(head) + i]
        head_bytes = sum(sizes[: len(head)])
        cache: dict[int, list[int]] = {}

        def render(k: int) -> list[int]:
            if k not in cache:
                num_bytes = head_bytes + after[starts[k]]
                if k > 0 and num_bytes > self.max_text_bytes:
                    return [0] * (budget + 1)  # cannot fit: no need to render it
                self.check_bytes(num_bytes, "prompt.chat.messages (the newest turn)")
                cache[k] = self.render_chat(head + body[starts[k] :], add_generation_prompt)
            return cache[k]

        if len(render(0)) > budget:
            raise InvalidArgument(
                f"prompt.chat: the last message alone renders to {len(render(0))} tokens; with"
                f" max_tokens {self.max_model_len - budget} at most {budget} fit in"
                f" max_model_len {self.max_model_len}",
                reason=Reason.PROMPT_TOO_LONG,
                field="prompt.chat.messages",
            )
        fits, step = 0, 1  # render(fits) fits
        while fits + step < len(starts) and len(render(fits + step)) <= budget:
            fits, step = fits + step, 2 * step
        too_long = min(fits + step, len(starts))  # render(too_long) does not fit, or is past
        while too_long - fits > 1:
            middle = (fits + too_long) // 2
            if len(render(middle)) <= budget:
                fits = middle
            else:
                too_long = middle
        return render(fits)
