"""Request preparation (issue 12, item 2): limits are checked before the work they bound,
truncate_history renders O(log n) suffixes (was one render per dropped message), and the
daemon prepares requests on worker threads, off the event loop. The tokenizer is the real one
of a tiny checkpoint; `Counting` only counts the calls that reach it."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llmserve.errors import InvalidArgument
from runtime_service.engine.async_llm import AsyncLLM
from runtime_service.engine.inputs import ChatPrompt, InputProcessor, TextPrompt
from runtime_service.engine.params import SamplingParams
from runtime_service.models.open import load_tokenizer
from tests.runtime_service.test_async_llm import config

MAX_MODEL_LEN = 256


class Counting:
    """The real tokenizer, with its encode and apply_chat_template calls counted."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.encodes = 0
        self.renders = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)

    def encode(self, *args: Any, **kwargs: Any) -> list[int]:
        self.encodes += 1
        return self._tokenizer.encode(*args, **kwargs)

    def apply_chat_template(self, *args: Any, **kwargs: Any) -> Any:
        self.renders += 1
        return self._tokenizer.apply_chat_template(*args, **kwargs)


@pytest.fixture
def counting(tiny_model_dir: Callable[[str], Path]) -> Iterator[Counting]:
    yield Counting(load_tokenizer(tiny_model_dir("qwen2")))


def conversation(turns: int, system: bool = True) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": "Be brief."}] if system else []
    for i in range(turns):
        messages.append({"role": "user", "content": f"question {i} about the harbor"})
        messages.append({"role": "assistant", "content": f"answer {i} about boats"})
    messages.append({"role": "user", "content": "and now?"})
    return messages


def reference_truncation(inputs: InputProcessor, messages: list[dict[str, str]]) -> list[int]:
    """The former algorithm: drop the oldest message (then up to a user turn) and render
    again, until the prompt fits."""
    messages = list(messages)
    budget = inputs.max_model_len - 1
    ids = inputs.render_chat(messages, True)
    while len(ids) > budget and len(messages) - 1 > 1:
        del messages[1]
        while len(messages) - 1 > 1 and messages[1]["role"] != "user":
            del messages[1]
        ids = inputs.render_chat(messages, True)
    return ids


@pytest.mark.parametrize("turns", [3, 40])
def test_truncate_history_keeps_what_one_drop_at_a_time_kept(
    counting: Counting, turns: int
) -> None:
    messages = conversation(turns)
    reference = InputProcessor(counting._tokenizer, 10**6, MAX_MODEL_LEN)
    inputs = InputProcessor(counting, vocab_size=10**6, max_model_len=MAX_MODEL_LEN)
    assert inputs(ChatPrompt(messages, truncate_history=True)) == reference_truncation(
        reference, messages
    )


def test_truncate_history_of_999_turns_renders_log_n_suffixes(counting: Counting) -> None:
    """A 999-turn session: the kept history is the longest that fits (one more user turn
    would not), found in O(log n) renders (one drop at a time took about 990)."""
    messages = conversation(999)
    inputs = InputProcessor(counting, vocab_size=10**6, max_model_len=MAX_MODEL_LEN)
    ids = inputs(ChatPrompt(messages, truncate_history=True))
    assert counting.renders <= 2 * math.ceil(math.log2(1000)) + 2
    budget = MAX_MODEL_LEN - 1
    text = counting.decode(ids)
    kept = max(k for k in range(1, 1000) if f"question {999 - k} " in text)
    start = len(messages) - 1 - 2 * kept
    assert ids == inputs.render_chat([messages[0], *messages[start:]], True)
    assert len(ids) <= budget
    assert len(inputs.render_chat([messages[0], *messages[start - 2 :]], True)) > budget


def test_text_bytes_are_checked_before_tokenizing(counting: Counting) -> None:
    inputs = InputProcessor(counting, vocab_size=10**6, max_model_len=MAX_MODEL_LEN)
    huge = "a" * (inputs.max_text_bytes + 1)
    with pytest.raises(InvalidArgument, match=r"prompt.text is \d+ bytes; more than"):
        inputs(TextPrompt(huge))
    assert counting.encodes == 0
    # Within the byte bound, the exact token count decides (after tokenizing).
    with pytest.raises(InvalidArgument, match="prompt has"):
        inputs(TextPrompt("a " * MAX_MODEL_LEN))


def test_message_count_and_bytes_are_checked_before_templating(counting: Counting) -> None:
    inputs = InputProcessor(counting, vocab_size=10**6, max_model_len=MAX_MODEL_LEN)
    many = [{"role": "user", "content": "hi"}] * 4000
    with pytest.raises(InvalidArgument, match=r"prompt.chat.messages \(one token per message\)"):
        inputs(ChatPrompt(many))
    big = [{"role": "user", "content": "a" * (inputs.max_text_bytes + 1)}]
    with pytest.raises(InvalidArgument, match=r"prompt.chat.messages \(contents\) is"):
        inputs(ChatPrompt(big))
    with pytest.raises(InvalidArgument, match="newest turn"):
        inputs(ChatPrompt(big, truncate_history=True))
    assert counting.renders == 0 and counting.encodes == 0


def test_daemon_prepares_requests_off_the_event_loop(tiny_model_dir: Callable[[str], Path]) -> None:
    """AsyncLLM.submit (what the daemon calls) tokenizes on a worker thread, never on the
    thread of the event loop that answers health checks and streams tokens."""
    llm = AsyncLLM(config(tiny_model_dir("qwen2")), in_process=True)
    threads: list[str] = []
    original = llm.processor.make_request

    def recording(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return original(*args)

    llm.processor.make_request = recording  # type: ignore[method-assign]

    async def main() -> list[int]:
        loop_thread = threading.current_thread().name
        params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
        stream = await llm.submit("The harbor", params)
        tokens = [t async for out in llm.iterate(stream) for t in out.token_ids]
        assert threads and all(name != loop_thread for name in threads), threads
        assert all(name.startswith("prepare") for name in threads), threads
        return tokens

    try:
        assert len(asyncio.run(main())) == 3
    finally:
        llm.shutdown()


def test_temperature_below_the_floor_is_greedy() -> None:
    assert SamplingParams(temperature=1e-45).greedy
    assert SamplingParams(temperature=1e-6).greedy
    assert not SamplingParams(temperature=1e-4).greedy
    for bad in (float("nan"), float("inf"), -1e-45):
        with pytest.raises(InvalidArgument, match="temperature must be a finite number >= 0"):
            SamplingParams(temperature=bad)
