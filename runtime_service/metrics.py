"""Prometheus metrics of a runtime: per-request histograms and counters, and engine gauges
read at scrape time (no background thread)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from runtime_service.engine.core import EngineStats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)


class EngineCollector(Collector):
    """Queue, running requests, KV blocks, prefix cache and preemptions, at scrape time."""

    def __init__(
        self, stats: Callable[[], EngineStats | None], num_waiting: Callable[[], int]
    ) -> None:
        self._stats = stats
        self._num_waiting = num_waiting

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        s = self._stats()
        if s is None:  # still loading
            return
        yield GaugeMetricFamily(
            "llmserve_queue_length", "Requests waiting to start", value=self._num_waiting()
        )
        yield GaugeMetricFamily(
            "llmserve_running_requests", "Requests being generated", value=s.num_running
        )
        used = s.num_blocks - s.num_free_blocks
        yield GaugeMetricFamily(
            "llmserve_kv_cache_usage_ratio",
            "KV blocks held by requests",
            value=used / s.num_blocks if s.num_blocks else 0.0,
        )
        blocks = GaugeMetricFamily(
            "llmserve_kv_cache_blocks", "KV blocks by state", labels=["state"]
        )
        blocks.add_metric(["used"], used)
        blocks.add_metric(["free"], s.num_free_blocks - s.num_cached_free_blocks)
        blocks.add_metric(["cached"], s.num_cached_free_blocks)
        yield blocks
        queries, hits = s.prefix_cache_queries, s.prefix_cache_hits
        yield GaugeMetricFamily(
            "llmserve_prefix_cache_hit_rate",
            "Prompt tokens found in the prefix cache / looked up",
            value=hits / queries if queries else 0.0,
        )
        yield CounterMetricFamily(
            "llmserve_prefix_cache_queries", "Prompt tokens looked up", value=queries
        )
        yield CounterMetricFamily("llmserve_prefix_cache_hits", "Prompt tokens found", value=hits)
        yield CounterMetricFamily(
            "llmserve_preemptions", "Requests preempted", value=s.num_preemptions
        )


class RuntimeMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.requests = Counter(
            "llmserve_requests",
            "Finished requests by finish reason",
            ["finish_reason"],
            registry=registry,
        )
        self.rejected = Counter(
            "llmserve_rejected_requests",
            "Requests refused at admission",
            ["reason"],
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "llmserve_prompt_tokens", "Prompt tokens of requests", registry=registry
        )
        self.generation_tokens = Counter(
            "llmserve_generation_tokens", "Tokens generated", registry=registry
        )
        self.time_to_first_token = Histogram(
            "llmserve_time_to_first_token_seconds",
            "Arrival to first token",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inter_token_latency = Histogram(
            "llmserve_inter_token_latency_seconds",
            "Time between consecutive tokens",
            buckets=TOKEN_BUCKETS,
            registry=registry,
        )
        self.e2e_latency = Histogram(
            "llmserve_e2e_request_latency_seconds",
            "Arrival to last token",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def watch_engine(
        self, stats: Callable[[], EngineStats | None], num_waiting: Callable[[], int]
    ) -> None:
        self.registry.register(EngineCollector(stats, num_waiting))
