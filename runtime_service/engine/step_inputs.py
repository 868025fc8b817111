"""StepInputs: one step's input tensors, built on the host with numpy and sent in two copies.

The runner owns persistent buffers sized for the largest step (`max_num_batched_tokens`
tokens, `max_num_seqs` requests, `max_blocks_per_seq` blocks each): pinned host arrays that
`prepare` fills, and device tensors at fixed addresses that one copy per dtype fills from
them. CUDA graphs capture the device tensors, so a replay reads whatever the last `prepare`
wrote there.

Per step, the only Python loop is one pass over the scheduled requests (their token slice and
block table row); positions, KV slots, query starts and the rows to sample are vectorized.

A request whose last token is a placeholder (async scheduling, request.py) gets its input id
on the device: one gather from the previous step's sampled tokens, after the copies.

NOTE: a decode batch may be padded to `padded_size` rows (a captured graph's size): padding
rows are decodes of token 0 at position 0 with no context (seq_len 0, so attention reads
nothing) whose K/V go to `pad_slot`, a slot outside every block the block manager hands out.
A batch with prefills may be padded to `padded_tokens` tokens (a mixed graph's size): the
padding tokens belong to no request (no attention tile covers them) and write to `pad_slot`.
Such batches also get their attention tile table here (triton_attention.py), in buffers at
fixed addresses with a device count of the valid tiles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from runtime_service.engine.request import Request
from runtime_service.engine.scheduler import SchedulerOutput
from runtime_service.kernels.attention_tiles import max_tiles, tile_table
from runtime_service.models.attention import AttentionMetadata


@dataclass(slots=True)
class StepBatch:
    """What one forward needs, as views of the runner's buffers."""

    input_ids: torch.Tensor  # [T] long
    positions: torch.Tensor  # [T] long
    meta: AttentionMetadata
    logits_rows: torch.Tensor  # [S] long: the rows of the hidden states to sample from
    sample_requests: list[Request]  # the S requests that get a token, in row order
    num_rows: int  # T (padded rows included)
    decode_only: bool  # every request has one new token (a graph can run it)


class StepInputs:
    def __init__(
        self,
        max_num_tokens: int,
        max_num_seqs: int,
        max_blocks_per_seq: int,
        block_size: int,
        pad_slot: int,
        device: torch.device,
        block_q: int | None = None,
    ) -> None:
        self.block_size = block_size
        self.pad_slot = pad_slot
        self.device = device
        self.max_num_tokens = max_num_tokens
        self.max_num_seqs = max_num_seqs
        self.max_blocks_per_seq = max_blocks_per_seq
        pin = device.type == "cuda"
        # Host mirrors: int64 [ids | positions | slots | logits rows], int32 [qsl | seq_lens].
        self._host64 = torch.zeros(4 * max_num_tokens, dtype=torch.long, pin_memory=pin)
        self._host32 = torch.zeros(2 * max_num_seqs + 1, dtype=torch.int32, pin_memory=pin)
        self._host_tables = torch.zeros(
            max_num_seqs, max_blocks_per_seq, dtype=torch.int32, pin_memory=pin
        )
        # On the CPU the host arrays are the inputs; on CUDA, device tensors at fixed addresses.
        same = device.type != "cuda"
        self._dev64 = self._host64 if same else torch.zeros_like(self._host64, device=device)
        self._dev32 = self._host32 if same else torch.zeros_like(self._host32, device=device)
        n, s = max_num_tokens, max_num_seqs
        h64, d64 = self._host64.numpy(), self._dev64
        self.h_ids, self.h_pos, self.h_slots, self.h_rows = (
            h64[i * n : (i + 1) * n] for i in range(4)
        )
        self.input_ids, self.positions, self.slot_mapping, self.logits_rows = (
            d64[i * n : (i + 1) * n] for i in range(4)
        )
        h32 = self._host32.numpy()
        self.h_qsl, self.h_seq_lens = h32[: s + 1], h32[s + 1 :]
        self.query_start_loc, self.seq_lens = self._dev32[: s + 1], self._dev32[s + 1 :]
        self.h_tables = self._host_tables.numpy()
        # Placeholder fixes: [input rows | rows of the previous step's sampled tokens].
        self._host_fix = torch.zeros(2 * max_num_seqs, dtype=torch.long, pin_memory=pin)
        self._dev_fix = self._host_fix if same else torch.zeros_like(self._host_fix, device=device)
        self.h_fix = self._host_fix.numpy()
        # Recorded after a step's copies from the pinned arrays: the next `prepare` waits for
        # it before writing them (with async scheduling the previous step's copies may still
        # be queued behind the step before it).
        self._copied: torch.cuda.Event | None = None
        self.block_tables = (
            self._host_tables if same else torch.zeros_like(self._host_tables, device=device)
        )
        # Attention tiles of batches with prefills: [count | request of tile | tile index].
        self.block_q = block_q
        self.max_tiles = 0 if block_q is None else max_tiles(max_num_tokens, max_num_seqs, block_q)
        t = self.max_tiles
        self._host_tiles = torch.zeros(2 * t + 1, dtype=torch.int32, pin_memory=pin)
        self._dev_tiles = (
            self._host_tiles if same else torch.zeros_like(self._host_tiles, device=device)
        )
        self.h_tiles = self._host_tiles.numpy()
        self.num_tiles = self._dev_tiles[:1]
        self.tile_seq, self.tile_index = self._dev_tiles[1 : t + 1], self._dev_tiles[t + 1 :]

    def prepare(
        self,
        sched: SchedulerOutput,
        padded_size: int | None = None,
        prev_tokens: torch.Tensor | None = None,
        padded_tokens: int | None = None,
    ) -> StepBatch:
        """Fills the buffers for `sched` (padded to `padded_size` decode rows, or to
        `padded_tokens` tokens, if given); placeholders take their ids from `prev_tokens`,
        the previous step's sampled tokens."""
        if self._copied is not None:
            self._copied.synchronize()
        num_reqs = len(sched.requests)
        num_fixes = 0
        fix = self.h_fix
        s = self.max_num_seqs
        counts = np.fromiter(sched.num_scheduled_tokens, dtype=np.int64, count=num_reqs)
        starts = np.empty(num_reqs, dtype=np.int64)
        width = max(len(b) for b in sched.block_ids)
        tables = self.h_tables
        ids = self.h_ids
        t = 0
        for i, (req, n, blocks) in enumerate(
            zip(sched.requests, sched.num_scheduled_tokens, sched.block_ids, strict=True)
        ):
            start = req.num_computed_tokens
            starts[i] = start
            if n == 1:
                ids[t] = req.all_token_ids[start]
            else:
                ids[t : t + n] = req.all_token_ids[start : start + n]
            if req.num_pending and start + n == req.num_tokens:
                fix[num_fixes] = t + n - 1
                fix[s + num_fixes] = req.sample_row
                num_fixes += 1
            tables[i, : len(blocks)] = blocks
            t += n
        num_tokens = t
        ends = starts + counts
        qsl = self.h_qsl
        qsl[0] = 0
        np.cumsum(counts, out=qsl[1 : num_reqs + 1])
        rows_of = np.repeat(np.arange(num_reqs), counts)
        pos = (
            np.arange(num_tokens, dtype=np.int64)
            - qsl[:num_reqs].repeat(counts)
            + starts.repeat(counts)
        )
        self.h_pos[:num_tokens] = pos
        bs = self.block_size
        self.h_slots[:num_tokens] = tables[rows_of, pos // bs].astype(np.int64) * bs + pos % bs
        self.h_seq_lens[:num_reqs] = ends
        total = np.fromiter((r.num_tokens for r in sched.requests), dtype=np.int64, count=num_reqs)
        due = np.nonzero(ends == total)[0]
        num_sampled = len(due)
        self.h_rows[:num_sampled] = qsl[1 : num_reqs + 1][due] - 1
        decode_only = num_tokens == num_reqs
        rows = num_reqs
        if padded_size is not None:
            assert decode_only and padded_size >= num_reqs
            rows = padded_size
            ids[num_reqs:rows] = 0
            self.h_pos[num_reqs:rows] = 0
            self.h_slots[num_reqs:rows] = self.pad_slot
            self.h_seq_lens[num_reqs:rows] = 0
            qsl[num_reqs + 1 : rows + 1] = np.arange(num_reqs + 1, rows + 1)
        num_rows = max(rows, num_tokens)
        if padded_tokens is not None:
            assert padded_tokens >= num_tokens
            ids[num_tokens:padded_tokens] = 0
            self.h_pos[num_tokens:padded_tokens] = 0
            self.h_slots[num_tokens:padded_tokens] = self.pad_slot
            num_rows = padded_tokens
        num_tiles = 0
        if not decode_only and self.block_q is not None:
            seqs, index = tile_table(counts, self.block_q)
            num_tiles = len(seqs)
            t = self.max_tiles
            self.h_tiles[0] = num_tiles
            self.h_tiles[1 : num_tiles + 1] = seqs
            self.h_tiles[t + 1 : t + 1 + num_tiles] = index
        self._copy(num_rows, rows, width, num_tiles)
        if num_fixes:
            assert prev_tokens is not None, "a placeholder without the step that samples it"
            self._fix_placeholders(num_fixes, prev_tokens)
        if self.device.type == "cuda":
            self._copied = torch.cuda.Event()
            self._copied.record()
        meta = AttentionMetadata(
            slot_mapping=self.slot_mapping[:num_rows],
            block_tables=self.block_tables[:rows],
            query_start_loc=self.query_start_loc[: rows + 1],
            seq_lens=self.seq_lens[:rows],
            query_lens_cpu=np.diff(qsl[: rows + 1]),
            seq_lens_cpu=self.h_seq_lens[:rows].copy(),
        )
        if num_tiles:
            meta.backend_cache[f"tiles/{self.block_q}"] = (
                self.tile_seq[:num_tiles],
                self.tile_index[:num_tiles],
            )
        return StepBatch(
            input_ids=self.input_ids[:num_rows],
            positions=self.positions[:num_rows],
            meta=meta,
            logits_rows=self.logits_rows[:num_sampled],
            sample_requests=[sched.requests[i] for i in due.tolist()],
            num_rows=num_rows,
            decode_only=decode_only,
        )

    def _fix_placeholders(self, num_fixes: int, prev_tokens: torch.Tensor) -> None:
        s = self.max_num_seqs
        if self.device.type == "cuda":
            self._dev_fix[:num_fixes].copy_(self._host_fix[:num_fixes], non_blocking=True)
            self._dev_fix[s : s + num_fixes].copy_(
                self._host_fix[s : s + num_fixes], non_blocking=True
            )
        dst, src = self._dev_fix[:num_fixes], self._dev_fix[s : s + num_fixes]
        self.input_ids.index_copy_(0, dst, prev_tokens.index_select(0, src))

    def _copy(self, num_tokens: int, num_seqs: int, width: int, num_tiles: int) -> None:
        n, s = self.max_num_tokens, self.max_num_seqs
        if self.device.type != "cuda":  # the host arrays are the inputs
            return
        if num_tiles:
            t = self.max_tiles
            self._dev_tiles[: num_tiles + 1].copy_(
                self._host_tiles[: num_tiles + 1], non_blocking=True
            )
            self._dev_tiles[t + 1 : t + 1 + num_tiles].copy_(
                self._host_tiles[t + 1 : t + 1 + num_tiles], non_blocking=True
            )
        # Sections of the packed buffers, each up to what this step uses.
        for i in range(4):
            self._dev64[i * n : i * n + num_tokens].copy_(
                self._host64[i * n : i * n + num_tokens], non_blocking=True
            )
        self._dev32[: num_seqs + 1].copy_(self._host32[: num_seqs + 1], non_blocking=True)
        self._dev32[s + 1 : s + 1 + num_seqs].copy_(
            self._host32[s + 1 : s + 1 + num_seqs], non_blocking=True
        )
        self.block_tables[:num_seqs, :width].copy_(
            self._host_tables[:num_seqs, :width], non_blocking=True
        )
