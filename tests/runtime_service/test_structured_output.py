"""Structured output with SmolLM2 on CPU: JSON Schema, regex, grammar and choice constraints.

Every constrained output must parse and validate (the `jsonschema` library for schemas, `re`
for regexes); and greedy decoding under a constraint must follow the unconstrained greedy
answer for as long as the grammar allows that answer's tokens (xgrammar's own matcher is the
judge): equal to it whenever the whole unconstrained answer satisfies the constraint.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import jsonschema
import pytest
import xgrammar as xgr

from llmserve.errors import InvalidArgument
from runtime_service.engine.engine import LLMEngine
from runtime_service.engine.inputs import ChatPrompt
from runtime_service.engine.llm import LLM
from runtime_service.engine.outputs import Completion
from runtime_service.engine.params import SamplingParams
from runtime_service.engine.structured import Constraint
from tests.runtime_service.lora_reference import lora_engine, make_adapters, peft_greedy
from tests.runtime_service.reference import assert_pool_idle, merge_outputs, run_to_completion
from tests.runtime_service.structured_cases import (
    CHOICES,
    GRAMMAR,
    GRAMMAR_PROMPTS,
    REGEXES,
    SCHEMAS,
    TOPICS,
    schema_prompt,
)
from tests.runtime_service.test_engine_parity import mixed_prompts

pytestmark = pytest.mark.slow
MAX_TOKENS = 96  # constrained answers: room to complete every case's JSON
# Free answers: enough for every free answer that satisfies a constraint here (a short JSON
# value, a word) to end with EOS; longer ones are compared on their first FREE_TOKENS only.
# Free answers ramble, so this halves the cost of the 200-request test on two cores.
FREE_TOKENS = 32


@pytest.fixture(scope="module")
def llm(smollm2_dir: Path) -> LLM:
    return LLM(
        str(smollm2_dir),
        dtype="float32",
        device="cpu",
        num_kv_blocks=2048,
        max_model_len=512,
        max_num_seqs=256,
        max_num_batched_tokens=4096,
    )


def chat(text: str) -> ChatPrompt:
    return ChatPrompt(messages=[{"role": "user", "content": text}])


def greedy(constraint: Constraint | None, max_tokens: int = MAX_TOKENS, **kw) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, constraint=constraint, **kw)


def accepted_prefix(
    engine: LLMEngine, constraint: Constraint, tokens: list[int]
) -> tuple[int, bool]:
    """How many leading tokens the constraint's grammar accepts, and whether all of them
    complete it (xgrammar's matcher decides)."""
    compiled = engine.core.structured.cache.submit(constraint).result()
    matcher = xgr.GrammarMatcher(compiled)
    for i, token in enumerate(tokens):
        if not matcher.accept_token(token):
            return i, False
    return len(tokens), matcher.is_terminated()


def check_follows_free(
    llm: LLM, constraint: Constraint, free: Completion, constrained: Completion
) -> bool:
    """The constrained greedy answer follows the free one while the grammar allows it; True
    when the free answer satisfied the constraint whole (and so equals the constrained one)."""
    k, complete = accepted_prefix(llm.engine, constraint, free.token_ids)
    if complete:
        assert constrained.token_ids == free.token_ids, (free.text, constrained.text)
        return True
    assert constrained.token_ids[:k] == free.token_ids[:k], (k, free.text, constrained.text)
    return False


def run_pairs(
    llm: LLM, cases: list[tuple[Constraint, str]]
) -> tuple[list[Completion], list[Completion]]:
    """Free and constrained greedy answers of every (constraint, prompt), each set batched."""
    prompts = [chat(text) for _, text in cases]
    free = llm.generate(prompts, [greedy(None, FREE_TOKENS) for _ in cases])
    constrained = llm.generate(prompts, [greedy(c) for c, _ in cases])
    assert_pool_idle(llm.engine)
    return free, constrained


@pytest.mark.timeout(1800)  # minutes on two busy cores
def test_two_hundred_requests_over_ten_schemas_validate(llm: LLM) -> None:
    cases = [
        (Constraint("json_schema", json.dumps(schema)), schema_prompt(schema, topic))
        for schema in SCHEMAS
        for topic in TOPICS
    ]
    assert len(cases) == 200
    free, constrained = run_pairs(llm, cases)
    num_equal = 0
    for (constraint, _), f, c in zip(cases, free, constrained, strict=True):
        assert c.finish_reason == "stop", c.text
        jsonschema.validate(json.loads(c.text), json.loads(constraint.value))
        num_equal += check_follows_free(llm, constraint, f, c)
    print(f"{num_equal} of 200 free answers already satisfied their schema")


def test_regex_grammar_and_choice(llm: LLM) -> None:
    cases = [(Constraint("regex", r), p) for r, prompts in REGEXES for p in prompts]
    cases += [(Constraint("grammar", GRAMMAR), p) for p in GRAMMAR_PROMPTS]
    cases += [(Constraint("choice", tuple(ch)), p) for ch, prompts in CHOICES for p in prompts]
    free, constrained = run_pairs(llm, cases)
    num_equal = 0
    for (constraint, _), f, c in zip(cases, free, constrained, strict=True):
        assert c.finish_reason == "stop", (constraint, c.text)
        if constraint.kind == "regex":
            assert re.fullmatch(constraint.value, c.text), (constraint.value, c.text)
        elif constraint.kind == "choice":
            assert c.text in constraint.value
        else:
            assert re.fullmatch(r"[0-9+\-*/()]+", c.text), c.text
        num_equal += check_follows_free(llm, constraint, f, c)
    print(f"{num_equal} of {len(cases)} free answers already satisfied their constraint")


SHORT_QUESTIONS = [
    "What colour is the sky? One word.",
    "What is the capital of France? One word.",
    "Say hello.",
    "What is 2 plus 2? Answer with a number.",
    "Name a fruit. One word.",
    "What animal says meow? One word.",
]


def test_constraints_a_free_answer_satisfies_change_nothing(llm: LLM) -> None:
    """Choice and regex constraints built to admit each free greedy answer (which ended with
    EOS): the constrained greedy answers equal the free ones token for token."""
    prompts = [chat(q) for q in SHORT_QUESTIONS]
    free = llm.generate(prompts, greedy(None, FREE_TOKENS))
    ended = [(p, f) for p, f in zip(prompts, free, strict=True) if f.finish_reason == "stop"]
    assert ended, "no free answer ended within FREE_TOKENS"
    cases = []
    for p, f in ended:
        cases.append((p, f, Constraint("choice", (f.text, "none of these"))))
        if "\n" not in f.text:
            cases.append((p, f, Constraint("regex", "[^\\n]{0,400}")))
    constrained = llm.generate([p for p, _, _ in cases], [greedy(c) for _, _, c in cases])
    for (_, f, c), out in zip(cases, constrained, strict=True):
        assert accepted_prefix(llm.engine, c, f.token_ids) == (len(f.token_ids), True)
        assert out.token_ids == f.token_ids, (c, f.text, out.text)
        assert out.finish_reason == "stop"
    assert_pool_idle(llm.engine)


def test_json_object_mixed_with_free_requests_in_one_batch(llm: LLM) -> None:
    prompts = [chat(f"Tell me about {t} in JSON.") for t in TOPICS[:8]]
    free_only = llm.generate(prompts, greedy(None, 48))
    mixed_params = [
        greedy(Constraint("json_object") if i % 2 else None, 48) for i in range(len(prompts))
    ]
    mixed = llm.generate(prompts, mixed_params)
    for i, (f, m) in enumerate(zip(free_only, mixed, strict=True)):
        if i % 2 == 0:  # free rows are untouched by their neighbours' masks
            assert m.token_ids == f.token_ids
        elif m.finish_reason == "stop":
            assert isinstance(json.loads(m.text), dict)
        else:  # cut off by max_tokens: a prefix of some JSON object
            assert m.finish_reason == "length" and m.text.lstrip().startswith("{")
    assert_pool_idle(llm.engine)


def test_seeded_sampling_is_reproducible_and_valid(llm: LLM) -> None:
    schema = SCHEMAS[7]
    c = Constraint("json_schema", json.dumps(schema))
    prompts = [chat(schema_prompt(schema, t)) for t in TOPICS[:6]]
    params = [
        SamplingParams(temperature=0.8, top_p=0.95, seed=i, max_tokens=MAX_TOKENS, constraint=c)
        for i in range(len(prompts))
    ]
    first = llm.generate(prompts, params)
    second = llm.generate(list(reversed(prompts)), list(reversed(params)))[::-1]
    for a, b in zip(first, second, strict=True):
        assert a.token_ids == b.token_ids
        assert a.finish_reason == "stop"
        jsonschema.validate(json.loads(a.text), schema)
    assert_pool_idle(llm.engine)


def test_max_tokens_cut_says_length_and_stop_strings_stop(llm: LLM) -> None:
    c = Constraint("json_schema", json.dumps(SCHEMAS[2]))
    prompt = chat(schema_prompt(SCHEMAS[2], "Paris"))
    cut, stopped, full = llm.generate(
        [prompt] * 3, [greedy(c, 5), greedy(c, stop=['"country"']), greedy(c)]
    )
    assert cut.finish_reason == "length" and len(cut.token_ids) == 5
    assert full.token_ids[:5] == cut.token_ids
    assert stopped.finish_reason == "stop" and stopped.stop_reason == '"country"'
    assert full.text.startswith(stopped.text) and '"country"' in full.text
    assert_pool_idle(llm.engine)


def test_preempted_requests_recompute_and_keep_their_constraint(smollm2_dir: Path) -> None:
    cases = [(SCHEMAS[i % 10], TOPICS[i]) for i in range(12)]
    prompts = [chat(schema_prompt(s, t)) for s, t in cases]
    params = [greedy(Constraint("json_schema", json.dumps(s)), 64) for s, _ in cases]
    outputs: dict[int, list[Completion]] = {}
    for num_blocks in (512, 10):  # 10 blocks of 16: far fewer than 12 requests need
        small = LLM(
            str(smollm2_dir), dtype="float32", device="cpu", num_kv_blocks=num_blocks,
            max_model_len=128,
        )  # fmt: skip
        outputs[num_blocks] = small.generate(prompts, params)
        if num_blocks == 10:
            assert small.engine.scheduler.num_preemptions > 0, "the pool never ran out"
        assert_pool_idle(small.engine)
    for big, little in zip(outputs[512], outputs[10], strict=True):
        assert little.token_ids == big.token_ids


def test_a_compiling_grammar_does_not_hold_up_other_requests(llm: LLM) -> None:
    engine = llm.engine
    cache = engine.core.structured.cache
    release = threading.Event()
    compile_original = cache._compile

    def slow_compile(constraint: Constraint):
        assert release.wait(60), "never released"
        return compile_original(constraint)

    cache._compile = slow_compile  # type: ignore[method-assign]
    try:
        slow = Constraint("regex", "[a-z]{3}-slow")  # a key no other test compiled
        engine.add_request("slow", chat("Say abc."), greedy(slow, 16))
        engine.add_request("free", chat("Say hello."), greedy(None, 8))
        outputs: dict = {}
        while "free" not in outputs or not outputs["free"].finished:
            merge_outputs(outputs, engine.step())
        assert "slow" not in outputs and engine.core.structured.is_pending("slow")
        release.set()
        rest = run_to_completion(engine)
    finally:
        release.set()
        cache._compile = compile_original  # type: ignore[method-assign]
    assert re.fullmatch("[a-z]{3}-slow", rest["slow"].text)
    assert_pool_idle(engine)


def test_constraints_with_lora_adapters(tiny_model_dir, tmp_path: Path) -> None:
    """Constrained requests on two adapters and the base model in one batch: each follows
    transformers + PEFT's greedy answer while its grammar accepts it, and matches."""
    path = tiny_model_dir("qwen2")
    adapters = make_adapters(path, tmp_path, 2)
    engine = lora_engine(path, num_kv_blocks=64, max_num_seqs=8, max_model_len=128)
    for adapter in adapters:
        engine.load_adapter(adapter.name, adapter)
    prompts = mixed_prompts(path, 8, seed=7, max_len=40)
    loose = Constraint("regex", "[^<>]{0,40}")  # most of the tiny vocabulary fits
    choice = Constraint("choice", ("alpha", "beta gamma"))
    cases = [(i, adapters[i % 2] if i < 6 else None, loose if i < 6 else choice) for i in range(8)]
    for i, adapter, c in cases:
        engine.add_request(f"r{i}", prompts[i], greedy(c, 16), adapter=adapter and adapter.name)
    outputs = run_to_completion(engine)
    followed = 0
    for i, adapter, c in cases:
        out = outputs[f"r{i}"]
        if c.kind == "choice":
            assert out.text in c.value and out.finish_reason == "stop"
            continue
        assert re.fullmatch(c.value, out.text), out.text
        free = peft_greedy(path, adapter, prompts[i], 16)
        k, _ = accepted_prefix(engine, c, free)  # 0 when PEFT's first token is a lone byte
        assert out.token_ids[:k] == free[:k], (k, out.token_ids, free)
        followed += k
    assert followed > 0, "no PEFT answer fit the regex at all: the test checks nothing"
    assert_pool_idle(engine)


@pytest.mark.parametrize(
    ("constraint", "field", "words"),
    [
        (("json_schema", "{not json"), "sampling.json_schema", "not valid JSON"),
        (("json_schema", '{"type": "strin"}'), "sampling.json_schema", "invalid JSON Schema"),
        (("regex", "(a|b"), "sampling.regex", "invalid regex"),
        (("grammar", "root ::= foo"), "sampling.grammar", "invalid EBNF grammar"),
        (("grammar", 'start ::= "a"'), "sampling.grammar", "root"),
    ],
)
def test_bad_constraints_are_refused_before_any_compute(
    llm: LLM, constraint: tuple[str, str], field: str, words: str
) -> None:
    with pytest.raises(InvalidArgument) as e:
        llm.engine.add_request("bad", "hi", greedy(Constraint(*constraint)))
    assert e.value.message.startswith(field), e.value.message
    assert words in e.value.message, e.value.message
    assert not llm.engine.requests and not llm.engine.has_unfinished_requests


def test_constraint_shape_errors() -> None:
    with pytest.raises(InvalidArgument, match="choice must hold at least one string"):
        Constraint("choice", ())
    with pytest.raises(InvalidArgument, match="regex must not be empty"):
        Constraint("regex", "")
    with pytest.raises(InvalidArgument, match="constraint kind must be one of"):
        Constraint("xml", "<a/>")
    with pytest.raises(InvalidArgument, match=r"min_tokens \(2\) cannot be combined with regex"):
        SamplingParams(min_tokens=2, constraint=Constraint("regex", "a+"))
