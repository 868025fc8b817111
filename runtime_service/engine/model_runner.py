"""ModelRunner: turns a SchedulerOutput into input tensors, runs the model, samples.

It owns the KV cache tensors, the step's input buffers (step_inputs.py) and, on CUDA, the
step graphs (cuda_graphs.py). Inputs are one flattened batch of every scheduled token;
logits are computed only at the last token of each request whose step reaches the end of its
known tokens (a finished prefill chunk or a decode), and only those requests get a token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from runtime_service.engine.cuda_graphs import StepGraphs
from runtime_service.engine.penalties import PenaltyState
from runtime_service.engine.request import Request, TokenLogprobs
from runtime_service.engine.sampler import DeviceSample, sample_on_device
from runtime_service.engine.scheduler import SchedulerOutput
from runtime_service.engine.step_inputs import StepInputs
from runtime_service.kernels.attention_tiles import prefill_block_q
from runtime_service.models.attention import AttentionMetadata
from runtime_service.models.llama import LlamaModel
from runtime_service.models.loader import allocate_kv_caches

if TYPE_CHECKING:
    from runtime_service.engine.lora.manager import LoRAManager
    from runtime_service.engine.structured.manager import StructuredOutput


@dataclass(slots=True)
class RunnerOutput:
    """The requests that got a token this step, with the token and its logprobs."""

    requests: list[Request]
    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]


@dataclass(slots=True)
class LaunchedStep:
    """A step queued on the device: its sampled tokens arrive on the host when `done` has
    fired (CUDA) or at once (CPU). `fetch` waits for them.

    A step launched with `defer_sampling` whose batch holds constrained rows has only its
    forward and logits queued (`logits` set, `host` None): `sample` queues the rest once the
    tokens its masks depend on are known."""

    requests: list[Request]  # those that get a token, in sample-row order
    host: DeviceSample | None
    done: torch.cuda.Event | None
    logits: torch.Tensor | None = None  # [S, vocab], while the sampling waits


class ModelRunner:
    def __init__(
        self,
        model: LlamaModel,
        num_blocks: int,
        block_size: int,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        lora: LoRAManager | None = None,
        cuda_graphs: bool = True,
    ) -> None:
        self.model = model
        self.lora = lora
        self.device = model.device
        self.block_size = block_size
        self.num_blocks = num_blocks
        # One block beyond the pool: the slot that padding rows of a graph batch write to.
        self.kv_caches = allocate_kv_caches(
            model.config, num_blocks + 1, block_size, model.dtype, model.device
        )
        self.inputs = StepInputs(
            max_num_tokens=max(max_num_batched_tokens, max_num_seqs),
            max_num_seqs=max_num_seqs,
            max_blocks_per_seq=-(-max_model_len // block_size),
            block_size=block_size,
            pad_slot=num_blocks * block_size,
            device=self.device,
            # The Triton attention's tile table (CUDA only; the CPU attention needs none).
            block_q=(
                prefill_block_q(model.config.num_heads, model.config.num_kv_heads)
                if self.device.type == "cuda"
                else None
            ),
        )
        self.penalties = PenaltyState(model.config.vocab_size, self.device)
        self._last_tokens: torch.Tensor | None = None  # the latest launch's sampled tokens
        # Constraints' token masks (structured/manager.py), set by the engine core.
        self.structured: StructuredOutput | None = None
        if self.device.type == "cpu":  # bf16: weights in oneDNN's layout, same products
            model.pack_for_cpu(max_num_seqs)
        self.graphs: StepGraphs | None = None
        if cuda_graphs and self.device.type == "cuda":
            lora_graphs = None if lora is None else lora.graph_inputs(max_num_seqs)
            self.graphs = StepGraphs(
                self.inputs, self._forward, max_num_seqs, max_num_batched_tokens, lora_graphs
            )
            self.graphs.capture()

    def _forward(
        self, ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        return self.model(ids, positions, self.kv_caches, meta)

    @torch.inference_mode()
    def launch(self, sched: SchedulerOutput, defer_sampling: bool = False) -> LaunchedStep:
        """Queues the step's forward and sampling on the device, and the copy of its tokens
        to the host, without waiting for any of it. Placeholders among the inputs take the
        tokens of the previous launch.

        defer_sampling: when constrained rows are in the batch, only the forward and the
        logits are queued; the caller resolves the previous step (its tokens advance the
        matchers these rows' masks come from) and then calls `sample`, while the device is
        still busy with the forward."""
        size = tokens = None
        if self.graphs is not None:
            num_tokens = sched.total_num_scheduled_tokens
            if num_tokens == len(sched):  # decode only: a graph with LoRA or without
                size = self.graphs.size_for(num_tokens)
            else:
                tokens = self.graphs.mixed_size_for(num_tokens)
        use_lora = self.lora is not None and self.lora.begin_batch(sched, size)
        if use_lora:
            tokens = None  # steps with prefills and adapter tokens run eagerly
        batch = self.inputs.prepare(sched, size, self._last_tokens, tokens)
        if size is not None:
            kind = "decode+lora" if use_lora else "decode"
            hidden = self.graphs.replay(size, kind)  # type: ignore[union-attr]
        elif tokens is not None:
            hidden = self.graphs.replay(tokens, "mixed")  # type: ignore[union-attr]
        else:
            hidden = self._forward(batch.input_ids, batch.positions, batch.meta)
        reqs = batch.sample_requests
        if not reqs:
            return LaunchedStep([], None, None)
        logits = self.model.compute_logits(hidden[batch.logits_rows])
        step = LaunchedStep(reqs, None, None, logits)
        if not (defer_sampling and self.structured is not None and self.structured.any_in(reqs)):
            self.sample(step)
        return step

    @torch.inference_mode()
    def sample(self, step: LaunchedStep) -> None:
        """Queues a launched step's sampling (masks first) and the copy of its tokens to the
        host. Rows of requests that finished meanwhile are sampled too (their tokens are
        dropped on resolve); a finished request has no mask."""
        assert step.logits is not None, "sampled twice"
        mask = self.structured.mask if self.structured is not None else None
        sampled = sample_on_device(step.logits, step.requests, self.penalties, mask)
        step.logits = None
        self._last_tokens = sampled.tokens
        if self.device.type == "cuda":
            step.done = torch.cuda.Event()
            step.host = sampled.copy_to_host()
            step.done.record()
        else:
            step.host = sampled

    @staticmethod
    def fetch(step: LaunchedStep) -> RunnerOutput:
        """Waits for a launched step's tokens and returns them on the host."""
        assert step.logits is None, "fetched before it was sampled"
        if step.host is None:
            return RunnerOutput([], [], [])
        if step.done is not None:
            step.done.synchronize()
        out = step.host.to_host()
        return RunnerOutput(step.requests, out.token_ids, out.logprobs)

    def execute(self, sched: SchedulerOutput) -> RunnerOutput:
        """One step, waited for (`launch` then `fetch`)."""
        return self.fetch(self.launch(sched))
