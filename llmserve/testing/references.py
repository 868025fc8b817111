"""Independent references for tests of built engines: transformers' own loss and generate,
and a plain greedy loop over the runtime's model (no KV reuse)."""

from __future__ import annotations

import math
from typing import Any

import torch

from runtime_service.models.llama import LlamaModel
from runtime_service.models.scoring import sequence_logits


@torch.inference_mode()
def reference_perplexity(model: Any, token_ids: list[int], window: int) -> float:
    """transformers' own loss, over (window + 1)-token chunks as the runtime's scoring reads."""
    nll, count = 0.0, 0
    for start in range(0, len(token_ids) - 1, window):
        chunk = token_ids[start : start + window + 1]
        if len(chunk) < 2:
            break
        ids = torch.tensor([chunk])
        loss = model(input_ids=ids, labels=ids).loss
        nll += float(loss) * (len(chunk) - 1)
        count += len(chunk) - 1
    return math.exp(nll / count)


@torch.inference_mode()
def engine_greedy(
    model: LlamaModel, prompt: list[int], max_tokens: int, eos_ids: tuple[int, ...] = ()
) -> list[int]:
    """Greedy continuation by re-reading the whole sequence each step (no KV reuse), ending
    after an EOS token or max_tokens."""
    ids = list(prompt)
    for _ in range(max_tokens):
        ids.append(int(sequence_logits(model, ids)[-1].argmax()))
        if ids[-1] in eos_ids:
            break
    return ids[len(prompt) :]


@torch.inference_mode()
def transformers_greedy(model: Any, prompt: list[int], max_tokens: int) -> list[int]:
    """transformers' own greedy generate, ending at the model's EOS or max_tokens."""
    out = model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=max_tokens,
        do_sample=False,
    )
    return out[0, len(prompt) :].tolist()
