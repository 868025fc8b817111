"""Prometheus metrics of a runtime: per-request histograms and counters, and engine gauges
read at scrape time (no background thread).

Every series carries `model_name` (the name the runtime serves); request and token counters
also carry `adapter` ("" for the base model). The names follow vLLM's `vllm:*` metrics with
an `llmserve_` prefix (docs/operations.md lists them side by side).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from runtime_service.engine.core import EngineStats
from runtime_service.engine.outputs import RequestOutput

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
# Request sizes in tokens (vLLM's 1-2-5 series).
SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)


class EngineCollector(Collector):
    """Queue, running requests, KV blocks, prefix cache, preemptions and LoRA slots, read at
    scrape time."""

    def __init__(
        self,
        model_name: str,
        stats: Callable[[], EngineStats | None],
        num_waiting: Callable[[], int],
    ) -> None:
        self._model = model_name
        self._stats = stats
        self._num_waiting = num_waiting

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        g = GaugeMetricFamily(name, doc, labels=["model_name"])
        g.add_metric([self._model], value)
        return g

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        c = CounterMetricFamily(name, doc, labels=["model_name"])
        c.add_metric([self._model], value)
        return c

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        s = self._stats()
        if s is None:  # still loading
            return
        yield self._gauge("llmserve_queue_length", "Requests waiting to start", self._num_waiting())
        yield self._gauge("llmserve_running_requests", "Requests being generated", s.num_running)
        used = s.num_blocks - s.num_free_blocks
        yield self._gauge(
            "llmserve_kv_cache_usage_ratio",
            "KV blocks held by requests / all KV blocks",
            used / s.num_blocks if s.num_blocks else 0.0,
        )
        blocks = GaugeMetricFamily(
            "llmserve_kv_cache_blocks", "KV blocks by state", labels=["model_name", "state"]
        )
        blocks.add_metric([self._model, "used"], used)
        blocks.add_metric([self._model, "free"], s.num_free_blocks - s.num_cached_free_blocks)
        blocks.add_metric([self._model, "cached"], s.num_cached_free_blocks)
        yield blocks
        queries, hits = s.prefix_cache_queries, s.prefix_cache_hits
        yield self._gauge(
            "llmserve_prefix_cache_hit_rate",
            "Prompt tokens found in the prefix cache / looked up",
            hits / queries if queries else 0.0,
        )
        yield self._counter("llmserve_prefix_cache_queries", "Prompt tokens looked up", queries)
        yield self._counter("llmserve_prefix_cache_hits", "Prompt tokens found", hits)
        yield self._counter("llmserve_preemptions", "Requests preempted", s.num_preemptions)
        yield self._gauge(
            "llmserve_lora_adapters_loaded", "LoRA adapters loaded (host memory)", s.num_adapters
        )
        yield self._gauge(
            "llmserve_lora_adapters_on_device",
            "LoRA adapters in a device slot",
            s.num_adapters_on_device,
        )
        yield self._gauge(
            "llmserve_lora_slots", "LoRA device slots (max_loras)", s.num_adapter_slots
        )
        yield self._counter(
            "llmserve_lora_slot_loads",
            "LoRA adapters copied into a device slot (slot swaps in)",
            s.num_adapter_slot_loads,
        )
        yield self._counter(
            "llmserve_lora_slot_evictions",
            "LoRA adapters displaced from a device slot by another",
            s.num_adapter_slot_evictions,
        )


class RuntimeMetrics:
    """The runtime's request metrics; `model_name` is set once the engine is loaded."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.model_name = ""
        r = registry

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, ["model_name"], buckets=buckets, registry=r)

        self.requests = Counter(
            "llmserve_requests",
            "Finished requests by finish reason (abort: cancelled or failed)",
            ["model_name", "adapter", "finish_reason"],
            registry=r,
        )
        self.rejected = Counter(
            "llmserve_rejected_requests",
            "Requests refused at admission",
            ["model_name", "reason"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "llmserve_prompt_tokens",
            "Prompt tokens of requests",
            ["model_name", "adapter"],
            registry=r,
        )
        self.generation_tokens = Counter(
            "llmserve_generation_tokens", "Tokens generated", ["model_name", "adapter"], registry=r
        )
        self.time_to_first_token = histogram(
            "llmserve_time_to_first_token_seconds", "Arrival to first token", LATENCY_BUCKETS
        )
        self.inter_token_latency = histogram(
            "llmserve_inter_token_latency_seconds",
            "Time between consecutive tokens",
            TOKEN_BUCKETS,
        )
        self.e2e_latency = histogram(
            "llmserve_e2e_request_latency_seconds", "Arrival to last token", LATENCY_BUCKETS
        )
        self.queue_time = histogram(
            "llmserve_request_queue_time_seconds",
            "Arrival to the start of the request's first step (waiting)",
            LATENCY_BUCKETS,
        )
        self.prefill_time = histogram(
            "llmserve_request_prefill_time_seconds",
            "Start of the first step to the first token (prefill)",
            LATENCY_BUCKETS,
        )
        self.decode_time = histogram(
            "llmserve_request_decode_time_seconds",
            "First token to last token (decode)",
            LATENCY_BUCKETS,
        )
        self.request_prompt_tokens = histogram(
            "llmserve_request_prompt_tokens", "Prompt tokens per finished request", SIZE_BUCKETS
        )
        self.request_generation_tokens = histogram(
            "llmserve_request_generation_tokens",
            "Tokens generated per finished request",
            SIZE_BUCKETS,
        )

    def watch_engine(
        self,
        model_name: str,
        stats: Callable[[], EngineStats | None],
        num_waiting: Callable[[], int],
    ) -> None:
        self.model_name = model_name
        self.registry.register(EngineCollector(model_name, stats, num_waiting))

    def reject(self, reason: str) -> None:
        self.rejected.labels(self.model_name, reason).inc()

    def token_latencies(self, latencies: list[float], num_seen: int) -> None:
        """Observes a chunk's per-token latencies; `num_seen`: tokens of the request before."""
        for i, latency in enumerate(latencies):
            h = self.time_to_first_token if num_seen + i == 0 else self.inter_token_latency
            h.labels(self.model_name).observe(latency)

    def finished(
        self, adapter: str, last: RequestOutput | None, reason: str, e2e_seconds: float
    ) -> None:
        """Counts a request that ended (finished, cancelled or failed); the phase histograms
        only for requests that ran to their end (an abandoned request has no last token)."""
        model = self.model_name
        self.requests.labels(model, adapter, reason).inc()
        num_prompt = last.num_prompt_tokens if last else 0
        num_output = last.num_output_tokens if last else 0
        self.prompt_tokens.labels(model, adapter).inc(num_prompt)
        self.generation_tokens.labels(model, adapter).inc(num_output)
        self.e2e_latency.labels(model).observe(e2e_seconds)
        if last is None or not last.finished or last.timings is None:
            return
        t = last.timings
        self.queue_time.labels(model).observe(t.queue_ns / 1e9)
        self.prefill_time.labels(model).observe(t.prefill_ns / 1e9)
        self.decode_time.labels(model).observe(t.decode_ns / 1e9)
        self.request_prompt_tokens.labels(model).observe(num_prompt)
        self.request_generation_tokens.labels(model).observe(num_output)
