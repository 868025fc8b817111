"""Validation: perplexity of the source model and of the built engine on the calibration text.

Both read the text in the same non-overlapping windows (runtime_service.models.scoring's
rule), so the numbers compare like with like: the source through transformers in float32, the
engine through the runtime's own model code on the engine's files. A relative rise above the
bound fails the build unless it is forced.
"""

from __future__ import annotations

import math

import torch

from llmserve.errors import FailedPrecondition, InvalidArgument
from llmserve.reasons import Reason
from llmserve.store.manifest import Validation

# Largest relative perplexity rise allowed by default, per quantization.
DEFAULT_MAX_INCREASE = {"none": 0.01, "int8": 0.02, "fp8": 0.02, "int4": 0.06}
MAX_WINDOW = 512


def validation_window(max_model_len: int) -> int:
    return min(MAX_WINDOW, max_model_len)


def check_bound_setting(value: float | None, quantization: str) -> float:
    """The bound to use: the caller's (in [0, 10]) or the quantization's default."""
    if value is None:
        return DEFAULT_MAX_INCREASE[quantization]
    if not (0.0 <= value <= 10.0) or math.isnan(value):
        raise InvalidArgument(
            f"max_perplexity_increase must be in [0, 10], got {value}",
            reason=Reason.INVALID_FIELD,
            field="max_perplexity_increase",
        )
    return value


@torch.inference_mode()
def source_perplexity(model: torch.nn.Module, token_ids: list[int], window: int) -> float:
    """Perplexity of a transformers causal LM, in the windows `perplexity` uses."""
    total_nll, count = 0.0, 0
    device = next(model.parameters()).device
    for chunk in _score_windows(token_ids, window):
        ids = torch.tensor([chunk[:-1]], device=device)
        logits = model(input_ids=ids).logits[0].float()
        targets = torch.tensor(chunk[1:], device=device)
        total_nll += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
        count += len(chunk) - 1
    return math.exp(total_nll / count)


def _score_windows(token_ids: list[int], window: int) -> list[list[int]]:
    """The (window + 1)-token chunks scoring.perplexity scores: each predicts its last
    `window` tokens from the ones before, and consecutive chunks share one token."""
    out = []
    for start in range(0, len(token_ids) - 1, window):
        chunk = token_ids[start : start + window + 1]
        if len(chunk) < 2:
            break
        out.append(chunk)
    return out


def check_validation(validation: Validation, quantization: str, force: bool) -> None:
    """FailedPrecondition naming both perplexities and the bound, unless within it, forced or
    skipped (random weights have no perplexity worth measuring)."""
    if validation.passed or validation.skipped or force:
        return
    raise FailedPrecondition(
        f"validation failed: {quantization} raised perplexity on the calibration text by "
        f"{validation.relative_increase:.2%} (source {validation.source_perplexity:.4f}, "
        f"engine {validation.engine_perplexity:.4f}), above max_perplexity_increase = "
        f"{validation.max_relative_increase:.2%}; set force to publish it anyway",
        reason=Reason.VALIDATION_FAILED,
    )
