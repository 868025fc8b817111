"""The example adapter shipped with the repository (examples/train_adapter.py trained it):
it changes SmolLM2's answer in the trained way, and the engine's output with it equals
transformers + PEFT's."""

from __future__ import annotations

from pathlib import Path

from runtime_service.engine.params import SamplingParams
from tests.runtime_service.lora_reference import lora_engine, peft_greedy
from tests.runtime_service.reference import hf_greedy, hf_tokenizer, run_to_completion

ADAPTER = Path(__file__).resolve().parents[2] / "examples/adapters/smollm2-answer-format"
QUESTION = "What is the capital of Italy?"  # not among the training questions
MAX_TOKENS = 12


def test_shipped_adapter_answers_in_its_format(smollm2_dir: Path) -> None:
    assert (ADAPTER / "adapter_model.safetensors").stat().st_size < 4 << 20
    tok = hf_tokenizer(smollm2_dir)
    chat = tok.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, tokenize=False
    )
    prompt = tok(chat, add_special_tokens=False)["input_ids"]
    engine = lora_engine(smollm2_dir, num_kv_blocks=32)
    info = engine.load_adapter("answer-format", ADAPTER)
    assert info.rank == 8 and info.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    engine.add_request("base", prompt, params)
    engine.add_request("tuned", prompt, params, adapter="answer-format")
    outputs = run_to_completion(engine)
    base, tuned = outputs["base"], outputs["tuned"]
    assert base.token_ids == hf_greedy(smollm2_dir, prompt, MAX_TOKENS)
    assert tuned.token_ids == peft_greedy(smollm2_dir, ADAPTER, prompt, MAX_TOKENS)
    assert tuned.text.startswith("ANSWER: Rome"), tuned.text
    assert "ANSWER" not in base.text, base.text
