"""The sampler against transformers' logits processors and warpers."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from runtime_service.engine.params import SamplingParams
from runtime_service.engine.penalties import PenaltyState
from runtime_service.engine.request import Request
from runtime_service.engine.sampler import apply_penalties, sample, truncate

VOCAB = 50


def req(prompt: list[int], outputs: list[int] = (), eos: tuple[int, ...] = (), **kw) -> Request:
    r = Request("r", prompt, SamplingParams(**kw), eos, 1000)
    for t in outputs:
        r.append_output_token(t, None)
    return r


def hf_warped(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float, min_p: float
) -> torch.Tensor:
    scores = logits[None].clone()
    ids = torch.zeros(1, 1, dtype=torch.long)
    for warper in (
        TemperatureLogitsWarper(temperature),
        TopKLogitsWarper(top_k) if top_k else None,
        TopPLogitsWarper(top_p) if top_p < 1 else None,
        MinPLogitsWarper(min_p) if min_p else None,
    ):
        if warper is not None:
            scores = warper(ids, scores)
    return scores[0]


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p", "min_p"),
    [
        (1.0, 5, 1.0, 0.0),
        (0.7, 0, 0.8, 0.0),
        (1.3, 0, 1.0, 0.1),
        (0.5, 10, 0.9, 0.05),
        (1.0, 0, 0.3, 0.0),
    ],
)
def test_truncation_keeps_the_same_tokens_as_transformers(
    temperature: float, top_k: int, top_p: float, min_p: float
) -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        logits = torch.randn(VOCAB, generator=g) * 3
        r = req([1], temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
        ours = truncate(logits[None].clone(), [r])[0]
        theirs = hf_warped(logits, temperature, top_k, top_p, min_p)
        assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs))
        kept = torch.isfinite(ours)
        torch.testing.assert_close(ours[kept], theirs[kept])


def test_repetition_penalty_matches_transformers() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, VOCAB, generator=g)
    r = req([3, 4, 4, 9], outputs=[9, 17], repetition_penalty=1.7)
    ours = logits.clone()
    apply_penalties(ours, [r])
    theirs = RepetitionPenaltyLogitsProcessor(1.7)(torch.tensor([r.all_token_ids]), logits.clone())
    torch.testing.assert_close(ours, theirs)


def test_presence_and_frequency_penalties_follow_the_openai_formula() -> None:
    logits = torch.zeros(1, VOCAB)
    r = req([5, 5, 6], outputs=[7, 7, 7, 8], presence_penalty=0.5, frequency_penalty=0.25)
    apply_penalties(logits, [r])
    expected = torch.zeros(VOCAB)
    expected[7] = -(0.5 + 3 * 0.25)
    expected[8] = -(0.5 + 0.25)  # prompt tokens 5 and 6 are not penalized
    torch.testing.assert_close(logits[0], expected)


def test_greedy_rows_take_the_argmax_and_others_respect_their_mask() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, VOCAB, generator=g)
    reqs = [
        req([1], temperature=0),
        req([1], temperature=1.0, top_k=3, seed=5),
        req([1], temperature=1.0, top_p=0.5, seed=6),
    ]
    out = sample(logits, reqs)
    assert out.token_ids[0] == int(logits[0].argmax())
    assert out.token_ids[1] in logits[1].topk(3).indices.tolist()
    probs = logits[2].softmax(-1)
    order = probs.argsort(descending=True)
    nucleus = order[: int((probs[order].cumsum(0) < 0.5).sum()) + 1].tolist()
    assert out.token_ids[2] in nucleus


def test_sampling_follows_the_distribution() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    torch.manual_seed(0)  # the unseeded rows' shared draw
    for seeded in (False, True):
        counts = torch.zeros(4)
        for i in range(4000):
            # Seeded: across seeds (and output positions), the hash noise is Exp(1) too.
            r = req([1], outputs=[0] * (i % 7), temperature=1.0, seed=i if seeded else None)
            counts[sample(logits, [r]).token_ids[0]] += 1
        torch.testing.assert_close(counts / 4000, logits[0].softmax(-1), atol=0.03, rtol=0)


def test_seeded_draws_do_not_depend_on_batch_neighbours() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, VOCAB, generator=g)
    solo = [sample(logits[1:2], [req([1], seed=7)]).token_ids[0] for _ in range(1)]
    batch_req = req([1], seed=7)
    reqs = [req([1], temperature=1.0), batch_req, req([1], seed=8), req([1], temperature=0)]
    assert sample(logits, reqs).token_ids[1] == solo[0]


def test_min_tokens_masks_stop_tokens_until_reached() -> None:
    logits = torch.zeros(1, VOCAB)
    logits[0, 2] = 10.0  # EOS would win
    r = req([1], outputs=[4], eos=(2,), temperature=0, min_tokens=3)
    assert sample(logits, [r]).token_ids[0] != 2
    r.append_output_token(4, None)
    r.append_output_token(4, None)
    assert sample(logits, [r]).token_ids[0] == 2


def test_logprobs_are_the_raw_distribution() -> None:
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(1, VOCAB, generator=g)
    r = req([1], temperature=0.5, top_k=2, logprobs=3, seed=1)
    out = sample(logits, [r]).logprobs[0]
    raw = logits[0].log_softmax(-1)
    assert out is not None
    assert out.logprob == pytest.approx(float(raw[out.token_id]), abs=1e-6)
    assert [t for t, _ in out.top] == raw.topk(3).indices.tolist()


def test_penalty_state_follows_the_tokens_across_steps() -> None:
    """The device tables, bumped by each sampled token, penalize as a fresh count does."""
    g = torch.Generator().manual_seed(5)
    state = PenaltyState(VOCAB, torch.device("cpu"), capacity=1)
    reqs = [
        req([3, 4], repetition_penalty=1.5, presence_penalty=0.3, temperature=0),
        req([5], temperature=0),  # no penalties: no table row
        req([9, 9, 1], frequency_penalty=0.7, temperature=0),
    ]
    for _ in range(6):
        logits = torch.randn(3, VOCAB, generator=g)
        expected = logits.clone()
        apply_penalties(expected, reqs)  # counted from the requests' tokens
        out = sample(logits.clone(), reqs, state)
        assert out.token_ids == expected.argmax(-1).tolist()
        for r, t in zip(reqs, out.token_ids, strict=True):
            r.append_output_token(t, None)
    assert state.capacity == 2  # grew once: two requests with penalties


def test_penalty_rows_of_finished_requests_are_reused() -> None:
    state = PenaltyState(VOCAB, torch.device("cpu"), capacity=1)
    first = req([1, 2], repetition_penalty=1.2)
    state.rows_of([first])
    first.status = first.status.FINISHED_STOPPED
    second = req([7], repetition_penalty=1.2)
    assert state.rows_of([second]).tolist() == [0]
    assert state.capacity == 1
    assert state.prompt_mask[0].nonzero().flatten().tolist() == [7]


@pytest.mark.parametrize("scale", [0.05, 3.0])  # flat: the nucleus is beyond the candidates
@pytest.mark.parametrize(("top_k", "top_p"), [(0, 0.9), (40, 0.8), (3000, 0.95)])
def test_top_p_over_a_large_vocabulary_matches_transformers(
    scale: float, top_k: int, top_p: float
) -> None:
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(3, 5000, generator=g) * scale
    reqs = [req([1], temperature=1.0, top_k=top_k, top_p=top_p) for _ in range(2)]
    reqs.append(req([1], temperature=1.0, top_p=0.5))  # a row without top_k beside them
    ours = truncate(logits.clone(), reqs)
    for row, r in enumerate(reqs):
        theirs = hf_warped(logits[row], 1.0, r.params.top_k, r.params.top_p, 0.0)
        assert torch.equal(torch.isfinite(ours[row]), torch.isfinite(theirs))


def test_penalties_kernel_matches_the_torch_reference() -> None:
    """The Triton penalties kernel (interpreted without CUDA); the draw's kernel is tested in
    test_sample_kernel.py."""
    kernels = pytest.importorskip("runtime_service.kernels.sampling_triton")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(4, 3000, generator=g)
    reqs = [req([1, 2, 2999], outputs=[5, 5], repetition_penalty=1.3, frequency_penalty=0.2)]
    reqs += [req([1]), req([7], outputs=[8], presence_penalty=0.4), req([3])]
    expected = logits.clone()
    apply_penalties(expected, reqs)
    state = PenaltyState(3000, device)
    ours = logits.clone().to(device)
    rows = [0, 2]
    table_rows = state.rows_of([reqs[i] for i in rows])
    settings = torch.tensor([[1.3, 0.0, 0.2], [1.0, 0.4, 0.0]], device=device)
    kernels.apply_penalties_triton(
        ours,
        torch.tensor(rows, device=device),
        table_rows,
        settings,
        state.output_counts,
        state.prompt_mask,
    )
    torch.testing.assert_close(ours.cpu(), expected)


@pytest.mark.parametrize("k", [1, 7, 50])
def test_largest_values_through_group_maxima_are_topk(k: int) -> None:
    """The grouped search of the k largest logits (engine/top_k.py) against torch.topk, on
    rows with exact ties (bf16 values), a flat row, a masked row and a ragged tail."""
    from runtime_service.engine.top_k import largest

    g = torch.Generator().manual_seed(k)
    logits = torch.randn(5, 20011, generator=g) * torch.tensor([[1.0], [3.0], [0.01], [2.0], [1.0]])
    logits[0] = logits[0].to(torch.bfloat16).float()
    logits[2] = logits[2].to(torch.bfloat16).float()  # flat: ties everywhere
    logits[3, :15000] = float("-inf")
    logits[4, -3:] = 50.0  # the largest in the tail
    assert torch.equal(largest(logits, k), logits.topk(k, dim=-1).values)
