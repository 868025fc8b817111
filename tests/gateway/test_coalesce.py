"""coalesced(): a consumer that falls behind gets everything pending at once, in order, each
chunk once, errors after the chunks before them; closing it closes the source.

The consumer's slowness is driven by the test (it takes nothing until the source is done or
blocked), never by sleeps: a consumer away from the stream gets a reader after a tick, and the
tests wait for that (without a time limit) instead of timing it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from gateway.coalesce import coalesced


class Source:
    """An async generator of 0..n-1 that records how far it got and whether it was closed;
    `then` is raised after the last item (None: it ends)."""

    def __init__(self, n: int, then: BaseException | None = None) -> None:
        self.n, self.then = n, then
        self.produced = 0
        self.closed = False
        self.finished = asyncio.Event()
        # With permits, each item waits for one (the test hands them out).
        self.permits: asyncio.Queue[None] | None = None

    async def __call__(self) -> AsyncIterator[int]:
        try:
            for i in range(self.n):
                if self.permits is not None:
                    await self.permits.get()
                self.produced += 1
                yield i
            if self.then is not None:
                raise self.then
        finally:
            self.closed = True
            self.finished.set()


async def _drain_after(source: Source, batches: AsyncIterator[list[int]]) -> list[list[int]]:
    """Takes the first list, lets the source finish, then takes the rest."""
    got = [await anext(batches)]
    await source.finished.wait()
    got += [batch async for batch in batches]
    return got


def test_a_consumer_that_keeps_up_gets_one_chunk_at_a_time() -> None:
    async def body() -> None:
        source = Source(5)
        source.permits = asyncio.Queue()
        source.permits.put_nowait(None)
        got = []
        async for batch in coalesced(source()):
            got.append(batch)
            source.permits.put_nowait(None)  # the next chunk, once this one was taken
        assert got == [[0], [1], [2], [3], [4]]

    asyncio.run(body())


def test_a_slow_consumer_gets_everything_pending_in_one_list_in_order() -> None:
    async def body() -> None:
        source = Source(100)
        got = await _drain_after(source, coalesced(source()))
        assert [x for b in got for x in b] == list(range(100))
        assert len(got) <= 2  # the first list, then everything else at once
        assert source.closed

    asyncio.run(body())


def test_an_error_comes_after_every_chunk_read_before_it() -> None:
    async def body() -> None:
        source = Source(10, then=ConnectionError("runtime lost"))
        batches = coalesced(source())
        first = await anext(batches)
        await source.finished.wait()
        rest: list[int] = []
        with pytest.raises(ConnectionError, match="runtime lost"):
            async for batch in batches:
                rest += batch
        assert first + rest == list(range(10))

    asyncio.run(body())


async def _until(condition: Callable[[], bool]) -> None:
    """Waits (without a time limit) for `condition`: the reader starts a tick after the
    consumer left."""
    while not condition():
        await asyncio.sleep(0.001)


def test_at_most_limit_chunks_wait() -> None:
    async def body() -> None:
        source = Source(50)
        batches = coalesced(source(), limit=8)
        assert await anext(batches) == [0]  # read by the consumer itself
        await _until(lambda: source.produced == 9)  # away: the reader filled the list
        for _ in range(20):
            await asyncio.sleep(0)
        assert source.produced == 9  # 1 taken + 8 waiting: the reader waits for room
        got = [x async for b in batches for x in b]
        assert got == list(range(1, 50))

    asyncio.run(body())


@pytest.mark.parametrize("blocked", [False, True])
def test_closing_the_consumer_closes_the_source(blocked: bool) -> None:
    """Whether the consumer reads the source itself or a reader waits for room, closing the
    consumer (a cancelled call) closes the source before aclose returns."""

    async def body() -> None:
        source = Source(50)
        if not blocked:  # one chunk, then the source waits: the consumer reads it itself
            source.permits = asyncio.Queue()
            source.permits.put_nowait(None)
        batches = coalesced(source(), limit=4)
        assert await anext(batches) == [0]
        if blocked:  # the consumer stays away: a reader reads 4 more and waits for room
            await _until(lambda: source.produced == 5)
        assert not source.closed
        await batches.aclose()
        assert source.closed
        assert source.produced == (5 if blocked else 1)

    asyncio.run(body())


def test_a_consumer_that_keeps_up_never_starts_a_reader() -> None:
    """Reading in the consumer's own task: the source runs in that task, chunk by chunk."""

    async def body() -> None:
        tasks = set()

        async def source() -> AsyncIterator[int]:
            for i in range(5):
                tasks.add(asyncio.current_task())
                yield i

        got = [batch async for batch in coalesced(source())]
        assert got == [[0], [1], [2], [3], [4]]
        assert tasks == {asyncio.current_task()}

    asyncio.run(body())
