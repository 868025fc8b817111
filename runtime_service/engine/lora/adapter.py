"""PEFT LoRA adapters: reading one, validating it against the base model, its host-memory copy.

An adapter is a directory as PEFT's `save_pretrained` writes it: `adapter_config.json` and
`adapter_model.safetensors`, whose tensors are named
`base_model.model.model.layers.{i}.{self_attn|mlp}.{q,k,v,o,gate,up,down}_proj.lora_{A|B}.weight`
with A [r, in] and B [out, r]. A module's output becomes `base(x) + scaling * B (A x)`, with
scaling = lora_alpha / r (lora_alpha / sqrt(r) with use_rslora).

The engine keeps q/k/v and gate/up fused (models/weights.py), so an adapter is held per fused
layer: A as [parts, r, in] (zeros for parts the adapter leaves alone) and B as [out, r], where
out spans all the parts and part p's rows only ever meet part p's A.

Errors:
- InvalidArgument: the adapter itself is unusable here — malformed files, rank above
  `max_lora_rank` (named), PEFT features this engine does not implement (DoRA, biases,
  rank/alpha patterns, LoRA on embeddings or the LM head, ...), refused rather than ignored.
- FailedPrecondition: a well-formed adapter that does not fit this base model — a module the
  model does not have, a layer index past its depth, a tensor of the wrong shape.
- NotFound: the directory or one of its two files is missing.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmserve.errors import FailedPrecondition, InvalidArgument, NotFound
from runtime_service.models.config import ModelConfig
from runtime_service.models.lora import fused_input_size
from runtime_service.models.weights import FUSED_LINEARS, LORA_TARGETS, fused_output_sizes

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MAX_NAME_LENGTH = 64  # as protos/llmserve/v1/runtime.proto LoadAdapterRequest.name says
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_TENSOR = re.compile(
    r"^base_model\.model\.model\.layers\.(\d+)\.(\w+)\.(\w+)\.lora_([AB])\.weight$"
)
# "self_attn.q_proj" -> ("qkv", 0), from the engine's fusion table.
_MODULE_PARTS = {
    module: (fused, part)
    for fused, modules in FUSED_LINEARS.items()
    for part, module in enumerate(modules)
}
# Keys of adapter_config.json that do not change inference (or are checked on their own).
_IGNORED_KEYS = {
    "task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path",
    "revision", "inference_mode", "r", "lora_alpha", "use_rslora", "target_modules",
    "exclude_modules", "lora_dropout", "init_lora_weights", "loftq_config", "eva_config",
    "corda_config", "lora_ga_config", "megatron_config", "megatron_core", "qalora_group_size",
    "layers_to_transform", "layers_pattern", "ensure_weight_tying", "runtime_config", "bias",
}  # fmt: skip
# Llama-family modules that exist but cannot carry a LoRA here.
_UNSUPPORTED_MODULES = ("embed_tokens", "lm_head")


def check_adapter_name(name: str) -> None:
    """Adapter names are single path components (lora_dir/<name>): letters, digits, '.', '_'
    and '-', starting with a letter or digit."""
    if not name:
        raise InvalidArgument("adapter name must not be empty")
    if len(name) > MAX_NAME_LENGTH or not _NAME.match(name) or ".." in name:
        raise InvalidArgument(
            f"adapter name {name[:MAX_NAME_LENGTH]!r} is invalid: at most {MAX_NAME_LENGTH} "
            "letters, digits, '.', '_' and '-', starting with a letter or digit"
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


@dataclass(slots=True)
class FusedLoRA:
    """One fused layer's LoRA weights: a [parts, r, in], b [out of all parts, r]."""

    a: torch.Tensor
    b: torch.Tensor


@dataclass(slots=True)
class LoRAAdapter:
    """A validated adapter in host memory (the host tier), in the engine's dtype."""

    name: str
    path: Path
    digest: str  # "sha256:<hex>" over both files; part of its requests' prefix-cache keys
    spec: AdapterSpec
    target_modules: tuple[str, ...]  # PEFT names, e.g. ("q_proj", "v_proj")
    layers: dict[tuple[int, str], FusedLoRA]  # (layer index, fused layer) -> weights
    parts: dict[str, tuple[int, ...]]  # fused layer -> the part indices the adapter changes

    @property
    def rank(self) -> int:
        return self.spec.rank

    @property
    def num_bytes(self) -> int:
        return sum(w.a.nbytes + w.b.nbytes for w in self.layers.values())


def parse_adapter_config(raw: dict[str, Any], max_rank: int) -> AdapterSpec:
    """Checks adapter_config.json: a plain LoRA of rank <= max_rank, no unsupported feature."""
    if raw.get("peft_type", "LORA") != "LORA":
        raise InvalidArgument(f"adapter_config.json: peft_type {raw['peft_type']!r} is not LORA")
    rank = raw.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise InvalidArgument(f"adapter_config.json: r must be a positive integer, got {rank!r}")
    if rank > max_rank:
        raise InvalidArgument(
            f"adapter_config.json: r = {rank} is above this engine's max_lora_rank ({max_rank})"
        )
    alpha = raw.get("lora_alpha", 8)
    if not isinstance(alpha, int | float) or isinstance(alpha, bool):
        raise InvalidArgument(f"adapter_config.json: lora_alpha must be a number, got {alpha!r}")
    if raw.get("bias", "none") != "none":
        raise InvalidArgument(
            f"adapter_config.json: bias = {raw['bias']!r} is not supported (only 'none')"
        )
    for key, value in raw.items():
        if key not in _IGNORED_KEYS and value not in (None, False, {}, []):
            raise InvalidArgument(
                f"adapter_config.json: {key} = {json.dumps(value)[:80]} is a PEFT feature this "
                "engine does not support"
            )
    targets = raw.get("target_modules")
    names = [targets] if isinstance(targets, str) else list(targets or [])
    for module in names:
        if module in _UNSUPPORTED_MODULES:
            raise InvalidArgument(
                f"adapter_config.json: target module {module!r} is not supported (supported: "
                f"{', '.join(LORA_TARGETS)})"
            )
    return AdapterSpec(rank, float(alpha), bool(raw.get("use_rslora", False)))


def _place(
    name: str, tensor: torch.Tensor, config: ModelConfig, spec: AdapterSpec
) -> tuple[int, str, int, str]:
    """(layer, fused layer, part, "A"|"B") of one tensor, after checking it fits the model."""
    m = _TENSOR.match(name)
    if m is None:
        if any(f".{module}." in name for module in _UNSUPPORTED_MODULES):
            raise InvalidArgument(
                f"adapter tensor {name}: LoRA on embeddings or the LM head is not supported"
            )
        if "lora_magnitude_vector" in name:
            raise InvalidArgument(f"adapter tensor {name}: DoRA is not supported")
        raise FailedPrecondition(
            f"adapter tensor {name} does not belong to a q/k/v/o/gate/up/down projection of "
            "this model's decoder layers (an adapter for another architecture?)"
        )
    layer, parent, module, which = int(m[1]), m[2], m[3], m[4]
    target = _MODULE_PARTS.get(f"{parent}.{module}")
    if target is None:
        raise FailedPrecondition(
            f"adapter tensor {name}: this model has no module {parent}.{module} "
            f"(supported: {', '.join(LORA_TARGETS)})"
        )
    if layer >= config.num_layers:
        raise FailedPrecondition(
            f"adapter tensor {name}: layer {layer}, but the model has {config.num_layers} layers"
        )
    fused, part = target
    if tensor.dim() != 2:
        raise InvalidArgument(f"adapter tensor {name} has {tensor.dim()} dims, expected 2")
    rank = tensor.shape[0] if which == "A" else tensor.shape[1]
    if rank != spec.rank:
        raise InvalidArgument(
            f"adapter tensor {name} has rank {rank}, but adapter_config.json says r = "
            f"{spec.rank} (per-module ranks are not supported)"
        )
    features = (
        fused_input_size(config, fused) if which == "A" else fused_output_sizes(config, fused)[part]
    )
    got = tensor.shape[1] if which == "A" else tensor.shape[0]
    if got != features:
        side = "input" if which == "A" else "output"
        raise FailedPrecondition(
            f"adapter tensor {name} has shape {list(tensor.shape)}: this model's {module} has "
            f"{features} {side} features, the adapter {got} (made for another base model?)"
        )
    return layer, fused, part, which


def read_adapter(
    name: str,
    path: Path,
    config: ModelConfig,
    max_rank: int,
    dtype: torch.dtype,
    pin_memory: bool = False,
) -> LoRAAdapter:
    """Reads and validates the adapter in directory `path` for a model of `config`."""
    from safetensors.torch import load as load_safetensors

    check_adapter_name(name)
    path = Path(path)
    files = {}
    for file in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / file).is_file():
            raise NotFound(f"adapter {name!r}: {path / file} does not exist")
        try:
            files[file] = (path / file).read_bytes()
        except OSError as e:
            raise InvalidArgument(f"adapter {name!r}: {path / file} cannot be read: {e}") from e
    digest = hashlib.sha256()
    for file, data in files.items():
        digest.update(f"{file}\0{len(data)}\0".encode())
        digest.update(data)
    try:
        raw = json.loads(files[CONFIG_FILE])
        tensors = load_safetensors(files[WEIGHTS_FILE])
    except (ValueError, OSError) as e:  # bad JSON or a corrupt safetensors file
        raise InvalidArgument(f"adapter {name!r} in {path} cannot be read: {e}") from e
    if not isinstance(raw, dict):
        raise InvalidArgument(f"adapter {name!r}: {CONFIG_FILE} is not a JSON object")
    try:
        spec = parse_adapter_config(raw, max_rank)
    except InvalidArgument as e:
        raise InvalidArgument(f"adapter {name!r}: {e}") from e
    if not tensors:
        raise InvalidArgument(f"adapter {name!r}: {WEIGHTS_FILE} holds no tensors")

    found: dict[tuple[int, str, int, str], torch.Tensor] = {}
    for tensor_name, tensor in sorted(tensors.items()):
        try:
            found[_place(tensor_name, tensor, config, spec)] = tensor
        except (InvalidArgument, FailedPrecondition) as e:
            raise type(e)(f"adapter {name!r}: {e}") from e
    for layer, fused, part, which in found:
        other = "B" if which == "A" else "A"
        if (layer, fused, part, other) not in found:
            module = FUSED_LINEARS[fused][part]
            raise InvalidArgument(
                f"adapter {name!r}: layers.{layer}.{module} has lora_{which} but no lora_{other}"
            )

    layers: dict[tuple[int, str], FusedLoRA] = {}
    parts: dict[str, set[int]] = {}
    for (layer, fused, part, which), tensor in sorted(found.items(), key=lambda kv: kv[0]):
        sizes = fused_output_sizes(config, fused)
        if (layer, fused) not in layers:
            in_features = fused_input_size(config, fused)
            layers[layer, fused] = FusedLoRA(
                a=torch.zeros(len(sizes), spec.rank, in_features, dtype=dtype),
                b=torch.zeros(sum(sizes), spec.rank, dtype=dtype),
            )
        weights = layers[layer, fused]
        if which == "A":
            weights.a[part].copy_(tensor)
        else:
            start = sum(sizes[:part])
            weights.b[start : start + sizes[part]].copy_(tensor)
        parts.setdefault(fused, set()).add(part)
    if pin_memory:
        for weights in layers.values():
            weights.a, weights.b = weights.a.pin_memory(), weights.b.pin_memory()
    modules = sorted(
        {FUSED_LINEARS[f][p].split(".")[1] for f, ps in parts.items() for p in ps},
        key=list(LORA_TARGETS).index,
    )
    return LoRAAdapter(
        name=name,
        path=path,
        digest="sha256:" + digest.hexdigest(),
        spec=spec,
        target_modules=tuple(modules),
        layers=layers,
        parts={f: tuple(sorted(ps)) for f, ps in parts.items()},
    )
