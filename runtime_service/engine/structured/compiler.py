"""GrammarCache: each constraint compiled once per engine, on worker threads.

Compiling a constraint against the tokenizer (xgrammar's token mask cache) can take from
milliseconds to seconds for a large schema, so it never runs on the step loop: `submit()`
returns a Future at once, and the request waits beside the scheduler (manager.py) until it is
done. Futures are kept by the constraint's key, so a burst of requests with one schema compiles
it once; the tokenizer is fixed per engine, so (constraint, tokenizer) is the constraint alone.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from runtime_service.engine.structured.constraint import (
    ANY_OBJECT,
    JSON_OBJECT_OPTIONS,
    JSON_SCHEMA_OPTIONS,
    Constraint,
)

log = logging.getLogger(__name__)
COMPILE_THREADS = 2
MAX_CACHED_GRAMMARS = 256


def tokenizer_info(tokenizer: Any, vocab_size: int, stop_token_ids: tuple[int, ...]) -> Any:
    """xgrammar's view of a Hugging Face tokenizer, padded to the model's vocabulary (logits
    have the model's width; ids past the tokenizer's are never allowed). Its stop tokens are
    the config's EOS ids and the tokenizer's, as the frontend's (processor.py): a stop token
    is never allowed as text inside a match (each request's matcher then ends only at that
    request's stop tokens, manager.py)."""
    import xgrammar as xgr

    stops = set(stop_token_ids)
    if tokenizer.eos_token_id is not None:
        stops.add(tokenizer.eos_token_id)
    stops = {t for t in stops if 0 <= t < vocab_size}
    return xgr.TokenizerInfo.from_huggingface(
        tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(stops) or None
    )


class GrammarCache:
    def __init__(
        self,
        tokenizer_path: Path | str,
        vocab_size: int,
        stop_token_ids: tuple[int, ...],
        threads: int = COMPILE_THREADS,
    ) -> None:
        self._tokenizer_path = tokenizer_path
        self._vocab_size = vocab_size
        self._stop_token_ids = stop_token_ids
        self._compiler: Any = None
        self._init_lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            threads, thread_name_prefix="grammar-compile"
        )
        self._futures: OrderedDict[tuple, concurrent.futures.Future] = OrderedDict()

    def submit(self, constraint: Constraint) -> concurrent.futures.Future:
        """A Future of the constraint's CompiledGrammar (shared by equal constraints)."""
        key = constraint.key
        future = self._futures.get(key)
        if future is not None and not (future.done() and future.exception() is not None):
            self._futures.move_to_end(key)
            return future
        future = self._pool.submit(self._compile, constraint)
        self._futures[key] = future
        while len(self._futures) > MAX_CACHED_GRAMMARS:
            self._futures.popitem(last=False)
        return future

    def _get_compiler(self) -> Any:
        # The tokenizer is loaded on first use, on a worker thread: engines that never see a
        # constraint never pay for it.
        with self._init_lock:
            if self._compiler is None:
                import xgrammar as xgr

                from runtime_service.models.open import load_tokenizer

                info = tokenizer_info(
                    load_tokenizer(Path(self._tokenizer_path)),
                    self._vocab_size,
                    self._stop_token_ids,
                )
                self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
            return self._compiler

    def _compile(self, constraint: Constraint) -> Any:
        compiler = self._get_compiler()
        if constraint.kind == "json_schema":
            return compiler.compile_json_schema(constraint.value, **JSON_SCHEMA_OPTIONS)
        if constraint.kind == "json_object":
            return compiler.compile_json_schema(ANY_OBJECT, **JSON_OBJECT_OPTIONS)
        if constraint.kind == "regex":
            return compiler.compile_regex(constraint.value)
        return compiler.compile_grammar(constraint.grammar())

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
