"""adapter_config.json: what of a PEFT LoRA config matters for inference, and what is refused.

A plain LoRA of rank <= max_lora_rank is accepted. Options that change inference and are not
implemented here (DoRA, biases, per-module ranks or alphas, LoRA on embeddings or the LM head,
and any option this file does not know set to a non-default value) are InvalidArgument:
refused rather than silently ignored.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from llmserve.errors import InvalidArgument
from llmserve.reasons import Reason
from runtime_service.models.weights import LORA_TARGETS

MAX_NAME_LENGTH = 64  # as protos/llmserve/v1/runtime.proto LoadAdapterRequest.name says
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Keys of adapter_config.json that do not change inference (or are checked on their own).
_IGNORED_KEYS = {
    "task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path",
    "revision", "inference_mode", "r", "lora_alpha", "use_rslora", "target_modules",
    "exclude_modules", "lora_dropout", "init_lora_weights", "loftq_config", "eva_config",
    "corda_config", "lora_ga_config", "megatron_config", "megatron_core", "qalora_group_size",
    "layers_to_transform", "layers_pattern", "ensure_weight_tying", "runtime_config", "bias",
}  # fmt: skip
# Llama-family modules that exist but cannot carry a LoRA here.
UNSUPPORTED_MODULES = ("embed_tokens", "lm_head")


def check_adapter_name(name: str) -> None:
    """Adapter names are single path components (lora_dir/<name>): letters, digits, '.', '_'
    and '-', starting with a letter or digit."""
    if not name:
        raise InvalidArgument(
            "adapter name must not be empty", reason=Reason.INVALID_FIELD, field="name"
        )
    if len(name) > MAX_NAME_LENGTH or not _NAME.match(name) or ".." in name:
        raise InvalidArgument(
            f"adapter name {name[:MAX_NAME_LENGTH]!r} is invalid: at most {MAX_NAME_LENGTH} "
            "letters, digits, '.', '_' and '-', starting with a letter or digit",
            reason=Reason.INVALID_FIELD,
            field="name",
        )


@dataclass(frozen=True, slots=True)
class AdapterSpec:
    """What adapter_config.json says that matters for inference."""

    rank: int
    alpha: float
    use_rslora: bool

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)


def parse_adapter_config(raw: dict[str, Any], max_rank: int) -> AdapterSpec:
    """Checks adapter_config.json: a plain LoRA of rank <= max_rank, no unsupported feature."""
    if raw.get("peft_type", "LORA") != "LORA":
        raise InvalidArgument(
            f"adapter_config.json: peft_type {raw['peft_type']!r} is not LORA",
            reason=Reason.INVALID_ADAPTER,
        )
    rank = raw.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise InvalidArgument(
            f"adapter_config.json: r must be a positive integer, got {rank!r}",
            reason=Reason.INVALID_ADAPTER,
        )
    if rank > max_rank:
        raise InvalidArgument(
            f"adapter_config.json: r = {rank} is above this engine's max_lora_rank ({max_rank})",
            reason=Reason.INVALID_ADAPTER,
        )
    alpha = raw.get("lora_alpha", 8)
    if not isinstance(alpha, int | float) or isinstance(alpha, bool):
        raise InvalidArgument(
            f"adapter_config.json: lora_alpha must be a number, got {alpha!r}",
            reason=Reason.INVALID_ADAPTER,
        )
    if raw.get("bias", "none") != "none":
        raise InvalidArgument(
            f"adapter_config.json: bias = {raw['bias']!r} is not supported (only 'none')",
            reason=Reason.INVALID_ADAPTER,
        )
    for key, value in raw.items():
        if key not in _IGNORED_KEYS and value not in (None, False, {}, []):
            raise InvalidArgument(
                f"adapter_config.json: {key} = {json.dumps(value)[:80]} is a PEFT feature this "
                "engine does not support",
                reason=Reason.INVALID_ADAPTER,
            )
    targets = raw.get("target_modules")
    names = [targets] if isinstance(targets, str) else list(targets or [])
    for module in names:
        if module in UNSUPPORTED_MODULES:
            raise InvalidArgument(
                f"adapter_config.json: target module {module!r} is not supported (supported: "
                f"{', '.join(LORA_TARGETS)})",
                reason=Reason.INVALID_ADAPTER,
            )
    return AdapterSpec(rank, float(alpha), bool(raw.get("use_rslora", False)))
