"""LLM: the offline API. `LLM(model).generate(prompts, params)` -> one Completion per prompt."""

from __future__ import annotations

from collections.abc import Sequence

from runtime_service.engine.config import EngineConfig
from runtime_service.engine.engine import LLMEngine
from runtime_service.engine.inputs import PromptInput
from runtime_service.engine.outputs import Completion, RequestOutput
from runtime_service.engine.params import SamplingParams


class LLM:
    def __init__(self, model: str, **engine_settings: object) -> None:
        self.engine = LLMEngine(EngineConfig(model=model, **engine_settings))  # type: ignore[arg-type]
        self._next_id = 0

    def generate(
        self,
        prompts: Sequence[PromptInput],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[Completion]:
        """Runs every prompt to completion, batched; results in prompt order.

        Every prompt is validated before any runs: one bad prompt raises and runs nothing.
        """
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} sampling params")
        for prompt, p in zip(prompts, params, strict=True):
            self.engine.inputs(prompt, p.max_tokens)
        ids = []
        for prompt, p in zip(prompts, params, strict=True):
            ids.append(f"offline-{self._next_id}")
            self._next_id += 1
            self.engine.add_request(ids[-1], prompt, p)
        merged: dict[str, RequestOutput] = {}
        prompt_ids = {i: self.engine.requests[i].prompt_token_ids for i in ids}
        while self.engine.has_unfinished_requests:
            for out in self.engine.step():
                if out.request_id in merged:
                    merged[out.request_id].merge(out)
                else:
                    merged[out.request_id] = out
        return [
            Completion(
                request_id=i,
                prompt_token_ids=prompt_ids[i],
                token_ids=merged[i].token_ids,
                text=merged[i].text,
                logprobs=merged[i].logprobs,
                finish_reason=merged[i].finish_reason,
                stop_reason=merged[i].stop_reason,
                num_cached_tokens=merged[i].num_cached_tokens,
                timings=merged[i].timings,
            )
            for i in ids
        ]
