from llmserve.v1 import common_pb2 as _common_pb2
from llmserve.v1 import engine_pb2 as _engine_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BuildPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BUILD_PHASE_UNSPECIFIED: _ClassVar[BuildPhase]
    BUILD_PHASE_WAITING: _ClassVar[BuildPhase]
    BUILD_PHASE_LOADING: _ClassVar[BuildPhase]
    BUILD_PHASE_CONVERTING: _ClassVar[BuildPhase]
    BUILD_PHASE_VALIDATING: _ClassVar[BuildPhase]
    BUILD_PHASE_PUBLISHING: _ClassVar[BuildPhase]
    BUILD_PHASE_DONE: _ClassVar[BuildPhase]
BUILD_PHASE_UNSPECIFIED: BuildPhase
BUILD_PHASE_WAITING: BuildPhase
BUILD_PHASE_LOADING: BuildPhase
BUILD_PHASE_CONVERTING: BuildPhase
BUILD_PHASE_VALIDATING: BuildPhase
BUILD_PHASE_PUBLISHING: BuildPhase
BUILD_PHASE_DONE: BuildPhase

class BuildRequest(_message.Message):
    __slots__ = ("source", "model_name", "target", "quantization", "dtype", "max_model_len", "force", "max_perplexity_increase")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    MAX_PERPLEXITY_INCREASE_FIELD_NUMBER: _ClassVar[int]
    source: str
    model_name: str
    target: str
    quantization: _common_pb2.Quantization
    dtype: _common_pb2.Dtype
    max_model_len: int
    force: bool
    max_perplexity_increase: float
    def __init__(self, source: _Optional[str] = ..., model_name: _Optional[str] = ..., target: _Optional[str] = ..., quantization: _Optional[_Union[_common_pb2.Quantization, str]] = ..., dtype: _Optional[_Union[_common_pb2.Dtype, str]] = ..., max_model_len: _Optional[int] = ..., force: _Optional[bool] = ..., max_perplexity_increase: _Optional[float] = ...) -> None: ...

class BuildResponse(_message.Message):
    __slots__ = ("phase", "percent", "message", "engine", "cached")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    phase: BuildPhase
    percent: float
    message: str
    engine: _engine_pb2.Engine
    cached: bool
    def __init__(self, phase: _Optional[_Union[BuildPhase, str]] = ..., percent: _Optional[float] = ..., message: _Optional[str] = ..., engine: _Optional[_Union[_engine_pb2.Engine, _Mapping]] = ..., cached: _Optional[bool] = ...) -> None: ...

class GetEngineRequest(_message.Message):
    __slots__ = ("engine_id",)
    ENGINE_ID_FIELD_NUMBER: _ClassVar[int]
    engine_id: str
    def __init__(self, engine_id: _Optional[str] = ...) -> None: ...

class GetEngineResponse(_message.Message):
    __slots__ = ("engine",)
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    engine: _engine_pb2.Engine
    def __init__(self, engine: _Optional[_Union[_engine_pb2.Engine, _Mapping]] = ...) -> None: ...

class ListEnginesRequest(_message.Message):
    __slots__ = ("model_name", "target")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    target: str
    def __init__(self, model_name: _Optional[str] = ..., target: _Optional[str] = ...) -> None: ...

class ListEnginesResponse(_message.Message):
    __slots__ = ("engines",)
    ENGINES_FIELD_NUMBER: _ClassVar[int]
    engines: _containers.RepeatedCompositeFieldContainer[_engine_pb2.Engine]
    def __init__(self, engines: _Optional[_Iterable[_Union[_engine_pb2.Engine, _Mapping]]] = ...) -> None: ...

class DeleteEngineRequest(_message.Message):
    __slots__ = ("engine_id",)
    ENGINE_ID_FIELD_NUMBER: _ClassVar[int]
    engine_id: str
    def __init__(self, engine_id: _Optional[str] = ...) -> None: ...

class DeleteEngineResponse(_message.Message):
    __slots__ = ("freed_bytes",)
    FREED_BYTES_FIELD_NUMBER: _ClassVar[int]
    freed_bytes: int
    def __init__(self, freed_bytes: _Optional[int] = ...) -> None: ...

class RegisterAdapterRequest(_message.Message):
    __slots__ = ("name", "source", "engine_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    ENGINE_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    source: str
    engine_id: str
    def __init__(self, name: _Optional[str] = ..., source: _Optional[str] = ..., engine_id: _Optional[str] = ...) -> None: ...

class RegisterAdapterResponse(_message.Message):
    __slots__ = ("adapter",)
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    adapter: _common_pb2.Adapter
    def __init__(self, adapter: _Optional[_Union[_common_pb2.Adapter, _Mapping]] = ...) -> None: ...

class BuilderListAdaptersRequest(_message.Message):
    __slots__ = ("base_model_digest",)
    BASE_MODEL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    base_model_digest: str
    def __init__(self, base_model_digest: _Optional[str] = ...) -> None: ...

class BuilderListAdaptersResponse(_message.Message):
    __slots__ = ("adapters",)
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    adapters: _containers.RepeatedCompositeFieldContainer[_common_pb2.Adapter]
    def __init__(self, adapters: _Optional[_Iterable[_Union[_common_pb2.Adapter, _Mapping]]] = ...) -> None: ...
