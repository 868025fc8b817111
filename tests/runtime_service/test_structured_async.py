"""Structured output under async scheduling (tiny models, CPU; the GPU script runs it too).

With async scheduling a batch holding constrained rows keeps step n+1's forward in flight
while step n's tokens advance the matchers; only its masked sampling waits for them. The
references are the synchronous engine (async off) and xgrammar's own matcher / `re` /
`jsonschema`: a mixed batch (constrained and free rows, greedy and seeded, stops that land
while the next step is queued, preemption, an abort) gives identical tokens and finish
reasons with async on and off, every finished constrained output satisfies its constraint,
no matcher ever rejects a token, and all KV blocks return to the pool.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest
import torch

from runtime_service.engine.engine import LLMEngine
from runtime_service.engine.params import SamplingParams
from runtime_service.engine.structured import Constraint
from tests.runtime_service.reference import (
    assert_pool_idle,
    hf_greedy,
    hf_model,
    hf_tokenizer,
    run_to_completion,
)
from tests.runtime_service.test_async_scheduling import drive, engine
from tests.runtime_service.test_engine_parity import mixed_prompts

SCHEMA = {
    "type": "object",
    "properties": {
        "n": {"type": "integer", "minimum": 0, "maximum": 99},
        "k": {"enum": ["a", "b"]},
    },
    "required": ["n", "k"],
    "additionalProperties": False,
}
LOOSE = Constraint("regex", "[^<>]{0,30}")  # most of the tiny vocabulary fits
CONSTRAINTS = [
    Constraint("json_schema", json.dumps(SCHEMA)),
    LOOSE,
    Constraint("choice", ("alpha", "beta gamma", "delta")),
    Constraint("regex", "[a-z ]{2,12}"),
]


def mixed_params(stop_token: int) -> list[SamplingParams]:
    c = CONSTRAINTS
    return [
        SamplingParams(temperature=0, max_tokens=24, constraint=c[0]),
        SamplingParams(temperature=0, max_tokens=20, ignore_eos=True),
        SamplingParams(temperature=0.9, seed=1, max_tokens=24, constraint=c[1]),
        SamplingParams(temperature=0.8, seed=2, max_tokens=18, ignore_eos=True),
        SamplingParams(temperature=0, max_tokens=12, constraint=c[2]),
        SamplingParams(temperature=1.0, top_k=20, seed=3, max_tokens=16, constraint=c[3]),
        SamplingParams(temperature=0, max_tokens=24, constraint=c[1],
                       stop_token_ids=[stop_token]),
        SamplingParams(temperature=0, max_tokens=2, constraint=c[0], logprobs=2),
        SamplingParams(temperature=0, max_tokens=24, stop_token_ids=[stop_token]),
    ]  # fmt: skip


def run(llm: LLMEngine, prompts: list[list[int]], params: list[SamplingParams], abort: str):
    merged = drive(llm, prompts, params, abort, abort_step=6)
    assert llm.core.structured.num_active == 0 and llm.core.structured.num_pending == 0
    return merged


def check_constraint(c: Constraint, text: str) -> None:
    if c.kind == "json_schema":
        jsonschema.validate(json.loads(text), json.loads(c.value))  # type: ignore[arg-type]
    elif c.kind == "choice":
        assert text in c.value
    else:
        assert re.fullmatch(c.value, text), (c.value, text)  # type: ignore[arg-type]


@pytest.mark.parametrize("num_kv_blocks", [128, 20])  # 20: the pool runs out, preempting
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_async_equals_sync_for_constrained_and_free_rows(
    device: str,
    num_kv_blocks: int,
    tiny_model_dir: Callable[[str], Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tiny_model_dir("qwen2")
    prompts = mixed_prompts(path, 18, seed=11, max_len=60)
    stop_token = hf_greedy(path, prompts[8], 24)[3]  # lands while the next step is queued
    params = mixed_params(stop_token)
    caplog.set_level(logging.WARNING, logger="runtime_service.engine.structured.manager")
    sync = run(
        engine(path, False, device=device, num_kv_blocks=num_kv_blocks), prompts, params, "r11"
    )
    asyn_engine = engine(path, True, device=device, num_kv_blocks=num_kv_blocks)
    assert asyn_engine.core.async_scheduling
    asyn = run(asyn_engine, prompts, params, "r11")
    if num_kv_blocks == 20:
        assert asyn_engine.scheduler.num_preemptions > 0, "the pool never ran out"
    assert not [r for r in caplog.records if "does not fit" in r.getMessage()]
    # An abort between steps finds async one token behind (its last token was in flight).
    aborted_sync, aborted_async = sync.pop("r11"), asyn.pop("r11")
    assert aborted_sync.finish_reason == aborted_async.finish_reason == "abort"
    assert aborted_sync.token_ids[: len(aborted_async.token_ids)] == aborted_async.token_ids
    assert sorted(asyn) == sorted(sync)
    num_checked = 0
    for rid, out in sync.items():
        other = asyn[rid]
        assert (other.token_ids, other.finish_reason) == (out.token_ids, out.finish_reason), rid
        c = params[int(rid[1:]) % len(params)].constraint
        if c is not None and out.finish_reason == "stop" and out.stop_reason != stop_token:
            check_constraint(c, out.text)  # ended by its grammar: a complete match
            num_checked += 1
    assert num_checked >= 4, "too few constrained answers completed: the test checks little"


def test_grammar_ends_at_the_tokenizers_eos_and_the_requests_stop_tokens(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    """A model whose config names another EOS than its tokenizer's (as the GPU bench's shaped
    model does): a complete choice may end at either EOS, or at a request's own stop token,
    whichever transformers' logits favour; and nowhere else."""
    path = tmp_path / "model"
    shutil.copytree(tiny_model_dir("llama"), path)
    tokenizer_eos = hf_tokenizer(path).eos_token_id
    config = json.loads((path / "config.json").read_text())
    config["eos_token_id"] = config_eos = tokenizer_eos - 1  # another special id
    (path / "config.json").write_text(json.dumps(config))
    llm = engine(path, True, device="cpu")
    prompts = mixed_prompts(path, 8, seed=3, max_len=30)
    choice = Constraint("choice", ("alpha", "beta gamma"))
    extra = hf_tokenizer(path).convert_tokens_to_ids("<0x0A>")  # a byte token: newline
    for i, p in enumerate(prompts):
        stops = [extra] if i % 2 else []
        params = SamplingParams(
            temperature=0, max_tokens=12, constraint=choice, stop_token_ids=stops
        )
        llm.add_request(f"r{i}", p, params)
    outputs = run_to_completion(llm)
    assert_pool_idle(llm)
    ends = []
    model = hf_model(path)
    for i, p in enumerate(prompts):
        out = outputs[f"r{i}"]
        assert out.finish_reason == "stop", out.token_ids
        allowed = [tokenizer_eos, config_eos] + ([extra] if i % 2 else [])
        with torch.no_grad():
            logits = model(torch.tensor([p + out.token_ids[:-1]])).logits[0, -1]
        assert out.token_ids[-1] == max(allowed, key=lambda t: logits[t].item()), i
        assert hf_tokenizer(path).decode(out.token_ids[:-1]) in choice.value
        ends.append(out.token_ids[-1])
    assert tokenizer_eos in ends, ends  # the old engine's grammar could not end there
