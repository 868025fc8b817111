"""Hosting an EngineCore on its own thread or in its own process, behind one message protocol.

To the core:   ("add", EngineRequest) | ("abort", [ids]) | ("call", id, method, args)
               | ("shutdown",)
From the core: ("ready", CoreInfo, EngineStats) | ("failed", exception)
               | ("step", [PackedCoreOutput], [(newly scheduled id, when)], EngineStats)
               | ("reply", id, ok, value) | ("dead", message)

The core blocks on its inbox while idle and drains it between steps, so a burst of requests
joins the next step. In a process it owns the device and the GIL of its own interpreter: the
frontend's gRPC and detokenization work cannot slow its steps. There a thread reads the pipe
as messages arrive (`ReadAhead`), so a sender never waits for the core to finish a step: the
frontend sends from its event loop, which a full pipe would stop (a burst of long prompts
during a CPU prefill step of seconds: no health check answered meanwhile).
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import queue
import signal
import threading
from collections.abc import Callable
from typing import Any

from llmserve.errors import LLMServeError
from runtime_service.engine.config import EngineConfig
from runtime_service.engine.core import EngineCore
from runtime_service.engine.outputs import CoreOutput, pack_outputs

log = logging.getLogger(__name__)


class QueueConnection:
    """One end of an in-process duplex channel with multiprocessing.Connection's methods."""

    def __init__(self, inbox: queue.SimpleQueue, outbox: queue.SimpleQueue) -> None:
        self._inbox, self._outbox = inbox, outbox
        self._peeked: list[Any] = []

    def send(self, message: Any) -> None:
        self._outbox.put(message)

    def recv(self) -> Any:
        return self._peeked.pop() if self._peeked else self._inbox.get()

    def poll(self, timeout: float | None = 0.0) -> bool:
        if self._peeked:
            return True
        try:
            self._peeked.append(self._inbox.get(block=timeout != 0.0, timeout=timeout))
            return True
        except queue.Empty:
            return False

    def close(self) -> None:
        pass


class ReadAhead(QueueConnection):
    """A multiprocessing Connection whose incoming messages a thread reads as they arrive
    (into an unbounded queue: the pipe never fills); sends go straight to the pipe. After
    the other end closes, recv raises EOFError once the messages read before are taken."""

    _EOF = object()

    def __init__(self, conn: Any) -> None:
        super().__init__(queue.SimpleQueue(), queue.SimpleQueue())
        self._conn = conn
        threading.Thread(target=self._read, name="engine-inbox", daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                self._inbox.put(self._conn.recv())
        except (EOFError, OSError):
            self._inbox.put(self._EOF)

    def send(self, message: Any) -> None:
        self._conn.send(message)

    def recv(self) -> Any:
        message = super().recv()
        if message is self._EOF:
            self._peeked.append(message)  # every later recv sees the end too
            raise EOFError
        return message

    def close(self) -> None:
        self._conn.close()


def queue_pipe() -> tuple[QueueConnection, QueueConnection]:
    a, b = queue.SimpleQueue(), queue.SimpleQueue()
    return QueueConnection(a, b), QueueConnection(b, a)


def _handle(core: EngineCore, message: tuple, conn: Any) -> bool:
    """Applies one inbox message; False on shutdown."""
    kind = message[0]
    if kind == "add":
        try:
            core.add(message[1])
        except LLMServeError as e:  # the frontend prevents these; never let one kill the core
            log.error("%s", e)
            aborted = CoreOutput(message[1].request_id, [], [], 0, 0, 0, True, "abort")
            conn.send(("step", pack_outputs([aborted]), [], core.stats()))
    elif kind == "abort":
        core.abort(message[1])
    elif kind == "call":
        _, call_id, method, args = message
        try:
            conn.send(("reply", call_id, True, getattr(core, method)(*args)))
        except Exception as e:
            conn.send(("reply", call_id, False, e))
    elif kind == "shutdown":
        return False
    return True


def core_loop(make_core: Callable[[], EngineCore], conn: Any) -> None:
    """Builds the core, reports ready (or failed), then serves its inbox until shutdown."""
    try:
        core = make_core()
    except Exception as e:
        log.exception("engine core failed to start")
        conn.send(("failed", e))
        return
    gc.freeze()  # the model's and start-up's objects: never collected, never re-scanned
    conn.send(("ready", core.info, core.stats()))
    try:
        running = True
        while running:
            if not core.has_unfinished_requests:  # idle: wait for work
                running = _handle(core, conn.recv(), conn)
            while running and conn.poll(0):  # whatever else arrived joins this step
                running = _handle(core, conn.recv(), conn)
            if running and core.has_unfinished_requests:
                outputs = core.step()
                step = ("step", pack_outputs(outputs), core.take_newly_scheduled(), core.stats())
                conn.send(step)
    except (EOFError, BrokenPipeError):
        return  # the frontend is gone
    except Exception as e:
        log.exception("engine core step failed")
        conn.send(("dead", f"{type(e).__name__}: {e}"))
        return
    finally:
        core.close()  # tensor-parallel workers, if any
    conn.send(("dead", "shut down"))  # lets the frontend's receiver thread finish


def _process_main(config: EngineConfig | None, conn: Any, log_level: str, log_format: str) -> None:
    from llmserve.logs import dump_stacks_on_sigusr1, setup_logging

    setup_logging(log_level, log_format)
    dump_stacks_on_sigusr1()
    # The parent decides when to stop (it drains first); Ctrl-C in a terminal reaches the
    # whole process group, so the core ignores it and exits when its pipe closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if config is None:  # spawned ahead (spawn_core): the settings follow on the pipe
        try:
            config = conn.recv()
        except EOFError:
            return  # the parent gave up before sending them
    assert config is not None
    core_loop(lambda: EngineCore(config), ReadAhead(conn))


Started = tuple[Any, Callable[[float], None]]  # (the frontend's connection, join(timeout))


def spawn_core(log_level: str = "info", log_format: str = "json") -> Started:
    """A core process started before its settings are known: its imports (torch, the
    engine) run while the caller finds the engine (a store fetch takes seconds); start_core
    with `spawned` sends the settings. Killed at once by join(0) if they never come."""
    return _spawn(None, log_level, log_format)


def start_core(
    config: EngineConfig,
    in_process: bool,
    log_level: str = "info",
    log_format: str = "json",
    spawned: Started | None = None,
) -> Started:
    """Starts a core (or hands its settings to one from spawn_core); returns (the
    frontend's connection, join(timeout))."""
    if spawned is not None:
        spawned[0].send(config)
        return spawned
    if in_process:
        frontend, backend = queue_pipe()
        thread = threading.Thread(
            target=core_loop,
            args=(lambda: EngineCore(config), backend),
            name="engine-core",
            daemon=True,
        )
        thread.start()
        return frontend, thread.join
    return _spawn(config, log_level, log_format)


def _spawn(config: EngineConfig | None, log_level: str, log_format: str) -> Started:
    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
    frontend, backend = ctx.Pipe()
    process = ctx.Process(
        target=_process_main,
        args=(config, backend, log_level, log_format),
        name="llmserve-engine-core",
        daemon=True,
    )
    process.start()
    backend.close()

    def join(timeout: float) -> None:
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()

    return frontend, join
