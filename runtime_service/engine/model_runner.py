"""ModelRunner: turns a SchedulerOutput into input tensors, runs the model, samples.

It owns the KV cache tensors. Inputs are one flattened batch of every scheduled token;
logits are computed only at the last token of each request whose step reaches the end of its
known tokens (a finished prefill chunk or a decode), and only those requests get a token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from runtime_service.engine.request import Request, TokenLogprobs
from runtime_service.engine.sampler import sample
from runtime_service.engine.scheduler import SchedulerOutput
from runtime_service.models.attention import AttentionMetadata
from runtime_service.models.llama import LlamaModel
from runtime_service.models.loader import allocate_kv_caches

if TYPE_CHECKING:
    from runtime_service.engine.lora.manager import LoRAManager


@dataclass(slots=True)
class RunnerOutput:
    """The requests that got a token this step, with the token and its logprobs."""

    requests: list[Request]
    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]


class ModelRunner:
    def __init__(
        self,
        model: LlamaModel,
        num_blocks: int,
        block_size: int,
        lora: LoRAManager | None = None,
    ) -> None:
        self.model = model
        self.lora = lora
        self.device = model.device
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.kv_caches = allocate_kv_caches(
            model.config, num_blocks, block_size, model.dtype, model.device
        )

    def _prepare(
        self, sched: SchedulerOutput
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[int], list[Request]]:
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_start = [0]
        seq_lens: list[int] = []
        sample_rows: list[int] = []
        sample_reqs: list[Request] = []
        for req, n, blocks in zip(
            sched.requests, sched.num_scheduled_tokens, sched.block_ids, strict=True
        ):
            start = req.num_computed_tokens
            end = start + n
            input_ids.extend(req.all_token_ids[start:end])
            positions.extend(range(start, end))
            slots.extend(blocks[p // bs] * bs + p % bs for p in range(start, end))
            query_start.append(query_start[-1] + n)
            seq_lens.append(end)
            if end == req.num_tokens:
                sample_rows.append(query_start[-1] - 1)
                sample_reqs.append(req)
        width = max(len(b) for b in sched.block_ids)
        tables = [b + [0] * (width - len(b)) for b in sched.block_ids]
        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
            block_tables=torch.tensor(tables, dtype=torch.int32, device=dev),
            query_start_loc=torch.tensor(query_start, dtype=torch.int32, device=dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            query_lens_cpu=list(sched.num_scheduled_tokens),
            seq_lens_cpu=seq_lens,
        )
        ids = torch.tensor(input_ids, dtype=torch.long, device=dev)
        pos = torch.tensor(positions, dtype=torch.long, device=dev)
        return ids, pos, meta, sample_rows, sample_reqs

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput) -> RunnerOutput:
        ids, positions, meta, rows, reqs = self._prepare(sched)
        if self.lora is not None:
            self.lora.begin_batch(sched)
        hidden = self.model(ids, positions, self.kv_caches, meta)
        if not reqs:
            return RunnerOutput([], [], [])
        logits = self.model.compute_logits(hidden[rows])
        out = sample(logits, reqs)
        return RunnerOutput(reqs, out.token_ids, out.logprobs)
