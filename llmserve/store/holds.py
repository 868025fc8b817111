"""A runtime's hold on an artifact: a record refreshed by a heartbeat until released.

While a hold is live (refreshed within the store's hold_ttl_s), the artifact cannot be
deleted and garbage collection skips it. A process that dies stops refreshing; its hold
expires by itself, so nothing is pinned forever.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType

log = logging.getLogger(__name__)


class Hold:
    """Writes the hold now, refreshes it every `interval_s` in a daemon thread."""

    def __init__(
        self,
        refresh: Callable[[], None],
        drop: Callable[[], None],
        interval_s: float,
        holder: str,
    ) -> None:
        self.holder = holder
        self._refresh = refresh
        self._drop = drop
        self._interval_s = interval_s
        self._stop = threading.Event()
        refresh()
        self._thread = threading.Thread(target=self._beat, name=f"hold-{holder}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._refresh()
            except Exception as e:  # keep beating: the store may be back on the next beat
                log.warning("could not refresh hold %s: %s", self.holder, e)

    def release(self) -> None:
        """Stops the heartbeat and removes the hold (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self._drop()

    def __enter__(self) -> Hold:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
