"""Reading a daemon's Prometheus metrics in tests: scrape /metrics and sum the samples of one
series whose labels include the given ones."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def scrape(port: int, host: str = "127.0.0.1") -> list[Sample]:
    """Every sample the metrics listener on `port` serves now."""
    url = f"http://{host}:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples named `name` (e.g. llmserve_requests_total) whose labels
    include `labels`; 0 when there is none."""
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def has(samples: list[Sample], name: str, **labels: str) -> bool:
    """Whether a sample named `name` with (at least) `labels` is served."""
    return any(
        s.name == name and all(s.labels.get(k) == v for k, v in labels.items()) for s in samples
    )
