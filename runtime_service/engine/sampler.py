"""Sampler: logits of the requests due a token -> token ids (and logprobs).

Order of operations, per row: penalties (repetition on prompt and output tokens as in
transformers; presence and frequency on output tokens as in OpenAI's API), the min_tokens
mask of stop tokens, then greedy argmax, or temperature, top-k, top-p, min-p and a draw.

The draw is argmax(p / q) with q ~ Exp(1) (the exponential-race form of sampling from p).
A seeded request draws its q from its own generator, one vector per token, so its tokens do
not depend on what else shares the batch; unseeded rows share one draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from runtime_service.engine.request import Request, TokenLogprobs


@dataclass(slots=True)
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]


def _apply_penalties(logits: torch.Tensor, reqs: list[Request]) -> None:
    vocab = logits.shape[1]
    for row, req in enumerate(reqs):
        p = req.params
        if not p.has_penalties:
            continue
        device = logits.device
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(req.all_token_ids)), device=device, dtype=torch.long)
            seen = seen[seen < vocab]
            values = logits[row, seen]
            logits[row, seen] = torch.where(
                values < 0, values * p.repetition_penalty, values / p.repetition_penalty
            )
        if req.output_token_ids and (p.presence_penalty or p.frequency_penalty):
            ids = torch.tensor(req.output_token_ids, device=device, dtype=torch.long)
            counts = torch.bincount(ids, minlength=vocab)[:vocab].to(logits.dtype)
            logits[row] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0)


def _mask_early_stops(logits: torch.Tensor, reqs: list[Request]) -> None:
    vocab = logits.shape[1]
    for row, req in enumerate(reqs):
        if req.num_output_tokens < req.params.min_tokens and req.stop_tokens:
            ids = [t for t in req.stop_tokens if t < vocab]
            logits[row, ids] = float("-inf")


def _truncate(logits: torch.Tensor, reqs: list[Request]) -> torch.Tensor:
    """Temperature, top-k, top-p and min-p on float32 logits of non-greedy rows."""
    device = logits.device
    temperature = torch.tensor([r.params.temperature for r in reqs], device=device)
    logits = logits / temperature[:, None]
    top_k = [r.params.top_k for r in reqs]
    top_p = [r.params.top_p for r in reqs]
    min_p = [r.params.min_p for r in reqs]
    if any(k > 0 for k in top_k) or any(p < 1.0 for p in top_p):
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        vocab = logits.shape[1]
        k = torch.tensor([k if k > 0 else vocab for k in top_k], device=device)
        ranks = torch.arange(vocab, device=device)[None, :]
        drop = ranks >= k[:, None]
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens before it already reach top_p (keep at least one).
        before = probs.cumsum(dim=-1) - probs
        drop = before >= torch.tensor(top_p, device=device)[:, None]
        drop[:, 0] = False
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
    if any(p > 0 for p in min_p):
        probs = logits.softmax(dim=-1)
        threshold = (
            probs.max(dim=-1, keepdim=True).values * torch.tensor(min_p, device=device)[:, None]
        )
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    return logits


def _draw(logits: torch.Tensor, reqs: list[Request]) -> torch.Tensor:
    probs = logits.softmax(dim=-1)
    q = torch.empty_like(probs)
    unseeded = [i for i, r in enumerate(reqs) if r.generator is None]
    if unseeded:
        q[unseeded] = torch.empty(len(unseeded), probs.shape[1], device=q.device).exponential_()
    for i, req in enumerate(reqs):
        if req.generator is not None:
            noise = torch.empty(probs.shape[1]).exponential_(generator=req.generator)
            q[i] = noise.to(q.device)
    return (probs / q).argmax(dim=-1)


def _logprobs(raw: torch.Tensor, tokens: torch.Tensor, reqs: list[Request]) -> list:
    want = [r.params.logprobs for r in reqs]
    if all(n is None for n in want):
        return [None] * len(reqs)
    logprobs = raw.log_softmax(dim=-1)
    chosen = logprobs.gather(1, tokens[:, None])[:, 0].tolist()
    max_n = max(n or 0 for n in want)
    top_values, top_ids = logprobs.topk(max_n, dim=-1) if max_n else (None, None)
    out: list[TokenLogprobs | None] = []
    for row, n in enumerate(want):
        if n is None:
            out.append(None)
            continue
        top = []
        if n and top_ids is not None and top_values is not None:
            top = list(zip(top_ids[row, :n].tolist(), top_values[row, :n].tolist(), strict=True))
        out.append(TokenLogprobs(int(tokens[row]), chosen[row], top))
    return out


def sample(logits: torch.Tensor, reqs: list[Request]) -> SamplerOutput:
    """logits [len(reqs), vocab] float32 -> one token per request."""
    raw = logits
    logits = logits.clone()
    _apply_penalties(logits, reqs)
    _mask_early_stops(logits, reqs)
    tokens = logits.argmax(dim=-1)
    random_rows = [i for i, r in enumerate(reqs) if not r.params.greedy]
    if random_rows:
        sub = [reqs[i] for i in random_rows]
        drawn = _draw(_truncate(logits[random_rows], sub), sub)
        tokens[random_rows] = drawn
    return SamplerOutput(tokens.tolist(), _logprobs(raw, tokens, reqs))
