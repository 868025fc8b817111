"""The host cost of constrained decoding without an engine: R matchers of one JSON Schema
(bench/structured_speed.py's) step through tokens drawn from their own masks over random
logits, as the engine's greedy rows do; per step, the batch's mask fill and its matchers'
accepts, with the accepts split over 1, 2, 4 and 8 threads as engine/structured/manager.py
splits them. Prints ms per step; the first column is the one-thread reference.

NOTE: on the H200 host this bench's accepts did not speed up with threads (9.4 ms on one,
9.6-10.4 on 2-8) while the engine's did (9.60 ms in one call, 3.47 split over 8:
docs/structured_output.md, fifth session): read the engine's own counters
(bench/structured_speed.py) before changing how the engine runs its accepts.

  python bench/grammar_host.py --tokenizer .cache/models/smollm2-135m-instruct-v1
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.structured_speed import SCHEMA


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("-n", "--rows", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", default="1,2,4,8")
    args = parser.parse_args()

    import xgrammar as xgr
    from transformers import AutoTokenizer

    from runtime_service.engine.structured.constraint import JSON_SCHEMA_OPTIONS

    info = xgr.TokenizerInfo.from_huggingface(
        AutoTokenizer.from_pretrained(args.tokenizer), vocab_size=args.vocab
    )
    compiled = xgr.GrammarCompiler(info).compile_json_schema(
        json.dumps(SCHEMA), **JSON_SCHEMA_OPTIONS
    )
    accept = xgr.BatchGrammarMatcher.batch_accept_token
    g = torch.Generator().manual_seed(0)
    draws = [torch.randn(args.rows, args.vocab, generator=g) for _ in range(4)]
    print(f"{args.rows} rows, vocabulary {args.vocab}, {args.steps} steps; ms per step")
    print("| threads | mask fill | accepts |")
    print("| ---: | ---: | ---: |")
    for threads in (int(t) for t in args.threads.split(",")):
        pool = concurrent.futures.ThreadPoolExecutor(max(threads - 1, 1))
        batch = xgr.BatchGrammarMatcher(max_threads=threads)
        matchers = [xgr.GrammarMatcher(compiled) for _ in range(args.rows)]
        mask = xgr.allocate_token_bitmask(args.rows, args.vocab)
        fill_s = accept_s = 0.0
        for step in range(args.steps):
            start = time.perf_counter()
            batch.batch_fill_next_token_bitmask(matchers, mask)
            fill_s += time.perf_counter() - start
            logits = draws[step % len(draws)].clone()
            xgr.apply_token_bitmask_inplace(logits, mask)
            tokens = logits.argmax(dim=-1).tolist()
            start = time.perf_counter()
            size = -(-args.rows // threads)
            futures = [
                pool.submit(accept, matchers[i : i + size], tokens[i : i + size])
                for i in range(size, args.rows, size)
            ]
            fits = accept(matchers[:size], tokens[:size])
            for future in futures:
                fits += future.result()
            accept_s += time.perf_counter() - start
            assert all(fits)
        pool.shutdown()
        print(
            f"| {threads} | {fill_s / args.steps * 1e3:.2f} | {accept_s / args.steps * 1e3:.2f} |"
        )


if __name__ == "__main__":
    main()
