"""The Runtime servicer: protobuf <-> engine types, admission, metrics and spans."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry import trace

from llmserve.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
    shown,
)
from llmserve.paths import check_path
from llmserve.reasons import Reason
from llmserve.store import Hold, open_store
from llmserve.store.adapters import fetch_adapter, get_adapter, hold_adapter
from llmserve.v1 import common_pb2, runtime_pb2, runtime_pb2_grpc
from runtime_service.config import RuntimeConfig
from runtime_service.convert import check_request_id, output_to_pb, prompt_from_pb, sampling_from_pb
from runtime_service.engine.async_llm import AsyncLLM
from runtime_service.engine.lora import AdapterInfo
from runtime_service.engine.lora.manager import AdapterState
from runtime_service.engine.lora.peft_config import check_adapter_name
from runtime_service.engine.outputs import RequestOutput
from runtime_service.engine.request import RequestTimes
from runtime_service.metrics import RuntimeMetrics

tracer = trace.get_tracer("llmserve.runtime")
# The wait suggested (RetryInfo) to a request refused because the waiting queue is full.
QUEUE_FULL_RETRY_AFTER_S = 1.0

ADAPTER_STATES = {
    AdapterState.HOST: common_pb2.ADAPTER_STATE_HOST,
    AdapterState.DEVICE: common_pb2.ADAPTER_STATE_DEVICE,
}


@dataclass
class Serving:
    """What the runtime serves once warm-up has loaded it."""

    llm: AsyncLLM
    engine: Any  # llmserve.v1.engine_pb2.Engine
    device: str


class RuntimeService(runtime_pb2_grpc.RuntimeServicer):
    def __init__(self, config: RuntimeConfig, metrics: RuntimeMetrics, draining: Any) -> None:
        self.config = config
        self.metrics = metrics
        self._draining = draining  # () -> bool
        self.serving: Serving | None = None
        # Adapters loaded from the store: name -> (adapter id, base model digest), and the
        # store hold that keeps each from being deleted while it is loaded.
        self._origins: dict[str, tuple[str, str]] = {}
        self._holds: dict[str, Hold] = {}

    def _ready(self) -> Serving:
        if self.serving is None:
            raise Unavailable(
                "the engine is still loading; retry when health reads SERVING",
                reason=Reason.ENGINE_LOADING,
            )
        return self.serving

    async def Generate(self, request: Any, context: Any) -> AsyncIterator[Any]:
        serving = self._ready()
        llm = serving.llm
        check_request_id(request.request_id)
        prompt = prompt_from_pb(request.prompt)
        params = sampling_from_pb(request.sampling)
        waiting = llm.num_waiting()
        if waiting >= self.config.max_waiting:
            self.metrics.rejected.labels("queue_full").inc()
            raise ResourceExhausted(
                f"the waiting queue is full: {waiting} requests wait (limit max_waiting="
                f"{self.config.max_waiting}); retry later or on another runtime",
                reason=Reason.QUEUE_FULL,
                retry_after_s=QUEUE_FULL_RETRY_AFTER_S,
            )
        request_id = request.request_id or uuid.uuid4().hex
        wall_ns, mono = time.time_ns(), time.monotonic()
        stream = await llm.submit(prompt, params, request_id, request.adapter or None)
        decode = llm.tokenizer.decode
        merged: RequestOutput | None = None
        last: RequestOutput | None = None
        seen_tokens = 0
        try:
            async for out in llm.iterate(stream):
                last = out
                for latency in out.token_latencies:
                    if seen_tokens == 0:
                        self.metrics.time_to_first_token.observe(latency)
                    else:
                        self.metrics.inter_token_latency.observe(latency)
                    seen_tokens += 1
                if request.final_only:
                    if merged is None:
                        merged = out
                    else:
                        merged.merge(out)
                    if out.finished:
                        yield output_to_pb(merged, decode)
                else:
                    yield output_to_pb(out, decode)
        finally:
            self._record(request_id, last, wall_ns, mono)

    def _record(
        self, request_id: str, last: RequestOutput | None, wall_ns: int, mono: float
    ) -> None:
        """Metrics and queue/prefill/decode spans of a finished (or abandoned) request."""
        finished = last is not None and last.finished
        reason = (last.finish_reason if finished and last else None) or "abort"
        m = self.metrics
        m.requests.labels(reason).inc()
        m.prompt_tokens.inc(last.num_prompt_tokens if last else 0)
        m.generation_tokens.inc(last.num_output_tokens if last else 0)
        t = last.times if finished and last and last.times else RequestTimes(arrival=mono)
        end = t.finished or time.monotonic()
        m.e2e_latency.observe(end - t.arrival)

        def ns(moment: float) -> int:
            return wall_ns + int((moment - mono) * 1e9)

        attributes = {
            "llmserve.request_id": request_id,
            "llmserve.prompt_tokens": last.num_prompt_tokens if last else 0,
            "llmserve.completion_tokens": last.num_output_tokens if last else 0,
            "llmserve.cached_prompt_tokens": last.num_cached_tokens if last else 0,
            "llmserve.finish_reason": reason,
        }
        scheduled = t.first_scheduled or end
        first = t.first_token or end
        for name, start, stop in (
            ("queue", t.arrival, scheduled),
            ("prefill", scheduled, first),
            ("decode", first, end),
        ):
            span = tracer.start_span(
                f"llmserve.runtime.{name}", start_time=ns(start), attributes=attributes
            )
            span.end(end_time=ns(max(stop, start)))

    async def GetStatus(self, request: Any, context: Any) -> Any:
        serving = self._ready()
        llm = serving.llm
        s = llm.stats()
        return runtime_pb2.GetStatusResponse(
            engine=serving.engine,
            kv_cache=runtime_pb2.KvCacheStatus(
                block_size=s.block_size,
                num_blocks=s.num_blocks,
                num_free_blocks=s.num_free_blocks,
                num_cached_blocks=s.num_cached_free_blocks,
                prefix_cache_queries=s.prefix_cache_queries,
                prefix_cache_hits=s.prefix_cache_hits,
            ),
            num_running=s.num_running,
            num_waiting=llm.num_waiting(),
            generation_tokens_per_second=llm.tokens_per_second(),
            device=serving.device,
            adapters=await self._adapters(),
            num_preemptions=s.num_preemptions,
            draining=self._draining(),
            tensor_parallel_size=llm.info.tensor_parallel_size,
        )

    async def LoadAdapter(self, request: Any, context: Any) -> Any:
        serving = self._ready()
        if not request.name:
            raise InvalidArgument("name must be set", reason=Reason.FIELD_REQUIRED, field="name")
        source = request.WhichOneof("source")
        if source == "path":
            info = await serving.llm.load_adapter(request.name, self._adapter_path(request.path))
        elif source == "adapter_id":
            info = await self._load_from_store(serving, request.name, request.adapter_id)
        else:
            raise InvalidArgument(
                "source must be set: path or adapter_id",
                reason=Reason.FIELD_REQUIRED,
                field="source",
            )
        return runtime_pb2.LoadAdapterResponse(adapter=self._adapter_pb(info))

    def _adapter_path(self, path: str) -> Path:
        """LoadAdapter's path, if it is one and lies under adapter_path_root (when set)."""
        check_path("path", path)
        root = self.config.adapter_path_root
        if root is None:
            return Path(path)
        resolved = Path(path).expanduser().resolve()
        if not resolved.is_relative_to(root.expanduser().resolve()):
            raise PermissionDenied(
                f"path {shown(path)} is not under adapter_path_root {root}; load adapters from"
                " there, or by adapter_id from the store",
                reason=Reason.PATH_NOT_ALLOWED,
            )
        return resolved

    async def UnloadAdapter(self, request: Any, context: Any) -> Any:
        serving = self._ready()
        if not request.name:
            raise InvalidArgument("name must be set", reason=Reason.FIELD_REQUIRED, field="name")
        await serving.llm.unload_adapter(request.name, request.wait)
        self._origins.pop(request.name, None)
        hold = self._holds.pop(request.name, None)
        if hold is not None:
            await asyncio.to_thread(hold.release)
        return runtime_pb2.UnloadAdapterResponse()

    async def _load_from_store(self, serving: Serving, name: str, adapter_id: str) -> AdapterInfo:
        """Holds the adapter in the store, fetches it (checksums verified) into the cache and
        loads it, if it was registered for the model this runtime serves."""
        check_adapter_name(name)
        if not serving.engine.model_digest:
            raise FailedPrecondition(
                "adapter_id needs an engine from the store (this runtime serves a directory "
                "given with --model-path, which has no model digest); load the adapter by path",
                reason=Reason.ENGINE_MISMATCH,
            )
        store = open_store(self.config.store, self.config.store_options())
        hold = await asyncio.to_thread(hold_adapter, store, adapter_id)
        try:
            manifest = await asyncio.to_thread(get_adapter, store, adapter_id)
            if manifest.base_model_digest != serving.engine.model_digest:
                raise FailedPrecondition(
                    f"adapter {adapter_id} ({manifest.name!r}) was registered for model "
                    f"{manifest.base_model_digest}; this runtime serves model "
                    f"{serving.engine.model_digest} (engine {serving.engine.engine_id})",
                    reason=Reason.ADAPTER_INCOMPATIBLE,
                )
            cache = self.config.engine_cache_dir / "adapters"
            path = await asyncio.to_thread(fetch_adapter, store, adapter_id, cache)
            info = await serving.llm.load_adapter(name, path)
        except BaseException:
            await asyncio.to_thread(hold.release)
            raise
        previous = self._holds.pop(name, None)  # the same adapter loaded again: one hold
        if previous is not None:
            await asyncio.to_thread(previous.release)
        self._holds[name] = hold
        self._origins[name] = (adapter_id, manifest.base_model_digest)
        return info

    async def release_holds(self) -> None:
        """Releases the store holds of adapters still loaded (the runtime is stopping)."""
        holds, self._holds = list(self._holds.values()), {}
        for hold in holds:
            await asyncio.to_thread(hold.release)

    async def ListAdapters(self, request: Any, context: Any) -> Any:
        return runtime_pb2.RuntimeListAdaptersResponse(adapters=await self._adapters())

    async def _adapters(self) -> list[Any]:
        serving = self._ready()
        if serving.llm.info.lora is None:
            return []
        return [self._adapter_pb(info) for info in await serving.llm.list_adapters()]

    def _adapter_pb(self, info: AdapterInfo) -> Any:
        adapter_id, base_digest = self._origins.get(info.name, ("", ""))
        return common_pb2.Adapter(
            name=info.name,
            adapter_id=adapter_id,
            base_model_digest=base_digest or self._ready().engine.model_digest,
            rank=info.rank,
            alpha=info.alpha,
            target_modules=list(info.target_modules),
            state=ADAPTER_STATES[info.state],
            active_requests=info.num_requests,
        )
