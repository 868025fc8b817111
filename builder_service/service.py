"""The llmserve.v1.Builder servicer: protobuf in and out, the builder and the store inside.

Build streams the build's progress events and ends with the engine; identical concurrent
Builds share one build (builder_service.shared). Store calls run in worker threads: an S3
store answers over the network. RegisterAdapter validates a PEFT adapter against an engine
and stores it (builder_service.adapters); ListAdapters lists the stored ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from builder_service.adapters import DEFAULT_MAX_LORA_RANK, register_adapter
from builder_service.build import Builder
from builder_service.shared import SharedBuilds
from builder_service.spec import BuildSpec
from llmserve.adapter_pb import adapter_to_pb
from llmserve.engine_pb import engine_to_pb
from llmserve.store.adapters import list_adapters
from llmserve.store.engines import delete_engine, get_engine, list_engines
from llmserve.v1 import builder_pb2, builder_pb2_grpc


class BuilderService(builder_pb2_grpc.BuilderServicer):
    """See the module docstring."""

    def __init__(
        self,
        builder: Builder,
        max_concurrent_builds: int = 1,
        max_lora_rank: int = DEFAULT_MAX_LORA_RANK,
    ) -> None:
        self.builder = builder
        self.store = builder.store
        self.max_lora_rank = max_lora_rank
        self.builds = SharedBuilds(builder, max_concurrent_builds)

    async def Build(self, request: Any, context: Any) -> AsyncIterator[Any]:
        # Refuses what cannot be built (FAILED_PRECONDITION, INVALID_ARGUMENT) before any work.
        spec = BuildSpec.from_pb(request).resolve(self.builder.device.target)
        async for event in self.builds.run(spec):
            yield event.to_pb()

    async def GetEngine(self, request: Any, context: Any) -> Any:
        engine = await asyncio.to_thread(get_engine, self.store, request.engine_id)
        return builder_pb2.GetEngineResponse(engine=engine_to_pb(engine))

    async def ListEngines(self, request: Any, context: Any) -> Any:
        engines = await asyncio.to_thread(
            list_engines, self.store, request.model_name, request.target
        )
        return builder_pb2.ListEnginesResponse(engines=[engine_to_pb(e) for e in engines])

    async def DeleteEngine(self, request: Any, context: Any) -> Any:
        freed = await asyncio.to_thread(delete_engine, self.store, request.engine_id)
        return builder_pb2.DeleteEngineResponse(freed_bytes=freed)

    async def RegisterAdapter(self, request: Any, context: Any) -> Any:
        adapter = await asyncio.to_thread(
            register_adapter,
            self.store,
            request.name,
            request.source,
            request.engine_id,
            work_dir=self.builder.work_dir,
            max_lora_rank=self.max_lora_rank,
            s3_client=self.builder.s3_client,
        )
        return builder_pb2.RegisterAdapterResponse(adapter=adapter_to_pb(adapter))

    async def ListAdapters(self, request: Any, context: Any) -> Any:
        adapters = await asyncio.to_thread(list_adapters, self.store, request.base_model_digest)
        pbs = [adapter_to_pb(a) for a in adapters]
        return builder_pb2.BuilderListAdaptersResponse(adapters=pbs)
