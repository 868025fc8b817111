"""EngineCore: the model, the KV cache, the scheduler and the sampler; token ids only.

One `step()` is schedule -> execute -> update: every scheduled request advances; those due a
token get one, and stop on EOS, a stop token or their length. Text (detokenization, stop
strings) is the frontend's work (processor.py), so the core can run in a process of its own
that does nothing but drive the device. Single-threaded: call it from one thread.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from llmserve.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from llmserve.reasons import Reason
from runtime_service.engine.block_manager import BlockManager
from runtime_service.engine.config import EngineConfig
from runtime_service.engine.kv_pool import num_kv_blocks
from runtime_service.engine.lora import AdapterInfo, LoRAAdapter, LoRAManager
from runtime_service.engine.lora.adapter import AdapterReader
from runtime_service.engine.model_runner import LaunchedStep, ModelRunner
from runtime_service.engine.outputs import CoreOutput
from runtime_service.engine.request import (
    EngineRequest,
    Request,
    RequestStatus,
    TokenLogprobs,
)
from runtime_service.engine.scheduler import Scheduler
from runtime_service.engine.structured.manager import StructuredOutput
from runtime_service.models.loader import parse_dtype
from runtime_service.models.open import load_model

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EngineStats:
    """Counters another thread may read while the engine steps (ints and lengths only)."""

    num_running: int
    num_waiting: int
    block_size: int
    num_blocks: int
    num_free_blocks: int
    num_cached_free_blocks: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int
    # LoRA (zeros without it): adapters registered (host memory), device slots, adapters in a
    # slot, adapters copied into a slot (swaps in) and displaced from one, since start.
    num_adapters: int = 0
    num_adapter_slots: int = 0
    num_adapters_on_device: int = 0
    num_adapter_slot_loads: int = 0
    num_adapter_slot_evictions: int = 0


@dataclass(frozen=True, slots=True)
class CoreInfo:
    """What the frontend needs to know about the loaded model (plain data)."""

    model_name: str
    model_path: str
    tokenizer_path: str
    engine_id: str
    quantization: str
    architecture: str
    dtype: str  # "float32" | "bfloat16" | "float16"
    device: str  # "cpu" | "cuda:0"
    vocab_size: int
    max_model_len: int
    eos_token_ids: tuple[int, ...]  # from the model's config
    num_blocks: int
    block_size: int
    lora: AdapterReader | None = None  # reads adapters for this model; None: LoRA is off
    tensor_parallel_size: int = 1  # processes the model is split over


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return parse_dtype(name)


class EngineCore:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        if config.cpu_threads:
            torch.set_num_threads(config.cpu_threads)
        self.device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, self.device)
        self.workers = None  # tensor parallelism: the other ranks (parallel/workers.py)
        if config.tensor_parallel_size > 1:
            from runtime_service.parallel.workers import load_parallel_model

            self.model, info, self.workers = load_parallel_model(config, dtype, self.device)
        else:
            self.model, info = load_model(
                config.model,
                dtype,
                self.device,
                config.max_model_len,
                config.load_format,
                verify=config.verify_engine,
                dummy_quantization=config.dummy_quantization,
                manifest_sha256=config.engine_manifest_sha256,
            )
        mc = self.model.config
        self.max_model_len = min(
            config.max_model_len or mc.max_position_embeddings, mc.max_position_embeddings
        )
        if not config.enable_chunked_prefill and config.max_num_batched_tokens < self.max_model_len:
            raise InvalidArgument(
                f"without chunked prefill, max_num_batched_tokens ({config.max_num_batched_tokens})"
                f" must be >= max_model_len ({self.max_model_len})"
            )
        # LoRA slots take their device memory before the KV pool is sized from what is left.
        self.lora = (
            LoRAManager(self.model, config.max_loras, config.max_lora_rank, config.lora_dir)
            if config.enable_lora
            else None
        )
        num_blocks = num_kv_blocks(config, self.model, self.device, self.max_model_len)
        if num_blocks * config.block_size < self.max_model_len:
            raise InvalidArgument(
                f"the KV cache holds {num_blocks} blocks of {config.block_size} tokens, fewer "
                f"than one sequence of max_model_len {self.max_model_len} needs"
            )
        self.block_manager = BlockManager(
            num_blocks, config.block_size, config.enable_prefix_caching
        )
        self.scheduler = Scheduler(
            self.block_manager,
            config.max_num_seqs,
            config.max_num_batched_tokens,
            config.enable_chunked_prefill,
            self.lora,
        )
        self.runner = ModelRunner(
            self.model,
            num_blocks,
            config.block_size,
            config.max_num_seqs,
            config.max_num_batched_tokens,
            self.max_model_len,
            self.lora,
            # NOTE: the decode graphs do not capture the workers' half of a step yet.
            cuda_graphs=config.enable_cuda_graphs and self.workers is None,
        )
        # Constraints: compiled off the step loop; the runner's sampler masks with it.
        self.structured = StructuredOutput(
            info.tokenizer_path,
            mc.vocab_size,
            tuple(mc.eos_token_ids),
            config.max_num_seqs,
            self.device,
        )
        self.runner.structured = self.structured
        self.requests: dict[str, Request] = {}
        self._aborted: list[Request] = []
        self.async_scheduling = (
            self.device.type == "cuda"
            if config.async_scheduling is None
            else config.async_scheduling
        )
        self._pending: LaunchedStep | None = None  # launched, tokens not yet read
        self.info = CoreInfo(
            model_name=info.name,
            model_path=str(info.path),
            tokenizer_path=str(info.tokenizer_path),
            engine_id=info.engine_id,
            quantization=info.quantization,
            architecture=mc.architecture,
            dtype=str(dtype).removeprefix("torch."),
            device=str(self.device),
            vocab_size=mc.vocab_size,
            max_model_len=self.max_model_len,
            eos_token_ids=tuple(mc.eos_token_ids),
            num_blocks=num_blocks,
            block_size=config.block_size,
            lora=None if self.lora is None else self.lora.reader,
            tensor_parallel_size=config.tensor_parallel_size,
        )
        log.info(
            "engine core ready: %s on %s (%s), %d KV blocks of %d tokens, max_model_len %d",
            mc.architecture,
            self.device,
            dtype,
            num_blocks,
            config.block_size,
            self.max_model_len,
        )

    def close(self) -> None:
        """Stops the tensor-parallel workers, if any (a single-device core holds nothing)."""
        if self.workers is not None:
            self.workers.close()
            self.workers = None

    # Requests.
    def add(self, er: EngineRequest) -> None:
        if er.request_id in self.requests:
            raise AlreadyExists(
                f"request_id {er.request_id!r} is already in progress",
                reason=Reason.REQUEST_IN_PROGRESS,
                field="request_id",
            )
        req = Request(
            er.request_id,
            er.prompt_token_ids,
            er.params,
            er.eos_token_ids,
            self.max_model_len,
            er.adapter,
        )
        req.times.arrival = er.arrival
        if req.adapter is not None:
            self._lora(req.adapter).bind(req)
        self.requests[er.request_id] = req
        if req.params.constraint is not None:  # waits for its grammar, then is scheduled
            self.structured.add(req, er.eos_token_ids)
        else:
            self.scheduler.add(req)

    def abort(self, request_ids: Iterable[str]) -> None:
        """Ends requests at once; their blocks are free when this returns."""
        reqs = [self.requests[r] for r in request_ids if r in self.requests]
        for req in reqs:
            self.structured.drop(req.request_id)
        self.scheduler.finish(reqs, RequestStatus.FINISHED_ABORTED)
        self._aborted.extend(reqs)

    @property
    def has_unfinished_requests(self) -> bool:
        return (
            self.scheduler.num_unfinished > 0
            or bool(self._aborted)
            or self._pending is not None
            or self.structured.num_pending > 0
        )

    # Adapters (lora/manager.py), called between steps.
    def _lora(self, adapter: str | None = None) -> LoRAManager:
        if self.lora is None:
            off = "this engine serves no adapters (enable_lora is off)"
            if adapter:
                raise NotFound(f"adapter {adapter!r}: {off}", reason=Reason.ADAPTER_NOT_FOUND)
            raise FailedPrecondition(off, reason=Reason.LORA_DISABLED)
        return self.lora

    def register_adapter(self, adapter: LoRAAdapter, exist_ok: bool = False) -> AdapterInfo:
        """Adds an adapter read by AdapterReader (host memory; a device slot when a request
        using it is scheduled)."""
        return self._lora().register(adapter, exist_ok)

    def unload_adapter(self, name: str, wait: bool = False) -> bool:
        """True: gone. FailedPrecondition while requests use it, unless wait: then False,
        and it goes when they have finished (adapter_loaded turns False)."""
        return self._lora().unload(name, wait)

    def cancel_unload(self, name: str) -> None:
        self._lora().cancel_unload(name)

    def adapter_loaded(self, name: str) -> bool:
        return self.lora is not None and self.lora.is_loaded(name)

    def list_adapters(self) -> list[AdapterInfo]:
        return [] if self.lora is None else self.lora.infos()

    def take_newly_scheduled(self) -> list[tuple[str, float]]:
        """(id, when its first step was scheduled) of requests admitted since the last call."""
        return self.scheduler.take_newly_scheduled()

    def stats(self) -> EngineStats:
        bm, sched = self.block_manager, self.scheduler
        return EngineStats(
            num_running=len(sched.running),
            num_waiting=len(sched.waiting) + self.structured.num_pending,
            block_size=bm.block_size,
            num_blocks=bm.num_blocks,
            num_free_blocks=bm.num_free_blocks,
            num_cached_free_blocks=bm.num_cached_free_blocks,
            prefix_cache_queries=bm.prefix_cache_queries,
            prefix_cache_hits=bm.prefix_cache_hits,
            num_preemptions=sched.num_preemptions,
            **self._lora_stats(),
        )

    def _lora_stats(self) -> dict[str, int]:
        if self.lora is None:
            return {}
        slots = self.lora.slots
        return {
            "num_adapters": len(self.lora.adapters),
            "num_adapter_slots": slots.num_slots,
            "num_adapters_on_device": sum(
                1 for i in range(slots.num_slots) if slots.name_in(i) is not None
            ),
            "num_adapter_slot_loads": slots.num_loads,
            "num_adapter_slot_evictions": slots.num_evictions,
        }

    # The step.
    def step(self) -> list[CoreOutput]:
        """Schedules and launches a step, and returns the outputs of the tokens that reached
        the host. Synchronous: this step's. Async: the previous step's, read while this one
        runs on the device (so the host's work for step n+1 overlaps step n)."""
        outputs = [self._output(r, None, None) for r in self._aborted]
        self._aborted.clear()
        outputs += self._admit_constrained()
        sync = not self.async_scheduling
        if self._pending is not None and sync:
            outputs += self._resolve(self._pending)
            self._pending = None
        sched = self.scheduler.schedule()
        # Async: a constrained row's mask needs the token its request gets from the step in
        # flight, so a batch with such rows has only its forward queued here; the previous
        # step is resolved (advancing the matchers) while the device runs it, then the masked
        # sampling is queued behind it.
        launched = self.runner.launch(sched, defer_sampling=not sync) if sched.requests else None
        if self._pending is not None:
            outputs += self._resolve(self._pending)
        if launched is not None and launched.logits is not None:
            self.runner.sample(launched)
        self._pending = launched
        if launched is not None:
            self.scheduler.update(sched)
            for row, req in enumerate(launched.requests):
                if not req.is_finished:
                    req.append_placeholder(row)
            if sync:
                outputs += self._resolve(launched)
                self._pending = None
        elif self.structured.num_pending and not outputs:
            self.structured.wait()  # idle but for compiling grammars: no busy loop
        return outputs

    def _resolve(self, launched: LaunchedStep) -> list[CoreOutput]:
        """Writes a launched step's tokens over their placeholders, advances the matchers of
        constrained requests and applies stops."""
        result = self.runner.fetch(launched)
        # the matchers advance on worker threads while this thread resolves the rows
        accepting = self.structured.start_accept(result.requests, result.token_ids)
        kept: list[tuple[int, Request, int, TokenLogprobs | None, RequestStatus | None]] = []
        for row, (req, token, logprobs) in enumerate(
            zip(result.requests, result.token_ids, result.logprobs, strict=True)
        ):
            if req.is_finished:  # aborted, or stopped by its previous token: dropped (its
                continue  # matcher never sees it)
            req.resolve_placeholder(token, logprobs)  # computed by the next step: its
            # block is published by that step's `scheduler.update`
            kept.append((row, req, token, logprobs, req.check_token_stop()))
        ends = accepting.finish() if accepting is not None else None
        outputs = []
        for row, req, token, logprobs, status in kept:
            if ends is not None and ends[row]:
                status = RequestStatus.FINISHED_STOPPED  # the grammar is complete
            if status is not None:
                self.scheduler.finish([req], status)
            outputs.append(self._output(req, token, logprobs))
        return outputs

    def _admit_constrained(self) -> list[CoreOutput]:
        """Requests whose grammar is compiled join the scheduler's queue; those whose grammar
        failed to compile (the frontend checked it, so an engine fault) are aborted."""
        ready, failed = self.structured.take_ready()
        for req in ready:
            self.scheduler.add(req)
        if failed:
            self.scheduler.finish(failed, RequestStatus.FINISHED_ABORTED)
        return [self._output(r, None, None) for r in failed]

    def _output(self, req: Request, token: int | None, logprobs) -> CoreOutput:
        out = CoreOutput(
            request_id=req.request_id,
            token_ids=[] if token is None else [token],
            logprobs=[] if logprobs is None else [logprobs],
            num_prompt_tokens=req.num_prompt_tokens,
            num_output_tokens=req.num_output_tokens,
            num_cached_tokens=max(req.num_cached_tokens, 0),
        )
        if req.is_finished:
            self.requests.pop(req.request_id, None)
            self.structured.drop(req.request_id)
            out.finished = True
            out.finish_reason = req.status.value
            out.stop_token_id = req.stop_reason if isinstance(req.stop_reason, int) else None
        return out
