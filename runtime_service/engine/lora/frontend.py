"""AdapterFrontend: AsyncLLM's half of LoRA — reading adapters and checking requests' names.

Adapters are read and validated here, on a worker thread, then handed to the engine core
(through shared memory when the core is another process; lora/manager.py takes its own copy),
so the core never waits for a disk. AsyncLLM is the only path that loads and unloads them, so
this side knows which names the core holds and refuses a request for another at once:
NotFound, or FailedPrecondition while the adapter is being unloaded. An unloading name is
marked here before the core hears of it; messages reach the core in order, so a request this
side let through always reaches the core before the unload does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmserve.errors import FailedPrecondition, LLMServeError, NotFound, shown
from llmserve.reasons import Reason
from runtime_service.engine.lora.adapter import AdapterReader
from runtime_service.engine.lora.manager import AdapterInfo

log = logging.getLogger(__name__)
UNLOAD_POLL_S = 0.02  # how often unload(wait=True) asks the core whether the adapter is gone

Call = Callable[..., concurrent.futures.Future]  # AsyncLLM.call: EngineCore.<method>(*args)


class AdapterFrontend:
    def __init__(self, reader: AdapterReader | None, call: Call) -> None:
        self.reader = reader  # None: LoRA is off
        self._call = call
        self.loaded: set[str] = set()  # names the core holds
        self._unloading: dict[str, int] = {}  # name -> unload calls in progress
        self._loader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="adapters")

    def _require(self) -> AdapterReader:
        if self.reader is None:
            raise FailedPrecondition(
                "this engine serves no adapters (enable_lora is off)", reason=Reason.LORA_DISABLED
            )
        return self.reader

    def check(self, name: str) -> bool:
        """Raises unless a request may name `name` now; True if it must be loaded first (it
        is in lora_dir)."""
        if self.reader is None:
            raise NotFound(
                f"adapter {shown(name)}: this engine serves no adapters (enable_lora is off)",
                reason=Reason.ADAPTER_NOT_FOUND,
            )
        if name in self._unloading:
            raise FailedPrecondition(
                f"adapter {shown(name)} is being unloaded", reason=Reason.ADAPTER_UNLOADING
            )
        if name in self.loaded:
            return False
        if self.reader.find(name) is None:
            where = f", nor in lora_dir {self.reader.lora_dir}" if self.reader.lora_dir else ""
            raise NotFound(
                f"adapter {shown(name)} is not loaded{where}", reason=Reason.ADAPTER_NOT_FOUND
            )
        return True

    async def load(self, name: str, path: str | Path) -> AdapterInfo:
        """Reads and validates on a worker thread, then registers with the core."""
        adapter = await asyncio.to_thread(self._require().read, name, path)
        future = await asyncio.to_thread(
            self._ask, name, lambda info: True, "register_adapter", adapter
        )
        return await asyncio.wrap_future(future)

    def _ask(
        self, name: str, held: Callable[[Any], bool], method: str, *args: Any
    ) -> concurrent.futures.Future:
        """Calls EngineCore.<method>(*args) about adapter `name`; on the core's answer,
        `loaded` follows `held(answer)`, whether or not the caller still waits for it (a
        LoadAdapter or UnloadAdapter past its deadline), so this side and the core never
        disagree on what is loaded. The record is made on the thread that receives the
        core's replies, in the order the core answered."""

        def record(future: concurrent.futures.Future) -> None:
            if future.exception() is None:
                (self.loaded.add if held(future.result()) else self.loaded.discard)(name)

        future = self._call(method, *args)
        future.add_done_callback(record)
        return future

    async def unload(self, name: str, wait: bool = False) -> None:
        """Removes an adapter. While requests use it: FailedPrecondition, or with wait, it
        takes no new requests and this returns once the last of them has finished. If the
        wait is cancelled (a deadline), the adapter stays loaded and takes requests again."""
        self._require()
        self._unloading[name] = self._unloading.get(name, 0) + 1  # refuse new requests now
        try:
            unload = self._ask(name, lambda gone: not gone, "unload_adapter", name, wait)
            gone = await asyncio.wrap_future(unload)
            while not gone:
                await asyncio.sleep(UNLOAD_POLL_S)
                held = self._ask(name, lambda held: held, "adapter_loaded", name)
                gone = not await asyncio.wrap_future(held)
        except asyncio.CancelledError:
            if wait:  # the core gets this after the unload, even if that has not run yet
                self._call("cancel_unload", name)
            raise
        finally:
            left = self._unloading.pop(name) - 1
            if left:
                self._unloading[name] = left

    async def list(self) -> list[AdapterInfo]:
        return await asyncio.wrap_future(self._call("list_adapters"))

    def load_then(
        self, name: str, ready: Callable[[], None], failed: Callable[[BaseException], None]
    ) -> None:
        """Loads `name` from lora_dir on the loader thread (unless it is loaded by then),
        then calls ready(), or failed(error): a request waiting for it fails alone."""
        self._loader.submit(self._load_then, name, ready, failed)

    def _load_then(
        self, name: str, ready: Callable[[], None], failed: Callable[[BaseException], None]
    ) -> None:
        try:
            if name not in self.loaded:
                adapter = self._require().read(name)
                self._call("register_adapter", adapter, True).add_done_callback(_log_failure)
                self.loaded.add(name)
        except Exception as e:
            failed(e if isinstance(e, LLMServeError) else LLMServeError(f"adapter: {e!r}"))
            return
        ready()

    def shutdown(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)


def _log_failure(future: concurrent.futures.Future[Any]) -> None:
    if future.exception() is not None:
        log.error("adapter registration failed: %s", future.exception())
