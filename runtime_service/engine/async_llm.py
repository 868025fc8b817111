"""AsyncLLM: the streaming interface. The engine steps on its own thread; each request's
outputs reach an asyncio consumer through a RequestStream.

A RequestStream holds at most one pending output: when the consumer reads slower than tokens
arrive, new deltas are merged into the pending one (coalesced) instead of queueing without
bound. Leaving the iterator early (a cancelled or disconnected client) aborts the request; its
KV blocks are back in the pool within one engine step.

Adapters: loading reads and validates on a worker thread and adds the adapter between two
engine steps; a request naming an adapter that is not loaded but is in lora_dir is held until
a worker thread has loaded it. The running batch never waits for the disk.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from llmserve.errors import LLMServeError, Unavailable
from runtime_service.engine.config import EngineConfig
from runtime_service.engine.engine import LLMEngine
from runtime_service.engine.inputs import PromptInput
from runtime_service.engine.lora import AdapterInfo
from runtime_service.engine.outputs import RequestOutput
from runtime_service.engine.params import SamplingParams
from runtime_service.engine.request import Request

log = logging.getLogger(__name__)
THROUGHPUT_WINDOW_S = 5.0


class RequestStream:
    """One request's outputs, handed from the engine thread to one asyncio consumer."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self._pending: RequestOutput | None = None
        self._error: BaseException | None = None
        self._ready = asyncio.Event()
        self.finished = False

    def put(self, out: RequestOutput) -> None:  # on the event loop
        if self._pending is None:
            self._pending = out
        else:
            self._pending.merge(out)
        self._ready.set()

    def fail(self, error: BaseException) -> None:  # on the event loop
        self._error = error
        self._ready.set()

    async def get(self) -> RequestOutput:
        await self._ready.wait()
        self._ready.clear()
        if self._pending is None and self._error is not None:
            raise self._error
        out, self._pending = self._pending, None
        assert out is not None
        if out.finished:
            self.finished = True
        return out


class AsyncLLM:
    """Owns an LLMEngine and the thread that steps it."""

    def __init__(self, config: EngineConfig | LLMEngine) -> None:
        self.engine = config if isinstance(config, LLMEngine) else LLMEngine(config)
        self._commands: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._streams: dict[str, RequestStream] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False
        self._dead: BaseException | None = None
        self._ids = itertools.count()
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) per step
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="adapter-loader")
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._thread.start()

    # Public, on the event loop.
    def add_request(
        self,
        prompt: PromptInput,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        adapter: str | None = None,
    ) -> RequestStream:
        """Validates (raising InvalidArgument at once) and queues a request."""
        if self._dead is not None:
            raise Unavailable(f"the engine stopped after an error: {self._dead}")
        if self._stopped:
            raise Unavailable("the engine is shutting down")
        self._loop = self._loop or asyncio.get_running_loop()
        request_id = request_id or f"req-{next(self._ids)}"
        if request_id in self._streams:
            from llmserve.errors import AlreadyExists

            raise AlreadyExists(f"request_id {request_id!r} is already in progress")
        params = params or SamplingParams()
        request = self.engine.prepare_request(request_id, prompt, params, adapter)
        stream = RequestStream(request_id)
        self._streams[request_id] = stream
        if adapter is not None and self.engine.adapter_needs_loading(adapter):
            self._loader.submit(self._load_then_add, request)
        else:
            self._commands.put(("add", request))
        self._wakeup.set()
        return stream

    async def generate(
        self,
        prompt: PromptInput,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        adapter: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Streams a request's outputs; stopping early aborts it."""
        stream = self.add_request(prompt, params, request_id, adapter)
        async for out in self.iterate(stream):
            yield out

    async def iterate(self, stream: RequestStream) -> AsyncIterator[RequestOutput]:
        try:
            while not stream.finished:
                yield await stream.get()
        finally:
            if not stream.finished:
                self.abort(stream.request_id)
            self._streams.pop(stream.request_id, None)

    def abort(self, request_id: str) -> None:
        self._commands.put(("abort", request_id))
        self._wakeup.set()

    # Adapters.
    async def load_adapter(self, name: str, path: str | Path) -> AdapterInfo:
        """Reads and validates a PEFT adapter on a worker thread, then adds it between two
        steps."""
        adapter = await asyncio.to_thread(self.engine.read_adapter, name, path)
        return await self._call(self.engine.register_adapter, adapter)

    async def unload_adapter(self, name: str, wait: bool = False) -> None:
        """Removes an adapter. While requests use it: FailedPrecondition, or with wait, it
        takes no new requests and this returns once the last of them has finished. If the
        wait is cancelled (a deadline), the adapter stays loaded and takes requests again."""
        loop = asyncio.get_running_loop()
        gone: asyncio.Future[None] = loop.create_future()

        def on_unloaded() -> None:  # on the engine thread
            loop.call_soon_threadsafe(_settle, (gone, None, None))

        try:
            if not await self._call(self.engine.unload_adapter, name, wait, on_unloaded):
                await gone
        except asyncio.CancelledError:
            # Commands run in order: this follows the unload even if it has not run yet.
            await self._call(self.engine.cancel_unload, name, on_unloaded)
            raise

    async def list_adapters(self) -> list[AdapterInfo]:
        return await self._call(self.engine.list_adapters)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) on the engine thread between two steps; its result or error here."""
        if self._dead is not None:
            raise Unavailable(f"the engine stopped after an error: {self._dead}")
        if self._stopped:
            raise Unavailable("the engine is shutting down")
        self._loop = self._loop or asyncio.get_running_loop()
        future = self._loop.create_future()
        self._commands.put(("call", (fn, args, future)))
        self._wakeup.set()
        return await future

    def _load_then_add(self, request: Request) -> None:  # on the loader thread
        try:
            assert request.adapter is not None
            if self.engine.adapter_needs_loading(request.adapter):
                adapter = self.engine.read_adapter(request.adapter)
                self._commands.put(("call", (self.engine.register_adapter, (adapter, True), None)))
        except Exception as e:  # the request fails alone, never hangs
            error = e if isinstance(e, LLMServeError) else LLMServeError(f"adapter: {e!r}")
            self._post(self._fail_one, (request.request_id, error))
            return
        if request.request_id in self._streams:  # else its consumer has gone
            self._commands.put(("add", request))
            self._wakeup.set()

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        recent = [(t, n) for t, n in list(self._recent) if now - t <= THROUGHPUT_WINDOW_S]
        return sum(n for _, n in recent) / THROUGHPUT_WINDOW_S

    @property
    def num_streams(self) -> int:
        return len(self._streams)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stops the engine thread (requests still running are abandoned)."""
        self._stopped = True
        self._wakeup.set()
        self._thread.join(timeout)
        self._loader.shutdown(wait=False, cancel_futures=True)

    # The engine thread.
    def _run(self) -> None:
        while not self._stopped:
            self._apply_commands()
            if not self.engine.has_unfinished_requests:
                self._wakeup.wait()
                self._wakeup.clear()
                continue
            try:
                outputs = self.engine.step()
            except Exception as e:
                log.exception("engine step failed")
                self._dead = e
                self._post(self._fail_all, Unavailable(f"engine step failed: {e}"))
                return
            tokens = sum(len(o.token_ids) for o in outputs)
            if tokens:
                now = time.monotonic()
                self._recent.append((now, tokens))
                while self._recent and now - self._recent[0][0] > THROUGHPUT_WINDOW_S:
                    self._recent.popleft()
            if outputs:
                self._post(self._dispatch, outputs)

    def _apply_commands(self) -> None:
        while True:
            try:
                kind, arg = self._commands.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                try:
                    self.engine.add_prepared(arg)
                except LLMServeError as e:  # e.g. its adapter was unloaded meanwhile
                    self._post(self._fail_one, (arg.request_id, e))
            elif kind == "call":
                fn, args, future = arg
                try:
                    result, error = fn(*args), None
                except Exception as e:
                    result, error = None, e
                    if future is None:
                        log.warning("engine call %s failed: %s", fn.__name__, e)
                if future is not None:
                    self._post(_settle, (future, result, error))
            else:
                self.engine.abort([arg])

    def _post(self, fn: Any, arg: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, arg)

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is not None:
                stream.put(out)

    def _fail_all(self, error: BaseException) -> None:
        for stream in self._streams.values():
            stream.fail(error)

    def _fail_one(self, item: tuple[str, BaseException]) -> None:
        stream = self._streams.get(item[0])
        if stream is not None:
            stream.fail(item[1])


def _settle(item: tuple[asyncio.Future[Any], Any, BaseException | None]) -> None:
    """Resolves a future on its event loop with a result or an error (once)."""
    future, result, error = item
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
