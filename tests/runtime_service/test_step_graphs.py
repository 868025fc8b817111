"""Step graphs (engine/cuda_graphs.py): batches with prefill chunks replayed as CUDA graphs of
a padded token count. On any machine: the inputs of such a batch (padding tokens, the padded
attention tile table). On a GPU: an engine whose mixed steps replay graphs gives the same
tokens and logprobs as the same engine run eagerly, with requests joining mid-run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from runtime_service.engine.outputs import RequestOutput
from runtime_service.engine.params import SamplingParams
from runtime_service.engine.request import Request
from runtime_service.engine.scheduler import SchedulerOutput
from runtime_service.engine.step_inputs import StepInputs
from tests.runtime_service.reference import assert_pool_idle, hf_greedy, merge_outputs
from tests.runtime_service.test_engine_parity import engine_for, mixed_prompts


def test_mixed_batch_inputs_padded_to_a_token_count() -> None:
    block_size, block_q = 4, 16
    inputs = StepInputs(
        64, 8, 16, block_size, pad_slot=999, device=torch.device("cpu"), block_q=block_q
    )
    params = SamplingParams(temperature=0, max_tokens=4)
    prefill = Request("p", list(range(100, 137)), params, (2,), 64)  # 37 new tokens
    decode = Request("d", [5, 6, 7, 8, 9], params, (2,), 64)
    decode.num_computed_tokens = 4  # one new token, at position 4
    sched = SchedulerOutput([prefill, decode], [37, 1], [list(range(10)), [11, 12]])
    batch = inputs.prepare(sched, padded_tokens=48)
    assert batch.num_rows == 48
    assert inputs.h_ids[:38].tolist() == [*range(100, 137), 9]
    assert (inputs.h_ids[38:48] == 0).all() and (inputs.h_pos[38:48] == 0).all()
    assert (inputs.h_slots[38:48] == 999).all()
    assert inputs.h_slots[37] == 12 * block_size + 0  # position 4: block 1 of [11, 12]
    # Tiles: the prefill's 37 tokens in 3 tiles of 16, the decode in 1.
    count = inputs.h_tiles[0]
    t = inputs.max_tiles
    assert count == 4
    assert inputs.h_tiles[1 : 1 + count].tolist() == [0, 0, 0, 1]
    assert inputs.h_tiles[t + 1 : t + 1 + count].tolist() == [0, 1, 2, 0]
    seqs, index = batch.meta.backend_cache[f"tiles/{block_q}"]
    assert seqs.tolist() == [0, 0, 0, 1] and index.tolist() == [0, 1, 2, 0]
    assert np.array_equal(batch.meta.query_lens_cpu, [37, 1])


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_mixed_graphs_match_eager_and_transformers(
    arch: str, tiny_model_dir: Callable[[str], Path]
) -> None:
    """float32 on the GPU, requests joining every third step so most steps mix prefill
    chunks with decodes: graphs on gives transformers' greedy tokens and the eager run's
    logprobs."""
    path = tiny_model_dir(arch)
    prompts = mixed_prompts(path, 12, seed=7, max_len=90)
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, logprobs=3)
    results = {}
    for graphs in (True, False):
        engine = engine_for(path, True, False, max_num_seqs=16, enable_cuda_graphs=graphs)
        merged: dict[str, RequestOutput] = {}
        pending = list(enumerate(prompts))
        step = 0
        while pending or engine.has_unfinished_requests:
            if pending and step % 3 == 0:  # two requests join every third step
                for i, p in pending[:2]:
                    engine.add_request(f"r{i}", p, params)
                pending = pending[2:]
            merge_outputs(merged, engine.step())
            step += 1
        if graphs:
            replays = engine.runner.graphs.replays
            assert replays["mixed"] > 0 and replays["decode"] > 0, replays
        assert_pool_idle(engine)
        results[graphs] = merged
    for i, p in enumerate(prompts):
        ours, eager = results[True][f"r{i}"], results[False][f"r{i}"]
        assert ours.token_ids == hf_greedy(path, p, 20), f"r{i}"
        assert ours.token_ids == eager.token_ids
        for a, b in zip(ours.logprobs, eager.logprobs, strict=True):
            torch.testing.assert_close(
                torch.tensor([v for _, v in a.top]),
                torch.tensor([v for _, v in b.top]),
                atol=1e-4,
                rtol=1e-4,
            )
