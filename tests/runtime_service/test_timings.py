"""Timings are measured where they happen: queued -> first scheduled (when the step starts) ->
first token -> last token. A long prompt on an idle engine waits for nothing, so its queue
time is below its prefill time (before the fix the step's whole duration counted as queueing
and prefill read ~0). Structural checks only: no absolute wall-clock bounds."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime_service.engine.llm import LLM
from runtime_service.engine.outputs import Timings
from runtime_service.engine.params import SamplingParams

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
