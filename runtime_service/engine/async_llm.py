"""AsyncLLM: the streaming interface the gRPC daemon uses.

The engine core runs in its own process (or, with in_process=True, on a thread of this one);
this side validates and tokenizes requests, and turns the core's token ids into text on a
receiver thread, handing each request's outputs to asyncio through a RequestStream.

A RequestStream holds at most one pending output: when the consumer reads slower than tokens
arrive, new deltas are merged into the pending one (coalesced) instead of queueing without
bound. Leaving the iterator early (a cancelled or disconnected client) aborts the request; its
KV blocks are back in the pool within one engine step. LoRA adapters are read on this side
(lora/frontend.py), so the core never waits for a disk.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from llmserve.errors import AlreadyExists, Unavailable, shown
from llmserve.reasons import Reason
from runtime_service.engine.config import EngineConfig
from runtime_service.engine.core import CoreInfo, EngineStats
from runtime_service.engine.core_loop import Started, start_core
from runtime_service.engine.inputs import PromptInput
from runtime_service.engine.lora import AdapterInfo
from runtime_service.engine.lora.frontend import AdapterFrontend
from runtime_service.engine.outputs import RequestOutput, unpack_outputs
from runtime_service.engine.params import SamplingParams
from runtime_service.engine.processor import Processor
from runtime_service.engine.request import EngineRequest
from runtime_service.models.open import load_tokenizer

log = logging.getLogger(__name__)
THROUGHPUT_WINDOW_S = 5.0
PREPARE_THREADS = 2  # validation and tokenization of incoming requests


class RequestStream:
    """One request's outputs, handed from the receiver thread to one asyncio consumer."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.arrival = time.monotonic()
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


def _load_in_background(fn: Callable[[Path], Any], path: Path) -> concurrent.futures.Future:
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="preload")
    future = pool.submit(fn, path)
    pool.shutdown(wait=False)
    return future


def _result_or_none(future: concurrent.futures.Future) -> Any:
    """The future's result; None if it failed (the caller loads again, and raises then)."""
    try:
        return future.result()
    except Exception:
        return None


class AsyncLLM:
    """Starts an engine core and streams its requests' outputs to asyncio."""

    def __init__(
        self,
        config: EngineConfig,
        *,
        in_process: bool = False,
        log_level: str = "info",
        log_format: str = "json",
        spawned: Started | None = None,
    ) -> None:
        """spawned: a core process from core_loop.spawn_core to hand the settings to."""
        # The tokenizer (and transformers' import) loads here while the core loads the model.
        early = _load_in_background(load_tokenizer, config.model)
        self._conn, self._join = start_core(config, in_process, log_level, log_format, spawned)
        message = self._conn.recv()  # blocks while the model loads
        if message[0] == "failed":
            self._join(10.0)
            raise message[1]
        _, self.info, self._stats = message
        self.info: CoreInfo
        self.tokenizer = (
            _result_or_none(early) if Path(self.info.tokenizer_path) == config.model else None
        ) or load_tokenizer(self.info.tokenizer_path)
        self.processor = Processor(self.tokenizer, self.info)
        self._send_lock = threading.Lock()
        self._streams: dict[str, RequestStream] = {}
        self._calls: dict[int, concurrent.futures.Future] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dead: str | None = None
        self._on_dead: list[Callable[[str], None]] = []
        self._num_preparing = 0
        self._stopped = False
        self._ids = itertools.count()
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) per step
        self.adapters = AdapterFrontend(self.info.lora, self.call)
        self._prepare = concurrent.futures.ThreadPoolExecutor(
            PREPARE_THREADS, thread_name_prefix="prepare"
        )
        self._receiver = threading.Thread(target=self._receive, name="engine-outputs", daemon=True)
        self._receiver.start()

    def _send(self, message: tuple) -> None:
        """Sends to the core; Unavailable once it has died. `_dead` is set under the same lock,
        so a message either reaches the core before its death is known (and the death then
        fails what it was for) or is refused here: nothing is sent into the void."""
        with self._send_lock:
            if self._dead is not None:
                raise Unavailable(f"the engine stopped: {self._dead}")
            try:
                self._conn.send(message)
            except (BrokenPipeError, OSError) as e:
                raise Unavailable(f"the engine stopped: {e}") from e

    # Public, on the event loop.
    def add_request(
        self,
        prompt: PromptInput,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        adapter: str | None = None,
    ) -> RequestStream:
        """Validates (raising InvalidArgument at once) and queues a request. Validation and
        tokenization run on the calling thread: the daemon uses `submit` instead."""
        request_id = self._check_new(request_id)
        er = self.processor.make_request(request_id, prompt, params, adapter)
        return self._enqueue(er, adapter)

    async def submit(
        self,
        prompt: PromptInput,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        adapter: str | None = None,
    ) -> RequestStream:
        """`add_request` with validation, chat templating and tokenization on a worker thread,
        so that a large prompt never holds up the event loop (health checks, other streams)."""
        request_id = self._check_new(request_id)
        self._num_preparing += 1  # counted as waiting, so admission sees it
        try:
            er = await asyncio.get_running_loop().run_in_executor(
                self._prepare, self.processor.make_request, request_id, prompt, params, adapter
            )
            self._check_new(request_id)  # another call may have taken the id meanwhile
            return self._enqueue(er, adapter)
        finally:
            self._num_preparing -= 1

    def _check_new(self, request_id: str | None) -> str:
        if self._dead is not None:
            raise Unavailable(
                f"the engine stopped after an error: {self._dead}", reason=Reason.ENGINE_STOPPED
            )
        if self._stopped:
            raise Unavailable("the engine is shutting down", reason=Reason.ENGINE_STOPPED)
        self._loop = self._loop or asyncio.get_running_loop()
        request_id = request_id or f"req-{next(self._ids)}"
        if request_id in self._streams:
            raise AlreadyExists(
                f"request_id {shown(request_id)} is already in progress",
                reason=Reason.REQUEST_IN_PROGRESS,
                field="request_id",
            )
        return request_id

    def _enqueue(self, er: EngineRequest, adapter: str | None) -> RequestStream:
        request_id = er.request_id
        load_first = adapter is not None and self.adapters.check(adapter)
        stream = RequestStream(request_id)
        self._streams[request_id] = stream
        self.processor.begin(er)
        try:
            if load_first:
                assert adapter is not None
                self.adapters.load_then(
                    adapter, lambda: self._add_if_wanted(er), lambda e: self._fail(request_id, e)
                )
            elif self._dead is None:
                self._send(("add", er))
            if self._dead is not None:  # died before the add: no step will ever answer it
                raise Unavailable(f"the engine stopped: {self._dead}")
        except BaseException:
            self._streams.pop(request_id, None)
            self.processor.forget(request_id)
            raise
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
        self.processor.forget(request_id)
        with contextlib.suppress(Unavailable):  # a dead core has nothing left to abort
            self._send(("abort", [request_id]))

    def call(self, method: str, *args: Any) -> concurrent.futures.Future:
        """Runs EngineCore.<method>(*args) between steps; the future holds its result.

        The call is under way once sent: its future cannot be cancelled. A caller that gives
        up (a GetStatus past its deadline: asyncio.wrap_future cancels its source) stops
        waiting; the core's reply then lands in a future nobody reads. A cancelled future
        would raise in the receiver thread, which delivers every step and every reply."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_running_or_notify_cancel()
        call_id = next(self._ids)
        self._calls[call_id] = future
        try:
            self._send(("call", call_id, method, args))
        except Unavailable as e:
            self._calls.pop(call_id, None)
            future.set_exception(e)
        return future

    # Adapters (lora/frontend.py).
    async def load_adapter(self, name: str, path: str | Path) -> AdapterInfo:
        return await self.adapters.load(name, path)

    async def unload_adapter(self, name: str, wait: bool = False) -> None:
        await self.adapters.unload(name, wait)

    async def list_adapters(self) -> list[AdapterInfo]:
        return await self.adapters.list()

    def _add_if_wanted(self, er: EngineRequest) -> None:  # its adapter is loaded now
        if er.request_id in self._streams:  # else its consumer has gone
            try:
                self._send(("add", er))
            except Unavailable as e:
                self._fail(er.request_id, e)

    def _fail(self, request_id: str, error: BaseException) -> None:
        self.processor.forget(request_id)
        self._post(self._fail_one, (request_id, error))

    def on_dead(self, callback: Callable[[str], None]) -> None:
        """Calls `callback(reason)` (on the receiver thread) if the core dies unasked."""
        self._on_dead.append(callback)

    def stats(self) -> EngineStats:
        """The core's counters after its latest step."""
        return self._stats

    def num_waiting(self) -> int:
        """Requests accepted but not yet scheduled (those being prepared included)."""
        return self.processor.num_unscheduled() + self._num_preparing

    @property
    def num_streams(self) -> int:
        return len(self._streams)

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        recent = [(t, n) for t, n in list(self._recent) if now - t <= THROUGHPUT_WINDOW_S]
        return sum(n for _, n in recent) / THROUGHPUT_WINDOW_S

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stops the core (requests still running are abandoned)."""
        self._stopped = True
        self._prepare.shutdown(wait=False, cancel_futures=True)
        self.adapters.shutdown()
        if self._dead is None:
            with contextlib.suppress(Unavailable):
                self._send(("shutdown",))
        self._join(timeout)

    # The receiver thread.
    def _receive(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                message = ("dead", "the engine core process exited")
            if message[0] == "dead":
                self._die(message[1])
                return
            try:
                self._take(message)
            except Exception as e:  # a defect: without this thread nothing is answered again
                log.exception("the engine's output thread failed")
                self._die(f"the engine's output thread failed: {e!r}", stop_core=True)
                return

    def _take(self, message: tuple) -> None:
        kind = message[0]
        if kind == "step":
            _, packed, scheduled, self._stats = message
            self.processor.mark_scheduled(scheduled)
            results, stopped = self.processor.process(unpack_outputs(packed))
            if stopped:
                self._send(("abort", stopped))
            self._count(results)
            self._post(self._dispatch, results)
        elif kind == "reply":
            _, call_id, ok, value = message
            future = self._calls.pop(call_id)
            future.set_result(value) if ok else future.set_exception(value)

    def _die(self, reason: str, stop_core: bool = False) -> None:
        """Fails everything waiting on the core and refuses what comes; stop_core: the core
        still runs (this side failed) and is told to stop."""
        with self._send_lock:  # from here on every send is refused (see `_send`)
            if stop_core:
                with contextlib.suppress(OSError, ValueError):
                    self._conn.send(("shutdown",))
            self._dead = reason
            calls = list(self._calls.values())
            self._calls.clear()
        if not self._stopped:  # before anything is refused: health goes first
            log.error("engine core died: %s", reason)
            for callback in self._on_dead:
                callback(reason)
        # Streams registered before this point are failed by `_fail_all` (it runs on the
        # loop after them); later ones see `_dead` in `_enqueue`.
        self._post(self._fail_all, Unavailable(f"the engine stopped: {reason}"))
        for future in calls:
            future.set_exception(Unavailable(reason))

    def _count(self, results: list[RequestOutput]) -> None:
        tokens = sum(len(r.token_ids) for r in results)
        if tokens:
            now = time.monotonic()
            self._recent.append((now, tokens))
            while self._recent and now - self._recent[0][0] > THROUGHPUT_WINDOW_S:
                self._recent.popleft()

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
