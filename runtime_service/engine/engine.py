"""LLMEngine: an EngineCore and its Processor in one process: requests in, text deltas out.

`step()` is the core's schedule -> execute -> update, then the processor's detokenization and
stop strings. The offline LLM drives it directly; the serving path (AsyncLLM) splits the same
two halves across processes instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from llmserve.errors import FailedPrecondition
from llmserve.reasons import Reason
from runtime_service.engine.config import EngineConfig
from runtime_service.engine.core import EngineCore, EngineStats
from runtime_service.engine.inputs import PromptInput
from runtime_service.engine.lora import AdapterInfo, LoRAManager
from runtime_service.engine.outputs import RequestOutput
from runtime_service.engine.params import SamplingParams
from runtime_service.engine.processor import Processor
from runtime_service.models.open import load_tokenizer

__all__ = ["EngineStats", "LLMEngine"]


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.core = EngineCore(config)
        self.tokenizer = load_tokenizer(self.core.info.tokenizer_path)
        self.processor = Processor(self.tokenizer, self.core.info)

    # What tests and benchmarks look at.
    @property
    def model(self):
        return self.core.model

    @property
    def block_manager(self):
        return self.core.block_manager

    @property
    def scheduler(self):
        return self.core.scheduler

    @property
    def runner(self):
        return self.core.runner

    @property
    def requests(self) -> dict:
        return self.core.requests

    @property
    def inputs(self):
        return self.processor.inputs

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self.processor.eos_token_ids

    @property
    def max_model_len(self) -> int:
        return self.core.max_model_len

    @property
    def lora(self) -> LoRAManager | None:
        return self.core.lora

    def stats(self) -> EngineStats:
        return self.core.stats()

    # Requests.
    def add_request(
        self,
        request_id: str,
        prompt: PromptInput,
        params: SamplingParams | None = None,
        adapter: str | None = None,
    ) -> None:
        """Validates and queues a request; raises (and changes nothing) on bad input."""
        er = self.processor.make_request(request_id, prompt, params, adapter)
        self.core.add(er)
        self.processor.begin(er)

    def abort(self, request_ids: Iterable[str]) -> None:
        """Ends requests at once; their blocks are free when this returns."""
        self.core.abort(request_ids)

    @property
    def has_unfinished_requests(self) -> bool:
        return self.core.has_unfinished_requests

    # Adapters (a request names one with add_request(..., adapter=name)).
    def load_adapter(self, name: str, path: Path | str) -> AdapterInfo:
        """Reads, validates and adds a PEFT adapter (see lora/adapter.py for the errors)."""
        reader = self.core.info.lora
        if reader is None:
            raise FailedPrecondition(
                "this engine serves no adapters (enable_lora is off)", reason=Reason.LORA_DISABLED
            )
        return self.core.register_adapter(reader.read(name, path))

    def unload_adapter(self, name: str, wait: bool = False) -> bool:
        """True: gone. FailedPrecondition while requests use it, unless wait: then False, and
        it goes when they have finished."""
        return self.core.unload_adapter(name, wait)

    def list_adapters(self) -> list[AdapterInfo]:
        return self.core.list_adapters()

    def step(self) -> list[RequestOutput]:
        outputs = self.core.step()
        self.processor.mark_scheduled(self.core.take_newly_scheduled())
        results, stopped = self.processor.process(outputs)
        if stopped:  # ended by a stop string: free their blocks now
            self.core.abort(stopped)
        return results
