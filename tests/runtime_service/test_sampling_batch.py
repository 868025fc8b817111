"""Settings cached per batch composition (engine/sampling_batch.py): what changes between
steps (seeded rows' output indices, min_tokens, penalty table rows) is read again, so a batch
sampled step after step draws what a fresh batch of the same requests draws."""

from __future__ import annotations

import pytest
import torch

from runtime_service.engine import sampler, sampling_batch
from runtime_service.engine.params import SamplingParams
from runtime_service.engine.penalties import PenaltyState
from runtime_service.engine.request import Request

VOCAB = 300
# The kernels' tests run on the GPU where there is one, else in Triton's interpreter (which
# tests/conftest.py turns on only without CUDA: there, CPU tensors cannot reach a kernel).
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def req(name: str, **kw) -> Request:
    return Request(name, [1, 2, 3], SamplingParams(**kw), (), 1000)


@pytest.mark.parametrize("fused", [False, True])
def test_a_cached_batch_follows_each_steps_output_index(
    fused: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seeded rows (top-k, top-p, plain) beside a greedy row, over steps: the same tokens as
    the requests sampled alone (no cache shared) at each step."""
    if fused:
        monkeypatch.setattr(sampler, "_fused", lambda _: True)
    g = torch.Generator().manual_seed(0)
    settings = [
        dict(temperature=0.8, top_k=5, seed=11),
        dict(temperature=0),
        dict(temperature=1.0, top_p=0.7, seed=12),
        dict(temperature=1.3, seed=2**64 - 5),  # a seed above int64's range
    ]
    reqs = [req(f"r{i}", **kw) for i, kw in enumerate(settings)]
    for _ in range(3):
        logits = (torch.randn(len(reqs), VOCAB, generator=g) * 3).to(DEVICE)
        tokens = sampler.sample(logits.clone(), reqs).token_ids
        alone = []
        for i, r in enumerate(reqs):
            twin = req(f"t{i}", **settings[i])
            for t in r.output_token_ids:
                twin.append_output_token(t, None)
            alone.append(sampler.sample(logits[i : i + 1].clone(), [twin]).token_ids[0])
        assert tokens == alone
        for r, t in zip(reqs, tokens, strict=True):
            r.append_output_token(t, None)
    assert len(sampling_batch._cache) <= sampling_batch.CACHED


def test_cached_penalty_rows_are_looked_up_again_when_rows_change_hands() -> None:
    """A batch's table rows are cached; another batch that reclaims a finished request's row
    makes the first batch read its rows again."""
    state = PenaltyState(VOCAB, torch.device("cpu"), capacity=2)
    a = req("a", temperature=0, repetition_penalty=1.5)
    b = req("b", temperature=0, presence_penalty=1.0)
    batch = [a, b]
    logits = torch.zeros(2, VOCAB)
    sampler.sample(logits, batch, state)
    rows = sampling_batch.batch_settings(batch, VOCAB, logits.device).table_rows
    assert rows is not None and sorted(rows.tolist()) == [0, 1]
    b.status = b.status.FINISHED_STOPPED
    c = req("c", temperature=0, frequency_penalty=1.0)
    sampler.sample(torch.zeros(1, VOCAB), [c], state)  # takes b's row
    assert state.rows_of([c]).tolist() == rows.tolist()[1:]
    b.status = b.status.RUNNING
    sampler.sample(logits, batch, state)  # b is given a row again, not c's
    again = sampling_batch.batch_settings(batch, VOCAB, logits.device).table_rows
    assert again is not None and again.tolist()[1] not in state.rows_of([c]).tolist()


def test_add_tokens_counts_one_per_row() -> None:
    state = PenaltyState(VOCAB, torch.device("cpu"), capacity=4)
    rows, tokens = torch.tensor([0, 2, 3]), torch.tensor([5, 5, 299])
    state.add_tokens(rows, tokens)
    state.add_tokens(rows, tokens)
    assert state.output_counts[rows, tokens].tolist() == [2, 2, 2]
    assert int(state.output_counts.sum()) == 6


def test_penalized_copy_is_clone_then_penalties() -> None:
    """The one-pass kernel (interpreted without CUDA) against the torch penalties on a clone;
    rows without penalties are copied as they are."""
    from runtime_service.kernels.sampling_triton import penalized_copy_triton

    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(4, VOCAB, generator=g) * 3).to(DEVICE)
    reqs = [
        req("a", repetition_penalty=1.3, frequency_penalty=0.2),
        req("b"),
        req("c", presence_penalty=0.4, repetition_penalty=0.8),
        req("d", temperature=0.5),
    ]
    for i, r in enumerate(reqs):
        for t in (5, 5, 17 + i, 299):
            r.append_output_token(t, None)
    expected = logits.clone()
    sampler.apply_penalties(expected, reqs)
    state = PenaltyState(VOCAB, DEVICE)
    table = torch.tensor([-1] * 4, device=DEVICE)
    table[[0, 2]] = state.rows_of([reqs[0], reqs[2]])
    settings = torch.tensor(
        [[1.3, 0.0, 0.2], [1.0, 0.0, 0.0], [0.8, 0.4, 0.0], [1.0, 0.0, 0.0]], device=DEVICE
    )
    ours = penalized_copy_triton(logits, table, settings, state.output_counts, state.prompt_mask)
    torch.testing.assert_close(ours, expected)
    assert torch.equal(ours[[1, 3]], logits[[1, 3]])


def test_fused_penalties_draw_what_the_torch_path_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    """sample() with penalties over steps: the fused path (penalized copy, kernels) and the
    torch path give the same tokens, and the caller's logits are left alone."""
    g = torch.Generator().manual_seed(4)
    settings = [
        dict(temperature=0, repetition_penalty=1.5, presence_penalty=0.5),
        dict(temperature=0),
        dict(temperature=0.9, frequency_penalty=1.0, seed=5),
        dict(temperature=1.0, seed=6),
    ]
    twins = [[req(f"{n}{i}", **kw) for i, kw in enumerate(settings)] for n in "xy"]
    states = [PenaltyState(VOCAB, DEVICE) for _ in twins]
    for _ in range(3):
        logits = (torch.randn(len(settings), VOCAB, generator=g) * 2).to(DEVICE)
        before = logits.clone()
        plain = sampler.sample(logits, twins[0], states[0]).token_ids
        with monkeypatch.context() as m:
            m.setattr(sampler, "_fused", lambda _: True)
            fused = sampler.sample(logits, twins[1], states[1]).token_ids
        assert fused == plain
        assert torch.equal(logits, before)
        for reqs in twins:
            for r, t in zip(reqs, plain, strict=True):
                r.append_output_token(t, None)
    assert torch.equal(states[0].output_counts[:2], states[1].output_counts[:2])
