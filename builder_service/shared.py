"""Identical builds requested at once run once: callers share one build and its progress.

A build runs in a daemon thread (torch releases the GIL, so the event loop keeps serving),
at most `max_concurrent` at a time. Every caller of the same BuildSpec subscribes to the
same stream of events; one that joins late first receives the latest event. The caller that
started the build gets the final event as the builder reports it; the ones that joined get it
with `cached=True`, since nothing was built for them. Builds of one engine from different
specs, or in other processes, are made to run once by the store's lock instead.

Daemon threads let the process exit after a drain even while a build runs; the store clears
what such a build leaves behind.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import AsyncIterator

from builder_service.build import Builder
from builder_service.spec import BuildEvent, BuildSpec

_Item = BuildEvent | BaseException


class _Shared:
    """One running build and its subscribers (touched on the event loop only)."""

    def __init__(self) -> None:
        self.subscribers: list[asyncio.Queue[_Item]] = []
        self.latest: BuildEvent | None = None

    def subscribe(self) -> asyncio.Queue[_Item]:
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        if self.latest is not None:
            queue.put_nowait(self.latest)
        self.subscribers.append(queue)
        return queue

    def publish(self, item: _Item) -> None:
        if isinstance(item, BuildEvent):
            self.latest = item
        for queue in self.subscribers:
            queue.put_nowait(item)


class SharedBuilds:
    """Runs builds for a servicer; see the module docstring."""

    def __init__(self, builder: Builder, max_concurrent: int = 1) -> None:
        self.builder = builder
        self._slots = asyncio.Semaphore(max_concurrent)
        self._running: dict[BuildSpec, _Shared] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def num_running(self) -> int:
        return len(self._running)

    async def run(self, spec: BuildSpec) -> AsyncIterator[BuildEvent]:
        """Events of the build of `spec` (started now or already running), ending with done."""
        shared = self._running.get(spec)
        joined = shared is not None
        if shared is None:
            shared = self._running[spec] = _Shared()
            task = asyncio.create_task(self._drive(spec, shared))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        queue = shared.subscribe()
        while True:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if item.phase == "done":
                yield dataclasses.replace(item, cached=True) if joined else item
                return
            yield item

    async def _drive(self, spec: BuildSpec, shared: _Shared) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def emit(event: BuildEvent) -> None:
            loop.call_soon_threadsafe(shared.publish, event)

        def finish(error: BaseException | None) -> None:
            if error is not None:
                shared.publish(error)
            if not done.done():
                done.set_result(None)

        def work() -> None:
            try:
                self.builder.build(spec, emit)
            except BaseException as e:
                loop.call_soon_threadsafe(finish, e)
            else:
                loop.call_soon_threadsafe(finish, None)

        try:
            async with self._slots:
                threading.Thread(target=work, name=f"build-{spec.source}", daemon=True).start()
                await done
        finally:
            self._running.pop(spec, None)
