"""Entry point of the runtime daemon: `python -m runtime_service` or `llmserve runtime`.

Start-up (health NOT_SERVING meanwhile): load the engine, then run one short generation so
the first request pays no compilation. A missing, corrupted or foreign engine stops start-up
with the reason in the log and exit status 1.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import Sequence

from llmserve.config import parse_config
from llmserve.server import Daemon, Service, run_daemon
from llmserve.store import Hold
from llmserve.v1 import runtime_pb2_grpc
from runtime_service.config import RuntimeConfig
from runtime_service.engine.async_llm import AsyncLLM
from runtime_service.engine.params import SamplingParams
from runtime_service.loading import load
from runtime_service.metrics import RuntimeMetrics
from runtime_service.service import RuntimeService, Serving

log = logging.getLogger(__name__)

DESCRIPTION = "The llmserve runtime: serves one engine with continuous batching over gRPC."


async def _warm_up(llm: AsyncLLM) -> None:
    ids = llm.tokenizer.encode("warm up", add_special_tokens=True)
    params = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
    async for _ in llm.generate(ids, params, request_id="warm-up"):
        pass


def setup(daemon: Daemon, config: RuntimeConfig) -> None:
    metrics = RuntimeMetrics()
    service = RuntimeService(config, metrics, lambda: daemon.draining)
    daemon.add_service(
        Service("llmserve.v1.Runtime", service, runtime_pb2_grpc.add_RuntimeServicer_to_server)
    )

    holds: list[Hold] = []
    cancel = threading.Event()  # ends a wait for an engine, or its build, when stopping
    tasks: list[asyncio.Task[None]] = []

    async def warmup() -> None:
        loading = asyncio.ensure_future(asyncio.to_thread(load, config, cancel))
        stopping = asyncio.ensure_future(daemon.stopping.wait())
        await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not loading.done():
            cancel.set()  # ends a wait for the engine or its build: start-up fails, exit 1
        loaded = await loading
        if loaded.hold is not None:
            holds.append(loaded.hold)
        start = time.perf_counter()
        await _warm_up(loaded.llm)
        log.info("warm-up generation in %.3f s", time.perf_counter() - start)
        # Start-up's objects (torch, transformers, the tokenizer: ~200k) live as long as the
        # process: out of the collector's sight, full collections stop re-scanning them while
        # each step's outputs churn the young generations.
        gc.freeze()
        loop = asyncio.get_running_loop()

        def died(reason: str) -> None:  # on the engine's receiver thread
            task = daemon.fail(f"the engine process stopped: {reason}")
            loop.call_soon_threadsafe(lambda: tasks.append(loop.create_task(task)))

        loaded.llm.on_dead(died)
        service.serving = Serving(loaded.llm, loaded.engine, loaded.device.name)
        metrics.watch_engine(loaded.engine.model_name, loaded.llm.stats, loaded.llm.num_waiting)
        engine = loaded.engine
        log.info(
            "serving %s (engine %s) on %s",
            engine.model_name,
            engine.engine_id or "built in place",
            loaded.device.name,
        )

    async def stop() -> None:
        cancel.set()
        if service.serving is not None:
            await asyncio.to_thread(service.serving.llm.shutdown)
        await service.release_holds()
        for hold in holds:
            await asyncio.to_thread(hold.release)

    daemon.on_warmup(warmup)
    daemon.on_stop(stop)


def main(argv: Sequence[str] | None = None, prog: str = "python -m runtime_service") -> int:
    config = parse_config(RuntimeConfig, argv, prog=prog, description=DESCRIPTION)
    return run_daemon("runtime", config, lambda daemon: setup(daemon, config))
