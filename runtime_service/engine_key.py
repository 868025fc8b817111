"""Start by key: which engine serves *model X, quantization Q* on this runtime's device.

The store keys engines by model, target (GPU architecture `sm_XY` or `cpu`) and quantization.
A runtime started with `--model-name`/`--model-source` and `--quantization` looks for the
newest engine of that key built for its own target; when there is none it asks the builder
(`--builder`) to build one from `--model-source` for that target, or waits for one to appear
(`--wait-for-engine`). `--engine ID` pins one engine, which must then match the key.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import PurePosixPath

import grpc

from llmserve.engine_pb import quantization_value
from llmserve.errors import FailedPrecondition, NotFound, Unavailable
from llmserve.reasons import Reason
from llmserve.store import ArtifactStore
from llmserve.store.engines import get_engine, list_engines
from llmserve.v1 import builder_pb2, builder_pb2_grpc

log = logging.getLogger(__name__)


def default_model_name(source: str) -> str:
    """The model name of a checkpoint, as the builder names it: a .gguf file's stem, or the
    directory's name (`s3://b/models/qwen3/` -> `qwen3`)."""
    name = PurePosixPath(source.rstrip("/")).name
    return name.removesuffix(".gguf")


@dataclass(frozen=True, slots=True)
class EngineKey:
    """What a runtime asks the store for."""

    model_name: str
    quantization: str
    target: str

    def __str__(self) -> str:
        return f"model {self.model_name!r}, quantization {self.quantization}, target {self.target}"


def find_engine_id(store: ArtifactStore, key: EngineKey) -> str | None:
    """The newest engine of the key in the store, or None."""
    for manifest in list_engines(store, model_name=key.model_name, target=key.target):
        if manifest.quantization == key.quantization:
            return manifest.engine_id
    return None


def check_pinned(store: ArtifactStore, engine_id: str, key: EngineKey) -> None:
    """FailedPrecondition unless the pinned engine is of the key's model and quantization (its
    target is checked when it is fetched, naming both targets)."""
    manifest = get_engine(store, engine_id)
    if (manifest.model_name, manifest.quantization) != (key.model_name, key.quantization):
        raise FailedPrecondition(
            f"engine {engine_id} is model {manifest.model_name!r} with quantization "
            f"{manifest.quantization}, but --model-name/--quantization ask for "
            f"{key.model_name!r} with {key.quantization}",
            reason=Reason.ENGINE_MISMATCH,
        )


def build_engine(address: str, source: str, key: EngineKey, cancel: threading.Event) -> str:
    """Asks the builder at `address` to build the key's engine from `source`; its id.

    The builder runs identical concurrent builds once, so runtimes starting together cause
    one build. `cancel` (set when the runtime stops) cancels the call.
    """
    request = builder_pb2.BuildRequest(
        source=source,
        model_name=key.model_name,
        target=key.target,
        quantization=quantization_value(key.quantization),  # type: ignore[arg-type]
    )
    log.info("no engine of %s in the store: asking the builder at %s to build it", key, address)
    with grpc.insecure_channel(address) as channel:
        call = builder_pb2_grpc.BuilderStub(channel).Build(request, wait_for_ready=True)
        # NOTE: a daemon thread, left blocked after the build; one per runtime start.
        watcher = threading.Thread(target=lambda: cancel.wait() and call.cancel(), daemon=True)
        watcher.start()
        last = None
        try:
            for event in call:
                phase = builder_pb2.BuildPhase.Name(event.phase)
                if phase != last:
                    log.info("build %s: %s (%.0f%%) %s", key, phase, event.percent, event.message)
                    last = phase
                if event.HasField("engine"):
                    return event.engine.engine_id
        except grpc.RpcError as err:
            if cancel.is_set():
                raise Unavailable(
                    f"stopped while the builder built {key}", reason=Reason.ENGINE_STOPPED
                ) from err
            raise FailedPrecondition(
                f"the builder at {address} could not build {key} from {source!r}: "
                f"{err.code().name}: {err.details()}",
                reason=Reason.BUILD_FAILED,
            ) from err
    raise FailedPrecondition(
        f"the builder at {address} ended the build of {key} without an engine",
        reason=Reason.BUILD_FAILED,
    )


def wait_for_engine(
    store: ArtifactStore, key: EngineKey, poll_s: float, cancel: threading.Event
) -> str:
    """Polls the store every `poll_s` until an engine of the key appears; its id."""
    log.info("no engine of %s in the store yet: waiting for one (every %.0fs)", key, poll_s)
    while not cancel.wait(poll_s):
        found = find_engine_id(store, key)
        if found is not None:
            return found
    raise Unavailable(f"stopped while waiting for an engine of {key}", reason=Reason.ENGINE_STOPPED)


def resolve_engine_id(
    store: ArtifactStore,
    key: EngineKey,
    *,
    pinned: str = "",
    builder: str = "",
    source: str = "",
    wait: bool = False,
    poll_s: float = 10.0,
    cancel: threading.Event | None = None,
) -> str:
    """The engine id to serve for the key (see the module docstring); NotFound naming the key
    and the ways to get an engine when there is none and neither building nor waiting is on."""
    if pinned:
        check_pinned(store, pinned, key)
        return pinned
    found = find_engine_id(store, key)
    if found is not None:
        log.info("serving engine %s, the newest of %s", found, key)
        return found
    cancel = cancel or threading.Event()
    if builder:
        return build_engine(builder, source, key, cancel)
    if wait:
        return wait_for_engine(store, key, poll_s, cancel)
    raise NotFound(
        f"the store has no engine of {key}: build one (llmserve build --target {key.target}), "
        "or start the runtime with --builder (and --model-source) or --wait-for-engine",
        reason=Reason.ENGINE_NOT_FOUND,
    )
