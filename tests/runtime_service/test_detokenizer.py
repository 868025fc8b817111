"""Incremental detokenizer: deltas add up to transformers' decode; characters are never split;
partial stop strings are never streamed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from runtime_service.engine.detokenizer import Detokenizer
from tests.runtime_service.reference import hf_tokenizer

TEXT = "Le café coûte 3€ — 東京で 🍣 を食べた! naïve façade… done."


def stream(
    tok, prompt: list[int], output: list[int], stop: list[str] = ()
) -> tuple[list[str], Detokenizer]:
    d = Detokenizer(tok._tokenizer, prompt, True, list(stop))
    deltas = []
    for t in output:
        stopped = d.push(t)
        deltas.append(d.take_delta(False))
        if stopped:
            break
    d.flush()
    deltas.append(d.take_delta(True))
    return deltas, d


@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # sentencepiece-style, byte-level BPE
def test_deltas_add_up_to_decode(arch: str, tiny_model_dir: Callable[[str], Path]) -> None:
    tok = hf_tokenizer(tiny_model_dir(arch))
    prompt = tok("Question:", add_special_tokens=True)["input_ids"]
    output = tok(" " + TEXT, add_special_tokens=False)["input_ids"]
    deltas, _ = stream(tok, prompt, output)
    full = tok.decode(prompt + output, skip_special_tokens=True)
    assert "".join(deltas) == full[len(tok.decode(prompt, skip_special_tokens=True)) :]
    assert all("\ufffd" not in d for d in deltas)
    assert sum(1 for d in deltas if d) > 10  # really incremental


def test_smollm2_chat_reply(smollm2_dir: Path) -> None:
    tok = hf_tokenizer(smollm2_dir)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    output = tok(TEXT + "<|im_end|>", add_special_tokens=False)["input_ids"]
    deltas, _ = stream(tok, prompt_ids, output)
    assert "".join(deltas) == TEXT


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_stop_strings_are_cut_and_never_partially_streamed(
    arch: str, tiny_model_dir: Callable[[str], Path]
) -> None:
    tok = hf_tokenizer(tiny_model_dir(arch))
    output = tok(" " + TEXT, add_special_tokens=False)["input_ids"]
    stop = "を食べ"
    deltas, d = stream(tok, [1], output, stop=[stop, "never appears"])
    text = "".join(deltas)
    assert d.matched_stop == stop
    reference = tok.decode([1, *output], skip_special_tokens=True)[
        len(tok.decode([1], skip_special_tokens=True)) :
    ]
    assert text == reference[: reference.index(stop)]
    # No delta ever carried the start of the stop string.
    assert not any("を" in delta for delta in deltas)


def test_text_that_only_resembles_a_stop_string_is_released(
    tiny_model_dir: Callable[[str], Path],
) -> None:
    tok = hf_tokenizer(tiny_model_dir("qwen2"))
    output = tok(" the harbor town", add_special_tokens=False)["input_ids"]
    deltas, d = stream(tok, [1], output, stop=["town hall"])
    assert d.matched_stop is None
    assert "".join(deltas) == " the harbor town"
    assert deltas[-1].endswith("town")  # held back until the end, then released
