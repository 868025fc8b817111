"""EngineManifest -> llmserve.v1.Engine, for the builder and runtime servicers (the one place an
engine manifest meets protobuf)."""

from __future__ import annotations

from typing import Any

from llmserve.store.manifest import EngineManifest

# Our names of quantizations and dtypes <-> the names of their llmserve.v1 enum values: the
# one table each, for both directions.
QUANTIZATIONS = {
    "none": "QUANTIZATION_NONE",
    "int8": "QUANTIZATION_INT8_WEIGHT_ONLY",
    "int4": "QUANTIZATION_INT4_WEIGHT_ONLY",
    "fp8": "QUANTIZATION_FP8",
}
DTYPES = {"float32": "DTYPE_FLOAT32", "bfloat16": "DTYPE_BFLOAT16", "float16": "DTYPE_FLOAT16"}


def quantization_value(name: str) -> int:
    """ "int8" -> common_pb2.QUANTIZATION_INT8_WEIGHT_ONLY."""
    from llmserve.v1 import common_pb2

    return common_pb2.Quantization.Value(QUANTIZATIONS[name])


def dtype_value(name: str) -> int:
    """ "bfloat16" -> common_pb2.DTYPE_BFLOAT16."""
    from llmserve.v1 import common_pb2

    return common_pb2.Dtype.Value(DTYPES[name])


def quantization_name(value: int) -> str | None:
    """The inverse of quantization_value; UNSPECIFIED is "none"; None for an unknown value."""
    from llmserve.v1 import common_pb2

    names = {common_pb2.Quantization.Value(v): k for k, v in QUANTIZATIONS.items()}
    return names.get(value, "none" if value == common_pb2.QUANTIZATION_UNSPECIFIED else None)


def dtype_name(value: int) -> str | None:
    """The inverse of dtype_value; UNSPECIFIED is "" (the target's default); None for an
    unknown value."""
    from llmserve.v1 import common_pb2

    names = {common_pb2.Dtype.Value(v): k for k, v in DTYPES.items()}
    return names.get(value, "" if value == common_pb2.DTYPE_UNSPECIFIED else None)


def engine_to_pb(manifest: EngineManifest) -> Any:
    from llmserve.v1 import engine_pb2

    v = manifest.validation
    engine = engine_pb2.Engine(
        engine_id=manifest.engine_id,
        model_name=manifest.model_name,
        model_digest=manifest.model_digest,
        architecture=manifest.architecture,
        target=manifest.target,
        quantization=quantization_value(manifest.quantization),
        dtype=dtype_value(manifest.dtype),
        max_model_len=manifest.max_model_len,
        format_version=manifest.format_version,
        size_bytes=manifest.size_bytes,
        validation=engine_pb2.Validation(
            source_perplexity=v.source_perplexity,
            engine_perplexity=v.engine_perplexity,
            max_relative_increase=v.max_relative_increase,
            passed=v.passed,
            forced=v.forced,
            num_tokens=v.num_tokens,
        ),
        toolchain=manifest.toolchain,
        source=manifest.source,
        num_parameters=manifest.num_parameters,
    )
    engine.create_time.FromNanoseconds(int(manifest.create_time * 1e9))
    return engine
