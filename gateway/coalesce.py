"""Coalescing one stream's chunks while its caller is slower than its runtime.

`coalesced(source)` reads `source` (an async iterator of chunks) in a task of its own and
yields lists of chunks: every chunk that arrived while the consumer was busy with the previous
list (writing it to its caller). A consumer that keeps up gets lists of one chunk; one that
falls behind (a slow client, or a gateway short of CPU) gets one list of everything pending,
which it relays as one message (relay.ChunkRelay.merge): fewer, larger messages, each of which
costs the gateway about what a one-token message does.

Order and exactness: the chunks come out in the order they were read, each once; an error
from `source` is raised after every chunk read before it was yielded. At most `limit` chunks
wait: the reader then waits for the consumer (so a stalled client holds back the runtime
through HTTP/2 flow control as before, instead of filling the gateway's memory); time spent
waiting so does not count as runtime idleness (idle.py counts reads only).

Closing the iterator (the caller's call ended or was cancelled) cancels the reader, which
closes `source` (and with it the runtime call) before the close returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

T = TypeVar("T")

DEFAULT_LIMIT = 1024


class _Pending(Generic[T]):
    """The chunks read and not yet taken, and the futures each side waits on."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: list[T] = []
        self.done = False
        self.error: BaseException | None = None
        self.consumer: asyncio.Future[None] | None = None  # set: something to take
        self.reader: asyncio.Future[None] | None = None  # set: room again

    @staticmethod
    def _wake(future: asyncio.Future[None] | None) -> None:
        if future is not None and not future.done():
            future.set_result(None)

    async def read_all(self, source: AsyncIterator[T]) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for item in source:
                self.items.append(item)
                self._wake(self.consumer)
                if len(self.items) >= self.limit:
                    self.reader = loop.create_future()
                    await self.reader
        except asyncio.CancelledError:
            raise  # only coalesced() cancels the reader, when its consumer is gone
        except BaseException as e:  # raised to the consumer after the chunks before it
            self.error = e
        finally:
            self.done = True
            self._wake(self.consumer)
            aclose = getattr(source, "aclose", None)
            if aclose is not None:  # cancelled while waiting for room: source is suspended
                await aclose()

    def take(self) -> list[T]:
        items, self.items = self.items, []
        self._wake(self.reader)
        return items


async def coalesced(source: AsyncIterator[T], limit: int = DEFAULT_LIMIT) -> AsyncIterator[list[T]]:
    """Lists of `source`'s chunks, each list everything that was ready (module docstring)."""
    loop = asyncio.get_running_loop()
    pending: _Pending[T] = _Pending(limit)
    reader = loop.create_task(pending.read_all(source))
    try:
        while True:
            if pending.items:
                yield pending.take()
            elif pending.done:
                break
            else:
                pending.consumer = loop.create_future()
                await pending.consumer
                pending.consumer = None
        if pending.error is not None:
            raise pending.error
    finally:
        if not reader.done():
            reader.cancel()
            await asyncio.wait([reader])  # source closed (its finally blocks run) before this
