"""IdleWatchdog: a read that waits longer than idle_timeout_s is cancelled, at a cost of one
clock read per read.

`asyncio.wait_for` around each read of a stream costs a task, a timer and their callbacks per
chunk (~50 µs measured on the CI machine: a third of the gateway's cost per relayed chunk).
Here one timer per stream is re-armed lazily: when it fires it looks at the read in progress
(if any) and either cancels the task (the read has waited idle_timeout_s; leaving the block
then raises TimeoutError, as `asyncio.timeout` does) or sleeps until that read would. Time the
task spends elsewhere (its consumer writing to a slow client) never counts: only the reads do.

    async with IdleWatchdog(idle_timeout_s) as watchdog:  # raises TimeoutError when idle
        while True:
            response = await watchdog.read(call)
"""

from __future__ import annotations

import asyncio
from asyncio import current_task
from types import TracebackType
from typing import Any


class IdleWatchdog:
    def __init__(self, idle_timeout_s: float) -> None:
        self.idle_timeout_s = idle_timeout_s
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[Any] | None = None
        self.expired = False
        self._read_since: float | None = None  # loop time the pending read started
        self._handle: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> IdleWatchdog:
        self._task = asyncio.current_task()
        self._handle = self._loop.call_later(self.idle_timeout_s, self._check)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if self._handle is not None:
            self._handle.cancel()
        if self.expired and kind is asyncio.CancelledError:
            assert self._task is not None
            if self._task.uncancel() == 0:  # cancelled by this watchdog only
                raise TimeoutError(f"no response for {self.idle_timeout_s:g} s") from exc
        return None

    async def read(self, call: Any) -> Any:
        """`await call.read()`, counted against the idle timeout. The task that reads is the
        one cancelled: it may change during the stream (coalesce.py starts a reader task)."""
        self._task = current_task()
        self._read_since = self._loop.time()
        try:
            return await call.read()
        finally:
            self._read_since = None

    def _check(self) -> None:
        now = self._loop.time()
        since = self._read_since
        if since is not None and now - since >= self.idle_timeout_s:
            # NOTE: the task is suspended at the read (or its step with the read's result is
            # queued): either way the CancelledError lands at the read, never elsewhere.
            self._handle = None
            self.expired = True
            assert self._task is not None
            self._task.cancel()
            return
        due = (since if since is not None else now) + self.idle_timeout_s
        self._handle = self._loop.call_at(due, self._check)
