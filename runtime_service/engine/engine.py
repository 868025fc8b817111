"""LLMEngine: requests in, token deltas out; one `step()` is schedule -> execute -> update.

Single-threaded by design: the offline LLM drives it directly and AsyncLLM drives it from its
own thread. Every method here runs on that one thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from llmserve.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from runtime_service.engine.block_manager import BlockManager
from runtime_service.engine.config import EngineConfig
from runtime_service.engine.detokenizer import Detokenizer
from runtime_service.engine.inputs import InputProcessor, PromptInput
from runtime_service.engine.kv_pool import num_kv_blocks
from runtime_service.engine.lora import AdapterInfo, LoRAAdapter, LoRAManager
from runtime_service.engine.model_runner import ModelRunner
from runtime_service.engine.outputs import RequestOutput, Timings
from runtime_service.engine.params import SamplingParams
from runtime_service.engine.request import Request, RequestStatus
from runtime_service.engine.scheduler import Scheduler
from runtime_service.models.open import load_model_and_tokenizer

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    from runtime_service.models.loader import parse_dtype

    return parse_dtype(name)


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, self.device)
        self.model, self.tokenizer, self.info = load_model_and_tokenizer(
            config.model, dtype, self.device, config.max_model_len, config.load_format
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
        num_blocks = num_kv_blocks(config, self.model, self.device)
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
        self.runner = ModelRunner(self.model, num_blocks, config.block_size, self.lora)
        self.inputs = InputProcessor(self.tokenizer, mc.vocab_size, self.max_model_len)
        self.eos_token_ids = self._eos_token_ids()
        self.requests: dict[str, Request] = {}
        self._aborted: list[Request] = []
        log.info(
            "engine ready: %s on %s (%s), %d KV blocks of %d tokens, max_model_len %d",
            mc.architecture,
            self.device,
            dtype,
            num_blocks,
            config.block_size,
            self.max_model_len,
        )

    def _eos_token_ids(self) -> tuple[int, ...]:
        ids = set(self.model.config.eos_token_ids)
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return tuple(sorted(ids))

    # Requests.
    def prepare_request(
        self,
        request_id: str,
        prompt: PromptInput,
        params: SamplingParams | None = None,
        adapter: str | None = None,
    ) -> Request:
        """Validates and tokenizes, raising InvalidArgument on bad input. Touches no engine
        state, so any thread may call it."""
        params = params or SamplingParams()
        vocab_size = self.model.config.vocab_size
        for t in params.stop_token_ids:
            if t >= vocab_size:
                raise InvalidArgument(
                    f"stop_token_ids contains {t}, outside the vocabulary [0, {vocab_size})"
                )
        if adapter is not None:
            self._require_lora(adapter).check(adapter)
        prompt_ids = self.inputs(prompt, params.max_tokens)
        req = Request(
            request_id, prompt_ids, params, self.eos_token_ids, self.max_model_len, adapter
        )
        req.detokenizer = Detokenizer(
            self.tokenizer._tokenizer,
            prompt_ids,
            params.skip_special_tokens,
            params.stop,
            params.detokenize,
        )
        return req

    def add_prepared(self, req: Request) -> None:
        if req.request_id in self.requests:
            raise AlreadyExists(f"request_id {req.request_id!r} is already in progress")
        if req.adapter is not None:
            self._require_lora(req.adapter).bind(req)
        self.requests[req.request_id] = req
        self.scheduler.add(req)

    def add_request(
        self,
        request_id: str,
        prompt: PromptInput,
        params: SamplingParams | None = None,
        adapter: str | None = None,
    ) -> Request:
        """Validates and queues a request; raises (and changes nothing) on bad input."""
        if request_id in self.requests:
            raise AlreadyExists(f"request_id {request_id!r} is already in progress")
        req = self.prepare_request(request_id, prompt, params, adapter)
        self.add_prepared(req)
        return req

    def abort(self, request_ids: Iterable[str]) -> None:
        """Ends requests at once; their blocks are free when this returns."""
        reqs = [self.requests[r] for r in request_ids if r in self.requests]
        self.scheduler.finish(reqs, RequestStatus.FINISHED_ABORTED)
        self._aborted.extend(reqs)

    # Adapters.
    def _require_lora(self, adapter: str | None = None) -> LoRAManager:
        if self.lora is None:
            off = "this engine serves no adapters (enable_lora is off)"
            raise NotFound(f"adapter {adapter!r}: {off}") if adapter else FailedPrecondition(off)
        return self.lora

    def load_adapter(self, name: str, path: Path | str) -> AdapterInfo:
        """Reads, validates and adds a PEFT adapter (to host memory; it takes a device slot
        when a request using it is scheduled). AsyncLLM reads on another thread instead
        (read_adapter) and registers between steps."""
        return self.register_adapter(self.read_adapter(name, path))

    def read_adapter(self, name: str, path: Path | str | None = None) -> LoRAAdapter:
        """Reads and validates an adapter from `path`, or from lora_dir if None. Touches no
        engine state, so any thread may call it."""
        lora = self._require_lora()
        found = lora.find(name) if path is None else Path(path)
        if found is None:
            raise NotFound(f"adapter {name!r} is not in lora_dir {lora.lora_dir}")
        return lora.read(name, found)

    def register_adapter(self, adapter: LoRAAdapter, exist_ok: bool = False) -> AdapterInfo:
        return self._require_lora().register(adapter, exist_ok)

    def adapter_needs_loading(self, name: str) -> bool:
        """Whether `name` is not loaded but can be, on first use, from lora_dir."""
        return self.lora is not None and self.lora.needs_loading(name)

    def unload_adapter(
        self, name: str, wait: bool = False, on_unloaded: Callable[[], None] | None = None
    ) -> bool:
        """Removes an adapter; FailedPrecondition while requests use it, unless wait (then
        it takes no new requests, goes when they finish, and this returns False)."""
        return self._require_lora().unload(name, wait, on_unloaded)

    def cancel_unload(self, name: str, on_unloaded: Callable[[], None]) -> None:
        """Withdraws an unload(wait=True) whose caller stopped waiting."""
        self._require_lora().cancel_unload(name, on_unloaded)

    def list_adapters(self) -> list[AdapterInfo]:
        return [] if self.lora is None else self.lora.infos()

    @property
    def has_unfinished_requests(self) -> bool:
        return self.scheduler.num_unfinished > 0 or bool(self._aborted)

    # The step.
    def step(self) -> list[RequestOutput]:
        outputs = [self._finish_output(r) for r in self._aborted]
        self._aborted.clear()
        sched = self.scheduler.schedule()
        if not sched.requests:
            return outputs
        result = self.runner.execute(sched)
        self.scheduler.update(sched)
        for req, token, logprobs in zip(
            result.requests, result.token_ids, result.logprobs, strict=True
        ):
            req.append_output_token(token, logprobs)
            status = req.check_token_stop()
            detok = req.detokenizer
            stop = detok.push(token)
            if stop is not None:
                status = RequestStatus.FINISHED_STOPPED
                req.stop_reason = stop
            if status is not None:
                self.scheduler.finish([req], status)
                outputs.append(self._finish_output(req, token, logprobs))
            else:
                outputs.append(self._delta(req, token, logprobs, detok.take_delta(False)))
        return outputs

    def _delta(self, req: Request, token: int | None, logprobs, text: str) -> RequestOutput:
        return RequestOutput(
            request_id=req.request_id,
            token_ids=[] if token is None else [token],
            text=text,
            logprobs=[] if logprobs is None else [logprobs],
            num_prompt_tokens=req.num_prompt_tokens,
            num_output_tokens=req.num_output_tokens,
            num_cached_tokens=max(req.num_cached_tokens, 0),
        )

    def _finish_output(
        self, req: Request, token: int | None = None, logprobs=None
    ) -> RequestOutput:
        detok = req.detokenizer
        self.requests.pop(req.request_id, None)
        if req.status != RequestStatus.FINISHED_ABORTED:
            detok.flush()
        out = self._delta(req, token, logprobs, detok.take_delta(True))
        out.finished = True
        out.finish_reason = req.status.value
        out.stop_reason = req.stop_reason
        out.timings = Timings.of(req)
        return out
