"""EngineManifest -> llmserve.v1.Engine (the only place the builder's engine meets protobuf)."""

from __future__ import annotations

from typing import Any

from llmserve.store.manifest import EngineManifest

_QUANTIZATION = {
    "none": "QUANTIZATION_NONE",
    "int8": "QUANTIZATION_INT8_WEIGHT_ONLY",
    "int4": "QUANTIZATION_INT4_WEIGHT_ONLY",
    "fp8": "QUANTIZATION_FP8",
}
_DTYPE = {"float32": "DTYPE_FLOAT32", "bfloat16": "DTYPE_BFLOAT16", "float16": "DTYPE_FLOAT16"}


def engine_to_pb(manifest: EngineManifest) -> Any:
    from llmserve.v1 import common_pb2, engine_pb2

    v = manifest.validation
    engine = engine_pb2.Engine(
        engine_id=manifest.engine_id,
        model_name=manifest.model_name,
        model_digest=manifest.model_digest,
        architecture=manifest.architecture,
        target=manifest.target,
        quantization=common_pb2.Quantization.Value(_QUANTIZATION[manifest.quantization]),
        dtype=common_pb2.Dtype.Value(_DTYPE[manifest.dtype]),
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
