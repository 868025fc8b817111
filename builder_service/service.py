"""The llmserve.v1.Builder servicer: protobuf in and out, the builder and the store inside.

Build streams the build's progress events and ends with the engine; identical concurrent
Builds share one build (builder_service.shared). Store calls run in worker threads: an S3
store answers over the network. RegisterAdapter and ListAdapters answer UNIMPLEMENTED until
the LoRA issue lands.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from builder_service.build import Builder
from builder_service.engine_pb import engine_to_pb
from builder_service.shared import SharedBuilds
from builder_service.spec import BuildSpec
from llmserve.errors import Unimplemented
from llmserve.store.engines import delete_engine, get_engine, list_engines
from llmserve.v1 import builder_pb2, builder_pb2_grpc

_PENDING_ADAPTERS = "is not implemented yet (pending: LoRA adapters issue)"


class BuilderService(builder_pb2_grpc.BuilderServicer):
    """See the module docstring."""

    def __init__(self, builder: Builder, max_concurrent_builds: int = 1) -> None:
        self.builder = builder
        self.store = builder.store
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
        raise Unimplemented(f"Builder.RegisterAdapter {_PENDING_ADAPTERS}")

    async def ListAdapters(self, request: Any, context: Any) -> Any:
        raise Unimplemented(f"Builder.ListAdapters {_PENDING_ADAPTERS}")
