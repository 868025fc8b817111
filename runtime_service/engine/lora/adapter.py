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
  `max_lora_rank` (named), PEFT features this engine does not implement (peft_config.py).
- FailedPrecondition: a well-formed adapter that does not fit this base model — a module the
  model does not have, a layer index past its depth, a tensor of the wrong shape.
- NotFound: the directory or one of its two files is missing.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from llmserve.errors import FailedPrecondition, InvalidArgument, NotFound
from llmserve.reasons import Reason
from runtime_service.engine.lora.peft_config import (
    UNSUPPORTED_MODULES,
    AdapterSpec,
    check_adapter_name,
    parse_adapter_config,
)
from runtime_service.models.config import ModelConfig
from runtime_service.models.lora import fused_input_size
from runtime_service.models.weights import FUSED_LINEARS, LORA_TARGETS, fused_output_sizes

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_TENSOR = re.compile(
    r"^base_model\.model\.model\.layers\.(\d+)\.(\w+)\.(\w+)\.lora_([AB])\.weight$"
)
# "self_attn.q_proj" -> ("qkv", 0), from the engine's fusion table.
_MODULE_PARTS = {
    module: (fused, part)
    for fused, modules in FUSED_LINEARS.items()
    for part, module in enumerate(modules)
}


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


def _place(
    name: str,
    tensor: torch.Tensor,
    config: ModelConfig,
    spec: AdapterSpec,
    prescaled: tuple[str, ...] = (),
) -> tuple[int, str, int, str]:
    """(layer, fused layer, part, "A"|"B") of one tensor, after checking it fits the model."""
    m = _TENSOR.match(name)
    if m is None:
        if any(f".{module}." in name for module in UNSUPPORTED_MODULES):
            raise InvalidArgument(
                f"adapter tensor {name}: LoRA on embeddings or the LM head is not supported",
                reason=Reason.INVALID_ADAPTER,
            )
        if "lora_magnitude_vector" in name:
            raise InvalidArgument(
                f"adapter tensor {name}: DoRA is not supported", reason=Reason.INVALID_ADAPTER
            )
        raise FailedPrecondition(
            f"adapter tensor {name} does not belong to a q/k/v/o/gate/up/down projection of "
            "this model's decoder layers (an adapter for another architecture?)",
            reason=Reason.ADAPTER_INCOMPATIBLE,
        )
    layer, parent, module, which = int(m[1]), m[2], m[3], m[4]
    target = _MODULE_PARTS.get(f"{parent}.{module}")
    if target is None:
        raise FailedPrecondition(
            f"adapter tensor {name}: this model has no module {parent}.{module} "
            f"(supported: {', '.join(LORA_TARGETS)})",
            reason=Reason.ADAPTER_INCOMPATIBLE,
        )
    if layer >= config.num_layers:
        raise FailedPrecondition(
            f"adapter tensor {name}: layer {layer}, but the model has {config.num_layers} layers",
            reason=Reason.ADAPTER_INCOMPATIBLE,
        )
    fused, part = target
    if fused in prescaled:
        raise FailedPrecondition(
            f"adapter tensor {name}: this engine's int4 {fused} layers take inputs divided by "
            "activation scales folded into the norm before them, which the engine does not "
            f"keep; LoRA on {module} needs them (use an engine of another quantization, or "
            "LoRA on o_proj/down_proj only)",
            reason=Reason.ADAPTER_INCOMPATIBLE,
        )
    if tensor.dim() != 2:
        raise InvalidArgument(
            f"adapter tensor {name} has {tensor.dim()} dims, expected 2",
            reason=Reason.INVALID_ADAPTER,
        )
    rank = tensor.shape[0] if which == "A" else tensor.shape[1]
    if rank != spec.rank:
        raise InvalidArgument(
            f"adapter tensor {name} has rank {rank}, but adapter_config.json says r = "
            f"{spec.rank} (per-module ranks are not supported)",
            reason=Reason.INVALID_ADAPTER,
        )
    features = (
        fused_input_size(config, fused) if which == "A" else fused_output_sizes(config, fused)[part]
    )
    got = tensor.shape[1] if which == "A" else tensor.shape[0]
    if got != features:
        side = "input" if which == "A" else "output"
        raise FailedPrecondition(
            f"adapter tensor {name} has shape {list(tensor.shape)}: this model's {module} has "
            f"{features} {side} features, the adapter {got} (made for another base model?)",
            reason=Reason.ADAPTER_INCOMPATIBLE,
        )
    return layer, fused, part, which


def read_adapter(
    name: str,
    path: Path,
    config: ModelConfig,
    max_rank: int,
    dtype: torch.dtype,
    pin_memory: bool = False,
    prescaled: tuple[str, ...] = (),
) -> LoRAAdapter:
    """Reads and validates the adapter in directory `path` for a model of `config`; LoRA on
    the fused layers in `prescaled` (see models/lora.py prescaled_layers) is refused."""
    from safetensors.torch import load as load_safetensors

    check_adapter_name(name)
    path = Path(path)
    files = {}
    for file in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / file).is_file():
            raise NotFound(
                f"adapter {name!r}: {path / file} does not exist", reason=Reason.ADAPTER_NOT_FOUND
            )
        try:
            files[file] = (path / file).read_bytes()
        except OSError as e:
            raise InvalidArgument(
                f"adapter {name!r}: {path / file} cannot be read: {e}",
                reason=Reason.INVALID_ADAPTER,
            ) from e
    digest = hashlib.sha256()
    for file, data in files.items():
        digest.update(f"{file}\0{len(data)}\0".encode())
        digest.update(data)
    try:
        raw = json.loads(files[CONFIG_FILE])
        tensors = load_safetensors(files[WEIGHTS_FILE])
    except (ValueError, OSError) as e:  # bad JSON or a corrupt safetensors file
        raise InvalidArgument(
            f"adapter {name!r} in {path} cannot be read: {e}", reason=Reason.INVALID_ADAPTER
        ) from e
    if not isinstance(raw, dict):
        raise InvalidArgument(
            f"adapter {name!r}: {CONFIG_FILE} is not a JSON object", reason=Reason.INVALID_ADAPTER
        )
    try:
        spec = parse_adapter_config(raw, max_rank)
    except InvalidArgument as e:
        raise InvalidArgument(f"adapter {name!r}: {e}", reason=Reason.INVALID_ADAPTER) from e
    if not tensors:
        raise InvalidArgument(
            f"adapter {name!r}: {WEIGHTS_FILE} holds no tensors", reason=Reason.INVALID_ADAPTER
        )

    found: dict[tuple[int, str, int, str], torch.Tensor] = {}
    for tensor_name, tensor in sorted(tensors.items()):
        try:
            found[_place(tensor_name, tensor, config, spec, prescaled)] = tensor
        except (InvalidArgument, FailedPrecondition) as e:
            raise e.with_message(f"adapter {name!r}: {e}") from e
    for layer, fused, part, which in found:
        other = "B" if which == "A" else "A"
        if (layer, fused, part, other) not in found:
            module = FUSED_LINEARS[fused][part]
            raise InvalidArgument(
                f"adapter {name!r}: layers.{layer}.{module} has lora_{which} but no lora_{other}",
                reason=Reason.INVALID_ADAPTER,
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


@dataclass(frozen=True, slots=True)
class AdapterReader:
    """What reading adapters for one engine takes. Plain data: the engine core hands it to
    its frontend (CoreInfo.lora), which reads and validates adapters off the core's thread."""

    model_config: ModelConfig
    max_rank: int
    dtype: torch.dtype
    lora_dir: Path | None = None  # adapters to load on first use, as lora_dir/<name>/
    prescaled: tuple[str, ...] = ()  # fused layers LoRA cannot target here (int4 folding)

    def find(self, name: str) -> Path | None:
        """lora_dir/<name> if it holds an adapter."""
        if self.lora_dir is None:
            return None
        check_adapter_name(name)
        path = self.lora_dir / name
        return path if (path / CONFIG_FILE).is_file() else None

    def read(
        self, name: str, path: Path | str | None = None, pin_memory: bool = False
    ) -> LoRAAdapter:
        """The adapter in `path`, or in lora_dir/<name> when path is None."""
        if path is None:
            path = self.find(name)
            if path is None:
                where = f", nor in lora_dir {self.lora_dir}" if self.lora_dir else ""
                raise NotFound(
                    f"adapter {name!r} is not loaded{where}", reason=Reason.ADAPTER_NOT_FOUND
                )
        return read_adapter(
            name,
            Path(path),
            self.model_config,
            self.max_rank,
            self.dtype,
            pin_memory,
            self.prescaled,
        )
