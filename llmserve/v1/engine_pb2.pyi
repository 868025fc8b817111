import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from llmserve.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Validation(_message.Message):
    __slots__ = ("source_perplexity", "engine_perplexity", "max_relative_increase", "passed", "forced", "num_tokens")
    SOURCE_PERPLEXITY_FIELD_NUMBER: _ClassVar[int]
    ENGINE_PERPLEXITY_FIELD_NUMBER: _ClassVar[int]
    MAX_RELATIVE_INCREASE_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    FORCED_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    source_perplexity: float
    engine_perplexity: float
    max_relative_increase: float
    passed: bool
    forced: bool
    num_tokens: int
    def __init__(self, source_perplexity: _Optional[float] = ..., engine_perplexity: _Optional[float] = ..., max_relative_increase: _Optional[float] = ..., passed: _Optional[bool] = ..., forced: _Optional[bool] = ..., num_tokens: _Optional[int] = ...) -> None: ...

class Engine(_message.Message):
    __slots__ = ("engine_id", "model_name", "model_digest", "architecture", "target", "quantization", "dtype", "max_model_len", "format_version", "size_bytes", "create_time", "validation", "toolchain", "source", "num_parameters")
    class ToolchainEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ENGINE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FIELD_NUMBER: _ClassVar[int]
    TOOLCHAIN_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    NUM_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    engine_id: str
    model_name: str
    model_digest: str
    architecture: str
    target: str
    quantization: _common_pb2.Quantization
    dtype: _common_pb2.Dtype
    max_model_len: int
    format_version: int
    size_bytes: int
    create_time: _timestamp_pb2.Timestamp
    validation: Validation
    toolchain: _containers.ScalarMap[str, str]
    source: str
    num_parameters: int
    def __init__(self, engine_id: _Optional[str] = ..., model_name: _Optional[str] = ..., model_digest: _Optional[str] = ..., architecture: _Optional[str] = ..., target: _Optional[str] = ..., quantization: _Optional[_Union[_common_pb2.Quantization, str]] = ..., dtype: _Optional[_Union[_common_pb2.Dtype, str]] = ..., max_model_len: _Optional[int] = ..., format_version: _Optional[int] = ..., size_bytes: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., validation: _Optional[_Union[Validation, _Mapping]] = ..., toolchain: _Optional[_Mapping[str, str]] = ..., source: _Optional[str] = ..., num_parameters: _Optional[int] = ...) -> None: ...
