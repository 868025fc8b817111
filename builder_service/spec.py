"""What to build (BuildSpec) and what a build reports (BuildEvent): the builder's domain types.

Protobuf stays in service.py; these carry `from_pb`/`to_pb` helpers for it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from llmserve.device import CPU_TARGET
from llmserve.engine_pb import DTYPES as DTYPE_ENUMS
from llmserve.engine_pb import dtype_name, quantization_name
from llmserve.errors import InvalidArgument
from llmserve.paths import check_path
from llmserve.reasons import Reason
from llmserve.store.manifest import EngineManifest
from llmserve.targets import parse_target, require_quantization_supported

QUANTIZATIONS = ("none", "int8", "int4", "fp8")
DTYPES = tuple(DTYPE_ENUMS)  # float32, bfloat16, float16
PHASES = ("waiting", "loading", "converting", "validating", "publishing", "done")


@dataclass(frozen=True, slots=True)
class BuildSpec:
    """A build request. Empty target/dtype mean "the builder's device" / "the target's
    default"; `resolve` fills them in and validates everything a build needs up front."""

    source: str
    model_name: str = ""
    target: str = ""
    quantization: str = "none"
    dtype: str = ""
    max_model_len: int | None = None
    force: bool = False
    max_perplexity_increase: float | None = None
    # Random weights of the source's shapes instead of its weights (benchmarks: the source may
    # be a config.json and a tokenizer alone); the engine's validation is skipped, and says so.
    random_weights: bool = False

    def resolve(self, device_target: str) -> BuildSpec:
        """This spec with target and dtype decided, after checks that need no I/O.

        A quantization the target cannot run raises FailedPrecondition here, before any
        work; malformed fields raise InvalidArgument naming the field.
        """
        if not self.source:
            raise InvalidArgument(
                "source is required: a Hugging Face directory, .gguf or s3://",
                reason=Reason.FIELD_REQUIRED,
                field="source",
            )
        check_path("source", self.source)
        if self.quantization not in QUANTIZATIONS:
            raise InvalidArgument(
                f"quantization must be one of {QUANTIZATIONS}, got {self.quantization!r}",
                reason=Reason.INVALID_FIELD,
                field="quantization",
            )
        target = self.target or device_target
        parse_target(target)
        require_quantization_supported(target, self.quantization)
        dtype = self.dtype or ("float32" if target == CPU_TARGET else "bfloat16")
        if dtype not in DTYPES:
            raise InvalidArgument(
                f"dtype must be one of {DTYPES}, got {dtype!r}",
                reason=Reason.INVALID_FIELD,
                field="dtype",
            )
        if self.max_model_len is not None and self.max_model_len < 1:
            raise InvalidArgument(
                f"max_model_len must be >= 1, got {self.max_model_len}",
                reason=Reason.INVALID_FIELD,
                field="max_model_len",
            )
        if self.max_perplexity_increase is not None and not (
            0.0 <= self.max_perplexity_increase <= 10.0
        ):
            raise InvalidArgument(
                f"max_perplexity_increase must be in [0, 10], got {self.max_perplexity_increase}",
                reason=Reason.INVALID_FIELD,
                field="max_perplexity_increase",
            )
        return dataclasses.replace(self, target=target, dtype=dtype)

    # Protobuf helpers (the servicer passes llmserve.v1 messages).
    @classmethod
    def from_pb(cls, request: Any) -> BuildSpec:
        quantization = quantization_name(request.quantization)
        if quantization is None:
            raise InvalidArgument(
                f"quantization {request.quantization} is not a known value",
                reason=Reason.INVALID_FIELD,
                field="quantization",
            )
        dtype = dtype_name(request.dtype)
        if dtype is None:
            raise InvalidArgument(
                f"dtype {request.dtype} is not a known value",
                reason=Reason.INVALID_FIELD,
                field="dtype",
            )
        return cls(
            source=request.source,
            model_name=request.model_name,
            target=request.target,
            quantization=quantization,
            dtype=dtype,
            max_model_len=request.max_model_len if request.HasField("max_model_len") else None,
            force=request.force,
            max_perplexity_increase=(
                request.max_perplexity_increase
                if request.HasField("max_perplexity_increase")
                else None
            ),
        )


@dataclass(frozen=True, slots=True)
class BuildEvent:
    """One progress report; the last one (phase "done") carries the engine."""

    phase: str
    percent: float
    message: str
    engine: EngineManifest | None = None
    cached: bool = False

    def to_pb(self) -> Any:
        from llmserve.engine_pb import engine_to_pb
        from llmserve.v1 import builder_pb2

        reply = builder_pb2.BuildResponse(
            phase=getattr(builder_pb2, f"BUILD_PHASE_{self.phase.upper()}"),
            percent=self.percent,
            message=self.message,
            cached=self.cached,
        )
        if self.engine is not None:
            reply.engine.CopyFrom(engine_to_pb(self.engine))
        return reply
