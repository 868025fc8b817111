"""IdleWatchdog: only time spent awaiting reads counts against the idle timeout."""

from __future__ import annotations

import asyncio

import pytest

from gateway.idle import IdleWatchdog


class Call:
    """A stream whose reads wait for `release` (or return at once when it is None)."""

    def __init__(self, release: asyncio.Event | None = None) -> None:
        self.release = release
        self.num_reads = 0

    async def read(self) -> int:
        if self.release is not None:
            await self.release.wait()
        self.num_reads += 1
        return self.num_reads


def test_a_read_that_never_ends_times_out() -> None:
    async def body() -> None:
        with pytest.raises(TimeoutError, match=r"no response for 0\.05 s"):
            async with IdleWatchdog(0.05) as watchdog:
                await watchdog.read(Call(asyncio.Event()))

    asyncio.run(body())


def test_a_slow_consumer_is_not_idle() -> None:
    """Reads that answer at once never time out, however long the consumer takes between."""

    async def body() -> None:
        call = Call()
        async with IdleWatchdog(0.01) as watchdog:
            for _ in range(3):
                await watchdog.read(call)
                await asyncio.sleep(0.05)  # five idle timeouts away from any read
        assert call.num_reads == 3

    asyncio.run(body())


def test_a_cancel_from_outside_stays_a_cancel() -> None:
    async def body() -> None:
        entered = asyncio.Event()

        async def reader() -> None:
            async with IdleWatchdog(3600) as watchdog:
                entered.set()
                await watchdog.read(Call(asyncio.Event()))

        task = asyncio.create_task(reader())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(body())
